"""When SQS took each received message, handed to its task: the task's wait is measured from it
(task_metrics.py). SQS's SentTimestamp comes with each receive (no extra request); Celery hands the
message's headers to the task."""

from __future__ import annotations

import task_metrics


class SentTimestamp:
    """Mixin of sqs_transport.Channel."""

    def _message_to_python(self, message, queue_name, q_url):
        payload = super()._message_to_python(message, queue_name, q_url)
        sent_ms = (message.get("Attributes") or {}).get("SentTimestamp")
        headers = payload.get("headers")
        if sent_ms and isinstance(headers, dict):
            try:
                headers[task_metrics.SENT_AT_HEADER] = int(sent_ms) / 1000
            except ValueError:
                pass
        return payload

"""Celery's task consumer, changed so that a malformed message is never deleted and never stops a worker.

What Celery 5.7 does with a message it cannot run, and what kombu 5.7's SQS transport then does:

=====================================  =====================  ===================================
message                                Celery 5.7             SQS (queue with a redrive policy)
=====================================  =====================  ===================================
not a task (no ``task`` header)        ``on_unknown_message``  reject: kept, dead-letter queue
unknown task name                      ``on_unknown_task``     reject: kept, dead-letter queue
content type not accepted (pickle)     ``on_invalid_task``     reject: kept, dead-letter queue
body does not decode (bad JSON, bad    ``on_decode_error``     **ack = DeleteMessage: gone**
encoding)
body decodes to the wrong shape        exception escapes      **worker stops** ("Unrecoverable
(e.g. a string, not [args, kwargs,                            error"), every worker that
embed])                                                       receives it
=====================================  =====================  ===================================

Here the last two are rejected like the others (a CRITICAL log line with the message, then
reject), so SQS delivers them again and, after maxReceiveCount receives, moves them to the
dead-letter queue, where they can be inspected.

A task whose ``countdown``/``eta`` lies so far ahead that it could not run and be acked within
SQS's 12 hours from this receive (limits.max_eta_delay_seconds) would be handed to a second
worker while the first still waits for it; it goes to the dead-letter queue at once instead, with
the reason as its ``batch_celery_reason`` attribute. Selected with
``worker_consumer = "dead_letter_consumer:Consumer"`` (worker_settings.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.consumer import dump_body
from vine import promise

import limits

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def on_decode_error(self, message, exc):
        logger.critical(
            "Cannot decode message body (%r; type %r, encoding %r): %s; rejected, SQS moves it to the "
            "dead-letter queue after maxReceiveCount receives",
            exc, message.content_type, message.content_encoding, dump_body(message, message.body),
        )
        message.reject_log_error(logger, self.connection_errors)

    def create_task_handler(self, promise=promise):
        handle = super().create_task_handler(promise)
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message):
            reason = self._too_far_ahead(message)
            if reason and message.channel.dead_letter(message, reason):
                message.ack()  # delete the original: its copy is in the dead-letter queue
                return None
            try:
                return handle(message)
            except connection_errors:
                raise  # the consumer reconnects; the message stays in SQS
            except Exception as exc:  # noqa: BLE001 - a bad message must not stop the worker
                if message.acknowledged:
                    raise
                return self.on_invalid_task(None, message, exc)

        return on_task_received

    def _too_far_ahead(self, message) -> str | None:
        eta = (message.headers or {}).get("eta")
        if not eta:
            return None
        try:
            due = datetime.fromisoformat(str(eta))
        except ValueError:
            return None  # Celery itself reports an unreadable eta
        if due.tzinfo is None:
            due = due.replace(tzinfo=timezone.utc)
        ahead = (due - datetime.now(timezone.utc)).total_seconds()
        conf = self.app.conf
        allowed = limits.max_eta_delay_seconds(
            int(conf.task_time_limit or 0), int(conf.broker_transport_options["visibility_timeout"])
        )
        if ahead <= allowed:
            return None
        return (f"eta {eta} is {ahead:.0f} s ahead; at most {allowed} s are allowed (SQS holds a received message "
                f"12 h at most, and the task needs its time limit and one visibility timeout of that)")

"""Fix 3: a failed task comes back soon, not after the whole visibility timeout.

A rejected message (a task that raised, with ``task_acks_on_failure=False``) is left in a queue with
a redrive policy, but stays invisible for the rest of its visibility timeout (1800 s by default):
three receives would take 90 minutes before it reaches the dead-letter queue. Its visibility is set
to ``failed_task_retry_seconds`` x the receive count (a linear backoff, capped by the queue's
visibility timeout), so with the defaults a poison task is in the dead-letter queue within about 3
minutes, while a task that failed on a passing cause gets a later second chance.
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from limits import SQS_MAX_HOLD_SECONDS

logger = logging.getLogger(__name__)


class FailedTaskBackoff:
    """Mixin of sqs_transport.Channel (uses holding.Holding's ``_no_extension_of``)."""

    @property
    def failed_task_retry_seconds(self) -> int:
        return int(self.transport_options.get("failed_task_retry_seconds", 30))

    def basic_reject(self, delivery_tag, requeue=False):
        retry = None if requeue else self._kept_for_redrive(delivery_tag)
        super().basic_reject(delivery_tag, requeue=requeue)
        if retry is not None:
            self._retry_later(*retry)

    def _kept_for_redrive(self, delivery_tag):
        """(queue, url, receipt handle, receive count) of a rejected message SQS keeps, else None."""
        if self.qos.is_backoff_task(delivery_tag):
            return None  # kombu's own backoff policy sets its visibility
        try:
            info = self.qos.get(delivery_tag).delivery_info
            sqs_message, queue_url = info["sqs_message"], info["sqs_queue"]
        except KeyError:
            return None
        queue = self.canonical_queue_name(info["routing_key"]) if "routing_key" in info else None
        if not self._has_redrive_policy(queue, queue_url):
            return None  # kombu deleted it; the lifecycle script refuses such queues
        receives = int(sqs_message.get("Attributes", {}).get("ApproximateReceiveCount", 1) or 1)
        return queue, queue_url, sqs_message["ReceiptHandle"], receives

    def _retry_later(self, queue, queue_url, receipt_handle, receives):
        visibility = int(self.visibility_timeout)
        delay = min(self.failed_task_retry_seconds * receives, visibility, SQS_MAX_HOLD_SECONDS)
        try:
            with self._no_extension_of(receipt_handle):
                self.sqs(queue=queue).change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=delay
                )
        except (ClientError, BotoCoreError) as error:
            # Not fatal: SQS still delivers it again, after its remaining visibility timeout.
            logger.warning("could not shorten the wait of a rejected message in %s: %s", queue_url, error)
        else:
            logger.info("rejected message in %s (receive %d) is delivered again in %d s", queue_url, receives, delay)

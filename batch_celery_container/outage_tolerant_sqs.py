"""kombu's SQS transport with three defects of kombu 5.7.0 fixed, so no message is lost or kills a worker.

1. **An unreachable endpoint must not end the worker.** kombu's asynchronous ReceiveMessage turns
   a timeout, a 5xx answer or a connection that could not be made (pycurl reports HTTP 599) into
   an empty *list* (``AsyncAWSQueryConnection._on_list_ready``), but ``Channel._on_messages_ready``
   expects the parsed *dict* and calls ``messages.get('Messages')``. The AttributeError escapes the
   event loop and Celery stops with "Unrecoverable error: AttributeError("'list' object has no
   attribute 'get'")". Here that answer means what kombu intends: no messages this time.
   (tests/container/test_lifecycle.py::test_endpoint_outage_does_not_stop_worker reproduces it.)

2. **A message belongs to the queue it was received from.** kombu takes the queue of an ack or
   reject from the ``routing_key`` written *inside* the message; with ``predefined_queues`` a
   message whose envelope names another queue (sent by a client with other routing, or moved
   here from another queue) makes the reject raise UndefinedQueueException and the worker die.
   A body kombu cannot even unwrap (e.g. ``{"properties": "x"}``) stops the worker the same way.
   Here both become messages of this queue that Celery rejects as malformed (see
   dead_letter_consumer.py), so they reach the dead-letter queue.

3. **A failed task comes back soon, not after the whole visibility timeout.** A rejected message
   (a task that raised, with ``task_acks_on_failure=False``) is left in a queue with a redrive
   policy, but stays invisible for the rest of its visibility timeout (1800 s by default): three
   receives would take 90 minutes before it reaches the dead-letter queue. Its visibility is set
   to ``failed_task_retry_seconds`` x the receive count (a linear backoff, capped by the queue's
   visibility timeout), so with the defaults a poison task is in the dead-letter queue within
   about 3 minutes, while a task that failed on a passing cause gets a later second chance.

Selected with ``broker_transport = "outage_tolerant_sqs:Transport"`` (worker_settings.py).
Remove a fix once kombu handles the case itself.
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from kombu.transport import SQS

logger = logging.getLogger(__name__)

# SQS's limit of a message's visibility timeout.
MAX_VISIBILITY_SECONDS = 12 * 60 * 60


class Channel(SQS.Channel):
    _endpoint_unreachable = False

    @property
    def failed_task_retry_seconds(self) -> int:
        return int(self.transport_options.get("failed_task_retry_seconds", 30))

    def _on_messages_ready(self, queue, qname, messages):
        if isinstance(messages, dict):
            if self._endpoint_unreachable:
                self._endpoint_unreachable = False
                logger.warning("SQS answers again for queue %s; consuming", qname)
            return super()._on_messages_ready(queue, qname, messages)
        # Logged once per outage: the worker polls again every polling interval meanwhile.
        if not self._endpoint_unreachable:
            self._endpoint_unreachable = True
            logger.warning(
                "SQS did not answer ReceiveMessage for queue %s (unreachable, timeout or 5xx); "
                "the worker keeps polling until it answers",
                qname,
            )
        return 0

    def _message_to_python(self, message, queue_name, q_url):
        try:
            payload = super()._message_to_python(message, queue_name, q_url)
        except Exception as error:  # noqa: BLE001 - any body kombu cannot unwrap is malformed, not fatal
            logger.warning(
                "message %s in %s is not a kombu message (%s); it is handed on as malformed",
                message.get("MessageId"), queue_name, error,
            )
            payload = self._envelope_payload({}, str(message.get("Body", "")), message, q_url)
        delivery_info = payload["properties"]["delivery_info"]
        if delivery_info.get("routing_key") != queue_name:
            if delivery_info.get("routing_key"):
                logger.warning(
                    "message %s in %s names queue %r in its envelope; it is handled as a message of %s",
                    message.get("MessageId"), queue_name, delivery_info["routing_key"], queue_name,
                )
            delivery_info["routing_key"] = queue_name
        return payload

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
        delay = min(self.failed_task_retry_seconds * receives, visibility, MAX_VISIBILITY_SECONDS)
        try:
            self.sqs(queue=queue).change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=delay
            )
        except (ClientError, BotoCoreError) as error:
            # Not fatal: SQS still delivers it again, after its remaining visibility timeout.
            logger.warning("could not shorten the wait of a rejected message in %s: %s", queue_url, error)
        else:
            logger.info("rejected message in %s (receive %d) is delivered again in %d s", queue_url, receives, delay)


class Transport(SQS.Transport):
    Channel = Channel

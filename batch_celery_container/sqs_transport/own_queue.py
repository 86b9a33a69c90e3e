"""Fix 2: a message belongs to the queue it was received from.

kombu takes the queue of an ack or reject from the ``routing_key`` written *inside* the message;
with ``predefined_queues`` a message whose envelope names another queue (sent by a client with other
routing, or moved here from another queue) makes the reject raise UndefinedQueueException and the
worker die. A body kombu cannot even unwrap (e.g. ``{"properties": "x"}``) stops the worker the same
way. Here both become messages of this queue that Celery rejects as malformed (see
dead_letter_consumer.py), so they reach the dead-letter queue.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class OwnQueue:
    """Mixin of sqs_transport.Channel."""

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

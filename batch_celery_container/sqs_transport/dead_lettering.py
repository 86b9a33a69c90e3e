"""Fix 5: dead-lettering never leaves a task both in the dead-letter queue and running again.

A task this worker sends to the dead-letter queue itself (a countdown beyond SQS's hold, see
dead_letter_consumer.py; Celery's retries used up, here) was copied there and then deleted; a delete
that failed left the original to come back after the visibility timeout and run again (and be copied
a second time), and the copy dropped the original's message attributes. Here the original is first
hidden for the rest of SQS's 12 hours from its receive, then copied with all its message attributes
(every receive asks for them) plus ``batch_celery_reason`` and ``batch_celery_dead_lettered_from``
(its MessageId) while SQS's 10 allow, then deleted; a failed delete is retried by the heartbeat
(held_messages.py) for the rest of the 12 hours, the worker is not idle meanwhile, and a receive of a
message this process dead-lettered deletes it instead of running it.
(tests/container/test_dead_lettering.py reproduces both.)
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import OrderedDict
from contextlib import nullcontext

from botocore.exceptions import BotoCoreError, ClientError
from kombu.transport.virtual import Channel as VirtualChannel

from held_messages import Held
from limits import SQS_MAX_HOLD_SECONDS

from . import holding

logger = logging.getLogger(__name__)

# SQS's limit of message attributes per message.
MAX_MESSAGE_ATTRIBUTES = 10
# Message attributes of a copy in the dead-letter queue, in the order they get a free place.
REASON_ATTRIBUTE = "batch_celery_reason"
DEAD_LETTERED_FROM_ATTRIBUTE = "batch_celery_dead_lettered_from"

# MessageIds this process copied to a dead-letter queue: received again (its delete failed, or SQS
# delivered it once more), such a message is deleted, never run. The newest 10000 are kept.
_dead_lettered_ids: OrderedDict[str, None] = OrderedDict()
_DEAD_LETTERED_IDS_KEPT = 10_000


def _remember_dead_lettered(message_id: str) -> None:
    _dead_lettered_ids[message_id] = None
    while len(_dead_lettered_ids) > _DEAD_LETTERED_IDS_KEPT:
        _dead_lettered_ids.popitem(last=False)


# The worker stamps a message when kombu hands it over, seconds after SQS started counting its 12
# hours (more on a loaded host): SQS refuses a hide that reaches past them, so a minute is kept in hand.
_HOLD_MARGIN_SECONDS = 60


def _hidden_for_the_rest_of_the_hold(received: float) -> int:
    """Seconds a message received at ``received`` can still be hidden (SQS's 12 hours from the
    receive, less the margin)."""
    return int(received + SQS_MAX_HOLD_SECONDS - time.time()) - _HOLD_MARGIN_SECONDS


def copied_attributes(sqs_message: dict, reason: str) -> tuple[dict, list[str]]:
    """The message attributes of a message's dead-letter copy: all of the original's, then ours while
    SQS's 10 allow. Returns them and the names of ours that found no place."""
    attributes = {}
    for name, value in (sqs_message.get("MessageAttributes") or {}).items():
        entry = {"DataType": value["DataType"]}
        if "StringValue" in value:
            entry["StringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            binary = value["BinaryValue"]
            # kombu's asynchronous receive parses SQS's JSON answer itself: binary comes as base64 text.
            entry["BinaryValue"] = base64.b64decode(binary) if isinstance(binary, str) else binary
        attributes[name] = entry
    ours = {REASON_ATTRIBUTE: reason[:1000], DEAD_LETTERED_FROM_ATTRIBUTE: str(sqs_message.get("MessageId", ""))}
    left_out = []
    for name, value in ours.items():
        if name in attributes or len(attributes) < MAX_MESSAGE_ATTRIBUTES:
            attributes[name] = {"DataType": "String", "StringValue": value}
        else:
            left_out.append(name)
    return attributes, left_out


class DeadLettering:
    """Mixin of sqs_transport.Channel (uses holding.Holding's ``_heartbeat``)."""

    # Delivery tag -> MessageId of messages copied to the dead-letter queue, not yet acked.
    _dead_lettering: dict = {}

    @property
    def get_message_attributes(self) -> dict:
        """Every receive asks for all message attributes too (a dead-letter copy keeps them).
        No extra request; kombu asks for none unless ``fetch_message_attributes`` names them."""
        attributes = dict(super().get_message_attributes)
        attributes["MessageAttributeNames"] = ["All"]
        return attributes

    # -- sending a held message to the dead-letter queue ------------------------------------------

    def dead_letter(self, message, reason: str) -> bool:
        """Copy a held message to its queue's dead-letter queue now, with ``reason``; the caller then
        acks it, which deletes the original (retried until SQS takes it, see the module docstring).
        False if it could not be copied: the original is untouched and held as before (never lost)."""
        info = message.delivery_info
        try:
            sqs_message, queue_url = info["sqs_message"], info["sqs_queue"]
            receipt_handle = sqs_message["ReceiptHandle"]
        except KeyError:
            return False
        message_id = sqs_message.get("MessageId", "")
        queue = self.canonical_queue_name(info["routing_key"]) if info.get("routing_key") else None
        client = self.sqs(queue=queue)
        try:
            dlq_url = self._dead_letter_url(client, queue_url)
        except (ClientError, BotoCoreError, KeyError, ValueError) as error:
            logger.error("could not find the dead-letter queue of %s (%s); message %s stays in the queue and reaches "
                         "it after maxReceiveCount receives", queue_url, error, message_id)
            return False
        # Hidden first, for as long as SQS allows: if the delete after the copy fails (or this worker
        # dies between the two), the original cannot come back and run while its copy is there.
        received = float(sqs_message.get("_received_at", time.time()))
        hide = max(1, min(SQS_MAX_HOLD_SECONDS, _hidden_for_the_rest_of_the_hold(received)))
        heartbeat = self._heartbeat
        try:
            with heartbeat.lock if heartbeat is not None else nullcontext():
                client.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle,
                                                 VisibilityTimeout=hide)
                if heartbeat is not None:
                    heartbeat.given_back(receipt_handle)  # never extended (shortened) again
        except (ClientError, BotoCoreError) as error:
            logger.error("could not hide message %s before moving it to the dead-letter queue (%s); it stays in the "
                         "queue and reaches it after maxReceiveCount receives", message_id, error)
            return False
        attributes, left_out = copied_attributes(sqs_message, reason)
        try:
            client.send_message(QueueUrl=dlq_url, MessageBody=sqs_message["Body"], MessageAttributes=attributes)
        except (ClientError, BotoCoreError, KeyError, ValueError) as error:
            if heartbeat is not None:
                heartbeat.resume(receipt_handle)  # held and extended again, as before
            else:
                self._show_again(client, queue_url, receipt_handle)
            logger.error("could not move message %s to the dead-letter queue (%s); it stays in the queue and "
                         "reaches it after maxReceiveCount receives", message_id, error)
            return False
        _remember_dead_lettered(message_id)
        self._dead_lettering = {**self._dead_lettering, message.delivery_tag: message_id}
        if left_out:
            logger.warning("message %s has %d message attributes already, SQS's limit: its dead-letter copy keeps "
                           "them and goes without %s (the reason is in this log)", message_id,
                           MAX_MESSAGE_ATTRIBUTES, ", ".join(left_out))
        logger.error("message %s (task %s %s) goes to the dead-letter queue: %s", message_id,
                     (message.headers or {}).get("task"), (message.headers or {}).get("id"), reason)
        return True

    def _show_again(self, client, queue_url: str, receipt_handle: str) -> None:
        try:
            client.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle,
                                             VisibilityTimeout=int(self.visibility_timeout))
        except (ClientError, BotoCoreError) as error:
            logger.warning("could not shorten the hold of a message not dead-lettered after all: %s", error)

    def _dead_letter_url(self, client, queue_url: str) -> str:
        cache = self.__dict__.setdefault("_dead_letter_urls", {})
        if queue_url not in cache:
            policy = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
            arn = json.loads(policy["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
            _, _, _, _, account, name = arn.split(":", 5)
            cache[queue_url] = client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        return cache[queue_url]

    # -- deleting the original --------------------------------------------------------------------

    def basic_ack(self, delivery_tag, multiple=False):
        if delivery_tag in self._dead_lettering:
            return self._ack_dead_lettered(delivery_tag)
        return super().basic_ack(delivery_tag, multiple=multiple)

    def _ack_dead_lettered(self, delivery_tag) -> None:
        """Delete a dead-lettered original; on failure the heartbeat retries. Never raises: the
        copy is in the dead-letter queue, and the original is hidden until it is deleted."""
        message_id = self._dead_lettering.get(delivery_tag, "")
        try:
            message = self.qos.get(delivery_tag)
            info = message.delivery_info
            original = Held(receipt_handle=info["sqs_message"]["ReceiptHandle"], queue_url=info["sqs_queue"],
                            message_id=message_id, task=str((message.headers or {}).get("task", "")),
                            task_id=str((message.headers or {}).get("id", "")),
                            received=float(info["sqs_message"].get("_received_at", time.time())))
            queue = self.canonical_queue_name(info["routing_key"]) if info.get("routing_key") else None
        except KeyError:
            original = None
        try:
            if original is not None:
                self._delete_original(queue, original)
        finally:
            self._dead_lettering = {t: m for t, m in self._dead_lettering.items() if t != delivery_tag}
            VirtualChannel.basic_ack(self, delivery_tag)  # releases the prefetch slot

    def _delete_original(self, queue, original: Held) -> bool:
        """Delete a dead-lettered original now; False if it failed (the heartbeat retries it)."""
        try:
            self.sqs(queue=queue).delete_message(QueueUrl=original.queue_url, ReceiptHandle=original.receipt_handle)
        except (ClientError, BotoCoreError) as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            if code in ("ReceiptHandleIsInvalid", "InvalidParameterValue"):
                logger.error("dead-lettered message %s: SQS refuses its receipt handle (%s)", original.message_id, code)
                return True
            heartbeat = holding.process_heartbeat()
            if heartbeat is None:
                logger.error("could not delete dead-lettered message %s (%s); it stays hidden until 12 h after its "
                             "receive, then may run although its copy is in the dead-letter queue",
                             original.message_id, error)
                return False
            heartbeat.delete_later(original)
            logger.warning("could not delete dead-lettered message %s (%s); it stays hidden and the delete is retried",
                           original.message_id, error)
            return False
        return True

    def _on_messages_ready(self, queue, qname, messages):
        if _dead_lettered_ids and messages.get("Messages"):
            messages["Messages"] = self._without_dead_lettered(queue, qname, messages["Messages"])
        return super()._on_messages_ready(queue, qname, messages)

    def _without_dead_lettered(self, queue_url: str, qname: str, messages: list) -> list:
        """The received messages this process did not dead-letter; the others are deleted, not run."""
        kept = []
        for sqs_message in messages:
            message_id = sqs_message.get("MessageId")
            if message_id not in _dead_lettered_ids:
                kept.append(sqs_message)
                continue
            logger.warning("message %s was received again, but its copy is in the dead-letter queue already; "
                           "deleting it instead of running it", message_id)
            received = float(sqs_message.get("_received_at", time.time()))
            original = Held(receipt_handle=sqs_message["ReceiptHandle"], queue_url=queue_url, message_id=message_id,
                            received=received)
            client_queue = self.canonical_queue_name(qname)
            if not self._delete_original(client_queue, original):
                try:  # hidden while the heartbeat retries the delete
                    self.sqs(queue=client_queue).change_message_visibility(
                        QueueUrl=queue_url, ReceiptHandle=original.receipt_handle,
                        VisibilityTimeout=max(1, _hidden_for_the_rest_of_the_hold(received)))
                except (ClientError, BotoCoreError) as error:
                    logger.error("could not hide dead-lettered message %s either (%s)", message_id, error)
        return kept

    # -- Celery's retries used up -----------------------------------------------------------------

    def basic_reject(self, delivery_tag, requeue=False):
        if not requeue and self._dead_lettered_after_celery_retries(delivery_tag):
            return None
        return super().basic_reject(delivery_tag, requeue=requeue)

    def _dead_lettered_after_celery_retries(self, delivery_tag) -> bool:
        """A task that failed on the last copy its author's ``max_retries`` allows (Celery's
        ``self.retry`` sent it) has used the retries its author chose: it goes to the dead-letter
        queue now instead of being received again up to maxReceiveCount times."""
        try:
            message = self.qos.get(delivery_tag)
            headers = message.headers or {}
            retries = int(headers.get("retries") or 0)
        except (KeyError, TypeError, ValueError):
            return False
        if retries < 1:
            return False
        from celery import current_app  # the worker's app: the task's own max_retries

        task = current_app.tasks.get(str(headers.get("task")))
        max_retries = getattr(task, "max_retries", None)
        if max_retries is None or retries < max_retries:
            return False  # retries left: a failure outside self.retry is redelivered as usual
        reason = f"failed after {retries} Celery retr{'y' if retries == 1 else 'ies'} (max_retries {max_retries})"
        if not self.dead_letter(message, reason):
            return False
        self.basic_ack(delivery_tag)  # delete the original: its copy is in the dead-letter queue
        return True

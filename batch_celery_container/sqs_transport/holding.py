"""Fix 4: a message is held only while the worker works on it.

kombu has no visibility heartbeat: a task longer than the queue's visibility timeout is handed to a
second worker while it runs, and a worker that stops takes the whole timeout to give back what it
held (kombu hides a restored message for ``wait_time_seconds`` more). Here the heartbeat of
held_messages.py keeps every held message invisible, and a message given back at shutdown
(reserved, never started) or by a lost worker process is visible again at once. (The drain, the
other half of a clean stop, is draining.py.)
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from held_messages import Held, Heartbeat

logger = logging.getLogger(__name__)

# One per worker process: the messages of every consuming channel, one writer of the state file.
_process_heartbeat: Heartbeat | None = None


def process_heartbeat() -> Heartbeat | None:
    """This process's heartbeat, once a channel consumes with one (also for a channel that no longer does)."""
    return _process_heartbeat


class Holding:
    """Mixin of sqs_transport.Channel: the heartbeat's source of held messages."""

    _consuming = False

    @property
    def _heartbeat(self) -> Heartbeat | None:
        return _process_heartbeat if self._consuming else None

    def basic_consume(self, queue, no_ack, callback, consumer_tag, *args, **kwargs):
        global _process_heartbeat
        options = self.transport_options
        if options.get("heartbeat_seconds"):
            if _process_heartbeat is None:
                _process_heartbeat = Heartbeat(
                    visibility_timeout=int(self.visibility_timeout),
                    heartbeat_seconds=int(options["heartbeat_seconds"]),
                    run_dir=options.get("run_dir"), region=options.get("region"),
                )
                _process_heartbeat.start()
            _process_heartbeat.add(self)
            self._consuming = True
        return super().basic_consume(queue, no_ack, callback, consumer_tag, *args, **kwargs)

    def held(self) -> list[Held]:
        """Every message delivered to Celery and not yet acked or rejected (read from another thread):
        also those a consumer restart kept (reconnect.py), none being dead-lettered (dead_lettering.py)."""
        for _ in range(5):
            try:
                # Kept messages first: close() moves them back into _delivered, then forgets them.
                delivered = list(dict(self._kept_through_close).items()) + list(self.qos._delivered.items())
                dirty = set(self.qos._dirty)
                break
            except RuntimeError:  # changed while copied: copy again
                continue
        else:
            # Never report "holds nothing" for a reading that could not be made: the tick fails,
            # the state file goes stale, and stale means "not idle" to the lifecycle script.
            raise RuntimeError("the worker's delivered messages changed on every copy attempt")
        held = []
        dead_lettering = self._dead_lettering
        for tag, message in delivered:
            if tag in dirty or tag in dead_lettering:
                continue
            info = message.delivery_info
            sqs_message = info.get("sqs_message") or {}
            if "ReceiptHandle" not in sqs_message or "sqs_queue" not in info:
                continue
            headers = message.headers or {}
            held.append(Held(
                receipt_handle=sqs_message["ReceiptHandle"], queue_url=info["sqs_queue"],
                message_id=sqs_message.get("MessageId", ""), task=str(headers.get("task", "")),
                task_id=str(headers.get("id", "")), received=sqs_message.get("_received_at", time.time()),
            ))
        return held

    def _on_messages_ready(self, queue, qname, messages):
        # The receive time bounds the heartbeat's extensions (SQS's 12 hours from the receive).
        received_at = time.time()
        for message in messages.get("Messages") or ():
            message["_received_at"] = received_at
        delivered = super()._on_messages_ready(queue, qname, messages)
        if delivered and self._heartbeat is not None:
            self._heartbeat.poke()
        return delivered

    def basic_ack(self, delivery_tag, multiple=False):
        try:
            return super().basic_ack(delivery_tag, multiple=multiple)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.poke()

    @contextmanager
    def _no_extension_of(self, receipt_handle: str):
        """Change a held message's visibility ourselves: the heartbeat must not extend it after us."""
        heartbeat = self._heartbeat
        if heartbeat is None:
            yield
            return
        with heartbeat.lock:
            heartbeat.given_back(receipt_handle)
            yield

    def _restore(self, message, unwanted_delivery_info=("sqs_message", "sqs_queue")):
        """A message the worker gives back unrun (reserved at shutdown or at a consumer restart, or
        its process was lost) is visible again at once; kombu would hide it ``wait_time_seconds``
        more."""
        info = message.delivery_info
        try:
            receipt_handle, queue_url = info["sqs_message"]["ReceiptHandle"], info["sqs_queue"]
        except KeyError:
            return super()._restore(message, unwanted_delivery_info)
        queue = self.canonical_queue_name(info["routing_key"]) if info.get("routing_key") else None
        try:
            with self._no_extension_of(receipt_handle):
                self.sqs(queue=queue).change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=0
                )
        except (ClientError, BotoCoreError) as error:
            logger.warning("could not give back message %s at once (%s); it returns within the visibility "
                           "timeout", info["sqs_message"].get("MessageId"), error)
        else:
            logger.info("gave back message %s (task %s): visible to other workers now",
                        info["sqs_message"].get("MessageId"), (message.headers or {}).get("id"))

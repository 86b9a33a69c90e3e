"""kombu's SQS transport with defects of kombu 5.7.0 fixed, so no message is lost, kills a worker or waits out a timeout.

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

4. **A message is held only while the worker works on it.** kombu has no visibility heartbeat:
   a task longer than the queue's visibility timeout is handed to a second worker while it runs,
   and a worker that stops takes the whole timeout to give back what it held (kombu hides a
   restored message for ``wait_time_seconds`` more). Here the heartbeat of held_messages.py
   keeps every held message invisible, a message given back at shutdown (reserved, never started)
   or by a lost worker process is visible again at once, and a drain (the ``stop-consuming``
   file) stops polling without leaving a long poll open to take a message nobody will run.

5. **Dead-lettering never leaves a task both in the dead-letter queue and running again.** A task
   this worker sends to the dead-letter queue itself (a countdown beyond SQS's hold, Celery's
   retries used up) was copied there and then deleted; a delete that failed left the original to
   come back after the visibility timeout and run again (and be copied a second time), and the
   copy dropped the original's message attributes. Here the original is first hidden for the rest
   of SQS's 12 hours from its receive, then copied with all its message attributes (every receive
   asks for them) plus ``batch_celery_reason`` and ``batch_celery_dead_lettered_from`` (its
   MessageId) while SQS's 10 allow, then deleted; a failed delete is retried by the heartbeat
   (held_messages.py) for the rest of the 12 hours, the worker is not idle meanwhile, and a
   receive of a message this process dead-lettered deletes it instead of running it.
   (tests/container/test_dead_lettering.py reproduces both.)

6. **A consumer restart keeps the running tasks' messages and consumes again.** On a connection
   error in the event loop (e.g. a credential refresh that fails near expiry) Celery closes the
   channel and consumes on a new one, while running tasks go on. kombu's ``Channel.close`` gives
   back every unacked message, running ones included: another worker (or this one) started the
   task a second time, and the first run's ack went to the forgotten QoS, so the message was never
   deleted. Here only messages no task has started go back; a running task's message stays held
   (the heartbeat extends it) and its ack deletes it by its receipt handle. And the event loop
   is handed to the new channel: Celery's ``hub.reset()`` clears kombu's current loop, so a
   channel created after a restart never polled again (the worker stayed up consuming nothing).
   (tests/container/test_transport_reconnect.py reproduces both.)

Selected with ``broker_transport = "outage_tolerant_sqs:Transport"`` (worker_settings.py).
Remove a fix once kombu handles the case itself.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext

from botocore.exceptions import BotoCoreError, ClientError
from kombu.asynchronous import get_event_loop, set_event_loop
from kombu.transport import SQS
from kombu.transport.virtual import Channel as VirtualChannel

from held_messages import Held, Heartbeat
import kombu_contract
import task_metrics

# A worker started without the lifecycle script still refuses another kombu or celery release.
kombu_contract.check()

logger = logging.getLogger(__name__)

# SQS's limit of a message's visibility timeout.
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
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


# One per worker process: the messages of every consuming channel, one writer of the state file.
_process_heartbeat: Heartbeat | None = None


class Channel(SQS.Channel):
    _endpoint_unreachable = False
    _consuming = False
    _open_polls = 0
    # Set by the event loop when it declined to open a poll because the worker drains (see
    # Heartbeat.tick): only then can no poll open after the drain was seen.
    drain_confirmed = False
    # Running tasks' messages kept through a close (fix 6); read before _delivered by held().
    _kept_through_close: dict = {}
    # Delivery tag -> MessageId of messages copied to the dead-letter queue, not yet acked (fix 5).
    _dead_lettering: dict = {}

    @property
    def failed_task_retry_seconds(self) -> int:
        return int(self.transport_options.get("failed_task_retry_seconds", 30))

    @property
    def get_message_attributes(self) -> dict:
        """Every receive asks for all message attributes too (fix 5: a dead-letter copy keeps them).
        No extra request; kombu asks for none unless ``fetch_message_attributes`` names them."""
        attributes = dict(super().get_message_attributes)
        attributes["MessageAttributeNames"] = ["All"]
        return attributes

    # -- fix 4: heartbeat, drain and instant release ------------------------------------------

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
        if getattr(self, "hub", None) is None:
            # Created after a consumer restart cleared kombu's current loop (fix 6), before the
            # transport was registered with it again: without a hub kombu never polls.
            self.hub = get_event_loop()
        return super().basic_consume(queue, no_ack, callback, consumer_tag, *args, **kwargs)

    def open_polls(self) -> int:
        return 0 if self.closed else self._open_polls

    def held(self) -> list[Held]:
        """Every message delivered to Celery and not yet acked or rejected (read from another thread)."""
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

    @property
    def _draining(self) -> bool:
        return self._heartbeat is not None and self._heartbeat.draining

    def _schedule_queue(self, queue):
        if self._draining:
            # No new long poll while draining; look again soon (the lifecycle script may resume).
            if not self.drain_confirmed:
                self.drain_confirmed = True
                if self._open_polls == 0:
                    self._heartbeat.poke()  # the lifecycle script waits for the "drained" marker
            if queue in self._active_queues:
                self.hub.call_later(0.5, self._schedule_queue, queue)
            return None
        self.drain_confirmed = False
        return super()._schedule_queue(queue)

    def _get_from_sqs(self, queue_name, queue_url, connection, count=1, callback=None):
        self._open_polls += 1
        return super()._get_from_sqs(queue_name, queue_url, connection, count=count, callback=callback)

    def basic_ack(self, delivery_tag, multiple=False):
        try:
            if delivery_tag in self._dead_lettering:
                return self._ack_dead_lettered(delivery_tag)
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

    def _give_back_polled(self, queue_url, qname, messages):
        client = self.sqs(queue=self.canonical_queue_name(qname))
        for message in messages:
            try:
                client.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            except (ClientError, BotoCoreError) as error:
                logger.warning("draining: could not give back message %s (%s); it returns within the visibility "
                               "timeout", message.get("MessageId"), error)
            else:
                logger.info("draining: gave back message %s that the last long poll brought", message.get("MessageId"))

    # -- fix 6: a consumer restart keeps the running tasks' messages ------------------------------

    def close(self):
        if self.closed:
            return super().close()
        transport = self.connection
        self._client_after_close = getattr(transport, "client", None)
        self._kept_through_close = self._running_messages()
        try:
            super().close()  # gives back the other unacked messages through _restore
        finally:
            kept = self._kept_through_close
            if kept:
                delivered = self.qos._delivered
                for tag, message in kept.items():
                    delivered[tag] = message  # its ack (basic_ack) or reject finds it here
                # The ack of a kept message needs the transport's clients and options, which
                # kombu unlinks from a closed channel (and then from the closed transport).
                self.connection = transport
                logger.warning("consumer restart: kept %d running task(s) held (%s); they are acked when they finish",
                               len(kept), ", ".join(str((m.headers or {}).get("id")) for m in kept.values()))
            self._kept_through_close = {}

    _client_after_close = None

    @property
    def conninfo(self):
        client = getattr(self.connection, "client", None)
        return client if client is not None else self._client_after_close

    @property
    def transport_options(self):
        return self.conninfo.transport_options

    def _running_messages(self) -> dict:
        """Delivery tag -> message of every unacked message whose task a pool process has started."""
        from celery.worker import state  # the worker's own registry; empty outside a worker

        running = {request.id for request in list(state.active_requests)}
        if not running or self._qos is None:
            return {}
        dirty = set(self._qos._dirty)
        return {tag: message for tag, message in list(self._qos._delivered.items())
                if tag not in dirty and (message.headers or {}).get("id") in running}

    def _restore(self, message, unwanted_delivery_info=("sqs_message", "sqs_queue")):
        """A message the worker gives back unrun (reserved at shutdown or at a consumer restart, or
        its process was lost) is visible again at once; kombu would hide it ``wait_time_seconds``
        more. A running task's message is not given back at a consumer restart (fix 6)."""
        if message.delivery_tag in self._kept_through_close:
            return None
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

    def _on_messages_ready(self, queue, qname, messages):
        self._open_polls = max(0, self._open_polls - 1)
        if self._draining and self._open_polls == 0:
            self._heartbeat.poke()  # the lifecycle script waits for the "drained" marker
        received_at = time.time()
        if isinstance(messages, dict):
            for message in messages.get("Messages") or ():
                message["_received_at"] = received_at
            if self._draining and messages.get("Messages"):
                # The worker is stopping: what the last long poll brought goes back at once.
                self._give_back_polled(queue, qname, messages["Messages"])
                return 0
        if isinstance(messages, dict):
            if self._endpoint_unreachable:
                self._endpoint_unreachable = False
                logger.warning("SQS answers again for queue %s; consuming", qname)
            if _dead_lettered_ids and messages.get("Messages"):
                messages["Messages"] = self._without_dead_lettered(queue, qname, messages["Messages"])
            delivered = super()._on_messages_ready(queue, qname, messages)
            if delivered and self._heartbeat is not None:
                self._heartbeat.poke()
            return delivered
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
        # When SQS took the message (asked for with each receive, no extra request): the task's
        # wait is measured from it (task_metrics.py). Celery hands the headers to the task.
        sent_ms = (message.get("Attributes") or {}).get("SentTimestamp")
        headers = payload.get("headers")
        if sent_ms and isinstance(headers, dict):
            try:
                headers[task_metrics.SENT_AT_HEADER] = int(sent_ms) / 1000
            except ValueError:
                pass
        return payload

    # -- fix 5: straight to the dead-letter queue, with the reason ---------------------------------

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
        hide = max(1, min(MAX_VISIBILITY_SECONDS, int(received + MAX_VISIBILITY_SECONDS - time.time()) - 1))
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
            heartbeat = _process_heartbeat
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
                        VisibilityTimeout=max(1, int(received + MAX_VISIBILITY_SECONDS - time.time()) - 1))
                except (ClientError, BotoCoreError) as error:
                    logger.error("could not hide dead-lettered message %s either (%s)", message_id, error)
        return kept

    def _dead_letter_url(self, client, queue_url: str) -> str:
        cache = self.__dict__.setdefault("_dead_letter_urls", {})
        if queue_url not in cache:
            import json

            policy = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
            arn = json.loads(policy["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
            _, _, _, _, account, name = arn.split(":", 5)
            cache[queue_url] = client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        return cache[queue_url]

    def basic_reject(self, delivery_tag, requeue=False):
        if not requeue and self._dead_lettered_after_celery_retries(delivery_tag):
            return
        retry = None if requeue else self._kept_for_redrive(delivery_tag)
        super().basic_reject(delivery_tag, requeue=requeue)
        if retry is not None:
            self._retry_later(*retry)

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
            with self._no_extension_of(receipt_handle):
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

    def register_with_event_loop(self, connection, loop):
        # Celery calls this on every (re)connect. After a consumer restart kombu's current loop is
        # None (Celery's hub.reset() cleared it), and every SQS channel made since has no hub.
        if get_event_loop() is None:
            set_event_loop(loop)
        for channel in list(self.channels):
            if getattr(channel, "hub", None) is None:
                channel.hub = loop
        return super().register_with_event_loop(connection, loop)

"""The worker of a Lambda pool (``compute: "lambda"``): Celery's own task execution, one SQS record at a time.

An SQS event source mapping hands the function the pool's messages (batch size 1) and deletes
each one the function does not name in ``batchItemFailures``. The app is the Batch worker's
(celery_app.py: yours with CELERY_APP, or the bundled one, with worker_settings.py's settings and
task_metrics.py's signals), and each task runs through Celery's tracer (``celery.app.trace``), so
the task registry, the result table, the task states and the one EMF line per task run are those
of a Batch worker. What a Batch worker does with a message (it acks late and never acks a failure) and what this does:

- a task that succeeded, was ignored, or retried (``self.retry`` sent its new message): deleted
  (not in ``batchItemFailures``), as a Batch worker acks it;
- a task that raised or hit its time limit: a batch item failure, back in 30 s x its receives (at
  most the visibility timeout) as on Batch, and after maxReceiveCount receives SQS moves it to the
  dead-letter queue;
- a task that failed on the last copy its ``max_retries`` allows: copied to the dead-letter queue at
  once with the reason as ``batch_celery_reason``, as on Batch;
- an unknown task, a message that is no task or does not decode: one log line and a batch item
  failure (a Batch worker rejects it: the same dead-letter queue after maxReceiveCount receives);
- a countdown or eta ahead: hidden until due (below); one beyond SQS's 12-hour hold goes to the
  dead-letter queue at once with its reason, as on Batch;
- an expired task (``expires`` passed): revoked and deleted, as a Batch worker revokes it.

A function cannot hold a message while it waits, so a task that is not due yet is hidden until it
is (ChangeMessageVisibility) and returned as a failure: it comes back when due and runs then. That
receive counts toward maxReceiveCount, which is why a Lambda pool needs max_receive_count >= 2
(props.py). Time limits: the soft and hard limit are raised in the task (SIGALRM, as Celery's
solo pool cannot), so a task past its limit fails like on Batch and its result says so; the
function's own timeout (the limit plus LAMBDA_TIMEOUT_MARGIN_SECONDS) is the last resort.

Imported by bare name from the worker's folder, as the other worker modules are; the image's
entry point ``batch-celery-lambda`` runs it under the Lambda runtime interface client.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

import contract
import limits
import task_metrics
from worker_settings import FAILED_TASK_RETRY_SECONDS

logger = logging.getLogger("batch_celery.lambda")

# The handler's answer for a record SQS should deliver again (the mapping's ReportBatchItemFailures).
BATCH_ITEM_FAILURES = "batchItemFailures"


class Malformed(ValueError):
    """A message this worker cannot run as a Celery task; str() says why, in one line."""


def unwrap(body: str) -> dict:
    """The kombu envelope of an SQS message body, decoded as kombu's SQS transport decodes it:
    base64 when the text is base64 of UTF-8 (the transport's default), else the text as is."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    candidate = raw.strip()
    try:
        decoded = base64.b64decode(candidate, validate=True)
        if base64.b64encode(decoded).rstrip(b"=") == candidate.rstrip(b"="):
            decoded.decode("utf-8")
            raw = decoded
    except (binascii.Error, ValueError):
        pass
    try:
        envelope = json.loads(raw)
    except ValueError as error:
        raise Malformed(f"the body is not a kombu message (not JSON: {error})") from None
    if not isinstance(envelope, dict):
        raise Malformed("the body is not a kombu message (JSON, but no object)")
    return envelope


def decode(body: str, accept: Any) -> tuple[dict, list, dict, dict]:
    """(headers, args, kwargs, embed) of a Celery protocol 2 task message, or Malformed."""
    from kombu.exceptions import ContentDisallowed, DecodeError
    from kombu.serialization import loads, prepare_accept_content

    envelope = unwrap(body)
    headers = envelope.get("headers")
    if not isinstance(headers, dict) or not headers.get("task") or not headers.get("id"):
        raise Malformed("not a Celery task message (no task and id headers)")
    properties = envelope.get("properties") or {}
    payload = envelope.get("body", "")
    try:
        if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
            payload = base64.b64decode(payload)
        decoded = loads(payload, envelope.get("content-type"), envelope.get("content-encoding") or "utf-8",
                        accept=prepare_accept_content(accept))
    except ContentDisallowed as error:
        raise Malformed(f"content not accepted: {error}") from None
    except (DecodeError, binascii.Error, TypeError, ValueError) as error:
        raise Malformed(f"the task's body does not decode: {error}") from None
    try:
        args, kwargs, embed = decoded
    except (TypeError, ValueError):
        raise Malformed("the task's body is not [args, kwargs, embed]") from None
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(embed or {}, dict):
        raise Malformed("the task's body is not [args, kwargs, embed]")
    return headers, list(args), kwargs, embed or {}


def as_sqs_message(record: Mapping[str, Any]) -> dict:
    """A Lambda SQS record in ReceiveMessage's shape (what sqs_transport's helpers read)."""
    attributes = {}
    for name, value in (record.get("messageAttributes") or {}).items():
        entry = {"DataType": value.get("dataType", "String")}
        if value.get("stringValue") is not None:
            entry["StringValue"] = value["stringValue"]
        if value.get("binaryValue") is not None:
            entry["BinaryValue"] = value["binaryValue"]
        attributes[name] = entry
    return {"MessageId": record.get("messageId", ""), "ReceiptHandle": record.get("receiptHandle", ""),
            "Body": record.get("body", ""), "MessageAttributes": attributes}


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@contextmanager
def time_limits(soft: float | None, hard: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in the task at ``soft`` seconds, TimeLimitExceeded at ``hard``:
    the limits a Batch worker's pool enforces, here in the one process (main thread only, where
    Python delivers signals; elsewhere the function's timeout is the only limit)."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    if threading.current_thread() is not threading.main_thread() or not (soft or hard):
        yield
        return
    started = time.monotonic()
    soft_pending = bool(soft and (not hard or soft < hard))

    def on_alarm(signum, frame):
        nonlocal soft_pending
        if soft_pending:
            soft_pending = False
            if hard:
                signal.setitimer(signal.ITIMER_REAL, max(0.01, hard - (time.monotonic() - started)))
            raise SoftTimeLimitExceeded(soft)
        raise TimeLimitExceeded(hard)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, soft if soft_pending else hard)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class LambdaWorker:
    """Runs the records of one invocation; one per function instance (``handler`` makes it)."""

    def __init__(self, app: Any, settings: Any, *, dead_letter_queue_url: str | None = None,
                 sqs: Any = None) -> None:
        self.app, self.settings = app, settings
        self.dead_letter_queue_url = dead_letter_queue_url
        self._sqs = sqs
        self.hostname = f"lambda@{os.environ.get('AWS_LAMBDA_FUNCTION_NAME') or socket.gethostname()}"

    @property
    def sqs(self) -> Any:
        if self._sqs is None:
            self._sqs = self.settings.sqs_client()
        return self._sqs

    def handle(self, event: Mapping[str, Any], context: Any = None) -> dict:
        """The mapping's answer: the records SQS should deliver again (the rest it deletes)."""
        failures = []
        for record in event.get("Records") or ():
            try:
                done = self.run(record)
            except Exception:  # noqa: BLE001 - never lose a message to this code's own error
                logger.exception("message %s: could not be handled; SQS delivers it again", record.get("messageId"))
                done = False
            if not done:
                failures.append({"itemIdentifier": record.get("messageId", "")})
        return {BATCH_ITEM_FAILURES: failures}

    def run(self, record: Mapping[str, Any]) -> bool:
        """True: the message is done (the mapping deletes it); False: SQS delivers it again."""
        message_id = record.get("messageId", "")
        attributes = record.get("attributes") or {}
        receives = int(attributes.get("ApproximateReceiveCount") or 1)
        try:
            headers, args, kwargs, embed = decode(record.get("body", ""), self.app.conf.accept_content)
        except Malformed as error:
            logger.critical("message %s: %s; SQS moves it to the dead-letter queue after maxReceiveCount receives "
                            "(body: %.200r)", message_id, error, record.get("body", ""))
            return self._failed(record, receives)
        name, task_id = str(headers["task"]), str(headers["id"])
        task = self.app.tasks.get(name)
        if task is None:
            logger.error("message %s: unknown task %r (id %s), not registered in this function's app; SQS moves it "
                         "to the dead-letter queue after maxReceiveCount receives", message_id, name, task_id)
            return self._failed(record, receives)
        now = datetime.now(timezone.utc)
        expires = _parse_time(headers.get("expires"))
        if expires is not None and expires <= now:
            logger.info("task %s[%s] expired at %s; revoked, not run", name, task_id, expires.isoformat())
            task.backend.mark_as_revoked(task_id, "expired", request=None)
            return True
        eta = _parse_time(headers.get("eta"))
        if eta is not None and eta > now:
            return self._not_due(record, name, task_id, eta, now)
        return self._trace(record, task, headers, args, kwargs, embed, receives)

    # -- running a task ----------------------------------------------------------------------

    def _trace(self, record, task, headers, args, kwargs, embed, receives) -> bool:
        from celery import states
        from celery.app.trace import trace_task

        request = dict(headers)
        request.update(embed)
        request.update(
            hostname=self.hostname, is_eager=False, reply_to=None, correlation_id=headers["id"],
            delivery_info={"exchange": "", "routing_key": self.settings.queue_name, "priority": None,
                           "redelivered": receives > 1},
        )
        sent = (record.get("attributes") or {}).get("SentTimestamp")
        if sent:
            try:
                request[task_metrics.SENT_AT_HEADER] = int(sent) / 1000
            except ValueError:
                pass
        conf = self.app.conf
        hard, soft = (list(headers.get("timelimit") or ()) + [None, None])[:2]
        hard = hard or task.time_limit or conf.task_time_limit
        soft = soft or task.soft_time_limit or conf.task_soft_time_limit
        with time_limits(soft, hard):
            _, info, _, _ = trace_task(task, headers["id"], args, kwargs, request, hostname=self.hostname,
                                       loader=self.app.loader, app=self.app)
        state = info.state if info is not None else states.SUCCESS
        if state in (states.SUCCESS, states.IGNORED, states.RETRY):
            return True
        if self._retries_used_up(task, headers):
            retries = int(headers.get("retries") or 0)
            reason = f"failed after {retries} Celery retr{'y' if retries == 1 else 'ies'} (max_retries {task.max_retries})"
            if self._dead_letter(record, reason):
                return True
        return self._failed(record, receives)

    @staticmethod
    def _retries_used_up(task, headers) -> bool:
        """The Batch worker's rule (sqs_transport/dead_lettering.py): a failure on the last copy the
        task's max_retries allows goes to the dead-letter queue now."""
        try:
            retries = int(headers.get("retries") or 0)
        except (TypeError, ValueError):
            return False
        return retries >= 1 and task.max_retries is not None and retries >= task.max_retries

    # -- giving a message back ---------------------------------------------------------------

    def _failed(self, record, receives: int) -> bool:
        """Back to SQS after 30 s x its receives (at most the visibility timeout), as on Batch."""
        delay = min(FAILED_TASK_RETRY_SECONDS * receives, self.settings.visibility_timeout_seconds,
                    limits.SQS_MAX_HOLD_SECONDS)
        self._hide(record, delay, "its failure's backoff")
        return False

    def _not_due(self, record, name: str, task_id: str, eta: datetime, now: datetime) -> bool:
        ahead = (eta - now).total_seconds()
        allowed = limits.max_eta_delay_seconds(self.settings.task_time_limit_seconds,
                                               self.settings.visibility_timeout_seconds)
        if ahead > allowed:
            reason = (f"eta {eta.isoformat()} is {ahead:.0f} s ahead; at most {allowed} s are allowed (SQS holds a "
                      "received message 12 h at most, and the task needs its time limit and one visibility timeout "
                      "of that)")
            return self._dead_letter(record, reason)
        delay = max(1, math.ceil(ahead))
        if self._hide(record, delay, "its eta"):
            logger.info("task %s[%s] is due at %s: back in %d s, when it runs (this receive counts toward "
                        "maxReceiveCount)", name, task_id, eta.isoformat(), delay)
        return False

    def _hide(self, record, seconds: int, why: str) -> bool:
        try:
            self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url,
                                               ReceiptHandle=record.get("receiptHandle", ""),
                                               VisibilityTimeout=int(seconds))
        except Exception as error:  # noqa: BLE001 - it still comes back, after the visibility timeout
            logger.warning("message %s: could not set its visibility for %s (%s); SQS delivers it again after "
                           "the visibility timeout", record.get("messageId"), why, error)
            return False
        return True

    def _dead_letter(self, record, reason: str) -> bool:
        """Copy the message to the dead-letter queue with ``reason`` (the Batch worker's attributes);
        True: the mapping may delete the original. False: it stays in the queue (never lost)."""
        from sqs_transport.dead_lettering import copied_attributes

        message = as_sqs_message(record)
        if not self.dead_letter_queue_url:
            logger.error("message %s: %s; no dead-letter queue is known (%s unset), so it reaches it after "
                         "maxReceiveCount receives", message["MessageId"], reason, contract.DEAD_LETTER_QUEUE_URL)
            return False
        attributes, left_out = copied_attributes(message, reason)
        try:
            self.sqs.send_message(QueueUrl=self.dead_letter_queue_url, MessageBody=message["Body"],
                                  MessageAttributes=attributes)
        except Exception as error:  # noqa: BLE001 - kept in the queue instead
            logger.error("could not move message %s to the dead-letter queue (%s); it stays in the queue and "
                         "reaches it after maxReceiveCount receives", message["MessageId"], error)
            return False
        if left_out:
            logger.warning("message %s's dead-letter copy goes without %s (SQS's 10 attributes); the reason is in "
                           "this log", message["MessageId"], ", ".join(left_out))
        logger.error("message %s goes to the dead-letter queue: %s", message["MessageId"], reason)
        return True


_worker: LambdaWorker | None = None


def worker_from_env() -> LambdaWorker:
    """The worker of this function instance: the Batch worker's app and settings (celery_app.py),
    read from the function's environment once."""
    import celery_app

    # The Batch worker's log file is Celery's; here the EMF lines go to stdout, which Lambda sends
    # to the function's log group (CloudWatch turns them into metrics the same way).
    if celery_app.settings.metrics_namespace:
        task_metrics.attach(None)
    # What a worker does when it starts: import the task modules (CELERY_TASK_MODULES, the app's
    # own) and run the loader's start-up (a Django project is set up there).
    celery_app.app.loader.init_worker()
    return LambdaWorker(celery_app.app, celery_app.settings,
                        dead_letter_queue_url=os.environ.get(contract.DEAD_LETTER_QUEUE_URL) or None)


def handler(event: Mapping[str, Any], context: Any = None) -> dict:
    """The function's handler (``lambda_handler.handler``)."""
    global _worker
    if _worker is None:
        logging.getLogger().setLevel(logging.INFO)
        _worker = worker_from_env()
    return _worker.handle(event, context)

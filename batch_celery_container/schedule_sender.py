"""The schedule sender: turns one EventBridge Scheduler fire into one Celery task message on SQS.

A fleet that scales to zero has no process to run ``celery beat`` in, so a deployment's
``schedules`` become EventBridge Scheduler schedules (batch_celery/schedules.py) that invoke this
Lambda handler. Each fire's input names the schedule, its task, args and kwargs, the queue of the
pool the task routes to (decided at synth by routing.pool_for, the producers' own rule) and two
context attributes Scheduler fills in at each fire: the scheduled time and the execution id::

    {"schedule": "nightly-report", "task": "reports.nightly", "args": [], "kwargs": {},
     "queue": "BatchCelery-...", "queue_url": "https://sqs...",
     "scheduled_time": "<aws.scheduler.scheduled-time>", "execution_id": "<aws.scheduler.execution-id>"}

The message is the one a Celery 5 producer (``app.send_task``) puts on SQS through kombu's SQS
transport: task protocol 2, JSON, the kombu envelope base64-encoded as the transport does by
default. tests/container/test_schedule_sender.py compares the bytes with a real producer's and
runs both through a real worker. Written from celery 5.7.0's ``AMQP.as_task_v2`` and kombu
5.7.0's virtual channel and ``SQS.Channel._put`` (kombu_contract.SUPPORTED).

At least once, never silently twice with two faces: the task id is derived from the queue, the
schedule and its scheduled time (uuid5), so every delivery of one fire (Scheduler's retry of an
invocation, Lambda's retry of a failed run, a duplicate delivery) carries the same task id, and two
fires never share one. The task sees the fire in its request: ``self.request.id``, and the headers
``batch_celery_schedule`` and ``batch_celery_scheduled_time`` (extra headers a producer may send
too, ``send_task(..., headers=...)``); a task that must not run twice for one fire keys on them.

Standard library and boto3 only, no Celery or kombu: the Lambda asset ships this module and emf.py
alone (SENDER_ASSET_EXCLUDES in batch_celery/schedules.py). One JSON line per fire (an EMF document
when METRICS_NAMESPACE is set) is what ``python -m batch_celery status`` and the dashboard read.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

try:  # the Lambda asset and the CDK app import it as a package module; the image as a top-level one
    from batch_celery_container import contract, emf
except ImportError:  # pragma: no cover - the worker image
    import contract  # type: ignore[no-redef]
    import emf  # type: ignore[no-redef]

# The two extra headers every scheduled message carries; the worker shows them on ``self.request``.
SCHEDULE_HEADER = "batch_celery_schedule"
SCHEDULED_TIME_HEADER = "batch_celery_scheduled_time"
# What the sender's log lines and metrics say: the record's marker, its metric and dimension.
RECORD_MARKER = "schedule-sender"
SENT = "scheduled_tasks"
LAG_SECONDS = "schedule_lag_seconds"
SCHEDULE = "schedule"
# The uuid5 namespace of scheduled task ids (a fixed, random uuid: the ids are this project's own).
TASK_ID_NAMESPACE = uuid.UUID("5f0c2f0e-8a55-4e8e-9a0f-3d6d1c3c2b1a")
# Celery's defaults for the argsrepr/kwargsrepr headers (amqp.AMQP.argsrepr_maxsize, task_repr_maxlevels).
REPR_MAXLEN = 1024
REPR_MAXLEVELS = 3
# The event keys the sender needs, and what the scheduler fills in.
REQUIRED = ("schedule", "task", "queue", "queue_url", "scheduled_time")


class ScheduleError(ValueError):
    """The fire's input is unusable; the message is one line."""


def task_id_for(queue: str, schedule: str, scheduled_time: str) -> str:
    """The task id of one fire: the same for every delivery of that fire, new for the next fire."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{queue}\n{schedule}\n{scheduled_time}"))


def envelope(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    task_id: str,
    queue: str,
    headers: Mapping[str, Any] | None = None,
    origin: str | None = None,
    reply_to: str | None = None,
    delivery_tag: str | None = None,
) -> dict[str, Any]:
    """The kombu message ``app.send_task(task, args, kwargs, queue=queue, headers=headers)`` makes,
    key for key and in the same order (the JSON text, hence the bytes, depend on the order).

    ``origin``, ``reply_to`` and ``delivery_tag`` identify the sending process and the delivery,
    as they do in Celery (``gen<pid>@<host>``, the app's oid, a uuid); a test passes a producer's
    own to compare the bytes."""
    args = list(args)
    kwargs = dict(kwargs or {})
    body = [args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    message_headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": saferepr(args),
        "kwargsrepr": saferepr(kwargs),
        "origin": origin or f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        # send_task's extra headers go last (celery.app.amqp: headers2.update(headers)).
        **dict(headers or {}),
    }
    return {
        "body": base64.b64encode(_dumps(body).encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message_headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to or str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }


def sqs_body(message: Mapping[str, Any]) -> str:
    """The SendMessage body kombu's SQS transport writes: the envelope's JSON, base64-encoded
    (its default ``sqs_base64_encoding``)."""
    return base64.b64encode(_dumps(message).encode("utf-8")).decode("ascii")


def _dumps(value: Any) -> str:
    # kombu.utils.json.dumps: json.dumps with its default separators, non-ASCII escaped.
    return json.dumps(value)


# -- Celery's saferepr, for the JSON values a schedule can hold ------------------------------------
# celery.utils.saferepr (5.7.0) renders argsrepr/kwargsrepr: a repr that quotes strings with
# single quotes escaping only "'", cuts nesting at three levels ("[...]") and the text at 1024
# characters (", ..." and the brackets still open). Ported for str, numbers, booleans, None, lists
# and dicts; tests/container/test_schedule_sender.py checks it against Celery's on hard cases.

_OPEN, _CLOSE, _SEP, _TEXT, _QUOTED, _KEY, _ELIDED = range(7)


def _tokens(value: Any, level: int) -> Iterator[tuple[int, Any]]:
    if isinstance(value, str):
        yield _QUOTED, value
    elif isinstance(value, (bool, int, float)):
        yield _TEXT, str(value)
    elif isinstance(value, (list, tuple, dict)):
        brackets = "{}" if isinstance(value, dict) else "[]"
        if level >= REPR_MAXLEVELS:
            yield _ELIDED, f"{brackets[0]}...{brackets[1]}"
            return
        yield _OPEN, brackets[0]
        items = list(value.items()) if isinstance(value, dict) else [(None, item) for item in value]
        for index, (key, item) in enumerate(items):
            if isinstance(value, dict):
                yield _KEY, key
                yield _SEP, ": "
            yield from _tokens(item, level + 1)
            if index < len(items) - 1:
                yield _SEP, ", "
        yield _CLOSE, brackets[1]
    else:
        yield _TEXT, repr(value)


def _truncate(text: str, maxlen: int | None) -> str:
    if maxlen and len(text) >= maxlen:
        return text[:maxlen].rsplit(" ", 1)[0] + "..."
    return text


def _quoted(text: str, maxlen: int | None) -> str:
    return "'{}'".format(_truncate(text, maxlen).replace("'", "\\'"))


def saferepr(value: Any, maxlen: int | None = REPR_MAXLEN) -> str:
    """What ``celery.utils.saferepr.saferepr(value, maxlen)`` returns for a JSON value."""
    out: list[str] = []
    still_open: list[str] = []
    for kind, token in _tokens(value, 0):
        if maxlen is not None and maxlen <= 0:
            if kind == _CLOSE:
                out.append(token)
                still_open.pop()
                continue
            out.append(", ...")
            # The containers open so far are closed; the one this token would open never opened.
            out.extend(reversed(still_open))
            break
        if kind == _KEY:
            text = _quoted(token, maxlen) if isinstance(token, str) else saferepr(token, maxlen)
        elif kind == _QUOTED:
            text = _quoted(token, maxlen)
        elif kind == _TEXT:
            text = _truncate(token, maxlen)
        else:
            text = token
        if kind == _OPEN:
            still_open.append("}" if token == "{" else "]")
        elif kind == _CLOSE:
            still_open.pop()
        out.append(text)
        if maxlen is not None:
            maxlen -= len(text)
    return "".join(out)


# -- one fire -------------------------------------------------------------------------------------


def message_for(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(task id, SQS body, the envelope) of the fire ``event`` describes; ScheduleError if unusable."""
    if not isinstance(event, Mapping):
        raise ScheduleError(f"the event is not a JSON object: {event!r:.200}")
    missing = [key for key in REQUIRED if not isinstance(event.get(key), str) or not event.get(key)]
    if missing:
        raise ScheduleError(f"the event lacks {', '.join(missing)}; it must come from a batch-celery schedule")
    args, kwargs = event.get("args", []), event.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ScheduleError("the event's args must be a JSON list and its kwargs a JSON object")
    task_id = task_id_for(event["queue"], event["schedule"], event["scheduled_time"])
    message = envelope(
        event["task"], args, kwargs, task_id=task_id, queue=event["queue"],
        headers={SCHEDULE_HEADER: event["schedule"], SCHEDULED_TIME_HEADER: event["scheduled_time"]},
    )
    return task_id, sqs_body(message), message


def fire(sqs: Any, event: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """Send the fire's task message with ``sqs`` (a boto3 SQS client); return its record: the
    schedule, task, task id, queue, scheduled time, SQS message id and the lag behind the
    scheduled time (seconds)."""
    task_id, body, _ = message_for(event)
    answer = sqs.send_message(QueueUrl=event["queue_url"], MessageBody=body)
    now = time.time() if now is None else now
    return {
        "sender": RECORD_MARKER,
        SCHEDULE: event["schedule"],
        "task": event["task"],
        "task_id": task_id,
        "queue": event["queue"],
        "scheduled_time": event["scheduled_time"],
        "execution_id": event.get("execution_id", ""),
        "message_id": answer.get("MessageId", ""),
        LAG_SECONDS: _lag(event["scheduled_time"], now),
    }


def _lag(scheduled_time: str, now: float) -> float:
    try:
        scheduled = datetime.fromisoformat(scheduled_time.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=timezone.utc)
    return round(max(0.0, now - scheduled.timestamp()), 3)


def record_line(record: Mapping[str, Any], namespace: str | None, now: float) -> str:
    """The fire's log line: an EMF document (one ``scheduled_tasks`` count and the lag, by
    schedule) when the stack gives a namespace, else the plain record."""
    if not namespace:
        return emf.line(record)
    return emf.line(emf.document(namespace, int(now * 1000), [
        ({SENT: emf.COUNT, LAG_SECONDS: emf.SECONDS}, [[SCHEDULE]]),
    ], {**record, SENT: 1}))


_client = None


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:  # noqa: ARG001
    """The Lambda entry point. A failure raises: Lambda retries the event (the same task id), then
    sends it to the function's dead-letter queue."""
    global _client
    if _client is None:
        import boto3

        _client = boto3.client("sqs")
    record = fire(_client, event)
    now = time.time()
    print(record_line(record, os.environ.get(contract.METRICS_NAMESPACE), now), file=sys.stdout, flush=True)
    return record

"""One CloudWatch EMF line per task run (emf.py), written into the worker's log: no API call.

The worker's log file is what the lifecycle script streams to the job's stdout, which Batch's
awslogs driver sends to CloudWatch Logs, where each EMF line becomes metrics. Celery prefixes its
own log lines with a time and a level, which would make them unreadable as EMF, so the lines go
through a logger of their own whose handler writes the bare JSON into the same file.

Measured in the worker process that runs the task: the run from ``task_prerun`` to
``task_postrun``; the wait from when the task was due (the message's SQS SentTimestamp, which the
transport puts into the task's headers as ``SENT_AT_HEADER``, or the task's ETA when later) to
``task_prerun``. A task killed at its hard time limit, or with its worker, writes no line: its
message goes back to SQS and the next run writes one.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any

import emf

# Set by sqs_transport/sent_timestamp.py on each received message: SQS's SentTimestamp, in seconds.
SENT_AT_HEADER = "batch_celery_sent_at"
OTHER_TASK = "other"
# The EMF member with a failed run's reason (not a dimension), and its longest form.
REASON = "reason"
MAX_REASON_CHARS = 300

logger = logging.getLogger("batch_celery.metrics")
logger.propagate = False
logger.setLevel(logging.INFO)

_started: dict[str, tuple[float, float]] = {}


def attach(logfile: str | None) -> None:
    """Send the EMF lines, bare, to ``logfile`` (the worker's log) or, without one, to stdout."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(logfile, encoding="utf-8") if logfile else logging.StreamHandler(sys.__stdout__)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)


def outcome_of(state: str | None) -> str:
    if state == "SUCCESS":
        return emf.SUCCEEDED
    if state == "RETRY":
        return emf.RETRIED
    return emf.FAILED


def due_at(request: Any) -> float | None:
    """When the task could first have started: its send time, or its ETA if that is later."""
    sent = getattr(request, SENT_AT_HEADER, None)
    try:
        sent = float(sent) if sent is not None else None
    except (TypeError, ValueError):
        sent = None
    eta = getattr(request, "eta", None)
    if eta:
        try:
            parsed = datetime.fromisoformat(str(eta))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            sent = max(sent or 0.0, parsed.timestamp())
        except ValueError:
            pass
    return sent


def reason_of(error: BaseException) -> str:
    """An exception as a traceback's last line shows it (``module.Type: message``), on one line."""
    text = " ".join("".join(traceback.format_exception_only(type(error), error)).split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def started(task_id: str) -> None:
    _started[task_id] = (time.time(), time.monotonic())


def finished(*, namespace: str, pool: str, task: Any, task_id: str, state: str | None,
             registered: Any, error: BaseException | None = None) -> dict[str, Any] | None:
    """Write the run's line; returns the document (None if the run's start was not seen)."""
    start = _started.pop(task_id, None)
    if start is None:
        return None
    wall_start, mono_start = start
    due = due_at(task.request)
    name = task.name if task.name in registered else OTHER_TASK
    doc = emf.task_document(
        namespace,
        pool=pool,
        task=name,
        outcome=outcome_of(state),
        run_seconds=time.monotonic() - mono_start,
        wait_seconds=None if due is None else max(0.0, wall_start - due),
        timestamp_ms=int(wall_start * 1000),
        task_id=task_id,
    )
    if error is not None and doc[emf.OUTCOME] == emf.FAILED:
        doc[REASON] = reason_of(error)
    logger.info(emf.line(doc))
    return doc


def install(app: Any, *, namespace: str | None, pool: str | None) -> None:
    """Connect the signals of ``app``'s worker; nothing without a namespace."""
    if not namespace:
        return
    from celery import signals

    pool_name = pool or "none"

    @signals.after_setup_logger.connect(weak=False)
    def _attach(logfile=None, **_: Any) -> None:
        attach(logfile)

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, **_: Any) -> None:
        started(task_id)

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id=None, task=None, state=None, retval=None, **_: Any) -> None:
        # A failed task's retval is its exception (Celery's task_postrun).
        error = retval if isinstance(retval, BaseException) else None
        try:
            finished(namespace=namespace, pool=pool_name, task=task, task_id=task_id, state=state,
                     registered=app.tasks, error=error)
        except Exception:  # noqa: BLE001 - a metric must never fail a task
            logging.getLogger(__name__).exception("could not write the metrics line of task %s", task_id)

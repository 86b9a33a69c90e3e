"""Tasks that report what happened to them, for tests, the reliability suite and benchmarks.

With no result backend, each task appends one line per event to the file named by
``PROBE_RECORD_FILE`` (``<event> <task id> <tag> <pid>``), so a caller can count how often each
task started and finished and prove that none was lost or run twice. Load them into a worker
with ``CELERY_TASK_MODULES=harness.probe_tasks`` (the repository root on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from celery import shared_task


def _record(event: str, task_id: str, tag: str) -> None:
    path = os.environ.get("PROBE_RECORD_FILE")
    if not path:
        raise RuntimeError("PROBE_RECORD_FILE is not set; probe tasks need a file to record to")
    # One write of one short line in append mode: lines from concurrent processes never interleave.
    with open(path, "a", encoding="utf-8") as record:
        record.write(f"{event} {task_id} {tag} {os.getpid()}\n")


@shared_task(name="probe.record", bind=True)
def record(self, tag: str = "", seconds: float = 0.0) -> str:
    """Record its start, sleep ``seconds``, record its end."""
    _record("start", self.request.id, tag)
    if seconds:
        time.sleep(seconds)
    _record("done", self.request.id, tag)
    return tag


@shared_task(name="probe.fail", bind=True)
def fail(self, tag: str = "") -> None:
    """Fail every time (a poison task)."""
    _record("fail", self.request.id, tag)
    raise RuntimeError(f"probe.fail {tag} fails on purpose")


@shared_task(name="probe.crash", bind=True)
def crash(self, tag: str = "") -> None:
    """Kill the worker process that runs it (a task that crashes its worker every time)."""
    _record("crash", self.request.id, tag)
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="probe.retry", bind=True, max_retries=2, default_retry_delay=1)
def retry(self, tag: str = "") -> None:
    """Fail every time through Celery's own retries (``self.retry``), then for good."""
    _record("fail", self.request.id, tag)
    raise self.retry(exc=RuntimeError(f"probe.retry {tag} fails on purpose"))


@shared_task(name="probe.echo", bind=True)
def echo(self, *args, **kwargs) -> dict:
    """Return its arguments and the schedule headers it came with (None from a plain producer
    that sends none): two messages with the same arguments and headers give the same value."""
    _record("done", self.request.id, "echo")
    return {"args": list(args), "kwargs": kwargs,
            "schedule": getattr(self.request, "batch_celery_schedule", None),
            "scheduled_time": getattr(self.request, "batch_celery_scheduled_time", None)}


def read_records(path: str | Path) -> list[tuple[str, str, str]]:
    """(event, task id, pid) of every line of a record file (empty if it does not exist)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    # The tag may be empty, so the pid is the last field, not the fourth.
    return [(fields[0], fields[1], fields[-1]) for fields in map(str.split, lines) if len(fields) >= 3]


def read_events(path: str | Path) -> dict[str, Counter]:
    """{event: Counter(task id -> times)} from a record file (empty if it does not exist)."""
    events: dict[str, Counter] = {}
    for event, task_id, _ in read_records(path):
        events.setdefault(event, Counter())[task_id] += 1
    return events

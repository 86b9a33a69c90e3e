"""The worker's Celery app: yours (CELERY_APP), or this module's own when there is none, with this
project's transport, lifecycle, results and metrics layered onto it. `celery -A celery_app worker`
(run_celery_worker.sh) starts it; its settings: worker_settings.py.

One path for both: the app is found (your ``proj``, as `celery -A proj` finds it, Django included;
or a new app named batch_celery_worker), WorkerSettings.apply_to layers the settings the runtime
depends on onto it and keeps the rest of yours (task modules, routes, serializers), then the task
metrics signals and the doctor's probe task are added. The example tasks below are registered on
the bundled app only.

The worker consumes only its pool's queue, acknowledges a message after its task has finished,
and never acknowledges a task that failed: the message stays in SQS, is received again after 30 s
times its receive count (at most the visibility timeout; sqs_transport/failed_task_backoff.py) and, after the
queue's maxReceiveCount receives, SQS moves it to the dead-letter queue, where it can be inspected
and redriven. A malformed message is rejected the same way (dead_letter_consumer.py). Nothing a
worker receives vanishes without a trace.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from celery import Celery

import contract
import task_metrics
from worker_settings import WorkerSettings, load_app

logger = logging.getLogger(__name__)

settings = WorkerSettings.from_env()

# Your app when CELERY_APP names one; else the bundled app, "the user's app when there is none".
app = load_app(settings.app) if settings.app else Celery("batch_celery_worker")
BUNDLED = settings.app is None
settings.apply_to(app)
# One EMF line per task run into the worker's log (CloudWatch turns it into metrics).
task_metrics.install(app, namespace=settings.metrics_namespace, pool=settings.pool)


def bundled_task(**options) -> Callable:
    """``@app.task(**options)`` on the bundled app; on your app (CELERY_APP) the function stays a
    plain function: your app gets the probe, not this module's examples."""
    def register(function: Callable) -> Callable:
        return app.task(**options)(function) if BUNDLED else function
    return register


# --------------------------------------------------------------------------------------------
# Tasks. Names are explicit so a rename of this module never strands queued messages.


@bundled_task(name="batch.calculate_pi")
def calculate_pi(terms: int = 2_000_000) -> float:
    """Compute-bound example: pi from the first ``terms`` terms of the Leibniz series."""
    if not 1 <= terms <= 10**10:
        raise ValueError(f"terms={terms} is out of range; allowed: 1..10000000000")
    total = 0.0
    sign = 1.0
    for k in range(terms):
        total += sign / (2 * k + 1)
        sign = -sign
    return 4 * total


@bundled_task(name="batch.word_count")
def word_count(text: str = "the quick brown fox jumps over the lazy dog") -> int:
    """Light example (the demo's Lambda pool): milliseconds of work, where a worker job's start and
    idle window would cost far more than the task; the words of ``text``."""
    return len(text.split())


def available_cpus() -> int:
    """CPUs this container may use: its CPU affinity, capped by a cgroup v2 CPU quota (Fargate)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def threads_for_external_program() -> int:
    """Each of the worker's processes only waits on its program, so the programs share the CPUs."""
    return max(1, available_cpus() // settings.concurrency)


EXTERNAL_PROGRAM = Path(__file__).resolve().parent / "parallel_digest.py"


@bundled_task(name="batch.parallel_digest", bind=True)
def parallel_digest(self, megabytes: int = 64, rounds: int = 4) -> str:
    """The blog's pattern: Celery runs one process, which hands the work to a multi-threaded
    external program sized to the container's remaining CPUs (FFmpeg in the blog; here a small
    hashing program so the image needs nothing extra). Returns the program's digest."""
    threads = threads_for_external_program()
    started = time.monotonic()
    # Finish (or give up) before the soft time limit, so the failure is ours, with a reason.
    timeout = max(1.0, settings.task_soft_time_limit_seconds - 1.0)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [
        sys.executable, str(EXTERNAL_PROGRAM),
        "--threads", str(threads), "--megabytes", str(megabytes), "--rounds", str(rounds),
    ]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{EXTERNAL_PROGRAM.name} did not finish within {timeout:.0f} s") from None
    if completed.returncode != 0:
        reason = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{EXTERNAL_PROGRAM.name} exited with {completed.returncode}: {reason}")
    logger.info(
        "task %s: %s with %d threads took %.1f s",
        self.request.id, EXTERNAL_PROGRAM.name, threads, time.monotonic() - started,
    )
    return completed.stdout.strip()


def probe(nonce: str) -> dict:
    """What ``python -m batch_celery doctor`` asks each pool's worker: who it runs as, whether the
    scratch volume takes a file (written and read back), whether the root filesystem is read-only,
    and where it runs. It reports instead of raising, so a broken scratch volume is a finding with
    a reason, not a retried task. It is registered on every worker's app, yours or the bundled one
    (below), so every image that runs this module (the bundled one, a pool's own image built on
    it) answers it."""
    scratch = Path(tempfile.gettempdir())
    written = None
    try:
        with tempfile.NamedTemporaryFile("w+", dir=scratch, prefix="batch-celery-probe-", encoding="utf-8") as file:
            file.write(nonce)
            file.flush()
            file.seek(0)
            written = file.read() == nonce
        scratch_error = None if written else "read back something else"
    except OSError as error:
        scratch_error = f"{type(error).__name__}: {error.strerror or error}"
    try:
        # The mount flag, not a write attempt: nothing is left behind where it is writable.
        root_read_only = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
    except OSError:
        root_read_only = None
    return {
        "nonce": nonce, "uid": os.getuid(), "gid": os.getgid(), "scratch": str(scratch),
        "scratch_writable": bool(written), "scratch_error": scratch_error, "root_read_only": root_read_only,
        "pool": settings.pool, "queue": settings.queue_name,
        # Set by Batch in every job's container; None in a local worker process.
        "job_id": os.environ.get("AWS_BATCH_JOB_ID"),
        "task_modules": list(settings.task_modules),
    }


# The doctor's probe, on every worker's app (yours too).
probe = app.task(name=contract.PROBE_TASK, time_limit=60, soft_time_limit=50)(probe)

"""The whole loop on this machine: tasks in, routed to two pools, workers up in proportion, queues
drained, workers gone.

moto server on 127.0.0.1 stands in for SQS; each pool's queue and DLQ get the attributes of the
synthesized stack; the real ``fill-batch-queue.py`` submits the tasks and the real routing
(routing.py, from the pools' ``tasks``) decides each task's queue; the scaler's real policy decides,
per pool, how many workers to start, and each worker is a local process of the real
``run_celery_worker.sh`` with its pool's job environment (and a shortened idle window). Batch
itself is played by this module: it launches the workers the policy asks for, up to a local cap.
With one pool configured, the demo adds a second one, the GPU pool of examples/gpu-pool, whose
``gpu.matmul`` runs on NumPy here.

Run it with ``make demo`` or ``python -m batch_celery_local --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import psutil
from botocore.config import Config

from batch_celery import CONTAINER_DIR
from batch_celery import runfile
from batch_celery_local import REPO_ROOT, motoserver
from batch_celery_local.queues import QueuePair, create_result_table, message_counts, total_messages
from batch_celery_local.template import (
    PoolSpec, StackSpec, TemplateError, create_queues, project_context, read_spec, synthesize,
)
from batch_celery.props import pascal
from batch_celery.scaler.policy import workers_for_target, workers_needed, workers_to_submit
from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError
from batch_celery_container import contract, routing, schedule_sender

WORKER_SCRIPT = CONTAINER_DIR / "run_celery_worker.sh"
FILLER = CONTAINER_DIR / "fill-batch-queue.py"
# Marks every process the demo starts, so none can outlive it unnoticed (see reap_marked).
MARKER_VARIABLE = "BATCH_CELERY_LOCAL_RUN"
# Celery's own line for a finished task: "Task NAME[ID] succeeded in 0.25s: VALUE".
SUCCEEDED = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] succeeded in")
# What the lifecycle script says when it decides to stop its worker (run_celery_worker.sh).
STOP_REASONS = ("idle for", "received SIG", "unreadable for", "no state from the worker", "exited on its own",
                "job deadline")
# The lifecycle script's exits of a worker that left by itself: idle (0), at its job's deadline (7).
LEFT_BY_ITSELF = (0, 7)
# Celery's key of a task's result in the DynamoDB table.
RESULT_KEY = re.compile(r"celery-task-meta-([0-9a-f-]+)")
# The second pool the demo adds when the project configures one pool: the worked GPU example.
SECOND_POOL = "gpu"
SECOND_POOL_SETTINGS = {
    "compute": "ec2_spot", "gpus": 1, "vcpus": 4, "memory_mib": 15000, "max_workers": 2,
    "image": "examples/gpu-pool", "tasks": ["gpu.*"],
}
# ~0.1 s of NumPy per task here (CUDA in the deployed pool).
SECOND_POOL_TASK = ("gpu.matmul", {"n": 300})
# The Lambda pool the demo adds beside them (compute "lambda"): light tasks, no worker job to wait
# for. Here its event source mapping is played by lambda_standin.py, which runs the function's
# handler in its own process, one message at a time.
LAMBDA_POOL = "light"
LAMBDA_POOL_SETTINGS = {
    "compute": "lambda", "memory_mib": 512, "task_time_limit_seconds": 60, "max_workers": 2,
    "tasks": ["batch.word_count"],
}
LAMBDA_POOL_TASK = ("batch.word_count", {"text": "light tasks need no worker job"})
DEFAULT_LAMBDA_POOL_BURSTS = (6, 3)
STANDIN_MODULE = "batch_celery_local.lambda_standin"
IMAGE_TASK_MODULES = re.compile(rf"^\s*ENV\s+{contract.TASK_MODULES}=(\S+)", re.MULTILINE)
TASK_CHOICES = {
    # ~1.3 s of pure-Python arithmetic per task on this machine's cores.
    "calculate_pi": ("batch.calculate_pi", {"terms": 10_000_000}),
    # Near-instant; for quick checks of the machinery.
    "trivial": ("batch.calculate_pi", {"terms": 1_000}),
}
# The default workload: a burst, a pause until every worker has left, a smaller burst. The first
# burst wants more workers than the cap allows, the second fewer: both directions show.
DEFAULT_BURSTS = (30, 10)
# The schedule `--schedule` fires once: the first pool's demo task, as periodic work.
DEMO_SCHEDULE = "demo-every-5-minutes"
DEFAULT_SECOND_POOL_BURSTS = (8, 4)
MAX_BURSTS = 10
# A cap no pool reaches: what the policy would want without its pool's cap, shown beside it.
UNCAPPED = 1_000_000
# A local worker (the lifecycle script and Celery) polls about this long after its launch (seen here).
LOCAL_START_SECONDS = 3
# Every line the demo prints fits a terminal of this width; longer ones wrap under an indent.
WIDTH = 80
EVENT_INDENT = " " * 8


@dataclass(frozen=True)
class Send:
    """One pool's share of a burst: ``count`` tasks of ``task`` with its arguments."""

    count: int
    task: str
    kwargs: dict
    args: list = field(default_factory=list)
    # What the user chose, when it differs from the task's name (e.g. "trivial").
    label: str | None = None

    def describe(self) -> str:
        what = self.task if self.label is None else f"{self.label} ({self.task})"
        return f"{self.count} x {what}"


class DemoError(RuntimeError):
    """Something the demo needs failed; the message is the one line shown to the user."""


class UsageError(DemoError):
    """The user's own module or task cannot be run: one line, exit 2, nothing started."""


@dataclass
class LocalWorker:
    """One lifecycle script playing one Batch worker job."""

    index: int
    pool: str
    process: subprocess.Popen
    run_dir: Path
    log_path: Path
    done_ids: set[str] = field(default_factory=set)
    # The EMF lines the worker wrote, one per task run (what CloudWatch would make metrics of).
    metrics: list[dict] = field(default_factory=list)
    # Why the lifecycle script stopped its worker (its own words), once it said so.
    reason: str | None = None
    # How many of its failed task runs (metrics lines with a reason) the event log has told.
    failures_told: int = 0
    started: float = field(default_factory=time.monotonic)
    reported: bool = False
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            with self.log_path.open("w", encoding="utf-8") as log:
                for line in self.process.stdout:
                    log.write(line)
                    log.flush()
                    speaker = next((s for s in ("run_celery_worker: ", "lambda_standin: ") if s in line), None)
                    if self.reason is None and speaker and any(key in line for key in STOP_REASONS):
                        self.reason = line.split(speaker, 1)[1].split("; draining")[0].strip()
                    if match := SUCCEEDED.search(line):
                        self.done_ids.add(match["id"])
                    elif line.startswith("{") and '"_aws"' in line:
                        try:
                            self.metrics.append(json.loads(line))
                        except ValueError:
                            pass

        self._reader = threading.Thread(target=read, name=f"worker-{self.pool}-{self.index}-log", daemon=True)
        self._reader.start()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def failures(self) -> list[dict]:
        """Its failed task runs, from their metrics lines (task_metrics.py: ``reason``)."""
        return [m for m in list(self.metrics) if m.get("outcome") == "failed"]

    def worker_pid(self) -> int | None:
        try:
            return int((self.run_dir / "worker.pid").read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def finish_reading(self, timeout: float = 5.0) -> None:
        if self._reader:
            self._reader.join(timeout)


@dataclass
class Snapshot:
    pool: str
    sent: int
    cap: int
    elapsed: float
    visible: int
    in_flight: int
    delayed: int
    done: int
    dead_lettered: int
    running: int
    launched: int
    phase: str = ""


@dataclass
class Outcome:
    tasks: int
    done: int
    dead_lettered: int
    remaining: int
    workers: int
    worker_exit_codes: list[int]
    seconds: float
    interrupted: bool = False
    # Tasks of bursts the run never reached (interrupted first).
    unsent: int = 0
    # (pool, sent, done, workers) for the per-pool lines above the summary.
    pools: list[tuple[str, int, int, int]] = field(default_factory=list)
    # pool -> the worker's EMF lines of that pool's task runs.
    metrics: dict[str, list[dict]] = field(default_factory=dict)
    # What the result table holds at the end: status -> count, and one result to show; None: no table.
    results: dict[str, int] | None = None
    sample_result: str | None = None

    @property
    def lost(self) -> int:
        return max(0, self.tasks - self.done - self.dead_lettered - self.remaining)

    @property
    def ok(self) -> bool:
        return (
            not self.interrupted
            and not self.unsent
            and self.done == self.tasks
            and self.lost == 0
            and all(code in LEFT_BY_ITSELF for code in self.worker_exit_codes)
        )

    def pool_lines(self) -> list[str]:
        lines = []
        for pool, sent, done, workers in self.pools:
            line = f"pool {pool}: {done}/{sent} done by {workers} worker{'s' if workers != 1 else ''}"
            runs = self.metrics.get(pool, [])
            waits = sorted(r["wait_seconds"] for r in runs if "wait_seconds" in r)
            times = sorted(r["run_seconds"] for r in runs)
            if runs and waits:
                line += (f"; metrics: {len(runs)} task lines, wait p50 {_percentile(waits, 50):.1f} s "
                         f"p95 {_percentile(waits, 95):.1f} s, run p50 {_percentile(times, 50):.1f} s "
                         f"p95 {_percentile(times, 95):.1f} s")
            lines.append(line)
        if self.results is not None:
            counts = ", ".join(f"{count} {status}" for status, count in sorted(self.results.items())) or "none"
            line = f"results in DynamoDB (moto): {sum(self.results.values())} stored: {counts}"
            if self.sample_result:
                line += f"; e.g. {self.sample_result}"
            lines.append(line)
        return lines

    def unsent_line(self) -> str | None:
        """The tasks of bursts an interrupted run never sent, on a line of their own: appended to
        the summary they would push it past the width."""
        return f"{self.unsent} task(s) of later bursts were never sent" if self.unsent else None

    def summary_line(self) -> str:
        return (
            f"demo: {self.done}/{self.tasks} done, {self.remaining} back in the queue, {self.dead_lettered} in "
            f"the DLQ, {self.lost} lost; {self.workers} workers, {self.seconds:.0f} s"
        )


@dataclass
class LocalPool:
    """One pool of the local run: its queues, its workers and its scaler numbers."""

    spec: PoolSpec
    queues: QueuePair
    max_workers: int
    # 0: sized to target_wait_seconds from the run times its workers report (policy.workers_for_target).
    messages_per_worker: int
    target_wait_seconds: int = 90
    sent: int = 0
    workers: list[LocalWorker] = field(default_factory=list)
    # The ids of the tasks sent to this pool (the filler's --ids-file).
    task_ids: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec.name

    def running_workers(self) -> list[LocalWorker]:
        return [worker for worker in self.workers if worker.running]

    def done_ids(self, succeeded: set[str] | None = None) -> set[str]:
        """The pool's finished tasks: those whose result says SUCCESS when the stack stores results
        (``succeeded``), else those its workers logged as succeeded."""
        if succeeded is not None:
            return self.task_ids & succeeded
        return set().union(*(worker.done_ids for worker in self.workers)) if self.workers else set()

    def image_environment(self) -> dict[str, str]:
        """What the pool's own image sets: its directory on the path and its task modules."""
        if not self.spec.image:
            return {}
        directory = (REPO_ROOT / self.spec.image).resolve()
        env = {"PYTHONPATH": str(directory)}
        dockerfile = (directory / "Dockerfile").read_text()
        if match := IMAGE_TASK_MODULES.search(dockerfile):
            env[contract.TASK_MODULES] = match[1]
        return env


class LocalRun:
    """Plays AWS Batch and the scaler against one moto server; owns every process it starts."""

    def __init__(
        self,
        *,
        server: motoserver.MotoServer,
        spec: StackSpec,
        work_dir: Path,
        max_workers: dict[str, int],
        idle_seconds: int,
        poll_seconds: int,
        messages_per_worker: int | None = None,
        scale_interval: float = 1.0,
        run_file: Path = runfile.DEFAULT_PATH,
        task_module: "TaskModule | None" = None,
        schedules: dict[str, ScheduleProps] | None = None,
    ) -> None:
        self.server = server
        self.spec = spec
        self.work_dir = work_dir
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.scale_interval = scale_interval
        self.marker = uuid.uuid4().hex
        self.sqs = server.client("sqs", config=Config(retries={"mode": "standard", "max_attempts": 3}))
        self.pools: dict[str, LocalPool] = {
            name: LocalPool(
                spec=pool,
                queues=create_queues(self.sqs, f"batch-celery-demo-{self.marker[:8]}-{name}", pool.queue),
                max_workers=max_workers.get(name, 1),
                messages_per_worker=messages_per_worker or pool.messages_per_worker or 0,
                target_wait_seconds=pool.target_wait_seconds or 90,
            )
            for name, pool in spec.pools.items()
        }
        # The stack's result table, on moto's DynamoDB: workers write, the demo reads at the end.
        self.result_table: str | None = None
        if spec.results:
            self.dynamodb = server.client("dynamodb")
            self.result_table = create_result_table(self.dynamodb, f"batch-celery-demo-{self.marker[:8]}-results")
        self.decisions: dict[str, dict] = {}
        # The last (wanted, submitted) told per pool: a decision is told when it changes.
        self._told: dict[str, tuple[int, int]] = {}
        self.run_file = run_file
        self.task_module = task_module
        # Schedules fired once with the first burst, as EventBridge Scheduler fires them at their times.
        self.schedules = dict(schedules or {})
        self.schedule_fires: dict[str, dict] = {}
        # Told each scaler decision that changes, each worker start and exit, and each burst.
        self.on_event: Callable[[str], None] = lambda line: None
        # What the run is doing, for the live view's title.
        self.phase = "starting"
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the run began: the one clock of the table, the events and the summary."""
        return time.monotonic() - self.started

    def event(self, text: str) -> None:
        self.on_event(f"[{self.elapsed():3.0f}s] {text}")

    @property
    def workers(self) -> list[LocalWorker]:
        return [worker for pool in self.pools.values() for worker in pool.workers]

    def routes_json(self) -> str:
        """The stack's routing (the pools' task patterns) with this run's local queues."""
        return json.dumps(routing.routes_document(
            default_pool=next(iter(self.pools)),
            region=self.server.region,
            pools={name: routing.PoolRoute(pool.queues.name, pool.queues.url, tuple(pool.spec.tasks))
                   for name, pool in self.pools.items()},
        ))

    # -- environment -------------------------------------------------------------------------

    def env(self, pool: LocalPool) -> dict[str, str]:
        env = dict(os.environ)
        # Credentials or endpoints of a real account must never leak into the local run.
        for name in [n for n in env if n.startswith("AWS_")]:
            del env[name]
        env.update(self.server.client_env())
        env.update(pool.spec.worker_environment)
        env.update(pool.queues.worker_env())
        if pool.spec.on_lambda:
            env[contract.DEAD_LETTER_QUEUE_URL] = pool.queues.dlq_url
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(pool.image_environment())
        if self.task_module:
            env.update(self.task_module.environment(env))
        env.update(
            {
                contract.IDLE_SECONDS: str(self.idle_seconds),
                contract.POLL_SECONDS: str(self.poll_seconds),
                contract.ROUTES: self.routes_json(),
                **({contract.RESULT_TABLE: self.result_table} if self.result_table else {}),
                "PYTHON": sys.executable,
                MARKER_VARIABLE: self.marker,
            }
        )
        return env

    # -- filling -----------------------------------------------------------------------------

    def fill(self, send: Send) -> str:
        """Send a burst's tasks with the real filler; the routes choose the queue. Returns the pool."""
        pool_name = routing.pool_for(routing.parse_routes(self.routes_json()), send.task)
        default = next(iter(self.pools.values()))
        ids_file = self.work_dir / f"sent-{pool_name}.txt"
        ids_file.unlink(missing_ok=True)
        result = subprocess.run(
            [sys.executable, str(FILLER), "--num-messages", str(send.count), "--task", send.task,
             "--kwargs", json.dumps(send.kwargs), "--args", json.dumps(send.args), "--quiet",
             "--ids-file", str(ids_file)],
            cwd=CONTAINER_DIR,
            env=self.env(default),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            raise DemoError(f"fill-batch-queue.py failed: {lines[-1] if lines else result.returncode}")
        self.pools[pool_name].sent += send.count
        self.pools[pool_name].task_ids.update(ids_file.read_text().split())
        return pool_name

    def send_burst(self, number: int, bursts: int, sends: Sequence[Send]) -> None:
        self.phase = f"burst {number} of {bursts}"
        for send in sends:
            if send.count:
                pool = self.fill(send)
                self.event(f"burst {number} of {bursts}: sent {send.describe()} to pool {pool}")
        if number == 1:
            for name in self.schedules:
                self.fire_schedule(name)

    def fire_schedule(self, name: str) -> dict:
        """What EventBridge Scheduler does at a schedule's time, played here: hand the schedule
        sender's real message builder the fire's input (the task and its routed pool's queue, the
        scheduled time) and let it send the Celery message to moto's SQS."""
        schedule = self.schedules[name]
        pool = self.pools[routing.pool_for(routing.parse_routes(self.routes_json()), schedule.task)]
        scheduled_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = schedule_sender.fire(self.sqs, {
            "schedule": name, "task": schedule.task, "args": list(schedule.args), "kwargs": dict(schedule.kwargs),
            "queue": pool.queues.name, "queue_url": pool.queues.url, "scheduled_time": scheduled_time,
            "execution_id": f"local-{uuid.uuid4().hex[:16]}",
        })
        pool.sent += 1
        pool.task_ids.add(record["task_id"])
        count = (self.schedule_fires.get(name) or {}).get("count", 0) + 1
        self.schedule_fires[name] = {**record, "time": time.time(), "count": count}
        self.event(f"schedule {name} fired (EventBridge Scheduler's stand-in): "
                   f"{schedule.task}[{record['task_id'][:8]}] to pool {pool.name}")
        return record

    # -- the scaler and Batch, played locally ------------------------------------------------

    def launch_worker(self, pool: LocalPool) -> LocalWorker:
        index = len(pool.workers) + 1
        run_dir = self.work_dir / f"{pool.name}-worker-{index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        env = self.env(pool)
        env[contract.RUN_DIR] = str(run_dir)
        # A Lambda pool: the stand-in of its event source mapping, with the handler in-process.
        command = ([sys.executable, "-m", STANDIN_MODULE, "--idle-seconds", str(self.idle_seconds)]
                   if pool.spec.on_lambda else ["bash", str(WORKER_SCRIPT)])
        process = subprocess.Popen(
            command,
            cwd=CONTAINER_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own session, as a Batch job has its own container: a Ctrl-C reaches the demo,
            # which then stops each worker the way Batch does (TERM, then wait).
            start_new_session=True,
        )
        worker = LocalWorker(index, pool.name, process, run_dir, self.work_dir / f"{pool.name}-worker-{index}.log")
        self.event(f"Lambda pool {pool.name}: event source mapping stand-in {pool.name}-{index} started (the "
                   "function's handler, in-process)" if pool.spec.on_lambda else f"worker {pool.name}-{index} started")
        worker.start_reading()
        pool.workers.append(worker)
        return worker

    def running_workers(self) -> list[LocalWorker]:
        return [worker for worker in self.workers if worker.running]

    def scale_once(self) -> dict[str, tuple[int, int, int]]:
        """One decision per pool, with the scaler's policy and the pool's own numbers."""
        counts = {}
        for pool in self.pools.values():
            visible, in_flight, delayed = message_counts(self.sqs, pool.queues.url)
            if pool.spec.on_lambda:
                # No scaler: the mapping takes the messages (in AWS up to max_workers at once).
                if (visible or delayed) and not pool.running_workers():
                    self.launch_worker(pool)
                counts[pool.name] = (visible, in_flight, delayed)
                continue
            numbers = dict(
                visible=visible,
                in_flight=in_flight,
                delayed=delayed,
                active_workers=len(pool.running_workers()),
                messages_per_worker=pool.messages_per_worker,
                max_workers=pool.max_workers,
                tasks_per_worker=pool.spec.tasks_per_worker,
            )
            why = ""
            if pool.messages_per_worker:
                submit = workers_to_submit(**numbers)
                wanted = workers_needed(**numbers)
                uncapped = workers_needed(**{**numbers, "max_workers": UNCAPPED})
            else:
                # The stand-in for GetMetricData: the mean run_seconds of the task lines the pool's
                # workers wrote; a local worker polls about LOCAL_START_SECONDS after its launch.
                runs = [m["run_seconds"] for w in pool.workers for m in list(w.metrics) if "run_seconds" in m]
                task_seconds = sum(runs) / len(runs) if runs else None
                target = dict(visible=visible, in_flight=in_flight, delayed=delayed,
                              active_workers=numbers["active_workers"], target_wait_seconds=pool.target_wait_seconds,
                              start_seconds=LOCAL_START_SECONDS, task_seconds=task_seconds,
                              tasks_per_worker=pool.spec.tasks_per_worker)
                sizing = workers_for_target(max_workers=pool.max_workers, **target)
                wanted = sizing.wanted
                submit = max(0, wanted - numbers["active_workers"])
                uncapped = workers_for_target(max_workers=UNCAPPED, **target).wanted
                why = (f"; run time unknown: a worker per waiting task" if task_seconds is None else
                       f"; run time {task_seconds:.1f} s (mean of {len(runs)}): {sizing.per_new_worker} per new "
                       f"worker within {pool.target_wait_seconds} s, {sizing.free_up} by busy or starting ones")
            if submit or self._told.get(pool.name, (0, 0)) != (wanted, submit):
                self._told[pool.name] = (wanted, submit)
                wants = f"{uncapped} (cap {pool.max_workers})" if uncapped > wanted else str(wanted)
                self.event(
                    f"scaler {pool.name}: {visible} waiting, {in_flight} in flight, "
                    f"{numbers['active_workers']} running; wants {wants}, starts {submit}{why if visible + delayed else ''}"
                )
            for _ in range(submit):
                self.launch_worker(pool)
            counts[pool.name] = (visible, in_flight, delayed)
            # The record the scaler would log (handler.py), for `status --local`.
            self.decisions[pool.name] = {
                "scaler": "batch-celery", "pool": pool.name, "outcome": "ok", "visible": visible,
                "in_flight": in_flight, "delayed": delayed, "active": numbers["active_workers"],
                "wanted": wanted, "submitted": submit, "time": time.time(),
            }
        return counts

    def report_exits(self) -> None:
        """One event per task run that failed and per worker that exited since the last tick: the
        failure's reason (its exception's last line), the exit's status, tasks and reason."""
        for worker in self.workers:
            self.report_failures(worker)
        for worker in self.workers:
            if worker.reported or worker.running:
                continue
            worker.reported = True
            worker.finish_reading(timeout=1.0)
            self.report_failures(worker)  # a failure written just before it left
            tasks = len(worker.metrics) or len(worker.done_ids)
            self.event(
                f"worker {worker.pool}-{worker.index} left after {time.monotonic() - worker.started:.0f} s, "
                f"{tasks} task{'s' if tasks != 1 else ''}, exit {worker.process.returncode}: "
                f"{worker.reason or 'no reason logged'}"
            )

    def report_failures(self, worker: LocalWorker) -> None:
        """One event per failed task run the worker wrote since the last one told: the task, its
        id and the reason its metrics line carries (the exception's last line)."""
        failures = worker.failures()
        for failure in failures[worker.failures_told:]:
            self.event(f"task {failure.get('task')}[{str(failure.get('task_id') or '')[:8]}] failed on worker "
                       f"{worker.pool}-{worker.index}: {failure.get('reason') or 'no reason given'}")
        worker.failures_told = len(failures)

    def outputs(self) -> dict[str, str]:
        """The stack's outputs as they would read for this run (the queues and table on moto)."""
        outputs = {"Routes": self.routes_json()}
        for name, pool in self.pools.items():
            p = f"Pool{pascal(name)}"
            outputs.update({f"{p}QueueName": pool.queues.name, f"{p}QueueUrl": pool.queues.url,
                            f"{p}DeadLetterQueueUrl": pool.queues.dlq_url})
        if self.result_table:
            outputs["ResultTableName"] = self.result_table
        if self.schedules:
            outputs["Schedules"] = json.dumps({
                name: {"task": s.task, "pool": routing.pool_for(routing.parse_routes(self.routes_json()), s.task),
                       "expression": s.expression, "timezone": s.timezone}
                for name, s in self.schedules.items()})
        return outputs

    def write_run_file(self) -> None:
        """What `python -m batch_celery status --local` reads; worker processes stand for jobs."""
        workers = {
            name: {"RUNNING": sum(w.running for w in pool.workers),
                   "SUCCEEDED": sum(w.process.returncode == 0 for w in pool.workers),
                   "FAILED": sum(w.process.returncode not in (None, 0) for w in pool.workers)}
            for name, pool in self.pools.items()
        }
        # Each pool's last failed task run, with its reason, for status's "last failure" line.
        failures = {}
        for name, pool in self.pools.items():
            runs = [m for worker in pool.workers for m in worker.failures()]
            if runs:
                last = max(runs, key=lambda m: m.get("_aws", {}).get("Timestamp", 0))
                failures[name] = {"task": last.get("task"), "task_id": last.get("task_id"),
                                  "reason": last.get("reason"), "count": len(runs),
                                  "time": last.get("_aws", {}).get("Timestamp", 0) / 1000}
        runfile.write(self.run_file, endpoint=self.server.endpoint, region=self.server.region,
                      outputs=self.outputs(), workers=workers, decisions=self.decisions, failures=failures,
                      **({"schedule_fires": self.schedule_fires} if self.schedules else {}))

    def _results(self):
        """(task id, Celery's result document) of every result in the result table."""
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.result_table):
            for item in page["Items"]:
                if match := RESULT_KEY.search(item["id"]["S"]):
                    yield match[1], json.loads(item["result"]["B"])  # the workers' result_serializer is json

    def succeeded_ids(self) -> set[str] | None:
        """Every task whose result in the result table says SUCCESS: the record of completion no
        signal can cut (a log copy can). None when the stack stores no results."""
        if not self.result_table:
            return None
        return {task_id for task_id, meta in self._results() if meta.get("status") == "SUCCESS"}

    def stored_results(self) -> tuple[dict[str, int], str | None] | None:
        """What the result table holds: Celery state -> count, and one successful result to show."""
        if not self.result_table:
            return None
        counts: dict[str, int] = {}
        sample = None
        for _, meta in self._results():
            counts[meta["status"]] = counts.get(meta["status"], 0) + 1
            if sample is None and meta["status"] == "SUCCESS":
                sample = repr(meta["result"])
        return counts, sample

    def dead_lettered(self, pool: LocalPool | None = None) -> int:
        pools = [pool] if pool else list(self.pools.values())
        return sum(total_messages(self.sqs, p.queues.dlq_url) for p in pools)

    def snapshots(self, counts: dict[str, tuple[int, int, int]]) -> list[Snapshot]:
        elapsed = self.elapsed()
        succeeded = self.succeeded_ids()
        return [
            Snapshot(
                pool=name,
                sent=pool.sent,
                cap=pool.max_workers,
                elapsed=elapsed,
                visible=counts[name][0],
                in_flight=counts[name][1],
                delayed=counts[name][2],
                done=len(pool.done_ids(succeeded)),
                dead_lettered=self.dead_lettered(pool),
                running=len(pool.running_workers()),
                launched=len(pool.workers),
                phase=self.phase,
            )
            for name, pool in self.pools.items()
        ]

    def run(self, *, bursts: Sequence[Sequence[Send]], timeout: float,
            on_tick: Callable[[list[Snapshot]], None]) -> None:
        """Send the first burst, scale until every queue is empty and every worker has left by
        itself, then send the next burst, and so on: the pause between bursts lasts exactly until
        the last worker has gone, so scale-in is seen before the next scale-up."""
        deadline = time.monotonic() + timeout
        pending = list(bursts)
        number = 0
        settled = True
        while True:
            if pending and settled:
                if number:
                    self.event("every worker has left; the pause is over")
                number += 1
                self.send_burst(number, len(bursts), pending.pop(0))
            counts = self.scale_once()
            self.report_exits()
            self.write_run_file()
            if not sum(visible + delayed for visible, _, delayed in counts.values()):
                self.phase = (f"pause: burst {number + 1} once every worker has left" if pending
                              else "queues empty: each worker leaves when idle")
            on_tick(self.snapshots(counts))
            settled = sum(map(sum, counts.values())) == 0 and not self.running_workers()
            if settled:
                # A worker that left after this tick's report is told before what comes next
                # (the next burst, or the summary).
                self.report_exits()
            if settled and not pending:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the run did not finish within {timeout:.0f} s (see the worker logs in {self.work_dir})")
            time.sleep(self.scale_interval)

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, grace: float) -> None:
        """Stop every worker as Batch stops a job: TERM, wait, then KILL what is left."""
        # Batch signals the container's first process (the lifecycle script), nothing else: the
        # script stops its worker and lets it finish what it runs, and its log copy ends last.
        for worker in self.running_workers():
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in self.workers:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                worker.process.wait(remaining)
            except subprocess.TimeoutExpired:
                _signal_group(worker.process.pid, signal.SIGKILL)
                worker.process.wait(5)
            pid = worker.worker_pid()
            if pid:
                _signal_group(pid, signal.SIGKILL)
            worker.finish_reading()
        reap_marked(self.marker)
        runfile.remove(self.run_file)  # the run is over: `status --local` says so


def _percentile(ordered: list[float], percent: int) -> float:
    """The nearest-rank percentile of sorted values (CloudWatch's pNN over one period is close)."""
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (those this run started, and their children)."""
    pids = []
    for process in psutil.process_iter():
        try:
            if (process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE
                    and process.environ().get(MARKER_VARIABLE) == marker):
                pids.append(process.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return pids


def reap_marked(marker: str, timeout: float = 5.0) -> None:
    """KILL anything this run started that is still there (a last line of defence against orphans)."""
    deadline = time.monotonic() + timeout
    while (pids := marked_pids(marker)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


# -- presentation ----------------------------------------------------------------------------


class Progress:
    """Live view on a terminal (rich), one line per pool every few seconds elsewhere (CI, pipes)."""

    def __init__(self, live: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.live_mode = self.console.is_terminal if live is None else live
        self._live = None
        self._last_plain = -1e9
        self._last_done = -1

    def __enter__(self) -> "Progress":
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self._render([]), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def _render(self, snaps: list[Snapshot]):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        title = "batch-celery local run"
        if snaps:
            title += f", {snaps[0].elapsed:.0f} s: {snaps[0].phase}"
        table = Table(title=title, caption="workers: running/cap; started: so far", show_header=True,
                      expand=False)
        for column in ("pool", "waiting", "in flight", "delayed", "done", "DLQ", "workers", "started"):
            table.add_column(column, justify="left" if column == "pool" else "right")
        for snap in snaps:
            table.add_row(
                snap.pool, str(snap.visible), str(snap.in_flight), str(snap.delayed), f"{snap.done}/{snap.sent}",
                str(snap.dead_lettered), f"{snap.running}/{snap.cap}", str(snap.launched),
            )
        grid = Table.grid()
        grid.add_row(table)
        total = sum(snap.sent for snap in snaps)
        grid.add_row(ProgressBar(total=max(1, total), completed=sum(snap.done for snap in snaps), width=60))
        return grid

    def tick(self, snaps: list[Snapshot]) -> None:
        if self._live:
            self._live.update(self._render(snaps))
            return
        elapsed, done = snaps[0].elapsed, sum(snap.done for snap in snaps)
        finished = done == sum(snap.sent for snap in snaps) != self._last_done
        if elapsed - self._last_plain >= 5 or finished:
            self._last_plain, self._last_done = elapsed, done
            for snap in snaps:
                delayed = f", {snap.delayed} delayed" if snap.delayed else ""
                self.say(
                    f"[{snap.elapsed:3.0f}s] {snap.pool}: {snap.visible} waiting, {snap.in_flight} in flight"
                    f"{delayed}, done {snap.done}/{snap.sent}, DLQ {snap.dead_lettered}, workers "
                    f"{snap.running}/{snap.cap}"
                )

    def say(self, text: str, wrap: bool = True) -> None:
        """One message; a line longer than the width wraps under an indent (events: under the text)."""
        if not wrap:
            self.console.print(text, soft_wrap=True, markup=False)
            return
        indent = EVENT_INDENT if text.startswith("[") else "  "
        lines = textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False,
                              break_long_words=False) or [""]
        self.console.print("\n".join(lines), soft_wrap=True, markup=False)

    def working(self, text: str):
        """A step that takes a while: a spinner with the seconds on a terminal, a line before and
        after elsewhere. Use as a context manager."""
        return _Working(self, text)


class _Working:
    def __init__(self, progress: Progress, text: str) -> None:
        self.progress, self.text = progress, text
        self._status = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_Working":
        self.started = time.monotonic()
        if self.progress.live_mode:
            self._status = self.progress.console.status(self.text)
            self._status.__enter__()

            def count() -> None:
                while not self._stop.wait(0.5):
                    self._status.update(f"{self.text} {time.monotonic() - self.started:.0f} s")

            self._thread = threading.Thread(target=count, daemon=True)
            self._thread.start()
        else:
            self.progress.say(f"{self.text} ...")
        return self

    def __exit__(self, kind, *rest) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._status:
            self._status.__exit__(kind, *rest)
        if kind is None:
            self.progress.say(f"{self.text}: done in {time.monotonic() - self.started:.0f} s")


# -- command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; allowed: {low}..{high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {low}..{high}")
        return value

    return parse


def _bursts(text: str) -> tuple[int, ...]:
    """A comma-separated list of task counts, one per burst (e.g. ``30,10``; ``6`` is one burst)."""
    allowed = f"allowed: up to {MAX_BURSTS} whole numbers 0..10000, comma-separated (e.g. 30,10)"
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of task counts; {allowed}") from None
    if not 1 <= len(counts) <= MAX_BURSTS or not all(0 <= count <= 10_000 for count in counts):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; {allowed}")
    return counts


def _json(kind: type, example: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON {kind.__name__}; e.g. {example}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m batch_celery_local",
        description=(
            "Run the whole batch-celery loop locally with two pools: moto server as SQS, the real "
            "filler and routing, the scaler's real policy, and the real lifecycle script as workers. "
            "Tasks come in bursts; the next burst is sent once every worker has left."
        ),
    )
    parser.add_argument("--tasks", type=_bursts, default=DEFAULT_BURSTS, metavar="N[,N...]",
                        help="tasks per burst, one count per burst, each routed to its pool by name "
                             "(the demo's own tasks: the first pool, `default` unless cdk.json names "
                             "another) [30,10]")
    parser.add_argument("--second-pool-tasks", type=_bursts, default=None, metavar="N[,N...]",
                        help=f"{SECOND_POOL_TASK[0]} tasks per burst for the {SECOND_POOL} pool the demo adds "
                             "[8,4; 0 with --task-module; 0: one pool only]")
    parser.add_argument("--lambda-pool-tasks", type=_bursts, default=None, metavar="N[,N...]",
                        help=f"{LAMBDA_POOL_TASK[0]} tasks per burst for the Lambda pool {LAMBDA_POOL} the demo adds "
                             "(its handler run in-process by a local stand-in of the event source mapping) "
                             "[6,3; 0 with --task-module; 0: no Lambda pool]")
    parser.add_argument(
        "--task", default=None,
        help="calculate_pi (about a second of CPU each), trivial, or a task of --task-module [calculate_pi]",
    )
    parser.add_argument("--task-module", default=None, metavar="FILE.py|MODULE",
                        help="your own task module (registering on celery_app's app): a .py file, or a "
                             "module importable from the current folder")
    parser.add_argument("--kwargs", type=_json(dict, '\'{"n": 4096}\''), default=None,
                        help="keyword arguments of each task, JSON [calculate_pi's terms; {}]")
    parser.add_argument("--args", type=_json(list, '\'["bucket", "key"]\''), default=[],
                        help="positional arguments of each task, JSON [[]]")
    parser.add_argument("--max-workers", type=_bounded(1, 16), default=2,
                        help="local cap on the first pool's workers at once; every other pool runs "
                             "at most 1 [2]")
    parser.add_argument(
        "--idle-seconds", type=_bounded(1, 600), default=5,
        help="a worker exits after it held no message, with nothing waiting or delayed in its "
             "pool's queue, this long [5; 60 in AWS]",
    )
    parser.add_argument("--poll-seconds", type=_bounded(1, 60), default=1, help="queue check interval of a worker [1]")
    parser.add_argument(
        "--messages-per-worker", type=_bounded(1, 10_000), default=None,
        help="size every pool by this fixed backlog per worker instead of its target wait [each pool's setting]",
    )
    parser.add_argument("--timeout", type=_bounded(10, 3600), default=600, help="give up after this many seconds [600]")
    parser.add_argument("--live", dest="live", action="store_true", default=None, help="force the live view")
    parser.add_argument("--plain", dest="live", action="store_false", help="plain progress lines (no live view)")
    parser.add_argument("--keep", "--keep-logs", dest="keep", nargs="?", const=True, type=Path, default=None,
                        metavar="DIR", help="keep the run's folder (worker logs), in DIR if given, and say where")
    parser.add_argument("--schedule", action="store_true",
                        help="also fire a schedule (rate 5 minutes) of the first burst's task once, with that "
                             "burst: the schedule sender's real message builder, standing in for EventBridge "
                             "Scheduler")
    parser.add_argument("--run-file", type=Path, default=runfile.DEFAULT_PATH,
                        help=f"where `status --local` finds the run [{runfile.DEFAULT_PATH}]")
    args = parser.parse_args(argv)
    if not any(args.tasks):
        parser.error(f"argument --tasks: {','.join(map(str, args.tasks))!r} sends nothing; allowed: at least one count above 0")
    if args.second_pool_tasks is None:
        args.second_pool_tasks = (0,) if args.task_module else DEFAULT_SECOND_POOL_BURSTS
    if args.lambda_pool_tasks is None:
        args.lambda_pool_tasks = (0,) if args.task_module else DEFAULT_LAMBDA_POOL_BURSTS
    if args.task is None and not args.task_module:
        args.task = "calculate_pi"
    if args.task is not None and not args.task_module and args.task not in TASK_CHOICES:
        parser.error(f"argument --task: {args.task!r} is not a demo task; allowed: {', '.join(TASK_CHOICES)}, "
                     "or a task of your own with --task-module")
    return args


@dataclass(frozen=True)
class TaskModule:
    """The user's own task module (``--task-module``), given to every worker as its image would:
    its folder on the path and its name in the task modules."""

    name: str
    directory: Path

    @classmethod
    def parse(cls, text: str) -> "TaskModule":
        allowed = "allowed: a .py file, or a module importable from the current folder (e.g. mytasks, myapp.tasks)"
        if text.endswith(".py"):
            path = Path(text)
            if not path.is_file():
                raise UsageError(f"--task-module {text!r}: no such file; {allowed}")
            return cls(path.stem, path.resolve().parent)
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", text):
            raise UsageError(f"--task-module {text!r} is not a module name; {allowed}")
        return cls(text, Path.cwd().resolve())

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """What a worker's environment ``env`` gains: the folder and the module, after its own."""
        paths = [p for p in (env.get("PYTHONPATH", ""), str(self.directory)) if p]
        modules = [m for m in (env.get(contract.TASK_MODULES, ""), self.name) if m]
        return {"PYTHONPATH": os.pathsep.join(paths), contract.TASK_MODULES: ",".join(modules)}

    def check_environment(self) -> dict[str, str]:
        """A worker environment good enough to import the app and the module (no queue is
        touched: importing connects to nothing), so a bad module fails before the synth."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({contract.QUEUE_NAME: "check", contract.QUEUE_URL: "http://127.0.0.1:9/000000000000/check",
                    contract.REGION: "us-east-1", "PYTHON": sys.executable})
        env.update(self.environment(env))
        return env

    def tasks(self, env: dict[str, str] | None = None) -> list[str]:
        """The task names the module registers on the worker's app, imported as a worker does."""
        env = env if env is not None else self.check_environment()
        code = (
            "import importlib, json, celery_app\n"
            "before = set(celery_app.app.tasks)\n"
            f"importlib.import_module({self.name!r})\n"
            "print(json.dumps(sorted(set(celery_app.app.tasks) - before)))\n"
        )
        result = subprocess.run([sys.executable, "-c", code], cwd=CONTAINER_DIR, env=env, capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise UsageError(f"the task module {self.name} cannot be imported by a worker: "
                            f"{lines[-1] if lines else 'exit ' + str(result.returncode)}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def choose_task(args: argparse.Namespace, module: TaskModule | None, registered: list[str] | None,
                ) -> tuple[str, dict, str | None]:
    """(task name, kwargs, label) from ``--task`` and ``--kwargs``; ``registered``: the task module's
    own tasks (None without ``--task-module``)."""
    if args.task in TASK_CHOICES:
        name, kwargs = TASK_CHOICES[args.task]
        label = args.task if args.task != name.rsplit(".", 1)[-1] else None
        return name, args.kwargs if args.kwargs is not None else kwargs, label
    assert module is not None and registered is not None
    module = module.name
    if not registered:
        raise UsageError(f"the task module {module} registers no task on celery_app's app; "
                        "allowed: a module with `from celery_app import app` and @app.task functions")
    if args.task is None:
        if len(registered) > 1:
            raise UsageError(f"the task module {module} registers {len(registered)} tasks; choose one with "
                            f"--task: {', '.join(registered)}")
        return registered[0], args.kwargs or {}, None
    if args.task not in registered:
        raise UsageError(f"task {args.task!r} is not registered by {module}; its tasks: {', '.join(registered)}")
    return args.task, args.kwargs or {}, None


def _demo_schedule(**settings) -> "ScheduleProps":
    """The schedule ``--schedule`` fires, validated as synth validates a schedule of cdk.json."""
    from batch_celery.props import ScheduleProps

    return ScheduleProps(**settings)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def demo_overrides(context: dict, second_pool: bool, lambda_pool: bool = False) -> tuple[dict, str]:
    """The context overrides the demo synthesizes with, and where its pools come from.

    With one pool configured (or none: the default pool), the demo adds the worked GPU pool (and,
    with ``lambda_pool``, a Lambda pool of light tasks) on top of the project's own settings; with
    two or more it runs the project's pools as they are.
    """
    block = context.get(CONTEXT_KEY) or {}
    if isinstance(block, str):
        block = json.loads(block)
    pools = dict(block.get("pools") or {"default": {}})
    if len(pools) > 1 or not (second_pool or lambda_pool):
        return {}, "the pools of cdk.json"
    first = next(iter(pools))
    added = []
    for wanted, name, settings, what in ((second_pool, SECOND_POOL, SECOND_POOL_SETTINGS, "examples/gpu-pool"),
                                         (lambda_pool, LAMBDA_POOL, LAMBDA_POOL_SETTINGS, 'compute "lambda"')):
        if not wanted:
            continue
        if first == name:
            raise DemoError(f"the project's one pool is called {name!r}, the name of a pool the demo adds")
        pools[name] = settings
        added.append(f"pool {name} added by the demo ({what})")
    return ({CONTEXT_KEY: {**block, "pools": pools}}, f"pool {first} from cdk.json, " + ", ".join(added))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A TERM (from a CI runner or `timeout`) cleans up exactly like Ctrl-C. And Ctrl-C always does:
    # a process started in the background by a non-interactive shell inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    work_dir = args.keep if isinstance(args.keep, Path) else Path(tempfile.mkdtemp(prefix="batch-celery-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.live)
    started = time.monotonic()
    server: motoserver.MotoServer | None = None
    run: LocalRun | None = None
    interrupted = False
    failure: Exception | None = None
    tasks = sum(args.tasks)
    try:
        module = TaskModule.parse(args.task_module) if args.task_module else None
        # Your module and task are checked first: a wrong name costs a second, not a synth.
        task_name, task_kwargs, label = choose_task(args, module, module.tasks() if module else None)
        context = project_context()
        second_pool = any(args.second_pool_tasks)
        overrides, origin = demo_overrides(context, second_pool=second_pool, lambda_pool=any(args.lambda_pool_tasks))
        settings = Settings.from_context({**context, **overrides}.get(CONTEXT_KEY))
        with progress.working("synthesizing the stack for each pool's queue and worker settings"):
            spec = read_spec(synthesize(work_dir / "cdk.out", overrides), settings)
        progress.say(f"pools: {origin}")
        server = motoserver.start()
        progress.say(f"moto server on {server.endpoint}; in another terminal: python -m batch_celery status --local")
        names = list(spec.pools)
        run = LocalRun(
            server=server,
            spec=spec,
            work_dir=work_dir,
            max_workers={name: args.max_workers if name == names[0] else 1 for name in names},
            idle_seconds=args.idle_seconds,
            poll_seconds=args.poll_seconds,
            messages_per_worker=args.messages_per_worker,
            run_file=args.run_file,
            task_module=module,
            schedules=({DEMO_SCHEDULE: _demo_schedule(task=task_name, args=tuple(args.args), kwargs=task_kwargs,
                                                      rate="5 minutes")} if args.schedule else None),
        )
        run.on_event = progress.say
        for pool in run.pools.values():
            if pool.spec.on_lambda:
                progress.say(
                    f"pool {pool.name}: Lambda (compute \"lambda\"), tasks {', '.join(pool.spec.tasks) or 'all others'}; "
                    f"visibility {pool.spec.queue.visibility_timeout} s, DLQ after {pool.spec.queue.max_receive_count} "
                    f"receives; its SQS event source mapping takes the messages (at most {pool.spec.max_workers} at once "
                    "in AWS). Here a local stand-in plays the mapping and runs the function's handler in its own "
                    "process, one message at a time"
                )
                continue
            progress.say(
                f"pool {pool.name}: tasks {', '.join(pool.spec.tasks) or 'all others'}; visibility "
                f"{pool.spec.queue.visibility_timeout} s, DLQ after {pool.spec.queue.max_receive_count} receives; "
                + (f"scaler: 1 worker per {pool.messages_per_worker} messages, at most {pool.max_workers} here"
                   if pool.messages_per_worker else
                   f"scaler: every task started within {pool.target_wait_seconds} s, sized from the run times its "
                   f"workers report, at most {pool.max_workers} here")
            )
        bursts = []
        for number in range(max(len(args.tasks), len(args.second_pool_tasks), len(args.lambda_pool_tasks))):
            burst = [Send(_at(args.tasks, number), task_name, task_kwargs, args.args, label)]
            if SECOND_POOL in run.pools:
                burst.append(Send(_at(args.second_pool_tasks, number), *SECOND_POOL_TASK))
            if LAMBDA_POOL in run.pools and run.pools[LAMBDA_POOL].spec.on_lambda:
                burst.append(Send(_at(args.lambda_pool_tasks, number), *LAMBDA_POOL_TASK))
            bursts.append(burst)
        tasks = sum(send.count for burst in bursts for send in burst) + len(run.schedules)
        progress.say(
            f"{len(bursts)} burst{'s' if len(bursts) != 1 else ''} of tasks; each next one once every worker "
            "has left. Events: each scaler decision that changes (messages waiting and in flight, workers "
            "running; workers it wants and starts), each worker's start, and its exit with the reason."
        )
        with progress:
            run.run(bursts=bursts, timeout=args.timeout, on_tick=progress.tick)
    except KeyboardInterrupt:
        interrupted = True
        progress.say("interrupted: stopping every worker (TERM, as Batch does) and the server")
    except (DemoError, TemplateError, SettingsError, RuntimeError) as error:
        interrupted = True
        progress.say(f"error: {error}", wrap=False)  # one line, whatever its length
        failure = error
    finally:
        # Workers first (a warm shutdown still needs the queue), then what they leave, then the server.
        if run:
            run.stop(grace=15)
        outcome = _outcome(run, tasks, started, interrupted)
        if server:
            server.stop()
    if run is None and failure is not None:
        # Nothing was started or sent: the error line is all there is to say.
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        return 2 if isinstance(failure, UsageError) else 1

    for worker in run.workers if run else []:
        if worker.process.returncode not in LEFT_BY_ITSELF:
            progress.say(f"worker {worker.pool}-{worker.index} exited with {worker.process.returncode}; log: {worker.log_path}")
    if outcome.dead_lettered:
        progress.say(f"{outcome.dead_lettered} task(s) failed and wait in the dead-letter queues")
    # The folder stays when asked for, or when something went wrong (the lines above point into it).
    if args.keep or not outcome.ok:
        progress.say(f"the run's folder (worker logs, template): {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    for line in outcome.pool_lines():
        progress.say(line)
    if outcome.unsent_line():
        progress.say(outcome.unsent_line())
    progress.say(outcome.summary_line(), wrap=False)  # one line: scripts read it
    return 0 if outcome.ok else 1


def _at(counts: Sequence[int], index: int) -> int:
    return counts[index] if index < len(counts) else 0


def _outcome(run: LocalRun | None, tasks: int, started: float, interrupted: bool) -> Outcome:
    if run is None:  # stopped before anything was sent
        return Outcome(0, 0, 0, 0, 0, [], time.monotonic() - started, interrupted, unsent=tasks)
    results = succeeded = None
    try:
        remaining = sum(total_messages(run.sqs, pool.queues.url) for pool in run.pools.values())
        dead_lettered = run.dead_lettered()
        results = run.stored_results()
        succeeded = run.succeeded_ids()
    except Exception as error:  # the server itself failed: count nothing as safe
        print(f"could not read the queues at the end: {error}", file=sys.stderr)
        remaining, dead_lettered = 0, 0
    done = {name: pool.done_ids(succeeded) for name, pool in run.pools.items()}
    sent = sum(pool.sent for pool in run.pools.values())
    return Outcome(
        tasks=sent,
        unsent=tasks - sent,
        done=sum(map(len, done.values())),
        dead_lettered=dead_lettered,
        remaining=remaining,
        workers=len(run.workers),
        worker_exit_codes=[worker.process.returncode for worker in run.workers],
        seconds=run.elapsed(),
        interrupted=interrupted,
        pools=[(name, pool.sent, len(done[name]), len(pool.workers)) for name, pool in run.pools.items()],
        metrics={name: [m for worker in pool.workers for m in worker.metrics] for name, pool in run.pools.items()},
        results=results[0] if results else None,
        sample_result=results[1] if results else None,
    )


if __name__ == "__main__":
    sys.exit(main())

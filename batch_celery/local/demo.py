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

Run it with ``make demo`` or ``python -m batch_celery.local --help``.
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
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import psutil
from botocore.config import Config

from batch_celery import CONTAINER_DIR
from batch_celery.local import REPO_ROOT, motoserver, runfile
from batch_celery.local.queues import QueuePair, create_result_table, message_counts, total_messages
from batch_celery.local.template import (
    PoolSpec, StackSpec, TemplateError, create_queues, project_context, read_spec, synthesize,
)
from batch_celery.props import pascal
from batch_celery.scaler.policy import workers_needed, workers_to_submit
from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError
from batch_celery_container import contract, routing

WORKER_SCRIPT = CONTAINER_DIR / "run_celery_worker.sh"
FILLER = CONTAINER_DIR / "fill-batch-queue.py"
# Marks every process the demo starts, so none can outlive it unnoticed (see reap_marked).
MARKER_VARIABLE = "BATCH_CELERY_LOCAL_RUN"
# Celery's own line for a finished task: "Task NAME[ID] succeeded in 0.25s: VALUE".
SUCCEEDED = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] succeeded in")
# What the lifecycle script says when it decides to stop its worker (run_celery_worker.sh).
STOP_REASONS = ("idle for", "received SIG", "unreadable for", "no state from the worker", "exited on its own")
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
IMAGE_TASK_MODULES = re.compile(rf"^\s*ENV\s+{contract.TASK_MODULES}=(\S+)", re.MULTILINE)
TASK_CHOICES = {
    # ~1.3 s of pure-Python arithmetic per task on this machine's cores.
    "calculate_pi": ("batch.calculate_pi", {"terms": 10_000_000}),
    # Near-instant; for quick checks of the machinery.
    "trivial": ("batch.calculate_pi", {"terms": 1_000}),
}


class DemoError(RuntimeError):
    """Something the demo needs failed; the message is the one line shown to the user."""


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
    started: float = field(default_factory=time.monotonic)
    reported: bool = False
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            with self.log_path.open("w", encoding="utf-8") as log:
                for line in self.process.stdout:
                    log.write(line)
                    log.flush()
                    if self.reason is None and "run_celery_worker: " in line and any(
                            key in line for key in STOP_REASONS):
                        self.reason = line.split("run_celery_worker: ", 1)[1].split("; draining")[0].strip()
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
            and self.done == self.tasks
            and self.lost == 0
            and all(code == 0 for code in self.worker_exit_codes)
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

    def summary_line(self) -> str:
        return (
            f"demo: {self.done}/{self.tasks} tasks done by {self.workers} workers in {self.seconds:.0f} s; "
            f"{self.remaining} back in the queue, {self.dead_lettered} in the DLQ, {self.lost} lost"
        )


@dataclass
class LocalPool:
    """One pool of the local run: its queues, its workers and its scaler numbers."""

    spec: PoolSpec
    queues: QueuePair
    max_workers: int
    messages_per_worker: int
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
                messages_per_worker=messages_per_worker or pool.messages_per_worker or 10,
            )
            for name, pool in spec.pools.items()
        }
        # The stack's result table, on moto's DynamoDB: workers write, the demo reads at the end.
        self.result_table: str | None = None
        if spec.results:
            self.dynamodb = server.client("dynamodb")
            self.result_table = create_result_table(self.dynamodb, f"batch-celery-demo-{self.marker[:8]}-results")
        self.decisions: dict[str, dict] = {}
        self.run_file = run_file
        # Told each scaling decision that starts workers and each worker's exit, one line each.
        self.on_event: Callable[[str], None] = lambda line: None
        self.started = time.monotonic()

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
        env.update(pool.image_environment())
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

    def fill(self, count: int, task: str, kwargs: dict) -> str:
        """Send ``count`` tasks with the real filler; the routes choose the queue. Returns the pool."""
        pool_name = routing.pool_for(routing.parse_routes(self.routes_json()), task)
        default = next(iter(self.pools.values()))
        ids_file = self.work_dir / f"sent-{pool_name}.txt"
        result = subprocess.run(
            [sys.executable, str(FILLER), "--num-messages", str(count), "--task", task,
             "--kwargs", json.dumps(kwargs), "--quiet", "--ids-file", str(ids_file)],
            cwd=CONTAINER_DIR,
            env=self.env(default),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            raise DemoError(f"fill-batch-queue.py failed: {lines[-1] if lines else result.returncode}")
        self.pools[pool_name].sent += count
        self.pools[pool_name].task_ids.update(ids_file.read_text().split())
        return pool_name

    # -- the scaler and Batch, played locally ------------------------------------------------

    def launch_worker(self, pool: LocalPool) -> LocalWorker:
        index = len(pool.workers) + 1
        run_dir = self.work_dir / f"{pool.name}-worker-{index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        env = self.env(pool)
        env[contract.RUN_DIR] = str(run_dir)
        process = subprocess.Popen(
            ["bash", str(WORKER_SCRIPT)],
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
        self.on_event(f"[{time.monotonic() - self.started:5.0f} s] worker {pool.name}-{index} started")
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
            numbers = dict(
                visible=visible,
                in_flight=in_flight,
                delayed=delayed,
                active_workers=len(pool.running_workers()),
                messages_per_worker=pool.messages_per_worker,
                max_workers=pool.max_workers,
                tasks_per_worker=pool.spec.tasks_per_worker,
            )
            submit = workers_to_submit(**numbers)
            if submit:
                self.on_event(
                    f"[{time.monotonic() - self.started:5.0f} s] scaler, pool {pool.name}: {visible} waiting, "
                    f"{in_flight} in flight, {numbers['active_workers']} workers active, "
                    f"{workers_needed(**numbers)} wanted: starting {submit}"
                )
            for _ in range(submit):
                self.launch_worker(pool)
            counts[pool.name] = (visible, in_flight, delayed)
            # The record the scaler would log (handler.py), for `status --local`.
            self.decisions[pool.name] = {
                "scaler": "batch-celery", "pool": pool.name, "outcome": "ok", "visible": visible,
                "in_flight": in_flight, "delayed": delayed, "active": numbers["active_workers"],
                "wanted": workers_needed(**numbers), "submitted": submit, "time": time.time(),
            }
        return counts

    def report_exits(self) -> None:
        """One event per worker that exited since the last tick: its status, tasks and reason."""
        for worker in self.workers:
            if worker.reported or worker.running:
                continue
            worker.reported = True
            worker.finish_reading(timeout=1.0)
            tasks = len(worker.metrics) or len(worker.done_ids)
            self.on_event(
                f"[{time.monotonic() - self.started:5.0f} s] worker {worker.pool}-{worker.index} exited "
                f"{worker.process.returncode} after {time.monotonic() - worker.started:.0f} s and {tasks} "
                f"task{'s' if tasks != 1 else ''}: {worker.reason or 'no reason logged'}"
            )

    def outputs(self) -> dict[str, str]:
        """The stack's outputs as they would read for this run (the queues and table on moto)."""
        outputs = {"Routes": self.routes_json()}
        for name, pool in self.pools.items():
            p = f"Pool{pascal(name)}"
            outputs.update({f"{p}QueueName": pool.queues.name, f"{p}QueueUrl": pool.queues.url,
                            f"{p}DeadLetterQueueUrl": pool.queues.dlq_url})
        if self.result_table:
            outputs["ResultTableName"] = self.result_table
        return outputs

    def write_run_file(self) -> None:
        """What `python -m batch_celery status --local` reads; worker processes stand for jobs."""
        workers = {
            name: {"RUNNING": sum(w.running for w in pool.workers),
                   "SUCCEEDED": sum(w.process.returncode == 0 for w in pool.workers),
                   "FAILED": sum(w.process.returncode not in (None, 0) for w in pool.workers)}
            for name, pool in self.pools.items()
        }
        runfile.write(self.run_file, endpoint=self.server.endpoint, region=self.server.region,
                      outputs=self.outputs(), workers=workers, decisions=self.decisions)

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
        elapsed = time.monotonic() - self.started
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
            )
            for name, pool in self.pools.items()
        ]

    def run(self, *, timeout: float, on_tick: Callable[[list[Snapshot]], None]) -> None:
        """Scale until every queue is empty and every worker has exited by itself."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.scale_once()
            self.report_exits()
            self.write_run_file()
            on_tick(self.snapshots(counts))
            if sum(map(sum, counts.values())) == 0 and not self.running_workers():
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

        elapsed = f", {snaps[0].elapsed:.0f} s" if snaps else ""
        table = Table(title=f"batch-celery, local run on moto server{elapsed}", show_header=True, expand=False)
        for column in ("pool", "visible", "in flight", "delayed", "done", "DLQ", "workers"):
            table.add_column(column, justify="left" if column == "pool" else "right")
        for snap in snaps:
            table.add_row(
                snap.pool,
                str(snap.visible),
                str(snap.in_flight),
                str(snap.delayed),
                f"{snap.done}/{snap.sent}",
                str(snap.dead_lettered),
                f"{snap.running} running ({snap.launched} started, cap {snap.cap})",
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
                self.console.print(
                    f"[{snap.elapsed:5.0f} s] pool {snap.pool}: visible {snap.visible}, in flight "
                    f"{snap.in_flight}, delayed {snap.delayed}, done {snap.done}/{snap.sent}, DLQ "
                    f"{snap.dead_lettered}, workers running {snap.running} (started {snap.launched}, cap {snap.cap})",
                    soft_wrap=True,
                )

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m batch_celery.local",
        description=(
            "Run the whole batch-celery loop locally with two pools: moto server as SQS, the real "
            "filler and routing, the scaler's real policy, and the real lifecycle script as workers."
        ),
    )
    parser.add_argument("--tasks", type=_bounded(1, 10_000), default=40,
                        help="how many tasks to submit to the default pool [40]")
    parser.add_argument("--second-pool-tasks", type=_bounded(0, 10_000), default=12,
                        help=f"how many {SECOND_POOL_TASK[0]} tasks the added {SECOND_POOL} pool gets [12; 0: one pool only]")
    parser.add_argument(
        "--task", choices=sorted(TASK_CHOICES), default="calculate_pi",
        help="calculate_pi (about a second of CPU each) or trivial [calculate_pi]",
    )
    parser.add_argument("--max-workers", type=_bounded(1, 16), default=2,
                        help="local cap on the default pool's workers at once [2; other pools: 1]")
    parser.add_argument(
        "--idle-seconds", type=_bounded(1, 600), default=5,
        help="a worker exits after the queue was empty this long [5; 60 in AWS]",
    )
    parser.add_argument("--poll-seconds", type=_bounded(1, 60), default=1, help="queue check interval of a worker [1]")
    parser.add_argument(
        "--messages-per-worker", type=_bounded(1, 10_000), default=None,
        help="scaler target backlog per worker, every pool [each pool's setting]",
    )
    parser.add_argument("--timeout", type=_bounded(10, 3600), default=600, help="give up after this many seconds [600]")
    parser.add_argument("--live", dest="live", action="store_true", default=None, help="force the live view")
    parser.add_argument("--plain", dest="live", action="store_false", help="plain progress lines (no live view)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep the worker logs in this folder")
    return parser.parse_args(argv)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def demo_overrides(context: dict, second_pool: bool) -> tuple[dict, str]:
    """The context overrides the demo synthesizes with, and where its pools come from.

    With one pool configured (or none: the default pool), the demo adds the worked GPU pool on
    top of the project's own settings; with two or more it runs the project's pools as they are.
    """
    block = context.get(CONTEXT_KEY) or {}
    if isinstance(block, str):
        block = json.loads(block)
    pools = dict(block.get("pools") or {"default": {}})
    if len(pools) > 1 or not second_pool:
        return {}, "the pools of cdk.json"
    first = next(iter(pools))
    if first == SECOND_POOL:
        raise DemoError(f"the project's one pool is called {SECOND_POOL!r}, the name of the pool the demo adds")
    pools[SECOND_POOL] = SECOND_POOL_SETTINGS
    return ({CONTEXT_KEY: {**block, "pools": pools}},
            f"pool {first} from cdk.json, pool {SECOND_POOL} added by the demo (examples/gpu-pool)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    task_name, task_kwargs = TASK_CHOICES[args.task]
    # A TERM (from a CI runner or `timeout`) cleans up exactly like Ctrl-C. And Ctrl-C always does:
    # a process started in the background by a non-interactive shell inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    work_dir = args.keep_logs or Path(tempfile.mkdtemp(prefix="batch-celery-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.live)
    started = time.monotonic()
    server: motoserver.MotoServer | None = None
    run: LocalRun | None = None
    interrupted = False
    tasks = args.tasks
    try:
        context = project_context()
        overrides, origin = demo_overrides(context, second_pool=args.second_pool_tasks > 0)
        settings = Settings.from_context({**context, **overrides}.get(CONTEXT_KEY))
        progress.say(f"synthesizing the stack to read each pool's queue and worker settings ({origin}) ...")
        spec = read_spec(synthesize(work_dir / "cdk.out", overrides), settings)
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
        )
        run.on_event = progress.say
        for pool in run.pools.values():
            progress.say(
                f"pool {pool.name}: queue {pool.queues.name}, visibility {pool.spec.queue.visibility_timeout} s, "
                f"DLQ after {pool.spec.queue.max_receive_count} receives, tasks {list(pool.spec.tasks) or 'the rest'}; "
                f"scaler: {pool.messages_per_worker} messages per worker, at most {pool.max_workers} here"
            )
        sends = [(args.tasks, task_name, task_kwargs)]
        if args.second_pool_tasks and SECOND_POOL in run.pools:
            sends.append((args.second_pool_tasks, *SECOND_POOL_TASK))
        tasks = sum(count for count, _, _ in sends)
        for count, name, kwargs in sends:
            pool = run.fill(count, name, kwargs)
            progress.say(f"sent {count} x {name}: routed to pool {pool}")
        with progress:
            run.run(timeout=args.timeout, on_tick=progress.tick)
    except KeyboardInterrupt:
        interrupted = True
        progress.say("interrupted: stopping every worker (TERM, as Batch does) and the server")
    except (DemoError, TemplateError, SettingsError, RuntimeError) as error:
        interrupted = True
        progress.say(f"error: {error}")
    finally:
        # Workers first (a warm shutdown still needs the queue), then what they leave, then the server.
        if run:
            run.stop(grace=15)
        outcome = _outcome(run, tasks, started, interrupted)
        if server:
            server.stop()

    for worker in run.workers if run else []:
        if worker.process.returncode != 0:
            progress.say(f"worker {worker.pool}-{worker.index} exited with {worker.process.returncode}; log: {worker.log_path}")
    if outcome.dead_lettered:
        progress.say(f"{outcome.dead_lettered} task(s) failed and wait in the dead-letter queues")
    # The logs stay when asked for, or when something went wrong (the lines above point into them).
    if args.keep_logs or not outcome.ok:
        progress.say(f"worker logs in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    for line in outcome.pool_lines():
        progress.say(line)
    progress.say(outcome.summary_line())
    return 0 if outcome.ok else 1


def _outcome(run: LocalRun | None, tasks: int, started: float, interrupted: bool) -> Outcome:
    if run is None:
        return Outcome(tasks, 0, 0, tasks, 0, [], time.monotonic() - started, interrupted)
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
    return Outcome(
        tasks=tasks,
        done=sum(map(len, done.values())),
        dead_lettered=dead_lettered,
        remaining=remaining,
        workers=len(run.workers),
        worker_exit_codes=[worker.process.returncode for worker in run.workers],
        seconds=time.monotonic() - started,
        interrupted=interrupted,
        pools=[(name, pool.sent, len(done[name]), len(pool.workers)) for name, pool in run.pools.items()],
        metrics={name: [m for worker in pool.workers for m in worker.metrics] for name, pool in run.pools.items()},
        results=results[0] if results else None,
        sample_result=results[1] if results else None,
    )


if __name__ == "__main__":
    sys.exit(main())

"""The whole loop on this machine: tasks in, workers up in proportion, queue drained, workers gone.

moto server on 127.0.0.1 stands in for SQS; the queue and its DLQ get the attributes of the
synthesized stack; the real ``fill-batch-queue.py`` submits the tasks; the scaler's real policy
decides how many workers to start, and each worker is a local process of the real
``run_celery_worker.sh`` (with a shortened idle window). Batch itself is played by this module:
it launches the workers the policy asks for, up to the local cap.

Run it with ``make demo`` or ``python -m batch_celery.local --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

import boto3
from botocore.config import Config

from batch_celery.local import motoserver
from batch_celery.local.queues import QueuePair, message_counts
from batch_celery.local.template import StackSpec, TemplateError, create_queues, read_spec, synthesize
from batch_celery.scaler.policy import workers_to_submit

CONTAINER_DIR = Path(__file__).resolve().parents[2] / "batch_celery_container"
WORKER_SCRIPT = CONTAINER_DIR / "run_celery_worker.sh"
FILLER = CONTAINER_DIR / "fill-batch-queue.py"
# Marks every process the demo starts, so none can outlive it unnoticed (see reap_marked).
MARKER_VARIABLE = "BATCH_CELERY_LOCAL_RUN"
# Celery's own line for a finished task: "Task NAME[ID] succeeded in 0.25s: VALUE".
SUCCEEDED = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] succeeded in")
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
    process: subprocess.Popen
    run_dir: Path
    log_path: Path
    done_ids: set[str] = field(default_factory=set)
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            with self.log_path.open("w", encoding="utf-8") as log:
                for line in self.process.stdout:
                    log.write(line)
                    log.flush()
                    if match := SUCCEEDED.search(line):
                        self.done_ids.add(match["id"])

        self._reader = threading.Thread(target=read, name=f"worker-{self.index}-log", daemon=True)
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

    def summary_line(self) -> str:
        return (
            f"demo: {self.done}/{self.tasks} tasks done by {self.workers} workers "
            f"in {self.seconds:.0f} s, {self.lost} lost"
        )


class LocalRun:
    """Plays AWS Batch and the scaler against one moto server; owns every process it starts."""

    def __init__(
        self,
        *,
        server: motoserver.MotoServer,
        spec: StackSpec,
        work_dir: Path,
        max_workers: int,
        idle_seconds: int,
        poll_seconds: int,
        messages_per_worker: int,
        scale_interval: float = 1.0,
    ) -> None:
        self.server = server
        self.spec = spec
        self.work_dir = work_dir
        self.max_workers = max_workers
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.messages_per_worker = messages_per_worker
        self.scale_interval = scale_interval
        self.marker = uuid.uuid4().hex
        self.workers: list[LocalWorker] = []
        self.sqs = boto3.client(
            "sqs",
            endpoint_url=server.endpoint,
            region_name=server.region,
            aws_access_key_id=motoserver.ACCESS_KEY,
            aws_secret_access_key=motoserver.SECRET_KEY,
            config=Config(retries={"mode": "standard", "max_attempts": 3}),
        )
        self.queues: QueuePair = create_queues(self.sqs, f"batch-celery-demo-{self.marker[:8]}", spec.queue)
        self.started = time.monotonic()

    # -- environment -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Credentials or endpoints of a real account must never leak into the local run.
        for name in [n for n in env if n.startswith("AWS_")]:
            del env[name]
        env.update(self.server.client_env())
        env.update(self.spec.worker_environment)
        env.update(self.queues.worker_env())
        env.update(
            {
                "IDLE_SECONDS": str(self.idle_seconds),
                "POLL_SECONDS": str(self.poll_seconds),
                "PYTHON": sys.executable,
                MARKER_VARIABLE: self.marker,
            }
        )
        return env

    # -- filling -----------------------------------------------------------------------------

    def fill(self, count: int, task: str, kwargs: dict) -> None:
        result = subprocess.run(
            [sys.executable, str(FILLER), "--num-messages", str(count), "--task", task,
             "--kwargs", json.dumps(kwargs), "--quiet"],
            cwd=CONTAINER_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            raise DemoError(f"fill-batch-queue.py failed: {lines[-1] if lines else result.returncode}")

    # -- the scaler and Batch, played locally ------------------------------------------------

    def launch_worker(self) -> LocalWorker:
        index = len(self.workers) + 1
        run_dir = self.work_dir / f"worker-{index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        env["WORKER_RUN_DIR"] = str(run_dir)
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
        worker = LocalWorker(index, process, run_dir, self.work_dir / f"worker-{index}.log")
        worker.start_reading()
        self.workers.append(worker)
        return worker

    def running_workers(self) -> list[LocalWorker]:
        return [worker for worker in self.workers if worker.running]

    def scale_once(self) -> tuple[int, int, int]:
        visible, in_flight, delayed = message_counts(self.sqs, self.queues.url)
        wanted = workers_to_submit(
            visible=visible,
            in_flight=in_flight,
            delayed=delayed,
            active_workers=len(self.running_workers()),
            messages_per_worker=self.messages_per_worker,
            max_workers=self.max_workers,
        )
        for _ in range(wanted):
            self.launch_worker()
        return visible, in_flight, delayed

    def done_ids(self) -> set[str]:
        return set().union(*(worker.done_ids for worker in self.workers)) if self.workers else set()

    def dead_lettered(self) -> int:
        return sum(message_counts(self.sqs, self.queues.dlq_url))

    def snapshot(self, counts: tuple[int, int, int]) -> Snapshot:
        visible, in_flight, delayed = counts
        return Snapshot(
            elapsed=time.monotonic() - self.started,
            visible=visible,
            in_flight=in_flight,
            delayed=delayed,
            done=len(self.done_ids()),
            dead_lettered=self.dead_lettered(),
            running=len(self.running_workers()),
            launched=len(self.workers),
        )

    def run(self, *, timeout: float, on_tick: Callable[[Snapshot], None]) -> None:
        """Scale until the queue is empty and every worker has exited by itself."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.scale_once()
            on_tick(self.snapshot(counts))
            if sum(counts) == 0 and not self.running_workers():
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the run did not finish within {timeout:.0f} s (see the worker logs in {self.work_dir})")
            time.sleep(self.scale_interval)

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, grace: float) -> None:
        """Stop every worker as Batch stops a job: TERM, wait, then KILL what is left."""
        for worker in self.running_workers():
            _signal_group(worker.process.pid, signal.SIGTERM)
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
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
        except OSError:
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
    """Live view on a terminal (rich), one line every few seconds elsewhere (CI, pipes)."""

    def __init__(self, tasks: int, max_workers: int, live: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.tasks = tasks
        self.max_workers = max_workers
        self.live_mode = self.console.is_terminal if live is None else live
        self._live = None
        self._last_plain = -1e9
        self._last_done = -1

    def __enter__(self) -> "Progress":
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self._render(None), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def _render(self, snap: Snapshot | None):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table(title="batch-celery, local run on moto server", show_header=True, expand=False)
        for column in ("elapsed", "visible", "in flight", "delayed", "done", "DLQ", "workers"):
            table.add_column(column, justify="right")
        if snap:
            table.add_row(
                f"{snap.elapsed:.0f} s",
                str(snap.visible),
                str(snap.in_flight),
                str(snap.delayed),
                f"{snap.done}/{self.tasks}",
                str(snap.dead_lettered),
                f"{snap.running} running ({snap.launched} started, cap {self.max_workers})",
            )
        grid = Table.grid()
        grid.add_row(table)
        grid.add_row(ProgressBar(total=self.tasks, completed=snap.done if snap else 0, width=60))
        return grid

    def tick(self, snap: Snapshot) -> None:
        if self._live:
            self._live.update(self._render(snap))
        elif snap.elapsed - self._last_plain >= 5 or (snap.done == self.tasks != self._last_done):
            self._last_plain, self._last_done = snap.elapsed, snap.done
            self.console.print(
                f"[{snap.elapsed:5.0f} s] visible {snap.visible}, in flight {snap.in_flight}, "
                f"delayed {snap.delayed}, done {snap.done}/{self.tasks}, DLQ {snap.dead_lettered}, "
                f"workers running {snap.running} (started {snap.launched})",
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
            "Run the whole batch-celery loop locally: moto server as SQS, the real filler, the "
            "scaler's real policy, and the real lifecycle script as workers."
        ),
    )
    parser.add_argument("--tasks", type=_bounded(1, 10_000), default=60, help="how many tasks to submit [60]")
    parser.add_argument(
        "--task", choices=sorted(TASK_CHOICES), default="calculate_pi",
        help="calculate_pi (about a second of CPU each) or trivial [calculate_pi]",
    )
    parser.add_argument("--max-workers", type=_bounded(1, 16), default=2, help="local cap on workers at once [2]")
    parser.add_argument(
        "--idle-seconds", type=_bounded(1, 600), default=5,
        help="a worker exits after the queue was empty this long [5; 60 in AWS]",
    )
    parser.add_argument("--poll-seconds", type=_bounded(1, 60), default=1, help="queue check interval of a worker [1]")
    parser.add_argument(
        "--messages-per-worker", type=_bounded(1, 10_000), default=None,
        help="scaler target backlog per worker [the stack's setting]",
    )
    parser.add_argument("--timeout", type=_bounded(10, 3600), default=600, help="give up after this many seconds [600]")
    parser.add_argument("--live", dest="live", action="store_true", default=None, help="force the live view")
    parser.add_argument("--plain", dest="live", action="store_false", help="plain progress lines (no live view)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep the worker logs in this folder")
    return parser.parse_args(argv)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    task_name, task_kwargs = TASK_CHOICES[args.task]
    # A TERM (from a CI runner or `timeout`) cleans up exactly like Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)

    work_dir = args.keep_logs or Path(tempfile.mkdtemp(prefix="batch-celery-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.tasks, args.max_workers, args.live)
    started = time.monotonic()
    server: motoserver.MotoServer | None = None
    run: LocalRun | None = None
    interrupted = False
    try:
        progress.say("synthesizing the stack to read the queue and worker settings ...")
        spec = read_spec(synthesize(work_dir / "cdk.out"))
        messages_per_worker = args.messages_per_worker or int(spec.scaler_environment.get("MESSAGES_PER_WORKER", 10))
        server = motoserver.start()
        progress.say(f"moto server on {server.endpoint}")
        run = LocalRun(
            server=server,
            spec=spec,
            work_dir=work_dir,
            max_workers=args.max_workers,
            idle_seconds=args.idle_seconds,
            poll_seconds=args.poll_seconds,
            messages_per_worker=messages_per_worker,
        )
        progress.say(
            f"queue {run.queues.name}: visibility {spec.queue.visibility_timeout} s, DLQ after "
            f"{spec.queue.max_receive_count} receives; submitting {args.tasks} x {task_name} "
            f"(scaler: {messages_per_worker} messages per worker, at most {args.max_workers} workers)"
        )
        run.fill(args.tasks, task_name, task_kwargs)
        with progress:
            run.run(timeout=args.timeout, on_tick=progress.tick)
    except KeyboardInterrupt:
        interrupted = True
        progress.say("interrupted: stopping every worker (TERM, as Batch does) and the server")
    except (DemoError, TemplateError, RuntimeError) as error:
        interrupted = True
        progress.say(f"error: {error}")
    finally:
        # Workers first (a warm shutdown still needs the queue), then what they leave, then the server.
        if run:
            run.stop(grace=15)
        outcome = _outcome(run, args.tasks, started, interrupted)
        if server:
            server.stop()

    for worker in run.workers if run else []:
        if worker.process.returncode != 0:
            progress.say(f"worker {worker.index} exited with {worker.process.returncode}; log: {worker.log_path}")
    if outcome.dead_lettered:
        progress.say(f"{outcome.dead_lettered} task(s) failed and wait in the dead-letter queue")
    if args.keep_logs:
        progress.say(f"worker logs in {work_dir}")
    progress.say(outcome.summary_line())
    return 0 if outcome.ok else 1


def _outcome(run: LocalRun | None, tasks: int, started: float, interrupted: bool) -> Outcome:
    if run is None:
        return Outcome(tasks, 0, 0, tasks, 0, [], time.monotonic() - started, interrupted)
    try:
        remaining = sum(message_counts(run.sqs, run.queues.url))
        dead_lettered = run.dead_lettered()
    except Exception as error:  # the server itself failed: count nothing as safe
        print(f"could not read the queues at the end: {error}", file=sys.stderr)
        remaining, dead_lettered = 0, 0
    return Outcome(
        tasks=tasks,
        done=len(run.done_ids()),
        dead_lettered=dead_lettered,
        remaining=remaining,
        workers=len(run.workers),
        worker_exit_codes=[worker.process.returncode for worker in run.workers],
        seconds=time.monotonic() - started,
        interrupted=interrupted,
    )


if __name__ == "__main__":
    sys.exit(main())

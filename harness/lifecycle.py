"""Run the real worker container code on this machine: the lifecycle script, the filler, probes.

Shared by the container tests, the reliability suite and the benchmarks (the demo streams each
script's output live instead: batch_celery_local/demo.py). Everything talks to moto server on
127.0.0.1 (optionally through a FaultProxy) with real worker processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from batch_celery import CONTAINER_DIR
from batch_celery_local import REPO_ROOT
from batch_celery_local.motoserver import MotoServer
from batch_celery_local.queues import QueuePair
from harness.probe_tasks import read_events

SCRIPT = CONTAINER_DIR / "run_celery_worker.sh"
PROBE_MODULE = "harness.probe_tasks"


def poll_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1):
    """The first truthy value of ``predicate()``, or its last (falsy) value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition"):
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` seconds."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value


def worker_env(
    moto: MotoServer, queues: QueuePair, run_dir: Path, *, endpoint: str | None = None, **overrides: object
) -> dict[str, str]:
    """The environment of a worker job on this machine, with short timings; ``endpoint`` = a proxy."""
    env = dict(os.environ)
    env.update(moto.client_env(endpoint))
    env.update(queues.worker_env(endpoint))
    env.update(
        PYTHON=sys.executable,
        PYTHONPATH=str(REPO_ROOT),
        CELERY_TASK_MODULES=PROBE_MODULE,
        PROBE_RECORD_FILE=str(run_dir / "record.txt"),
        WORKER_RUN_DIR=str(run_dir / "worker"),
        IDLE_SECONDS="3",
        POLL_SECONDS="1",
        # Fits under the short visibility timeouts the tests use (at most 90 % of it).
        TASK_TIME_LIMIT_SECONDS=str(max(1, queues.visibility_timeout - max(1, queues.visibility_timeout // 10))),
    )
    env.update({key: str(value) for key, value in overrides.items()})
    return env


@dataclass
class ScriptRun:
    """One run of run_celery_worker.sh as a child process; its output goes to a file."""

    process: subprocess.Popen
    output_path: Path
    env: dict[str, str]

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    @property
    def record_file(self) -> Path:
        return Path(self.env["PROBE_RECORD_FILE"])

    def events(self):
        return read_events(self.record_file)

    def worker_pid(self, timeout: float = 60) -> int:
        return wait_until(self.current_worker_pid, timeout, what="the worker's pidfile")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the lifecycle script did not exit within {timeout} s:\n{self.output[-3000:]}") from None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill_everything(self) -> None:
        """Cleanup after a failed test: the script and its worker, however far they got."""
        _kill_group_of(self.current_worker_pid())
        _kill_group_of(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def current_worker_pid(self) -> int | None:
        """The Celery worker's pid now, None before it wrote its pidfile."""
        pidfile = Path(self.env["WORKER_RUN_DIR"]) / "worker.pid"
        # The worker replaces its pidfile once while it starts, so it may be missing or empty.
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


def start_script(env: dict[str, str], output_path: Path) -> ScriptRun:
    output = open(output_path, "ab")
    try:
        process = subprocess.Popen(
            [str(SCRIPT)], cwd=str(CONTAINER_DIR), env=env, stdout=output, stderr=subprocess.STDOUT,
            # Its own process group, so cleanup can end it with everything it started.
            start_new_session=True,
        )
    finally:
        output.close()
    return ScriptRun(process=process, output_path=output_path, env=env)


@contextmanager
def running_script(env: dict[str, str], output_path: Path) -> Iterator[ScriptRun]:
    """``with running_script(env, path) as run:`` and the script and its worker never outlive the block."""
    run = start_script(env, output_path)
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.kill_everything()
        else:
            # Pool processes a test orphaned on purpose must not run on into later tests.
            _kill_group_of(run.current_worker_pid())


def _kill_group_of(pid: int | None) -> None:
    if not pid:
        return
    try:
        group = os.getpgid(pid)
        if group != os.getpgid(0):
            os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def load_filler():
    """fill-batch-queue.py as a module (its name has dashes)."""
    spec = importlib.util.spec_from_file_location("fill_batch_queue", CONTAINER_DIR / "fill-batch-queue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Run in-process code (the filler) with ``env`` as os.environ, restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def fill(env: dict[str, str], count: int, task: str = "probe.record", args: list | None = None,
         kwargs: dict | None = None, countdown: float | None = None) -> None:
    """Send ``count`` tasks with the real filler in this process; raise if it does not send them all."""
    argv = ["-n", str(count), "--task", task, "--quiet"]
    if args is not None:
        argv += ["--args", json.dumps(args)]
    if kwargs is not None:
        argv += ["--kwargs", json.dumps(kwargs)]
    if countdown is not None:
        argv += ["--countdown", str(countdown)]
    with environment(env):
        status = load_filler().main(argv)
    if status != 0:
        raise RuntimeError(f"the filler failed with status {status}")

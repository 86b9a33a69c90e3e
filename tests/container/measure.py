"""Figures of one worker on moto server: drain rate for a trivial task and the idle tail.

    .venv/bin/python -m tests.container.measure [--tasks 200] [--runs 3] [--idle 3] [--poll 1]

Not a test (nothing is asserted): prints what was measured, for the issue's closing note.
The idle tail is the time from the queue becoming empty (visible + in flight + delayed = 0,
sampled every 0.1 s) to the exit of the lifecycle script.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import boto3

from batch_celery.local import motoserver
from batch_celery.local.queues import create_queue_pair, total_messages

from .helpers import fill, running_script, wait_until, worker_env

TASK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/ForkPoolWorker-\d+\] Task probe\.record\[", re.M)


def one_run(moto, sqs, index: int, tasks: int, idle: int, poll: int, folder: Path) -> tuple[float, float]:
    queues = create_queue_pair(sqs, f"measure-{index}", visibility_timeout=60)
    run_dir = folder / str(index)
    run_dir.mkdir()
    env = worker_env(moto, queues, run_dir, IDLE_SECONDS=idle, POLL_SECONDS=poll)
    fill(env, tasks, "probe.record", args=["measure"])
    with running_script(env, run_dir / "out.log") as run:
        wait_until(lambda: total_messages(sqs, queues.url) == 0, timeout=600, interval=0.1, what="the queue to drain")
        empty_at = time.monotonic()
        status = run.wait(timeout=idle + poll + 120)
        tail = time.monotonic() - empty_at
    if status != 0:
        raise SystemExit(f"run {index}: the lifecycle script exited with {status}")
    # Drain rate from the worker's own log: first to last task completion.
    stamps = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in TASK_LINE.findall(run.output)]
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]).total_seconds()
    return rate, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=int, default=3)
    parser.add_argument("--poll", type=int, default=1)
    args = parser.parse_args(argv)
    with motoserver.running() as moto, tempfile.TemporaryDirectory() as folder:
        sqs = boto3.client(
            "sqs", region_name=moto.region, endpoint_url=moto.endpoint,
            aws_access_key_id=motoserver.ACCESS_KEY, aws_secret_access_key=motoserver.SECRET_KEY,
        )
        results = [one_run(moto, sqs, i, args.tasks, args.idle, args.poll, Path(folder)) for i in range(args.runs)]
    for index, (rate, tail) in enumerate(results):
        print(f"run {index}: {args.tasks} trivial tasks at {rate:.1f} tasks/s; idle tail {tail:.1f} s")
    rates, tails = zip(*results)
    print(
        f"drain rate (1 worker, concurrency 1, prefetch 1): median {statistics.median(rates):.1f} tasks/s; "
        f"idle tail with IDLE={args.idle} POLL={args.poll}: median {statistics.median(tails):.1f} s, "
        f"max {max(tails):.1f} s (bound IDLE + POLL = {args.idle + args.poll} s plus the worker's warm shutdown)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

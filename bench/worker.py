"""What a worker costs on top of its tasks: the project's worker against a raw boto3 consumer (the floor).

    .venv/bin/python -m bench.worker [--tasks 200] [--prefetch 1,4,10] [--idle 3] [--poll 1] [--json]

In one run on moto server (127.0.0.1), every SQS request passing through a counting proxy:

* **floor**: a raw boto3 loop that receives 10 messages with long polling and deletes them with
  DeleteMessageBatch: the least any consumer can do per message;
* **worker**: the real lifecycle script (run_celery_worker.sh) with a Celery worker at its shipped
  settings (prefetch 1) and at tuned prefetch (WORKER_PREFETCH_MULTIPLIER), on trivial tasks;
* **+ metrics**, **+ metrics + results**: the shipped worker with what a stack turns on by default,
  one EMF line per task (METRICS_NAMESPACE) and the DynamoDB result table (CELERY_RESULT_TABLE).
  Targets: metrics add no request at all (only SQS requests at the proxy, one metrics line per
  task); a result adds at most 20 ms per task over the row without it.

Figures: tasks/s (first to last completion), overhead per task in ms versus the floor and as a
share of a 5-second task, SQS requests per task (counted at the proxy from the script's start to
its exit, so the lifecycle script's own queue readings and the idle tail's long polls count too),
and the idle tail: seconds from the queue becoming empty to the script's exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from batch_celery_local import motoserver
from batch_celery_local.queues import create_queue_pair, create_result_table, total_messages, via_endpoint
from batch_celery_container import contract
from harness.faults import ApiProxy
from harness.lifecycle import fill, running_script, wait_until, worker_env

TASK_SECONDS = 5.0  # the task length the overhead target is stated for
TARGETS = {"overhead_percent_of_5s_task": 2.0, "sqs_requests_per_task": 2.5, "idle_tail_margin_seconds": 5.0,
           "result_ms_per_task": 20.0, "metrics_requests_per_task": 0.0}
SQS_ACTIONS = frozenset({
    "ReceiveMessage", "DeleteMessage", "DeleteMessageBatch", "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch", "GetQueueAttributes", "GetQueueUrl", "SendMessage", "SendMessageBatch",
    "ListQueues",
})
COMPLETED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/ForkPoolWorker-\d+\] Task probe\.record\[", re.M)


@dataclass
class Figures:
    consumer: str
    tasks: int
    tasks_per_second: float
    ms_per_task: float
    overhead_ms: float | None = None
    overhead_percent_of_5s_task: float | None = None
    sqs_requests_per_task: float = 0.0
    requests: dict = field(default_factory=dict)
    idle_tail_seconds: float | None = None
    exit_status: int | None = None
    # Requests to anything but SQS (the result table's), and the EMF lines the run wrote.
    other_requests_per_task: float = 0.0
    metric_lines: int = 0


def _fill(env: dict[str, str], tasks: int) -> None:
    """The real filler, straight to moto (its requests are not the consumer's); its line goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        fill(env, tasks, "probe.record", args=["bench"])


def floor(moto, proxy: ApiProxy, sqs, folder: Path, tasks: int) -> Figures:
    queues = create_queue_pair(sqs, "bench-floor", visibility_timeout=60)
    _fill(worker_env(moto, queues, folder / "floor"), tasks)
    consumer = moto.client("sqs", proxy.endpoint)
    url = via_endpoint(queues.url, proxy.endpoint)
    proxy.reset_counts()
    done = 0
    first = last = None
    while done < tasks:
        messages = consumer.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not messages:
            continue
        for message in messages:
            json.loads(message["Body"] if message["Body"].startswith("{") else "{}")  # a trivial "task"
        consumer.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        )
        done += len(messages)
        now = time.monotonic()
        first = first or now
        last = now
    counts = dict(proxy.counts)
    rate = (tasks - 1) / (last - first) if last > first else float("inf")
    return Figures("floor: boto3 receive 10 + delete batch", tasks, rate, 1000 / rate,
                   sqs_requests_per_task=sum(counts.values()) / tasks, requests=counts)


def worker(moto, proxy: ApiProxy, sqs, folder: Path, tasks: int, prefetch: int, idle: int, poll: int,
           *, metrics: bool = False, results: bool = False) -> Figures:
    key = f"{prefetch}{'-metrics' if metrics else ''}{'-results' if results else ''}"
    queues = create_queue_pair(sqs, f"bench-worker-{key}", visibility_timeout=60)
    run_dir = folder / f"worker-{key}"
    run_dir.mkdir()
    features = {}
    if metrics:
        features[contract.METRICS_NAMESPACE] = "BatchCelery/Bench"
        features[contract.POOL] = "default"
    if results:
        features[contract.RESULT_TABLE] = create_result_table(moto.client("dynamodb"), f"bench-results-{key}")
    _fill(worker_env(moto, queues, run_dir), tasks)
    env = worker_env(moto, queues, run_dir, endpoint=proxy.endpoint, IDLE_SECONDS=idle, POLL_SECONDS=poll,
                     WORKER_PREFETCH_MULTIPLIER=prefetch, LOG_LEVEL="INFO", **features)
    proxy.reset_counts()
    with running_script(env, run_dir / "out.log") as run:
        wait_until(lambda: total_messages(sqs, queues.url) == 0, timeout=900, interval=0.1, what="the queue to drain")
        empty_at = time.monotonic()
        status = run.wait(timeout=idle + poll + 120)
        tail = time.monotonic() - empty_at
    counts = dict(proxy.counts)
    stamps = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in COMPLETED.findall(run.output)]
    if len(stamps) != tasks:
        raise SystemExit(f"bench.worker: prefetch {prefetch}: {len(stamps)} of {tasks} tasks completed (status {status})")
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]).total_seconds()
    label = f"worker, prefetch {prefetch}{' (shipped)' if prefetch == 1 and not features else ''}"
    if metrics:
        label = f"worker, prefetch {prefetch} + metrics" + (" + results" if results else "")
    sqs_requests = sum(n for action, n in counts.items() if action in SQS_ACTIONS)
    lines = sum(1 for line in run.output.splitlines() if line.startswith("{") and '"_aws"' in line)
    return Figures(label, tasks, rate, 1000 / rate, sqs_requests_per_task=sqs_requests / tasks,
                   requests=counts, idle_tail_seconds=tail, exit_status=status,
                   other_requests_per_task=(sum(counts.values()) - sqs_requests) / tasks, metric_lines=lines)


def store_result_ms(moto, writes: int = 100) -> float:
    """Celery's DynamoDB backend alone, in this process: ms per stored result (what a worker's
    process spends after each task), without the worker, the proxy and the queue around it."""
    import os

    from celery import Celery, states

    table = create_result_table(moto.client("dynamodb"), "bench-store-result")
    saved = dict(os.environ)
    os.environ.update(moto.client_env())
    try:
        app = Celery("bench-store-result", set_as_current=False)
        app.conf.update(result_backend=f"dynamodb://@{moto.region}/{table}?ttl_seconds=604800",
                        result_serializer="json")
        backend = app.backend
        backend.store_result("warm-up", 0, states.SUCCESS)
        started = time.perf_counter()
        for index in range(writes):
            backend.store_result(f"bench-{index}", 3.14159, states.SUCCESS)
        return (time.perf_counter() - started) / writes * 1000
    finally:
        os.environ.clear()
        os.environ.update(saved)


def table(results: list[Figures], idle: int, poll: int, store_ms: float | None = None) -> str:
    header = (f"{'consumer':<40} {'tasks/s':>8} {'ms/task':>8} {'overhead ms':>11} {'% of 5 s':>8} {'SQS req/task':>12} "
              f"{'other req/task':>14} {'EMF lines':>9} {'idle tail s':>11}")
    lines = [header, "-" * len(header)]
    for r in results:
        overhead = "-" if r.overhead_ms is None else f"{r.overhead_ms:.1f}"
        percent = "-" if r.overhead_percent_of_5s_task is None else f"{r.overhead_percent_of_5s_task:.2f}"
        tail = "-" if r.idle_tail_seconds is None else f"{r.idle_tail_seconds:.1f}"
        lines.append(f"{r.consumer:<40} {r.tasks_per_second:>8.1f} {r.ms_per_task:>8.1f} {overhead:>11} {percent:>8} "
                     f"{r.sqs_requests_per_task:>12.2f} {r.other_requests_per_task:>14.2f} {r.metric_lines:>9} {tail:>11}")
    lines.append("")
    lines.append("SQS requests by action:")
    for r in results:
        lines.append(f"  {r.consumer:<38} " + ", ".join(f"{k} {v}" for k, v in sorted(r.requests.items())))
    lines.append("")
    lines.append(f"targets (worker runs): overhead < {TARGETS['overhead_percent_of_5s_task']} % of a 5 s task; "
                 f"<= {TARGETS['sqs_requests_per_task']} SQS requests per task; idle tail <= IDLE + POLL + 5 = "
                 f"{idle + poll + TARGETS['idle_tail_margin_seconds']:.0f} s (IDLE={idle}, POLL={poll})")
    for r in results[1:]:
        checks = [
            ("overhead", (r.overhead_percent_of_5s_task or 0) < TARGETS["overhead_percent_of_5s_task"]),
            ("requests", r.sqs_requests_per_task <= TARGETS["sqs_requests_per_task"]),
            ("idle tail", (r.idle_tail_seconds or 0) <= idle + poll + TARGETS["idle_tail_margin_seconds"]),
        ]
        lines.append(f"  {r.consumer:<38} " + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in checks))
    lines += feature_lines(results)
    if store_ms is not None:
        lines.append(f"results: Celery's store_result alone (GetItem, then PutItem): {store_ms:.1f} ms per result "
                     f"(target <= {TARGETS['result_ms_per_task']:.0f} ms: "
                     f"{'met' if store_ms <= TARGETS['result_ms_per_task'] else 'MISSED'})")
    return "\n".join(lines)


def feature_lines(results: list[Figures]) -> list[str]:
    """The metrics and results targets, each against the row without the feature."""
    by_label = {r.consumer: r for r in results}
    shipped = by_label.get("worker, prefetch 1 (shipped)")
    with_metrics = by_label.get("worker, prefetch 1 + metrics")
    with_results = by_label.get("worker, prefetch 1 + metrics + results")
    lines = []
    if with_metrics:
        ok = with_metrics.other_requests_per_task == TARGETS["metrics_requests_per_task"] and \
            with_metrics.metric_lines == with_metrics.tasks
        lines.append(f"metrics: {with_metrics.other_requests_per_task:.2f} requests per task besides SQS "
                     f"(target 0), {with_metrics.metric_lines} EMF lines for {with_metrics.tasks} tasks: "
                     f"{'met' if ok else 'MISSED'}")
    if with_metrics and with_results:
        added = with_results.ms_per_task - with_metrics.ms_per_task
        lines.append(f"results: +{added:.1f} ms per task over the row without them (target <= "
                     f"{TARGETS['result_ms_per_task']:.0f} ms), {with_results.other_requests_per_task:.2f} DynamoDB "
                     f"requests per task: {'met' if added <= TARGETS['result_ms_per_task'] else 'MISSED'}")
    if shipped and with_metrics:
        lines.append(f"(the shipped worker without metrics: {shipped.ms_per_task:.1f} ms per task, "
                     f"{shipped.sqs_requests_per_task:.2f} SQS requests per task)")
    return lines


def _counts(text: str, label: str, low: int, high: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not low <= v <= high for v in values):
        raise SystemExit(f"bench.worker: {label} {text!r} is not allowed; expected whole numbers {low}..{high}, comma-separated")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="200", help="trivial tasks per consumer (10..5000) [200]")
    parser.add_argument("--prefetch", default="1,4,10", help="worker prefetch multipliers to run [1,4,10]")
    parser.add_argument("--idle", default="3", help="IDLE_SECONDS of the worker runs [3]")
    parser.add_argument("--poll", default="1", help="POLL_SECONDS of the worker runs [1]")
    parser.add_argument("--no-features", action="store_true",
                        help="skip the rows with metrics and results (the shipped worker's defaults in a stack)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    [tasks] = _counts(args.tasks, "--tasks", 10, 5000)[:1]
    prefetches = _counts(args.prefetch, "--prefetch", 1, 100)
    [idle] = _counts(args.idle, "--idle", 1, 600)[:1]
    [poll] = _counts(args.poll, "--poll", 1, 600)[:1]

    with motoserver.running() as moto, ApiProxy(moto.endpoint) as proxy, tempfile.TemporaryDirectory() as tmp:
        sqs = moto.client("sqs")  # the bench's own readings go around the proxy, uncounted
        folder = Path(tmp)
        print(f"bench.worker: floor, {tasks} messages ...", file=sys.stderr, flush=True)
        results = [floor(moto, proxy, sqs, folder, tasks)]
        for prefetch in prefetches:
            print(f"bench.worker: worker at prefetch {prefetch}, {tasks} tasks ...", file=sys.stderr, flush=True)
            results.append(worker(moto, proxy, sqs, folder, tasks, prefetch, idle, poll))
        store_ms = None
        if not args.no_features:
            store_ms = store_result_ms(moto)
            for results_on in (False, True):
                print(f"bench.worker: worker at prefetch 1 with metrics{' and results' if results_on else ''}, "
                      f"{tasks} tasks ...", file=sys.stderr, flush=True)
                results.append(worker(moto, proxy, sqs, folder, tasks, 1, idle, poll, metrics=True,
                                      results=results_on))
    base = results[0].ms_per_task
    for r in results[1:]:
        r.overhead_ms = r.ms_per_task - base
        r.overhead_percent_of_5s_task = 100 * r.overhead_ms / (TASK_SECONDS * 1000)
    if args.json:
        print(json.dumps({"tasks": tasks, "idle_seconds": idle, "poll_seconds": poll, "targets": TARGETS,
                          "store_result_ms": store_ms, "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(table(results, idle, poll, store_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

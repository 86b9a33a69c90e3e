"""Send N tasks to the workers, e.g. to try them: ``python fill-batch-queue.py -n 100 --task gpu.matmul``.

The queue comes from the same environment as the worker's (CELERY_QUEUE_NAME, CELERY_QUEUE_URL,
region, optional AWS_ENDPOINT_URL_SQS). With CELERY_ROUTES (the stack's routes JSON, routing.py)
a task goes where a producer app would send it: to the queue of the pool its name is routed to,
so one filler serves every pool. Prints how many tasks were sent to which queue.

With ``--wait`` it then waits for their results in the stack's result table (CELERY_RESULT_TABLE),
with a progress bar on stderr, and ends with a summary: done, failed (with the first errors),
pending. A task that failed is still received again by SQS until its queue's maxReceiveCount (or
retried by Celery), so a failure reported here may yet turn into a success; the summary is the
state when the wait ended.

Exits 0 when all N were sent (and, with ``--wait``, all succeeded); 1 when the queue cannot be
used (with one line saying why); 2 on bad arguments or configuration; 3 when, with ``--wait``,
any task failed or had no result in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# The filler runs from any folder (tests load it by path), the app lives next to it.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MAX_MESSAGES = 1_000_000
# SQS takes 256 KiB per message; kombu base64-encodes the Celery envelope (4/3) around the
# arguments, so arguments above this cannot fit.
MAX_ARGUMENTS_BYTES = 180 * 1024
DEFAULT_TASK = "batch.calculate_pi"
DEFAULT_WAIT_SECONDS = 3600.0
# BatchGetItem reads at most 100 items per request.
READ_BATCH = 100
SHOWN_FAILURES = 5
PROGRESS_LINE_SECONDS = 5.0
EXIT_TASKS_FAILED = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"fill-batch-queue: {message} (see --help)\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; allowed: 1..{MAX_MESSAGES}") from None
    if not 1 <= value <= MAX_MESSAGES:
        raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: 1..{MAX_MESSAGES}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 604800 (a week)")
    return value


def _json_of(kind: type, label: str):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({error.msg})") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON {label}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="fill-batch-queue.py", description="Send N tasks to the queue of the pool that runs them.")
    parser.add_argument("-n", "--num-messages", type=_count, required=True, help=f"how many tasks (1..{MAX_MESSAGES})")
    parser.add_argument("--task", default=DEFAULT_TASK,
                        help=f"registered task name; with CELERY_ROUTES it goes to its pool's queue [{DEFAULT_TASK}]")
    parser.add_argument("--args", type=_json_of(list, "list"), default=[], help='positional arguments as JSON, e.g. "[100000]"')
    parser.add_argument("--kwargs", type=_json_of(dict, "object"), default={}, help='keyword arguments as JSON, e.g. \'{"terms": 1000}\'')
    parser.add_argument("--countdown", type=_seconds, default=None,
                        help="run the tasks this many seconds from now (Celery's countdown)")
    parser.add_argument("--wait", nargs="?", type=_seconds, const=DEFAULT_WAIT_SECONDS, default=None,
                        metavar="SECONDS",
                        help="then wait up to SECONDS (default 3600) for the results, with a progress bar, "
                             "and end with a summary; exit 3 if any task failed or had no result in time")
    parser.add_argument("--ids-file", type=Path, default=None, metavar="FILE",
                        help="also append the id of each task sent to FILE, one per line")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the final count")
    args = parser.parse_args(argv)
    if not args.task.strip():
        parser.error("--task must name a task")
    size = len(json.dumps([args.args, args.kwargs]).encode())
    if size > MAX_ARGUMENTS_BYTES:
        parser.error(
            f"the task arguments take {size} bytes; allowed: at most {MAX_ARGUMENTS_BYTES} "
            "(an SQS message holds 256 KiB); store large inputs elsewhere (S3) and pass a reference"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import contract
    import routing
    from worker_settings import ConfigError, WorkerSettings

    try:
        settings = WorkerSettings.from_env()
        routes_json = os.environ.get(contract.ROUTES, "").strip()
        routes = routing.parse_routes(routes_json) if routes_json else None
    except ConfigError as error:
        print(f"fill-batch-queue: configuration error: {error}", file=sys.stderr)
        return 2
    except routing.RoutingError as error:
        print(f"fill-batch-queue: configuration error: {contract.ROUTES}: {error}", file=sys.stderr)
        return 2
    if args.wait is not None and not settings.result_table:
        print(f"fill-batch-queue: --wait needs the result table, and {contract.RESULT_TABLE} is not set "
              "(the stack sets it unless its setting results is false)", file=sys.stderr)
        return 2

    # The worker's settings, without importing the worker's module state: tasks go by name.
    config = settings.celery_config()
    queue_url, destination = settings.queue_url, settings.queue_name
    if routes is not None:
        routed = routing.celery_settings(routes)
        # The worker's transport options (endpoint scheme, polling) with every pool's queue.
        routed["broker_transport_options"] = {**config["broker_transport_options"], **routed["broker_transport_options"]}
        config.update(routed)
        pool = routing.pool_for(routes, args.task)
        route = routes.pools[pool]
        queue_url, destination = route.queue_url, f"{route.queue_name} (pool {pool})"

    from botocore.exceptions import BotoCoreError, ClientError
    from celery import Celery

    # Fail fast and clearly on a wrong URL or an unreachable endpoint, before sending anything.
    try:
        settings.sqs_client().get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    except ClientError as error:
        print(f"fill-batch-queue: queue {queue_url} cannot be used: {error.response['Error'].get('Message') or error}", file=sys.stderr)
        return 1
    except BotoCoreError as error:
        print(f"fill-batch-queue: queue {queue_url} is unreachable: {error}", file=sys.stderr)
        return 1

    app = Celery("fill-batch-queue", set_as_current=False)
    app.conf.update(config)
    step = max(1, args.num_messages // 10)
    sent = 0
    task_ids: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            for _ in range(args.num_messages):
                result = app.send_task(args.task, args=args.args, kwargs=args.kwargs, countdown=args.countdown,
                                       producer=producer)
                task_ids.append(result.id)
                sent += 1
                if not args.quiet and args.num_messages >= 100 and sent % step == 0 and sent < args.num_messages:
                    print(f"sent {sent}/{args.num_messages}", file=sys.stderr, flush=True)
    except Exception as error:  # noqa: BLE001 - report what was sent, in one line, whatever failed
        reason = " ".join(str(error).split()) or type(error).__name__
        print(f"fill-batch-queue: sent {sent} of {args.num_messages} tasks, then failed: {reason}", file=sys.stderr)
        return 1
    if args.ids_file is not None:
        try:
            with args.ids_file.open("a", encoding="utf-8") as ids:
                ids.writelines(f"{task_id}\n" for task_id in task_ids)
        except OSError as error:
            print(f"fill-batch-queue: sent {sent} tasks, but could not write their ids to {args.ids_file}: "
                  f"{error.strerror}", file=sys.stderr)
            return 1
    print(f"sent {sent} {args.task} tasks to {destination}", flush=True)
    if args.wait is None:
        return 0
    try:
        summary = wait_for_results(app, task_ids, timeout=args.wait, quiet=args.quiet)
    except (ClientError, BotoCoreError) as error:
        reason = " ".join(str(error).split())
        print(f"fill-batch-queue: could not read the results in {settings.result_table}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fill-batch-queue: stopped waiting (the tasks go on; their results stay in the table)", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    return 0 if summary.all_done else EXIT_TASKS_FAILED


class Summary:
    """Where every task stands: done, failed (with its error), or still pending."""

    def __init__(self, task_ids: list[str]) -> None:
        self.total = len(task_ids)
        self.pending = set(task_ids)
        self.done = 0
        self.failed: dict[str, str] = {}
        self.seconds = 0.0

    @property
    def all_done(self) -> bool:
        return self.done == self.total

    def record(self, task_id: str, meta: dict) -> None:
        status = meta.get("status")
        if status == "SUCCESS":
            self.pending.discard(task_id)
            self.failed.pop(task_id, None)
            self.done += 1
        elif status == "FAILURE":
            error = meta.get("result") or {}
            if isinstance(error, BaseException):  # Celery rebuilds the task's exception
                text = f"{type(error).__name__}: {error}"
            elif isinstance(error, dict):
                text = f"{error.get('exc_type', 'Error')}: {' '.join(map(str, error.get('exc_message') or []))}"
            else:
                text = str(error)
            self.pending.discard(task_id)
            self.failed[task_id] = " ".join(text.split())[:300]

    def bar(self, width: int = 30) -> str:
        finished = self.done + len(self.failed)
        filled = int(width * finished / self.total) if self.total else width
        return (f"[{'#' * filled}{'.' * (width - filled)}] {finished}/{self.total}: {self.done} done, "
                f"{len(self.failed)} failed, {len(self.pending)} pending, {self.seconds:.0f} s")

    def lines(self) -> list[str]:
        lines = [f"results: {self.done} done, {len(self.failed)} failed, {len(self.pending)} pending "
                 f"of {self.total} after {self.seconds:.0f} s"]
        for task_id, error in list(self.failed.items())[:SHOWN_FAILURES]:
            lines.append(f"  failed {task_id}: {error}")
        if len(self.failed) > SHOWN_FAILURES:
            lines.append(f"  ... and {len(self.failed) - SHOWN_FAILURES} more failed")
        return lines


def wait_for_results(app, task_ids: list[str], *, timeout: float, quiet: bool = False,
                     interval: float = 1.0) -> Summary:
    """Read the results of ``task_ids`` from the result table until each has one or ``timeout``
    passes: 100 per BatchGetItem, and only those still pending, so a round costs what is left."""
    backend = app.backend
    client, table = backend.client, backend.table_name
    keys = {str(backend.get_key_for_task(task_id)): task_id for task_id in task_ids}  # Celery's key
    summary = Summary(task_ids)
    started = time.monotonic()
    live = sys.stderr.isatty() and not quiet
    # Not a terminal (a Batch job's log): a line when something changed, at most every 5 s.
    last_line, last_time = "", -PROGRESS_LINE_SECONDS
    while True:
        pending = [key for key, task_id in keys.items() if task_id in summary.pending]
        for start in range(0, len(pending), READ_BATCH):
            request = {table: {"Keys": [{"id": {"S": key}} for key in pending[start:start + READ_BATCH]],
                               "ProjectionExpression": "#k, #r",
                               "ExpressionAttributeNames": {"#k": "id", "#r": "result"}}}
            # Keys DynamoDB did not get to (throttling) are simply read again next round.
            for item in client.batch_get_item(RequestItems=request)["Responses"].get(table, []):
                summary.record(keys[item["id"]["S"]], backend.decode_result(item["result"]["B"]))
        summary.seconds = time.monotonic() - started
        if not quiet:
            shown = summary.bar()
            if live:
                print(f"\r{shown}", end="", file=sys.stderr, flush=True)
            elif shown.rsplit(",", 1)[0] != last_line and summary.seconds - last_time >= PROGRESS_LINE_SECONDS:
                print(shown, file=sys.stderr, flush=True)
                last_line, last_time = shown.rsplit(",", 1)[0], summary.seconds
        if not summary.pending or summary.seconds >= timeout:
            if live:
                print(file=sys.stderr)
            elif not quiet and shown.rsplit(",", 1)[0] != last_line:
                print(shown, file=sys.stderr, flush=True)  # the final state, always
            return summary
        time.sleep(min(interval, max(0.0, timeout - summary.seconds)))


if __name__ == "__main__":
    sys.exit(main())

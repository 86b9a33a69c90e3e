"""Send N tasks to the workers, e.g. to try them: ``python fill-batch-queue.py -n 100 --task gpu.matmul``.

The queue comes from the same environment as the worker's (CELERY_QUEUE_NAME, CELERY_QUEUE_URL,
region, optional AWS_ENDPOINT_URL_SQS). With CELERY_ROUTES (the stack's routes JSON, routing.py)
a task goes where a producer app would send it: to the queue of the pool its name is routed to,
so one filler serves every pool. Prints how many tasks were sent to which queue; exits 0 when
all N were sent, 1 when the queue cannot be used (with one line saying why), 2 on bad arguments
or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    try:
        with app.producer_or_acquire() as producer:
            for _ in range(args.num_messages):
                app.send_task(args.task, args=args.args, kwargs=args.kwargs, countdown=args.countdown,
                              producer=producer)
                sent += 1
                if not args.quiet and args.num_messages >= 100 and sent % step == 0 and sent < args.num_messages:
                    print(f"sent {sent}/{args.num_messages}", file=sys.stderr, flush=True)
    except Exception as error:  # noqa: BLE001 - report what was sent, in one line, whatever failed
        reason = " ".join(str(error).split()) or type(error).__name__
        print(f"fill-batch-queue: sent {sent} of {args.num_messages} tasks, then failed: {reason}", file=sys.stderr)
        return 1
    print(f"sent {sent} {args.task} tasks to {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

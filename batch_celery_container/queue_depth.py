"""Read the batch queue's message counts for run_celery_worker.sh.

Prints ``visible in_flight delayed`` on one line (their sum with ``--total``; ``--waiting``: visible +
delayed, what no worker holds yet, which the lifecycle script's idle rule reads) and exits 0.
On any failure it prints one line saying why on stderr and exits 1: the caller must never take
a failed reading for an empty queue.

``--require-dead-letter-queue`` instead checks that the queue has a redrive policy: exit 0 if
it has, 2 if it has none (kombu would delete a failed task's message there), 1 if unknown.
"""

from __future__ import annotations

import argparse
import os
import sys

ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def _client(region: str):
    # Imported here so a bad argument is reported without paying for boto3's import.
    import boto3
    from botocore.config import Config

    # Short timeouts and one retry: the caller polls again soon, and a hung reading would
    # delay noticing a dead worker or a stop signal.
    return boto3.client(
        "sqs",
        region_name=region,
        config=Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 2}),
    )


def has_redrive_policy(queue_url: str, region: str) -> bool:
    attributes = _client(region).get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    return bool(attributes.get("Attributes", {}).get("RedrivePolicy"))


def read_counts(queue_url: str, region: str) -> tuple[int, int, int]:
    attributes = _client(region).get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(ATTRIBUTES))["Attributes"]
    visible, in_flight, delayed = (int(attributes[name]) for name in ATTRIBUTES)
    return visible, in_flight, delayed


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the batch queue's visible, in-flight and delayed counts.")
    parser.add_argument("--total", action="store_true", help="print only the sum of the three counts")
    parser.add_argument("--waiting", action="store_true", help="print visible + delayed (not held by any worker)")
    parser.add_argument(
        "--require-dead-letter-queue", action="store_true", help="check that the queue has a redrive policy"
    )
    args = parser.parse_args(argv)
    queue_url = os.environ.get("CELERY_QUEUE_URL", "").strip()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not queue_url or not region:
        print("queue_depth: CELERY_QUEUE_URL and AWS_REGION (or AWS_DEFAULT_REGION) must be set", file=sys.stderr)
        return 1
    if args.require_dead_letter_queue:
        try:
            if has_redrive_policy(queue_url, region):
                return 0
        except Exception as error:  # noqa: BLE001
            print(f"queue_depth: cannot read the redrive policy of {queue_url}: {_one_line(error)}", file=sys.stderr)
            return 1
        print(
            f"queue_depth: {queue_url} has no redrive policy (dead-letter queue); a failed task would be "
            "deleted there, so no worker serves it",
            file=sys.stderr,
        )
        return 2
    try:
        counts = read_counts(queue_url, region)
    except Exception as error:  # noqa: BLE001 - any failure is "unknown", reported in one line
        print(f"queue_depth: cannot read {queue_url}: {_one_line(error)}", file=sys.stderr)
        return 1
    visible, in_flight, delayed = counts
    if args.total:
        print(visible + in_flight + delayed)
    elif args.waiting:
        print(visible + delayed)
    else:
        print(visible, in_flight, delayed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

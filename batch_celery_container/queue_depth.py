"""Read the batch queue's message counts for run_celery_worker.sh.

Prints ``visible in_flight delayed`` (or their sum with ``--total``) on one line and exits 0.
On any failure it prints one line saying why on stderr and exits 1: the caller must never take
a failed reading for an empty queue.
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


def read_counts(queue_url: str, region: str) -> tuple[int, int, int]:
    # Imported here so a bad argument is reported without paying for boto3's import.
    import boto3
    from botocore.config import Config

    # Short timeouts and one retry: the caller polls again soon, and a hung reading would
    # delay noticing a dead worker or a stop signal.
    client = boto3.client(
        "sqs",
        region_name=region,
        config=Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 2}),
    )
    attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(ATTRIBUTES))["Attributes"]
    visible, in_flight, delayed = (int(attributes[name]) for name in ATTRIBUTES)
    return visible, in_flight, delayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the batch queue's visible, in-flight and delayed counts.")
    parser.add_argument("--total", action="store_true", help="print only the sum of the three counts")
    args = parser.parse_args(argv)
    queue_url = os.environ.get("CELERY_QUEUE_URL", "").strip()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not queue_url or not region:
        print("queue_depth: CELERY_QUEUE_URL and AWS_REGION (or AWS_DEFAULT_REGION) must be set", file=sys.stderr)
        return 1
    try:
        counts = read_counts(queue_url, region)
    except Exception as error:  # noqa: BLE001 - any failure is "unknown", reported in one line
        reason = " ".join(str(error).split()) or type(error).__name__
        print(f"queue_depth: cannot read {queue_url}: {reason}", file=sys.stderr)
        return 1
    print(sum(counts) if args.total else " ".join(str(count) for count in counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

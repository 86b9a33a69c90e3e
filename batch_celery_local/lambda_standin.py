"""The local stand-in of a Lambda pool's SQS event source mapping: receive, invoke, delete.

What the mapping does in AWS, done here against a local SQS (moto server): it receives the pool's
messages (with every attribute, as the mapping does), hands each to the function as an SQS event
of ``batch_size`` records, and deletes each record the function's answer does not name in
``batchItemFailures`` (ReportBatchItemFailures); a named record is left alone, so SQS delivers it
again after its visibility timeout, and after maxReceiveCount receives moves it to the dead-letter
queue. The function is the real handler, called in this process. Used by the demo and the tests.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

# What the function returns for a record SQS should deliver again (lambda_handler.BATCH_ITEM_FAILURES).
BATCH_ITEM_FAILURES = "batchItemFailures"


def record_of(message: Mapping[str, Any], queue_arn: str, region: str) -> dict:
    """An SQS event record as Lambda builds it from a received message."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        attributes[name] = {
            "dataType": value["DataType"],
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class EventSourceMapping:
    """One queue's mapping to one handler (``handler(event, context) -> {"batchItemFailures": [...]}``)."""

    def __init__(self, sqs: Any, queue_url: str, handler: Callable[[dict, Any], Mapping[str, Any]], *,
                 batch_size: int = 1, region: str = "us-east-1") -> None:
        self.sqs, self.queue_url, self.handler = sqs, queue_url, handler
        self.batch_size, self.region = batch_size, region
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        # Message id -> what each invocation answered for it ("done" or "failed"), in order.
        self.outcomes: dict[str, list[str]] = {}

    def poll(self, wait_seconds: int = 1, max_messages: int = 10) -> int:
        """One receive and an invocation per ``batch_size`` records; returns the records handled."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", [])
        for start in range(0, len(messages), self.batch_size):
            self.invoke(messages[start:start + self.batch_size])
        return len(messages)

    def invoke(self, messages: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        event = {"Records": [record_of(message, self.queue_arn, self.region) for message in messages]}
        try:
            answer = self.handler(event, None) or {}
            failed = {item["itemIdentifier"] for item in answer.get(BATCH_ITEM_FAILURES, [])}
        except Exception:  # noqa: BLE001 - a failed invocation: the whole batch comes back, as in AWS
            answer, failed = {}, {message["MessageId"] for message in messages}
        for message in messages:
            outcome = "failed" if message["MessageId"] in failed else "done"
            self.outcomes.setdefault(message["MessageId"], []).append(outcome)
            if outcome == "done":
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return answer


# How the demo runs a Lambda pool: ``python -m batch_celery_local.lambda_standin`` with the
# function's environment (and the local endpoint), in the place of a worker job of a Batch pool.
STANDIN = "lambda_standin"


def main(argv: list[str] | None = None) -> int:
    """Play a Lambda pool's event source mapping with the real handler, in this process, one
    message per invocation, until the queue has been empty for ``--idle-seconds`` or a TERM comes
    (the current invocation finishes first). In AWS the mapping polls for as long as it exists and
    runs up to max_workers invocations at once; here one at a time."""
    import argparse
    import logging
    import os
    import signal
    import sys
    import time

    import boto3

    from batch_celery import CONTAINER_DIR
    from batch_celery_container import contract
    from batch_celery_local.queues import total_messages

    parser = argparse.ArgumentParser(prog="python -m batch_celery_local.lambda_standin")
    parser.add_argument("--idle-seconds", type=int, default=5)
    args = parser.parse_args(argv)
    queue_url = os.environ.get(contract.QUEUE_URL, "")
    region = os.environ.get("AWS_REGION") or os.environ.get(contract.REGION) or "us-east-1"
    if not queue_url:
        print(f"{STANDIN}: {contract.QUEUE_URL} is not set; run it with the function's environment", file=sys.stderr)
        return 2
    # Celery's own lines (``Task NAME[ID] succeeded in ...``) on stdout, as the function's log has them.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="[%(asctime)s: %(levelname)s] %(message)s")
    sys.path.insert(0, str(CONTAINER_DIR))  # the worker's modules import each other by name
    import lambda_handler

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stopping.append("SIGINT"))
    pool = os.environ.get(contract.POOL, "?")
    print(f"{STANDIN}: pool {pool}'s SQS event source mapping, played here: one message per invocation of "
          "lambda_handler.handler, run in this process", flush=True)
    sqs = boto3.client("sqs", region_name=region)
    mapping = EventSourceMapping(sqs, queue_url, lambda_handler.handler, region=region)
    idle_since = time.monotonic()
    while not stopping:
        if mapping.poll(wait_seconds=1):
            idle_since = time.monotonic()
        elif total_messages(sqs, queue_url):
            idle_since = time.monotonic()  # in flight (a retry's backoff) or delayed: not idle
        elif time.monotonic() - idle_since >= args.idle_seconds:
            print(f"{STANDIN}: idle for {args.idle_seconds} s; the mapping would keep polling, the demo stops "
                  "here", flush=True)
            return 0
    print(f"{STANDIN}: received {stopping[0]}; stopped after the invocation it ran", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

"""SQS queues for local runs: a task queue with its dead-letter queue, as the stack creates them.

Used by the container tests, the reliability suite, the benchmarks and the local demo, always
against a local endpoint (moto server); the deployed queues come from CDK.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# The lifecycle script's own reading names the counts; the local run reads the same three.
from batch_celery_container.queue_depth import ATTRIBUTES as COUNT_ATTRIBUTES


@dataclass(frozen=True)
class QueuePair:
    """A task queue whose redrive policy moves a message to ``dlq_url`` after ``max_receive_count`` receives."""

    name: str
    url: str
    dlq_name: str
    dlq_url: str
    visibility_timeout: int
    max_receive_count: int

    def worker_env(self, endpoint: str | None = None) -> dict[str, str]:
        """The queue part of the worker's environment (the same variables the Batch job gets).

        ``endpoint`` rewrites the queue URL to another endpoint, e.g. a fault-injecting proxy:
        kombu sends its requests to the queue URL, not to the broker URL.
        """
        return {
            "CELERY_QUEUE_NAME": self.name,
            "CELERY_QUEUE_URL": via_endpoint(self.url, endpoint) if endpoint else self.url,
            "VISIBILITY_TIMEOUT_SECONDS": str(self.visibility_timeout),
        }


def via_endpoint(queue_url: str, endpoint: str) -> str:
    """``queue_url`` with scheme, host and port taken from ``endpoint``."""
    queue, target = urlsplit(queue_url), urlsplit(endpoint)
    return urlunsplit((target.scheme, target.netloc, queue.path, queue.query, queue.fragment))


def create_queue_pair(
    sqs,
    name: str,
    *,
    visibility_timeout: int = 30,
    max_receive_count: int = 3,
    retention_seconds: int | None = None,
    dlq_retention_seconds: int | None = None,
    managed_sse: bool = False,
) -> QueuePair:
    """Create ``name`` and ``name-dlq`` with ``sqs`` (a boto3 client) and link them by a redrive policy.

    Retention periods left out keep SQS's default (4 days).
    """
    sse = {"SqsManagedSseEnabled": "true"} if managed_sse else {}
    dlq_name = f"{name}-dlq"
    dlq_attributes = dict(sse)
    if dlq_retention_seconds is not None:
        dlq_attributes["MessageRetentionPeriod"] = str(dlq_retention_seconds)
    dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes=dlq_attributes)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        **sse,
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
    }
    if retention_seconds is not None:
        attributes["MessageRetentionPeriod"] = str(retention_seconds)
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return QueuePair(name, url, dlq_name, dlq_url, visibility_timeout, max_receive_count)


def message_counts(sqs, queue_url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed) of a queue."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(COUNT_ATTRIBUTES))["Attributes"]
    visible, in_flight, delayed = (int(attributes[name]) for name in COUNT_ATTRIBUTES)
    return visible, in_flight, delayed


def total_messages(sqs, queue_url: str) -> int:
    return sum(message_counts(sqs, queue_url))


def create_result_table(dynamodb, name: str, *, ttl: bool = True) -> str:
    """A result table as the stack declares it (results.py): Celery's key, TTL on Celery's
    attribute, on-demand. Returns its name."""
    from batch_celery_container import contract

    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": contract.RESULT_KEY_ATTRIBUTE, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": contract.RESULT_KEY_ATTRIBUTE, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    if ttl:
        dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": contract.RESULT_TTL_ATTRIBUTE},
        )
    return name

"""The SQS queue Celery tasks travel through, and its dead-letter queue."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, aws_kms as kms, aws_sqs as sqs
from constructs import Construct

from .props import DLQ_RETENTION_DAYS


def queue_encryption(key: kms.IKey | None) -> dict:
    """A queue's encryption settings: the deployment's KMS key, or SQS's own keys."""
    if key is None:
        return {"encryption": sqs.QueueEncryption.SQS_MANAGED}
    return {"encryption": sqs.QueueEncryption.KMS, "encryption_master_key": key}


class TaskQueue(Construct):
    """Encrypted, TLS-only task queue whose poison messages end up in a dead-letter queue.

    The queue gets no physical name: CloudFormation generates one, and the workers learn it from
    their job environment, so the name exists in exactly one place.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        visibility_timeout: Duration = Duration.seconds(1800),
        retention: Duration = Duration.days(4),
        max_receive_count: int = 3,
        dead_letter_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        encryption = queue_encryption(key)

        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            **encryption,
            enforce_ssl=True,
            retention_period=Duration.days(DLQ_RETENTION_DAYS),
            # Failed tasks wait here for an operator; deleting the stack does not delete them.
            removal_policy=dead_letter_removal_policy,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            **encryption,
            enforce_ssl=True,
            visibility_timeout=visibility_timeout,
            retention_period=retention,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receive_count
            ),
        )

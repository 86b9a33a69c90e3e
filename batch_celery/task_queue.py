"""The SQS queue Celery tasks travel through, and its dead-letter queue."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, aws_sqs as sqs
from constructs import Construct

from .props import DLQ_RETENTION_DAYS


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
    ) -> None:
        super().__init__(scope, construct_id)

        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(DLQ_RETENTION_DAYS),
            # Failed tasks wait here for an operator; deleting the stack does not delete them.
            removal_policy=dead_letter_removal_policy,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=visibility_timeout,
            retention_period=retention,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receive_count
            ),
        )

"""The SQS queue Celery tasks travel through, and its dead-letter queue."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, aws_iam as iam, aws_kms as kms, aws_sqs as sqs
from constructs import Construct

from .props import DLQ_RETENTION_DAYS, PoolProps


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

    @classmethod
    def of_pool(cls, scope: Construct, props: PoolProps, *, dead_letter_removal_policy: RemovalPolicy,
                key: kms.IKey | None) -> "TaskQueue":
        """A pool's queue pair from its props, Batch and Lambda pools alike."""
        return cls(
            scope,
            "TaskQueue",
            visibility_timeout=Duration.seconds(props.queue_visibility_timeout_seconds),
            retention=Duration.days(props.message_retention_days),
            max_receive_count=props.max_receive_count,
            dead_letter_removal_policy=dead_letter_removal_policy,
            key=key,
        )

    def grant_worker(self, role: iam.IGrantable) -> None:
        """What whatever runs the pool's tasks needs, and no more: consume its own queue, send to
        it (Celery retries re-publish there) and to its dead-letter queue (a task that used up its
        retries, or that cannot wait in SQS)."""
        self.queue.grant_consume_messages(role)
        self.queue.grant_send_messages(role)
        self.dead_letter_queue.grant_send_messages(role)

"""Who may do what with the tasks: each pool's queue and dead-letter queue carry a resource policy
that denies sending, receiving, deleting, hiding (visibility) and purging messages to every
principal but the ones named, so SQS rights granted broadly elsewhere in the account (an
``sqs:*`` admin policy, a compromised CI role) cannot read, plant or drop tasks. Planted tasks
would also scale the workers out to their cap.

    task queue   send: its pool's workers (Celery retries), the filler, producers, operators
                 receive/delete/visibility/purge: its pool's workers, operators
    DLQ          send: its pool's workers (a malformed message goes there by design:
                 dead_letter_consumer.py), operators; receive/delete/visibility/purge: operators

Everything else (GetQueueAttributes for the scaler and the dashboard, SetQueueAttributes, tags,
deleting the queue) stays as IAM grants it: administrators still manage the queues. SQS's own
move of a message to the DLQ after maxReceiveCount carries no principal, and the denials apply
only where a principal ARN is present, so it is never blocked.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jsii
from aws_cdk import IResolveContext, IStableListProducer, Lazy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs

SEND = ("sqs:SendMessage",)
READ = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:PurgeQueue")


@jsii.implements(IStableListProducer)
class _Arns:
    """The principal ARNs a denial spares, read when the template is written, so that a grant
    made after the queue exists (``grant_send_tasks``) still counts."""

    def __init__(self, produce: Callable[[], list[str]]) -> None:
        self._produce = produce

    def produce(self, context: IResolveContext | None = None) -> list[str]:  # noqa: ARG002
        return self._produce()


def arn_of(grantee: iam.IGrantable) -> str:
    """The ARN a queue policy's ``aws:PrincipalArn`` shows for ``grantee`` (a role, a user)."""
    principal = grantee.grant_principal
    for attribute in ("role_arn", "user_arn", "arn"):
        value = getattr(principal, attribute, None)
        if isinstance(value, str):
            return value
    raise TypeError(f"{principal} has no ARN a queue policy can name; grant a role, a user or an ArnPrincipal")


def deny_all_but(queue: sqs.IQueue, actions: Sequence[str], spared: Callable[[], list[str]] | Sequence[str]) -> None:
    """Deny ``actions`` on ``queue`` to every principal whose ARN is not in ``spared`` (a list, or
    a function giving it when the template is written)."""
    # No principal ARN (SQS moving a message to the DLQ itself): nothing to deny.
    conditions: dict = {"Null": {"aws:PrincipalArn": "false"}}
    if callable(spared) or spared:
        arns = Lazy.list(_Arns(spared)) if callable(spared) else list(spared)
        conditions["ArnNotEquals"] = {"aws:PrincipalArn": arns}
    queue.add_to_resource_policy(iam.PolicyStatement(
        sid=f"OnlyNamedPrincipals{'Send' if tuple(actions) == SEND else 'Read'}",
        effect=iam.Effect.DENY,
        principals=[iam.AnyPrincipal()],
        actions=list(actions),
        resources=[queue.queue_arn],
        conditions=conditions,
    ))


def allow(queue: sqs.IQueue, actions: Sequence[str], arns: Sequence[str]) -> None:
    """Allow roles named by ARN, which may be in another account (an identity policy alone does
    not reach across accounts)."""
    if arns:
        queue.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ArnPrincipal(arn) for arn in arns],
            actions=list(actions),
            resources=[queue.queue_arn],
        ))

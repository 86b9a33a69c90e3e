"""Who may do what with the tasks: each pool's queue and dead-letter queue carry a resource policy
that denies sending, receiving, deleting, hiding (visibility), purging and redriving messages to
every principal but the ones it spares, so SQS rights granted broadly elsewhere (an ``sqs:*``
policy in another account's role, a compromised CI role once operators are named) cannot read,
plant or drop tasks. Planted tasks would also scale the workers out to their cap.

    task queue   send: its pool's workers (Celery retries), the filler, the schedule sender (when a
                 schedule routes to the pool), producers, operators
                 receive/delete/visibility/purge: its pool's workers, operators
    DLQ          send: its pool's workers (a malformed message goes there by design:
                 dead_letter_consumer.py), operators
                 receive/delete/visibility/purge/redrive: operators

Operators are the roles named in ``operator_role_arns``; when none are named, they are this
account's principals whose IAM policies allow the action (its administrators), so failed tasks can
always be inspected and redriven by somebody without a redeploy. Everything else
(GetQueueAttributes for the scaler and the dashboard, SetQueueAttributes, tags, deleting the
queue) stays as IAM grants it: administrators still manage the queues. SQS's own move of a
message to the DLQ after maxReceiveCount carries no principal, and the denials apply only where a
principal ARN is present, so it is never blocked.

tests/infra/test_policy_evaluation.py evaluates these policies, the key policy and the trust
policies as AWS does, for every kind of principal.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jsii
from aws_cdk import IAspect, IResolveContext, IStableListProducer, Lazy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import IConstruct

SEND = ("sqs:SendMessage",)
# StartMessageMoveTask (a redrive) reads the queue it moves from: only those who may read start one.
READ = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:PurgeQueue",
        "sqs:StartMessageMoveTask", "sqs:CancelMessageMoveTask")
# What an operator of another account also needs from the queue's own policy to redrive: the move
# reads the DLQ's attributes, and lists the moves under way.
INSPECT = ("sqs:GetQueueAttributes", "sqs:ListMessageMoveTasks")
# Producers and operators of another account use the deployment's key only through SQS, for what
# sending (a new data key, or a cached one decrypted) and reading (decrypting) take.
KEY_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


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


def deny_all_but(
    queue: sqs.IQueue,
    actions: Sequence[str],
    spared: Callable[[], list[str]] | Sequence[str],
    *,
    account: str | None = None,
) -> None:
    """Deny ``actions`` on ``queue`` to every principal whose ARN is not in ``spared`` (a list, or
    a function giving it when the template is written) and, when ``account`` is given, that is
    not of that account (whose IAM policies then decide)."""
    # No principal ARN (SQS moving a message to the DLQ itself): nothing to deny.
    conditions: dict = {"Null": {"aws:PrincipalArn": "false"}}
    if callable(spared) or spared:
        arns = Lazy.list(_Arns(spared)) if callable(spared) else list(spared)
        conditions["ArnNotEquals"] = {"aws:PrincipalArn": arns}
    if account is not None:
        conditions["StringNotEquals"] = {"aws:PrincipalAccount": account}
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


# Service principals that tell STS which account and resource they act for, and the ARN pattern
# of the resources of this stack's region and account they may act for. Lambda (execution roles)
# and EC2 (instance roles) set neither key when they assume a role, so their trust stays as is.
_SOURCE_ARNS = {
    "ecs-tasks.amazonaws.com": "arn:{partition}:ecs:{region}:{account}:*",
    "vpc-flow-logs.amazonaws.com": "arn:{partition}:ec2:{region}:{account}:vpc-flow-log/*",
    "events.amazonaws.com": "arn:{partition}:events:{region}:{account}:rule/*",
    "scheduler.amazonaws.com": "arn:{partition}:scheduler:{region}:{account}:schedule/*",
}


@jsii.implements(IAspect)
class ConfusedDeputyGuard:
    """Adds ``aws:SourceAccount`` and ``aws:SourceArn`` conditions to every trust policy that lets
    one of these services assume a role (the worker, filler and execution roles, the flow-log and
    EventBridge roles, including those CDK makes inside other constructs): another account's
    ECS task, flow log, rule or schedule cannot borrow the role through the service."""

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, iam.CfnRole):
            return
        stack = Stack.of(node)
        document = stack.resolve(node.assume_role_policy_document)
        for index, statement in enumerate(document.get("Statement", [])):
            services = statement.get("Principal", {}).get("Service")
            services = [services] if isinstance(services, str) else services or []
            patterns = {_SOURCE_ARNS[s] for s in services if s in _SOURCE_ARNS}
            if len(patterns) != 1 or statement.get("Condition") or len(services) != 1:
                continue
            arn = patterns.pop().format(partition=stack.partition, region=stack.region, account=stack.account)
            node.add_property_override(f"AssumeRolePolicyDocument.Statement.{index}.Condition", {
                "StringEquals": {"aws:SourceAccount": stack.account},
                "ArnLike": {"aws:SourceArn": arn},
            })

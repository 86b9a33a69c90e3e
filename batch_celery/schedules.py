"""Periodic tasks without ``celery beat``: EventBridge Scheduler schedules and the sender Lambda.

A fleet that scales to zero has no process to run beat in. Each of the deployment's ``schedules``
becomes one EventBridge Scheduler schedule (cron or rate, in its time zone) whose target is one
small Lambda, the schedule sender (batch_celery_container/schedule_sender.py). At each fire it
builds the Celery task message a producer would send and puts it on the queue of the pool the
task routes to, which the scaler then sees like any other task.

Delivery is at least once (docs/schedules.md):

- Scheduler invokes the sender asynchronously and retries an invocation Lambda did not accept
  for up to SCHEDULE_MAX_EVENT_AGE; what it cannot deliver by then goes to the events dead-letter
  queue (and its alarm). A fire missed for longer is not replayed.
- Lambda retries a failed run up to SENDER_RETRY_ATTEMPTS times; a run that sent its message and
  failed afterwards sends it again. Every delivery of one fire carries the same task id (derived
  from the queue, the schedule and the scheduled time), so a doubled fire is recognisable;
  a task that must not run twice per fire keys on ``self.request.id``.

The sender's role may send only to the queues its schedules target; the schedules' role may invoke
only the sender. The sender asset is the repository root filtered to the sender module and the two
dependency-free modules it imports, as the scaler's is (scaling.SCALER_ASSET_EXCLUDES).
"""

from __future__ import annotations

from typing import Mapping

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Stack, TimeZone, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from batch_celery_container import contract

from .nag import LOG_GROUP_KEY_ACK
from .pool import WorkerPool
from .props import ScheduleProps
from .scaling import SCALER_ASSET_DIR

SENDER_HANDLER = "batch_celery_container.schedule_sender.handler"
SENDER_ASSET_EXCLUDES = [
    # "*" does not match names that start with a dot; ".*" and "**/.*" do.
    "*", ".*", "**/.*",
    "!batch_celery_container", "!batch_celery_container/schedule_sender.py",
    "!batch_celery_container/contract.py", "!batch_celery_container/emf.py",
    "**/__pycache__", "**/*.pyc",
]
SENDER_TIMEOUT = Duration.seconds(30)
SENDER_MEMORY_MIB = 128
# Scheduler retries an invocation Lambda refused (throttling, a service error) for up to an hour:
# a fire later than that is more likely to surprise than to help (a "nightly" job at noon), so it
# goes to the events dead-letter queue and its alarm instead, for a human to decide.
SCHEDULE_MAX_EVENT_AGE = Duration.hours(1)
SCHEDULE_RETRY_ATTEMPTS = 20
# Lambda's own retries of a run that failed (an SQS error); each carries the fire's task id.
SENDER_RETRY_ATTEMPTS = 2
SENDER_MAX_EVENT_AGE = Duration.hours(1)


def fire_input(name: str, schedule: ScheduleProps, *, queue_name: str, queue_url: str) -> dict:
    """What one fire hands the sender: the task and its queue, and the fire's own scheduled time
    and execution id, which Scheduler writes in at each fire (context attributes)."""
    return {
        "schedule": name,
        "task": schedule.task,
        "args": list(schedule.args),
        "kwargs": dict(schedule.kwargs),
        "queue": queue_name,
        "queue_url": queue_url,
        "scheduled_time": scheduler.ContextAttribute.scheduled_time,
        "execution_id": scheduler.ContextAttribute.execution_id,
    }


class Schedules(Construct):
    """The sender Lambda (its role, its log group) and one EventBridge Scheduler schedule per
    entry of ``schedules``, each sending its task to the pool ``pool_of[name]``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        schedules: Mapping[str, ScheduleProps],
        pool_of: Mapping[str, str],
        pools: Mapping[str, WorkerPool],
        dead_letter_queue: sqs.IQueue,
        log_retention: logs.RetentionDays,
        key: kms.IKey | None = None,
        metrics_namespace: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.pool_of = dict(pool_of)
        # The pools some schedule sends to: the sender may send to their queues only.
        self.target_pools = [name for name in pools if name in self.pool_of.values()]
        self.log_group = logs.LogGroup(
            self, "SenderLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY, encryption_key=key,
        )
        self.role = self._sender_role(pools, dead_letter_queue)
        self.function = self._function(dead_letter_queue, metrics_namespace)
        self.scheduler_role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="EventBridge Scheduler: invoke the Celery schedule sender, dead-letter what it cannot deliver",
        )
        if key is not None:
            # Scheduler sends what it cannot deliver to the (encrypted) events dead-letter queue as
            # this role; sending to an encrypted queue takes a data key.
            key.grant(self.scheduler_role, "kms:GenerateDataKey", "kms:Decrypt")
        self.schedules: dict[str, scheduler.Schedule] = {
            name: self._schedule(name, schedule, pools[self.pool_of[name]], dead_letter_queue)
            for name, schedule in schedules.items()
        }
        self._acknowledge_findings(key)

    def _sender_role(self, pools: Mapping[str, WorkerPool], dead_letter_queue: sqs.IQueue) -> iam.Role:
        # An explicit role, not Lambda's default one with its managed AWSLambdaBasicExecutionRole.
        role = iam.Role(
            self,
            "SenderRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Celery schedule sender: send scheduled task messages to the pools' queues they route to",
        )
        self.log_group.grant_write(role)
        for name in self.target_pools:
            pools[name].queue.grant_send_messages(role)  # with kms_key: the key too
        # A run Lambda gave up on goes to the events dead-letter queue (the function's DLQ).
        dead_letter_queue.grant_send_messages(role)
        return role

    def _function(self, dead_letter_queue: sqs.IQueue, metrics_namespace: str | None) -> lambda_.Function:
        return lambda_.Function(
            self,
            "Sender",
            description="Send the Celery task message of a batch-celery schedule to its pool's queue",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler=SENDER_HANDLER,
            code=lambda_.Code.from_asset(str(SCALER_ASSET_DIR), exclude=SENDER_ASSET_EXCLUDES),
            role=self.role,
            log_group=self.log_group,
            timeout=SENDER_TIMEOUT,
            memory_size=SENDER_MEMORY_MIB,
            retry_attempts=SENDER_RETRY_ATTEMPTS,
            max_event_age=SENDER_MAX_EVENT_AGE,
            dead_letter_queue=dead_letter_queue,
            environment={contract.METRICS_NAMESPACE: metrics_namespace} if metrics_namespace else None,
        )

    def _schedule(self, name: str, schedule: ScheduleProps, pool: WorkerPool,
                  dead_letter_queue: sqs.IQueue) -> scheduler.Schedule:
        expression = schedule.expression
        return scheduler.Schedule(
            self,
            f"Schedule-{name}",
            description=(f"batch-celery schedule {name}: {schedule.task} {expression}"
                         + (f" {schedule.timezone}" if schedule.cron is not None else "")
                         + f" to pool {pool.name}")[:512],
            schedule=scheduler.ScheduleExpression.expression(expression, TimeZone.of(schedule.timezone)),
            target=scheduler_targets.LambdaInvoke(
                self.function,
                input=scheduler.ScheduleTargetInput.from_object(
                    fire_input(name, schedule, queue_name=pool.queue.queue_name, queue_url=pool.queue.queue_url)
                ),
                role=self.scheduler_role,
                dead_letter_queue=dead_letter_queue,
                retry_attempts=SCHEDULE_RETRY_ATTEMPTS,
                max_event_age=SCHEDULE_MAX_EVENT_AGE,
            ),
        )

    def schedules_json(self, schedules: Mapping[str, ScheduleProps]) -> str:
        """The ``Schedules`` output: each schedule's task, pool, expression and time zone, which
        ``python -m batch_celery status`` lists beside their last fires."""
        return Stack.of(self).to_json_string({
            name: {"task": s.task, "pool": self.pool_of[name], "expression": s.expression, "timezone": s.timezone}
            for name, s in schedules.items()
        })

    def _acknowledge_findings(self, key: kms.IKey | None) -> None:
        Validations.of(self.scheduler_role).acknowledge(Acknowledgment(
            id=f"AwsSolutions-IAM5[Resource::<{Stack.of(self).get_logical_id(self.function.node.default_child)}.Arn>:*]",
            reason=("lambda:InvokeFunction on the schedule sender and its own versions and aliases (the ARN "
                    "with ':*', as CDK's LambdaInvoke target grants it): one function, nothing else."),
        ))
        if key is None:
            Validations.of(self.log_group).acknowledge(LOG_GROUP_KEY_ACK)
        for rule, reason in NIST_SENDER_ACKS.items():
            Validations.of(self.function).acknowledge(Acknowledgment(id=rule, reason=reason))
        Validations.of(self.function).acknowledge(Acknowledgment(
            id="AwsSolutions-L1",
            reason=("The runtime is pinned to python3.12, the version the sender is written and tested for; "
                    "moving it is a deliberate, tested change, not a silent one."),
        ))


NIST_SENDER_ACKS = {
    "NIST.800.53.R5-LambdaInsideVPC": (
        "The schedule sender calls one AWS API (SQS SendMessage to the queues its schedules target) "
        "with its own narrowly scoped role, holds no data and serves no network traffic; a VPC would "
        "add an ENI and a NAT or endpoint path and no protection."
    ),
    "NIST.800.53.R5-LambdaConcurrency": (
        "Schedules fire at most once a minute each, and a throttled asynchronous run is retried by "
        "Lambda; reserving concurrency would only take it from the account's other functions."
    ),
}

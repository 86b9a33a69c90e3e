"""What starts workers: queue alarms, EventBridge rules, and (by default) the proportional scaler.

One brain decides how many workers run. In ``scaler`` mode (the default) only the scaler Lambda
submits workers: one function serves every pool; it runs once a minute and, while there is work,
decides every ``poll_seconds`` within that run, sizing each pool's fleet from that pool's backlog
and deducting its jobs already active, never beyond the pool's ``max_workers``. With
``idle_check`` "minute" (the default) a run that finds no work, SCALER_COOLDOWN_SECONDS after it
last found some, ends after that one check (handler.run). The alarms' rules only start the
scaler early; they have no Batch target, so nothing outside the scaler's count can add a worker.

``alarms`` mode is the original sample's design, for users who want no Lambda: per pool, the low
rule submits one job, the high rule an array job, the SLA rule one job. An alarm rule fires once per
transition into ALARM, so this mode strands backlogs below the low threshold until the SLA alarm
fires, does not follow a growing backlog and is not capped by ``max_workers`` (only ``max_vcpus``
limits what runs; further jobs wait RUNNABLE).
"""

from __future__ import annotations

import math
from pathlib import Path

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from batch_celery_container import contract

from .scaler.policy import expected_start_seconds

from .nag import LOG_GROUP_KEY_ACK
from .task_queue import queue_encryption
from .pool import WorkerPool

# The Lambda asset is the folder holding the `scaler` package, filtered down to that package, so
# the handler imports as top-level `scaler` and the CDK code never ships with it.
# The asset is the repository root with only the scaler package and the two dependency-free
# container modules it shares with the workers (the contract's names, the EMF format).
SCALER_ASSET_DIR = Path(__file__).resolve().parent.parent
SCALER_HANDLER = "batch_celery.scaler.handler.handler"
SCALER_ASSET_EXCLUDES = [
    # "*" does not match names that start with a dot; ".*" and "**/.*" do.
    "*", ".*", "**/.*", "!batch_celery", "!batch_celery/__init__.py", "!batch_celery/scaler", "!batch_celery/scaler/**",
    "!batch_celery_container", "!batch_celery_container/contract.py", "!batch_celery_container/emf.py",
    "**/__pycache__", "**/*.pyc",
]

METRIC_PERIOD = Duration.minutes(1)
# SubmitJob has no idempotency token: when EventBridge retries a submission whose answer was lost,
# the workers are submitted twice. So an alarm rule submits exactly once; an event it could not
# deliver lands in the events dead-letter queue (and its alarm) instead.
SUBMIT_RETRY_ATTEMPTS = 0

# The schedule starts one scaler run a minute; the run decides every poll_seconds and starts no
# decision after SCALER_LOOP_SECONDS, so that it has returned (a decision takes about a second)
# before the next minute's run arrives. A run that is still busy when the next one arrives holds
# it back: reserved concurrency 1 throttles it and Lambda retries it until SCALER_MAX_EVENT_AGE.
SCHEDULE_PERIOD = Duration.minutes(1)
SCALER_LOOP_SECONDS = 55
# After a decision last found work (a message, an active worker job), the runs go on deciding every
# poll_seconds this long before an idle run makes one check and ends: more work often follows, and
# a message arriving then is seen within poll_seconds rather than a minute. In the simulator
# (python -m bench.scaling) 300 s keeps the loop's p95 wait for one task every 5 minutes (50 s;
# 95-100 s with none); a quiet spell's cool-down costs 300 s of the function, about $0.001.
SCALER_COOLDOWN_SECONDS = 300
# Time left for the last decision of a run. A decision takes about a second; one held up by a slow
# AWS answer (handler.py: 5 s connect, 10 s read, 3 attempts) can outlast it, and the run then
# times out, which counts as a failed run like any other.
SCALER_DECISION_BUDGET_SECONDS = 30
SCALER_TIMEOUT = Duration.seconds(SCALER_LOOP_SECONDS + SCALER_DECISION_BUDGET_SECONDS)
SCALER_MEMORY_MIB = 256
# An event that arrives while a run loops (an alarm's, or a schedule's that came early) is
# throttled and retried by Lambda until this age, then dropped: the running loop already decides
# every poll_seconds, and a run that could not start within a minute is superseded by the next.
SCALER_MAX_EVENT_AGE = Duration.seconds(60)
# EventBridge retries a Lambda delivery only when Lambda did not accept the event; a duplicate run
# is harmless (each decision counts active jobs first), so a few retries are fine here.
SCALER_TARGET_RETRY_ATTEMPTS = 2


def sla_periods(age_alarm_seconds: int) -> int:
    """One-minute periods in which a message must be visible before the SLA alarm fires."""
    return math.ceil(age_alarm_seconds / METRIC_PERIOD.to_seconds())



def events_dead_letter_queue(scope: Construct, construct_id: str,
                             removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
                             key: kms.IKey | None = None) -> sqs.Queue:
    """Deliveries EventBridge gave up on (a rule's Batch submission or scaler run) land here."""
    queue = sqs.Queue(
        scope,
        construct_id,
        removal_policy=removal_policy,
        **queue_encryption(key),
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )
    Validations.of(queue).acknowledge(
        Acknowledgment(
            id="AwsSolutions-SQS3",
            reason=(
                "This queue is itself a dead-letter queue: EventBridge sends the events it "
                "failed to deliver here (rule target DeadLetterConfig), which cdk-nag cannot "
                "see because only SQS redrive policies mark a queue as a DLQ."
            ),
        )
    )
    return queue


class Scaler(Construct):
    """The one scaler Lambda of every pool, its role, its log group and its one-minute schedule.

    Its role may read each pool's queue depth and submit each pool's worker job definition to
    that pool's job queue, nothing else. IAM authorizes SubmitJob's job queue and job definition
    one by one, so one role cannot tie a definition to its queue; the handler pairs them from its
    POOLS list. A mismatched pair would run the job with its own definition's role and queue, but on
    the other pool's compute.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pools: list[WorkerPool],
        poll_seconds: int,
        events_dead_letter_queue: sqs.IQueue,
        idle_check: str = "minute",
        log_retention: logs.RetentionDays,
        key: kms.IKey | None = None,
        metrics_namespace: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self, "ScalerLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY, encryption_key=key,
        )
        self.role = self._role(pools)
        self.function = self._function(pools, poll_seconds, idle_check, metrics_namespace)
        self.target = targets.LambdaFunction(
            self.function,
            dead_letter_queue=events_dead_letter_queue,
            retry_attempts=SCALER_TARGET_RETRY_ATTEMPTS,
            max_event_age=SCALER_MAX_EVENT_AGE,
        )
        self.schedule = self._schedule(poll_seconds, idle_check)
        self._acknowledge_findings(key)

    def _role(self, pools: list[WorkerPool]) -> iam.Role:
        # An explicit role instead of the default one, which carries the managed
        # AWSLambdaBasicExecutionRole policy (logs:* on every log group of the account).
        role = iam.Role(
            self,
            "ScalerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Celery worker scaler: read each pool's queue depth, list and submit its worker jobs",
        )
        self.log_group.grant_write(role)
        for pool in pools:
            pool.queue.grant(role, "sqs:GetQueueAttributes")
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["batch:SubmitJob"],
                resources=[arn for pool in pools
                           for arn in (pool.job_queue.job_queue_arn, pool.job_definition.job_definition_arn)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["batch:ListJobs", "batch:DescribeJobs"], resources=["*"])
        )
        # Target sizing reads the pools' reported run times (handler.read_run_times). GetMetricData
        # has no resource type, and the cloudwatch:namespace condition key is set by PutMetricData
        # only (a condition on it would deny every read), so it is Resource '*'.
        if any(not pool.props.messages_per_worker for pool in pools):
            role.add_to_policy(iam.PolicyStatement(actions=["cloudwatch:GetMetricData"], resources=["*"]))
        return role

    def _pools_json(self, pools: list[WorkerPool]) -> str:
        """The handler's POOLS: what it reads, and what it submits to, for each pool (warm
        capacity only for the pools that keep some)."""
        return Stack.of(self).to_json_string([
            {
                **({"min_workers": pool.props.min_workers, "warm_hours": pool.props.min_workers_hours or ""}
                   if pool.props.min_workers else {}),
                "pool": pool.name,
                "queue_url": pool.queue.queue_url,
                "job_queue": pool.job_queue.job_queue_arn,
                "job_definition": pool.job_definition.job_definition_arn,
                "job_name": pool.job_name,
                # 0: size to the target wait from the pool's reported run times (policy.py).
                "messages_per_worker": pool.props.messages_per_worker or 0,
                "target_wait_seconds": pool.props.target_wait_seconds,
                "start_seconds": expected_start_seconds(pool.props.compute),
                "max_workers": pool.props.max_workers,
                # A worker of concurrency N holds up to N in-flight messages and is still one worker.
                "tasks_per_worker": pool.props.concurrency,
            }
            for pool in pools
        ])

    def _function(self, pools: list[WorkerPool], poll_seconds: int, idle_check: str,
                  metrics_namespace: str | None) -> lambda_.Function:
        return lambda_.Function(
            self,
            "Scaler",
            description="Submit each pool's Celery worker jobs in proportion to its task queue backlog",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler=SCALER_HANDLER,
            code=lambda_.Code.from_asset(str(SCALER_ASSET_DIR), exclude=SCALER_ASSET_EXCLUDES),
            role=self.role,
            log_group=self.log_group,
            timeout=SCALER_TIMEOUT,
            memory_size=SCALER_MEMORY_MIB,
            # One run at a time: two overlapping runs would both see the same deficit and
            # submit it twice. An event that arrives while a run loops is throttled and
            # retried by Lambda until max_event_age, then dropped.
            reserved_concurrent_executions=1,
            # A failed run is not worth repeating later: the next minute's run reads fresh numbers.
            retry_attempts=0,
            max_event_age=SCALER_MAX_EVENT_AGE,
            environment={
                "POOLS": self._pools_json(pools),
                "POLL_SECONDS": str(poll_seconds),
                "LOOP_SECONDS": str(SCALER_LOOP_SECONDS),
                "IDLE_CHECK": idle_check,
                "COOLDOWN_SECONDS": str(SCALER_COOLDOWN_SECONDS),
                **({contract.METRICS_NAMESPACE: metrics_namespace} if metrics_namespace else {}),
            },
        )

    def _schedule(self, poll_seconds: int, idle_check: str) -> events.Rule:
        return events.Rule(
            self,
            "ScalerSchedule",
            description=f"Run the Celery worker scaler every minute (it decides every {poll_seconds} s within the run"
                        + (" while there is work)" if idle_check == "minute" else ")"),
            schedule=events.Schedule.rate(SCHEDULE_PERIOD),
            targets=[self.target],
        )

    def _acknowledge_findings(self, key: kms.IKey | None) -> None:
        Validations.of(self.role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason=(
                    "batch:ListJobs, batch:DescribeJobs and cloudwatch:GetMetricData support no "
                    "resource-level permissions (the IAM service authorization reference lists no "
                    "resource type for them), so they need Resource '*'; they only read job metadata "
                    "and metrics (the pools' task run times). batch:SubmitJob, the "
                    "only write, is scoped to the pools' job queues and worker job definitions."
                ),
            )
        )
        if key is None:
            Validations.of(self.log_group).acknowledge(LOG_GROUP_KEY_ACK)
        for rule, reason in NIST_SCALER_ACKS.items():
            Validations.of(self.function).acknowledge(Acknowledgment(id=rule, reason=reason))
        Validations.of(self.function).acknowledge(
            Acknowledgment(
                id="AwsSolutions-L1",
                reason=(
                    "The runtime is pinned to python3.12, the version the scaler code is written "
                    "and tested for; moving it is a deliberate, tested change, not a silent one."
                ),
            )
        )


NIST_SCALER_ACKS = {
    "NIST.800.53.R5-LambdaInsideVPC": (
        "The scaler calls only AWS APIs (SQS GetQueueAttributes, Batch ListJobs, DescribeJobs and "
        "SubmitJob) with its own narrowly scoped role, holds no data and serves no network "
        "traffic; a VPC would add an ENI and a NAT or endpoint path and no protection."
    ),
    "NIST.800.53.R5-LambdaDLQ": (
        "EventBridge invokes the scaler, and a delivery it gives up on goes to the events "
        "dead-letter queue set on the rule target (with its alarm to the topic); a failed run "
        "raises the scaler-failing alarm. Its work is idempotent: the next minute's run decides anew."
    ),
}


class PoolAlarms(Construct):
    """A pool's depth and SLA alarms, and the rules that act on them.

    ``scaler`` given: the rules only run the scaler early. None (alarms mode): the low and SLA
    rules submit one worker of the pool, the high rule an array job of ``high_array_size``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pool: WorkerPool,
        scaler: Scaler | None,
        events_dead_letter_queue: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        p = pool.props
        visible = pool.queue.metric_approximate_number_of_messages_visible(
            period=METRIC_PERIOD, statistic=cloudwatch.Stats.MAXIMUM
        )

        def then(workers: int) -> str:
            if scaler is not None:
                return "run the scaler"
            return "submit one worker" if workers == 1 else f"submit {workers} workers"

        waiting = f"Celery tasks waiting in pool {pool.name}"
        self.low_alarm = self._alarm("LowDepthAlarm", visible, p.low_threshold, f"{p.low_threshold}+ {waiting}: {then(1)}")
        self.high_alarm = self._alarm(
            "HighDepthAlarm", visible, p.high_threshold, f"{p.high_threshold}+ {waiting}: {then(p.high_array_size)}"
        )
        for alarm in (self.low_alarm, self.high_alarm):
            Validations.of(alarm).acknowledge(Acknowledgment(
                id="NIST.800.53.R5-CloudWatchAlarmAction",
                reason=(
                    "A depth alarm acts through the EventBridge rule on its state change (it runs the "
                    "scaler, or in alarms mode submits workers), not through an alarm action; it "
                    "needs no human, so it notifies nobody. The alarms that do have the topic as action."
                ),
            ))
        # The SLA: "a task waited longer than age_alarm_seconds", never "a task runs long". The
        # obvious metric, ApproximateAgeOfOldestMessage, counts in-flight messages too, so any task
        # running longer than the SLA would fire it and start a useless worker. Instead: at least
        # one message visible (waiting, not picked up) at every one-minute reading, for as many
        # consecutive minutes as the SLA lasts. It fires when no worker runs at all, and when the
        # workers that run cannot keep up. Trade-off: a steadily fed busy queue can show a visible
        # message at every reading while each waits only seconds; the alarm then fires with short
        # waits. In scaler mode it only runs the scaler, which submits nothing the backlog does not
        # call for; in alarms mode it submits one worker more.
        minimum_visible = pool.queue.metric_approximate_number_of_messages_visible(
            period=METRIC_PERIOD, statistic=cloudwatch.Stats.MINIMUM
        )
        periods = sla_periods(p.age_alarm_seconds)
        self.sla_alarm = self._alarm(
            "SlaAlarm", minimum_visible, 1,
            f"a Celery task of pool {pool.name} has waited about {p.age_alarm_seconds} s (a message "
            f"visible in each of {periods} consecutive minutes): {then(1)}",
            evaluation_periods=periods,
        )

        if scaler is not None:
            low_target = high_target = sla_target = scaler.target
            target_text = "run the worker scaler"
        else:
            def submit(size: int | None) -> targets.BatchJob:
                return targets.BatchJob(
                    pool.job_queue.job_queue_arn,
                    pool.job_queue,
                    pool.job_definition.job_definition_arn,
                    pool.job_definition,
                    job_name=pool.job_name,
                    size=size,
                    dead_letter_queue=events_dead_letter_queue,
                    retry_attempts=SUBMIT_RETRY_ATTEMPTS,
                )

            low_target, high_target, sla_target = submit(None), submit(p.high_array_size), submit(None)
            target_text = f"submit Celery worker jobs of pool {pool.name}"
        self.low_rule = self._on_alarm("LowDepthRule", self.low_alarm, low_target, target_text)
        self.high_rule = self._on_alarm("HighDepthRule", self.high_alarm, high_target, target_text)
        self.sla_rule = self._on_alarm("SlaRule", self.sla_alarm, sla_target, target_text)

    def _alarm(
        self,
        construct_id: str,
        metric: cloudwatch.Metric,
        threshold: int,
        description: str,
        *,
        evaluation_periods: int = 1,
    ) -> cloudwatch.Alarm:
        return cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=evaluation_periods,
            # Every period must breach: one minute without a visible message resets the SLA count.
            datapoints_to_alarm=evaluation_periods,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            # SQS stops publishing metrics for an idle queue: no data means nothing is waiting.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )

    def _on_alarm(self, construct_id: str, alarm: cloudwatch.Alarm, target: events.IRuleTarget,
                  target_text: str) -> events.Rule:
        return events.Rule(
            self,
            construct_id,
            description=f"When {alarm.node.path.split('/', 1)[-1]} goes into ALARM: {target_text}",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=[alarm.alarm_arn],
                detail={"state": {"value": ["ALARM"]}},
            ),
            targets=[target],
        )

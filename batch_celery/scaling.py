"""What starts workers: queue alarms, EventBridge rules, and (by default) the proportional scaler.

One brain decides how many workers run. In ``scaler`` mode (the default) only the scaler Lambda
submits workers: it runs once a minute and decides every ``poll_seconds`` within that run, sizing
the fleet from the backlog and deducting the jobs already active, never beyond ``max_workers``.
The alarms' rules only start the scaler early; they have no Batch target, so nothing outside the
scaler's count can add a worker.

``alarms`` mode is the original sample's design, for users who want no Lambda: the low rule
submits one job, the high rule an array job, the SLA rule one job. An alarm rule fires once per
transition into ALARM, so this mode strands backlogs below the low threshold until the SLA alarm
fires, does not follow a growing backlog and is not capped by ``max_workers`` (only ``max_vcpus``
limits what runs; further jobs wait RUNNABLE).
"""

from __future__ import annotations

import math
from pathlib import Path

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_batch as batch
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .settings import SCALING_MODES

# The Lambda asset is the folder holding the `scaler` package, filtered down to that package, so
# the handler imports as top-level `scaler` and the CDK code never ships with it.
SCALER_PARENT_DIR = Path(__file__).resolve().parent
SCALER_HANDLER = "scaler.handler.handler"
SCALER_ASSET_EXCLUDES = ["*", "!scaler", "!scaler/**", "**/__pycache__", "**/*.pyc"]

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


class Scaling(Construct):
    """Alarms on the task queue and rules on them; in scaler mode, the scaler and its schedule."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        queue: sqs.IQueue,
        job_queue: batch.IJobQueue,
        worker_job_definition: batch.IJobDefinition,
        worker_job_name: str,
        scaling_mode: str = "scaler",
        low_threshold: int = 5,
        high_threshold: int = 50,
        high_array_size: int = 10,
        age_alarm_seconds: int = 300,
        messages_per_worker: int = 10,
        max_workers: int = 48,
        tasks_per_worker: int = 1,
        poll_seconds: int = 10,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        if scaling_mode not in SCALING_MODES:
            raise ValueError(f"scaling_mode must be one of {', '.join(SCALING_MODES)}, got {scaling_mode!r}")
        alarms_submit = scaling_mode == "alarms"

        # Deliveries EventBridge gave up on land here instead of vanishing.
        self.events_dead_letter_queue = sqs.Queue(
            self,
            "EventsDeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        Validations.of(self.events_dead_letter_queue).acknowledge(
            Acknowledgment(
                id="AwsSolutions-SQS3",
                reason=(
                    "This queue is itself a dead-letter queue: EventBridge sends the events it "
                    "failed to deliver here (rule target DeadLetterConfig), which cdk-nag cannot "
                    "see because only SQS redrive policies mark a queue as a DLQ."
                ),
            )
        )

        visible = queue.metric_approximate_number_of_messages_visible(
            period=METRIC_PERIOD, statistic=cloudwatch.Stats.MAXIMUM
        )

        def then(workers: int) -> str:
            if not alarms_submit:
                return "run the scaler"
            return "submit one worker" if workers == 1 else f"submit {workers} workers"

        self.low_alarm = self._alarm(
            "LowDepthAlarm", visible, low_threshold, f"{low_threshold}+ Celery tasks waiting: {then(1)}"
        )
        self.high_alarm = self._alarm(
            "HighDepthAlarm", visible, high_threshold,
            f"{high_threshold}+ Celery tasks waiting: {then(high_array_size)}",
        )
        # The SLA: "a task waited longer than age_alarm_seconds", never "a task runs long". The
        # obvious metric, ApproximateAgeOfOldestMessage, counts in-flight messages too, so any task
        # running longer than the SLA would fire it and start a useless worker. Instead: at least
        # one message visible (waiting, not picked up) at every one-minute reading, for as many
        # consecutive minutes as the SLA lasts. It fires when no worker runs at all, and when the
        # workers that run cannot keep up. Trade-off: a steadily fed busy queue can show a visible
        # message at every reading while each waits only seconds; the alarm then fires with short
        # waits. In scaler mode it only runs the scaler, which submits nothing the backlog does not
        # call for; in alarms mode it submits one worker more.
        waiting = queue.metric_approximate_number_of_messages_visible(
            period=METRIC_PERIOD, statistic=cloudwatch.Stats.MINIMUM
        )
        periods = sla_periods(age_alarm_seconds)
        self.sla_alarm = self._alarm(
            "SlaAlarm", waiting, 1,
            f"a Celery task has waited about {age_alarm_seconds} s (a message visible in each of "
            f"{periods} consecutive minutes): {then(1)}",
            evaluation_periods=periods,
        )

        self.scaler: lambda_.Function | None = None
        self.schedule: events.Rule | None = None
        if alarms_submit:
            def submit(size: int | None) -> targets.BatchJob:
                return targets.BatchJob(
                    job_queue.job_queue_arn,
                    job_queue,
                    worker_job_definition.job_definition_arn,
                    worker_job_definition,
                    job_name=worker_job_name,
                    size=size,
                    dead_letter_queue=self.events_dead_letter_queue,
                    retry_attempts=SUBMIT_RETRY_ATTEMPTS,
                )

            low_target, high_target, sla_target = submit(None), submit(high_array_size), submit(None)
        else:
            self.scaler = self._scaler(
                queue=queue,
                job_queue=job_queue,
                worker_job_definition=worker_job_definition,
                worker_job_name=worker_job_name,
                messages_per_worker=messages_per_worker,
                max_workers=max_workers,
                tasks_per_worker=tasks_per_worker,
                poll_seconds=poll_seconds,
                log_retention=log_retention,
            )
            scaler_target = targets.LambdaFunction(
                self.scaler,
                dead_letter_queue=self.events_dead_letter_queue,
                retry_attempts=SCALER_TARGET_RETRY_ATTEMPTS,
                max_event_age=SCALER_MAX_EVENT_AGE,
            )
            self.schedule = events.Rule(
                self,
                "ScalerSchedule",
                description="Run the Celery worker scaler every minute (it decides every "
                f"{poll_seconds} s within the run)",
                schedule=events.Schedule.rate(SCHEDULE_PERIOD),
                targets=[scaler_target],
            )
            low_target = high_target = sla_target = scaler_target

        self.low_rule = self._on_alarm("LowDepthRule", self.low_alarm, low_target)
        self.high_rule = self._on_alarm("HighDepthRule", self.high_alarm, high_target)
        self.sla_rule = self._on_alarm("SlaRule", self.sla_alarm, sla_target)

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

    def _on_alarm(self, construct_id: str, alarm: cloudwatch.Alarm, target: events.IRuleTarget) -> events.Rule:
        target_text = "run the worker scaler" if self.scaler is not None else "submit Celery worker jobs"
        return events.Rule(
            self,
            construct_id,
            description=f"When {alarm.node.id} goes into ALARM: {target_text}",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=[alarm.alarm_arn],
                detail={"state": {"value": ["ALARM"]}},
            ),
            targets=[target],
        )

    def _scaler(
        self,
        *,
        queue: sqs.IQueue,
        job_queue: batch.IJobQueue,
        worker_job_definition: batch.IJobDefinition,
        worker_job_name: str,
        messages_per_worker: int,
        max_workers: int,
        tasks_per_worker: int,
        poll_seconds: int,
        log_retention: logs.RetentionDays,
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self, "ScalerLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        # An explicit role instead of the default one, which carries the managed
        # AWSLambdaBasicExecutionRole policy (logs:* on every log group of the account).
        role = iam.Role(
            self,
            "ScalerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Celery worker scaler: read queue depth, list and submit worker jobs",
        )
        log_group.grant_write(role)
        queue.grant(role, "sqs:GetQueueAttributes")
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["batch:SubmitJob"],
                resources=[job_queue.job_queue_arn, worker_job_definition.job_definition_arn],
            )
        )
        list_jobs = iam.PolicyStatement(actions=["batch:ListJobs", "batch:DescribeJobs"], resources=["*"])
        role.add_to_policy(list_jobs)

        function = lambda_.Function(
            self,
            "Scaler",
            description="Submit Celery worker jobs in proportion to the task queue backlog",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler=SCALER_HANDLER,
            code=lambda_.Code.from_asset(str(SCALER_PARENT_DIR), exclude=SCALER_ASSET_EXCLUDES),
            role=role,
            log_group=log_group,
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
                "QUEUE_URL": queue.queue_url,
                "JOB_QUEUE": job_queue.job_queue_arn,
                "JOB_DEFINITION": worker_job_definition.job_definition_arn,
                "JOB_NAME": worker_job_name,
                "MESSAGES_PER_WORKER": str(messages_per_worker),
                "MAX_WORKERS": str(max_workers),
                # A worker of concurrency N holds up to N in-flight messages and is still one worker.
                "TASKS_PER_WORKER": str(tasks_per_worker),
                "POLL_SECONDS": str(poll_seconds),
                "LOOP_SECONDS": str(SCALER_LOOP_SECONDS),
            },
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason=(
                    "batch:ListJobs and batch:DescribeJobs support no resource-level permissions "
                    "(the IAM service authorization reference lists no resource type for them), "
                    "so they need Resource '*'; they only read job metadata. batch:SubmitJob, the "
                    "only write, is scoped to this stack's job queue and worker job definition."
                ),
            )
        )
        Validations.of(function).acknowledge(
            Acknowledgment(
                id="AwsSolutions-L1",
                reason=(
                    "The runtime is pinned to python3.12, the version the scaler code is written "
                    "and tested for; moving it is a deliberate, tested change, not a silent one."
                ),
            )
        )
        return function

"""What starts workers: queue alarms with EventBridge rules, and the proportional scaler.

The depth alarms are the design of the original sample: an alarm rule fires once per transition
into ALARM, so on its own it strands small backlogs, never adds workers to a growing one and never
replaces a crashed worker. The scaler closes those gaps: every minute (and at once on every alarm)
it sizes the worker fleet from the backlog, deducting jobs already active. The age alarm serves a
trickle that never reaches the depth thresholds even when the scaler is switched off.
"""

from __future__ import annotations

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

# The Lambda asset is the folder holding the `scaler` package, filtered down to that package, so
# the handler imports as top-level `scaler` and the CDK code never ships with it.
SCALER_PARENT_DIR = Path(__file__).resolve().parent
SCALER_HANDLER = "scaler.handler.handler"
SCALER_ASSET_EXCLUDES = ["*", "!scaler", "!scaler/**", "**/__pycache__", "**/*.pyc"]

METRIC_PERIOD = Duration.minutes(1)
# EventBridge keeps retrying a failed submission for this long; a worker started late still helps.
SUBMIT_RETRY_ATTEMPTS = 3
SUBMIT_MAX_EVENT_AGE = Duration.hours(1)
# A scaler run is superseded by the next one a minute later: never queue up stale runs.
SCALER_MAX_EVENT_AGE = Duration.seconds(60)
SCALER_TIMEOUT = Duration.seconds(30)


class Scaling(Construct):
    """Alarms on the task queue, rules that submit worker jobs, and (optionally) the scaler."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        queue: sqs.IQueue,
        job_queue: batch.IJobQueue,
        worker_job_definition: batch.IJobDefinition,
        worker_job_name: str,
        low_threshold: int = 5,
        high_threshold: int = 50,
        high_array_size: int = 10,
        age_alarm_seconds: int = 300,
        scaler_enabled: bool = True,
        messages_per_worker: int = 10,
        max_workers: int = 48,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)

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
        oldest_age = queue.metric_approximate_age_of_oldest_message(
            period=METRIC_PERIOD, statistic=cloudwatch.Stats.MAXIMUM
        )
        self.low_alarm = self._alarm(
            "LowDepthAlarm", visible, low_threshold,
            f"{low_threshold}+ Celery tasks waiting: submit one worker",
        )
        self.high_alarm = self._alarm(
            "HighDepthAlarm", visible, high_threshold,
            f"{high_threshold}+ Celery tasks waiting: submit {high_array_size} workers",
        )
        self.age_alarm = self._alarm(
            "AgeAlarm", oldest_age, age_alarm_seconds,
            f"oldest Celery task waited {age_alarm_seconds}+ s (the latency SLA): submit one worker",
        )

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
                max_event_age=SUBMIT_MAX_EVENT_AGE,
            )

        self.low_rule = self._on_alarm("LowDepthRule", self.low_alarm, submit(None))
        self.high_rule = self._on_alarm("HighDepthRule", self.high_alarm, submit(high_array_size))
        self.age_rule = self._on_alarm("AgeRule", self.age_alarm, submit(None))

        self.scaler: lambda_.Function | None = None
        self.schedule: events.Rule | None = None
        if scaler_enabled:
            self.scaler = self._scaler(
                queue=queue,
                job_queue=job_queue,
                worker_job_definition=worker_job_definition,
                worker_job_name=worker_job_name,
                messages_per_worker=messages_per_worker,
                max_workers=max_workers,
                log_retention=log_retention,
            )
            scaler_target = targets.LambdaFunction(
                self.scaler,
                dead_letter_queue=self.events_dead_letter_queue,
                retry_attempts=2,
                max_event_age=SCALER_MAX_EVENT_AGE,
            )
            self.schedule = events.Rule(
                self,
                "ScalerSchedule",
                description="Run the Celery worker scaler every minute",
                schedule=events.Schedule.rate(Duration.minutes(1)),
                targets=[scaler_target],
            )
            # Each alarm also runs the scaler at once, a minute sooner than the schedule would.
            # The rule's own Batch target stays as the floor if the scaler fails; the scaler may
            # not yet see that job and submit one more worker, which idles out after IDLE_SECONDS.
            for rule in (self.low_rule, self.high_rule, self.age_rule):
                rule.add_target(scaler_target)

    def _alarm(
        self, construct_id: str, metric: cloudwatch.Metric, threshold: int, description: str
    ) -> cloudwatch.Alarm:
        return cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            # SQS stops publishing metrics for an idle queue: no data means nothing is waiting.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )

    def _on_alarm(self, construct_id: str, alarm: cloudwatch.Alarm, target: events.IRuleTarget) -> events.Rule:
        return events.Rule(
            self,
            construct_id,
            description=f"Start Celery workers when {alarm.node.id} goes into ALARM",
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
            memory_size=256,
            # One run at a time: two overlapping runs would both see the same deficit and
            # submit it twice.
            reserved_concurrent_executions=1,
            # A failed or throttled run is not worth retrying later: the next minute's run
            # reads fresh numbers.
            retry_attempts=0,
            max_event_age=SCALER_MAX_EVENT_AGE,
            environment={
                "QUEUE_URL": queue.queue_url,
                "JOB_QUEUE": job_queue.job_queue_arn,
                "JOB_DEFINITION": worker_job_definition.job_definition_arn,
                "JOB_NAME": worker_job_name,
                "MESSAGES_PER_WORKER": str(messages_per_worker),
                "MAX_WORKERS": str(max_workers),
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

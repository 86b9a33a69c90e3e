"""Alarms that reach someone: dead-lettered tasks, undelivered events, failed scaler runs, tasks
waiting past the SLA, failed worker jobs, all published to one encrypted SNS topic."""

from __future__ import annotations

from typing import Mapping

from aws_cdk import Duration
from aws_cdk import aws_batch as batch
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from batch_celery_container.contract import EXIT_JOB_DEADLINE

from .props import pascal


# A run loops for a minute and fails (one Error) if any of its decisions failed, so the metric counts
# minutes with a failure, not failed decisions: a burst of throttling inside one minute is one
# error. One such minute can be a throttled API call the next decisions get past; three within
# five minutes is a scaler that cannot do its job (IAM, a deleted job queue, ...). A run that times
# out counts the same way.
SCALER_FAILED_RUNS = 3
# The services that publish to the alarm topic (alarm actions, the failed-job rule) and send to
# the events dead-letter queue: an encrypted topic or queue needs their use of its key.
PUBLISHERS = ("cloudwatch.amazonaws.com", "events.amazonaws.com")


class Monitoring(Construct):
    """The alarm topic, and what notifies it: one alarm per dead-letter queue (any message there
    needs a human), one on the scaler, each pool's SLA alarm, and every worker job that ends FAILED
    (a crash, or a job Batch cancelled after waiting RUNNABLE too long). The depth alarms, which
    only start workers, stay quiet.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        task_dead_letter_queues: Mapping[str, sqs.IQueue],
        events_dead_letter_queue: sqs.IQueue,
        sla_alarms: Mapping[str, cloudwatch.IAlarm],
        job_queues: Mapping[str, batch.IJobQueue],
        scaler: lambda_.IFunction | None = None,
        alarm_email: str | None = None,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        # A customer-managed key: CloudWatch and EventBridge publish to an encrypted topic only
        # when the key's policy lets them use it, which an AWS managed key's policy never does.
        # The deployment's key when it has one (kms_key; the construct grants them), else one here.
        if key is None:
            key = kms.Key(
                self, "AlarmTopicKey", enable_key_rotation=True,
                description="Encrypts the batch-celery alarm topic",
            )
            for service in PUBLISHERS:
                key.grant(iam.ServicePrincipal(service), "kms:Decrypt", "kms:GenerateDataKey*")
        self.key = key
        self.topic = sns.Topic(
            self, "AlarmTopic", display_name="batch-celery alarms", master_key=self.key, enforce_ssl=True,
        )
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        notify = cloudwatch_actions.SnsAction(self.topic)
        for alarm in sla_alarms.values():
            alarm.add_alarm_action(notify)
        # Pool name -> the alarm on its dead-letter queue.
        self.task_dead_letter_alarms = {
            pool: self._not_empty(
                f"{pascal(pool)}TaskDeadLetterAlarm",
                queue,
                f"Celery tasks of pool {pool} were dead-lettered (poison message, failed too often, or "
                "a countdown too far ahead); the message attribute batch_celery_reason says which",
            )
            for pool, queue in task_dead_letter_queues.items()
        }
        self.events_dead_letter_alarm = self._not_empty(
            "EventsDeadLetterAlarm",
            events_dead_letter_queue,
            "EventBridge could not submit a worker job or run the scaler",
        )
        self.scaler_failing_alarm: cloudwatch.Alarm | None = None
        if scaler is not None:
            self.scaler_failing_alarm = cloudwatch.Alarm(
                self,
                "ScalerFailingAlarm",
                metric=scaler.metric_errors(period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM),
                threshold=SCALER_FAILED_RUNS,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=(
                    "3+ worker scaler runs (a minute of decisions each) failed within 5 minutes; its "
                    "log group names the failing call. Nothing else starts workers in scaler mode"
                ),
            )
            self.scaler_failing_alarm.add_alarm_action(notify)
        for alarm in (*self.task_dead_letter_alarms.values(), self.events_dead_letter_alarm):
            alarm.add_alarm_action(notify)

        # A worker job that ended FAILED: its worker crashed or could not start (exit status and
        # reason in the event), or Batch cancelled it after it waited RUNNABLE too long (no
        # container). A worker that left at its job's deadline (exit 7) is routine, not news.
        self.failed_jobs_rule = events.Rule(
            self,
            "WorkerJobFailedRule",
            description="A batch-celery worker job ended FAILED: tell the alarm topic",
            event_pattern=events.EventPattern(
                source=["aws.batch"],
                detail_type=["Batch Job State Change"],
                detail={
                    "status": ["FAILED"],
                    "jobQueue": [q.job_queue_arn for q in job_queues.values()],
                    "$or": [{"container": {"exitCode": [{"anything-but": EXIT_JOB_DEADLINE}]}},
                            {"container": {"exitCode": [{"exists": False}]}}],
                },
            ),
            targets=[targets.SnsTopic(
                self.topic,
                message=events.RuleTargetInput.from_text(
                    f"batch-celery worker job {events.EventField.from_path('$.detail.jobName')} "
                    f"({events.EventField.from_path('$.detail.jobId')}) FAILED: "
                    f"{events.EventField.from_path('$.detail.statusReason')}"
                ),
                # A notification EventBridge could not deliver lands there, with its alarm.
                dead_letter_queue=events_dead_letter_queue,
            )],
        )

    def _not_empty(self, construct_id: str, queue: sqs.IQueue, description: str) -> cloudwatch.Alarm:
        return cloudwatch.Alarm(
            self,
            construct_id,
            metric=queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5), statistic=cloudwatch.Stats.MAXIMUM
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )

"""Alarms for what should never accumulate: dead-lettered tasks, undelivered events, failed scaler runs."""

from __future__ import annotations

from typing import Mapping

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .props import pascal


# A run loops for a minute and fails (one Error) if any of its decisions failed, so the metric counts
# minutes with a failure, not failed decisions: a burst of throttling inside one minute is one
# error. One such minute can be a throttled API call the next decisions get past; three within
# five minutes is a scaler that cannot do its job (IAM, a deleted job queue, ...). A run that times
# out counts the same way.
SCALER_FAILED_RUNS = 3


class Monitoring(Construct):
    """One alarm per dead-letter queue (any message there needs a human), one on the scaler.

    The alarms have no actions, so users attach their own notification (SNS, chat) to them.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        task_dead_letter_queues: Mapping[str, sqs.IQueue],
        events_dead_letter_queue: sqs.IQueue,
        scaler: lambda_.IFunction | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
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

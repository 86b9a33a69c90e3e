"""The stack: wires the constructs together and names its outputs. No resources of its own."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_logs as logs
from constructs import Construct

from .monitoring import Monitoring
from .network import Network
from .scaling import Scaling
from .settings import LOG_RETENTION_DAYS, Settings
from .task_queue import TaskQueue
from .workers import WORKER_JOB_NAME, Workers

# RetentionDays members carry names, not numbers, in Python.
_RETENTION = dict(zip(
    LOG_RETENTION_DAYS,
    ("ONE_DAY", "THREE_DAYS", "FIVE_DAYS", "ONE_WEEK", "TWO_WEEKS", "ONE_MONTH", "TWO_MONTHS",
     "THREE_MONTHS", "FOUR_MONTHS", "FIVE_MONTHS", "SIX_MONTHS", "ONE_YEAR", "THIRTEEN_MONTHS",
     "EIGHTEEN_MONTHS", "TWO_YEARS", "THREE_YEARS", "FIVE_YEARS", "SIX_YEARS", "SEVEN_YEARS",
     "EIGHT_YEARS", "NINE_YEARS", "TEN_YEARS"),
    strict=True,
))


def log_retention(days: int) -> logs.RetentionDays:
    return logs.RetentionDays[_RETENTION[days]]


class BatchCeleryStack(Stack):
    """Celery workers on AWS Batch that start when tasks arrive and stop when the queue is empty."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        s = settings
        retention = log_retention(s.log_retention_days)

        network = Network(
            self, "Network", max_azs=s.max_azs, nat_gateways=s.nat_gateways, log_retention=retention
        )
        tasks = TaskQueue(
            self,
            "TaskQueue",
            visibility_timeout=Duration.seconds(s.visibility_timeout_seconds),
            retention=Duration.days(s.message_retention_days),
            max_receive_count=s.max_receive_count,
        )
        workers = Workers(
            self,
            "Workers",
            vpc=network.vpc,
            subnets=network.worker_subnets,
            queue=tasks.queue,
            dead_letter_queue=tasks.dead_letter_queue,
            platform=s.platform,
            max_vcpus=s.max_vcpus,
            spot=s.spot,
            worker_vcpus=s.worker_vcpus,
            worker_memory_mib=s.worker_memory_mib,
            worker_environment={
                "IDLE_SECONDS": str(s.idle_seconds),
                "POLL_SECONDS": str(s.poll_seconds),
                "WORKER_CONCURRENCY": str(s.worker_concurrency),
                "TASK_TIME_LIMIT_SECONDS": str(s.task_time_limit_seconds),
                "VISIBILITY_TIMEOUT_SECONDS": str(s.visibility_timeout_seconds),
                "STOP_GRACE_SECONDS": str(s.stop_grace_seconds),
            },
            job_timeout=Duration.seconds(s.job_timeout_seconds),
            job_attempts=s.job_attempts,
            log_retention=retention,
        )
        scaling = Scaling(
            self,
            "Scaling",
            queue=tasks.queue,
            job_queue=workers.job_queue,
            worker_job_definition=workers.worker_job_definition,
            worker_job_name=WORKER_JOB_NAME,
            scaling_mode=s.scaling_mode,
            low_threshold=s.low_threshold,
            high_threshold=s.high_threshold,
            high_array_size=s.high_array_size,
            age_alarm_seconds=s.age_alarm_seconds,
            messages_per_worker=s.messages_per_worker,
            max_workers=s.max_workers,
            tasks_per_worker=s.worker_concurrency,
            poll_seconds=s.scaler_poll_seconds,
            log_retention=retention,
        )
        Monitoring(
            self,
            "Monitoring",
            task_dead_letter_queue=tasks.dead_letter_queue,
            events_dead_letter_queue=scaling.events_dead_letter_queue,
            scaler=scaling.scaler,
        )

        self.network, self.tasks, self.workers, self.scaling = network, tasks, workers, scaling

        CfnOutput(self, "TaskQueueUrl", value=tasks.queue.queue_url,
                  description="URL of the SQS queue Celery tasks are sent to")
        CfnOutput(self, "TaskQueueName", value=tasks.queue.queue_name,
                  description="Name of the SQS queue Celery tasks are sent to (the Celery queue name)")
        CfnOutput(self, "DeadLetterQueueUrl", value=tasks.dead_letter_queue.queue_url,
                  description="URL of the dead-letter queue for tasks that failed too often")
        CfnOutput(self, "JobQueueArn", value=workers.job_queue.job_queue_arn,
                  description="ARN of the Batch job queue the workers run in")
        CfnOutput(self, "WorkerJobDefinitionArn", value=workers.worker_job_definition.job_definition_arn,
                  description="ARN of the Batch job definition of one Celery worker")
        CfnOutput(self, "FillerJobDefinitionArn", value=workers.filler_job_definition.job_definition_arn,
                  description="ARN of the Batch job definition that fills the queue (parameter numMessages)")
        if scaling.scaler is not None:
            CfnOutput(self, "ScalerFunctionName", value=scaling.scaler.function_name,
                      description="Name of the Lambda function that sizes the worker fleet")

"""A Lambda pool (``compute: "lambda"``): its task queue and DLQ, and a function fed from the queue.

For light tasks that should not wait for a Batch worker to start (45-60 s on Fargate) nor pay its
idle window: an SQS event source mapping hands the pool's messages to a container-image function
built from the pool's image (the bundled worker image, or the pool's own ``image``) with the entry
point ``batch-celery-lambda`` (lambda_handler.py), which runs each task through Celery as a Batch
worker does. The pool has no compute environment, job queue or job definition, and the scaler does
not see it: the mapping scales the function, up to ``max_workers`` at once (MaximumConcurrency).

The mapping takes one message per invocation (batch size 1): the tasks are the same as a Batch
pool's, which may take seconds to minutes each, and a batch of several would run them one after
the other within one function timeout, the last waiting for the others. A failed task is a batch
item failure (ReportBatchItemFailures), so SQS delivers it again and, after max_receive_count
receives, moves it to the DLQ, as on Batch.

Network: in the workers' subnets of the stack's VPC ("private", "private-endpoints", your own
VPC), with their security groups; in network "public" outside the VPC, because a function in a
public subnet gets no public address and so no way out, and Lambda's own network reaches SQS,
DynamoDB and CloudWatch directly.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Tags, Validations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from batch_celery_container import contract

from .nag import LOG_GROUP_KEY_ACK
from .pool import POOL_TAG
from .props import PoolProps
from .results import ResultTable
from .scaling import METRIC_PERIOD, sla_periods
from .task_queue import TaskQueue

# The worker package's console entry point that runs lambda_handler.handler under the Lambda
# runtime interface client (batch_celery_container/entrypoint.py), and the handler it runs.
LAMBDA_ENTRYPOINT = ["batch-celery-lambda"]
LAMBDA_HANDLER = "lambda_handler.handler"
# One message per invocation (see the module docstring).
BATCH_SIZE = 1

NIST_LAMBDA_ACKS = {
    "NIST.800.53.R5-LambdaDLQ": (
        "The function is invoked by an SQS event source mapping, not asynchronously, so a function "
        "DLQ would never receive anything: a message whose task keeps failing goes to the task "
        "queue's own dead-letter queue after max_receive_count receives (with its alarm)."
    ),
    "NIST.800.53.R5-LambdaConcurrency": (
        "The event source mapping's MaximumConcurrency (max_workers) caps the concurrent "
        "invocations of this function; reserved concurrency would take that much from the "
        "account's pool whether or not tasks run."
    ),
}
OUTSIDE_VPC_ACK = Acknowledgment(
    id="NIST.800.53.R5-LambdaInsideVPC",
    reason=(
        'Network "public": a function in a public subnet gets no public address, so it could reach '
        "nothing there; it runs on Lambda's own network, which reaches SQS, DynamoDB and CloudWatch "
        "over TLS with its own narrowly scoped role, and serves no inbound traffic."
    ),
)
VPC_ACCESS_ACK = Acknowledgment(
    id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]",
    reason=(
        "A function in a VPC needs to create, describe and delete its network interfaces there; AWS "
        "maintains this managed policy for exactly that (its only other actions write logs), and "
        "CDK attaches it to a VPC function's role."
    ),
)


def lambda_environment(name: str, props: PoolProps, *, queue_name: str, queue_url: str, dead_letter_queue_url: str,
                       metrics_namespace: str | None = None, result_table: str | None = None,
                       result_expires_days: int | None = None) -> dict[str, str]:
    """The function's environment: the worker's variables it reads (Lambda sets AWS_REGION itself
    and reserves AWS_DEFAULT_REGION), and the dead-letter queue it copies tasks to."""
    return {
        **contract.optional_environment(metrics_namespace=metrics_namespace, result_table=result_table,
                                        result_expires_days=result_expires_days),
        contract.QUEUE_NAME: queue_name,
        contract.QUEUE_URL: queue_url,
        contract.POOL: name,
        contract.TASK_TIME_LIMIT_SECONDS: str(props.task_time_limit_seconds),
        contract.VISIBILITY_TIMEOUT_SECONDS: str(props.queue_visibility_timeout_seconds),
        contract.DEAD_LETTER_QUEUE_URL: dead_letter_queue_url,
    }


class LambdaPool(Construct):
    """A pool's queue pair, its function's role and log group, the function and its SQS mapping.

    Exposes what a WorkerPool exposes for the queues and access (``queue``, ``dead_letter_queue``,
    ``worker_role``, ``name``, ``props``) and, instead of Batch resources, ``function`` and
    ``event_source``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        props: PoolProps,
        image: ecr_assets.DockerImageAsset,
        vpc: ec2.IVpc | None,
        subnets: ec2.SubnetSelection | None = None,
        security_groups: list[ec2.ISecurityGroup] | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        metrics_namespace: str | None = None,
        results: ResultTable | None = None,
        dead_letter_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.name, self.props = name, props
        Tags.of(self).add(POOL_TAG, name)
        self.tasks = TaskQueue.of_pool(self, props, dead_letter_removal_policy=dead_letter_removal_policy, key=key)
        self.queue, self.dead_letter_queue = self.tasks.queue, self.tasks.dead_letter_queue
        self.log_group = logs.LogGroup(self, "FunctionLogs", retention=log_retention,
                                       removal_policy=RemovalPolicy.DESTROY, encryption_key=key)
        if key is None:
            Validations.of(self.log_group).acknowledge(LOG_GROUP_KEY_ACK)
        self.worker_role = self._role(results)
        self.function = self._function(image, vpc, subnets, security_groups, metrics_namespace, results, key)
        self.event_source = event_sources.SqsEventSource(
            self.queue,
            batch_size=BATCH_SIZE,
            report_batch_item_failures=True,
            max_concurrency=props.max_workers,
        )
        self.function.add_event_source(self.event_source)

    def _role(self, results: ResultTable | None) -> iam.Role:
        # An explicit role instead of the default one, which carries the managed
        # AWSLambdaBasicExecutionRole policy (logs:* on every log group of the account).
        role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Celery tasks of Lambda pool {self.name}: consume its task queue, dead-letter what cannot run",
        )
        self.log_group.grant_write(role)
        # Its own queue only, as a Batch worker.
        self.tasks.grant_worker(role)
        if results is not None:
            results.grant_write(role)
        return role

    def _function(self, image: ecr_assets.DockerImageAsset, vpc: ec2.IVpc | None,
                  subnets: ec2.SubnetSelection | None, security_groups: list[ec2.ISecurityGroup] | None,
                  metrics_namespace: str | None, results: ResultTable | None,
                  key: kms.IKey | None) -> lambda_.DockerImageFunction:
        props = self.props
        network = {}
        if vpc is not None:
            network = dict(vpc=vpc, vpc_subnets=subnets, security_groups=security_groups)
        function = lambda_.DockerImageFunction(
            self,
            "Function",
            description=f"Run the Celery tasks of pool {self.name} from its SQS queue",
            # The pool's image asset (the same one a Batch pool of that image runs), with the
            # Lambda entry point in place of the worker job's.
            code=lambda_.DockerImageCode.from_ecr(
                image.repository, tag_or_digest=image.image_tag,
                entrypoint=LAMBDA_ENTRYPOINT, cmd=[LAMBDA_HANDLER],
            ),
            architecture=lambda_.Architecture.ARM_64 if props.arm64 else lambda_.Architecture.X86_64,
            memory_size=props.memory_mib,
            timeout=Duration.seconds(props.function_timeout_seconds),
            role=self.worker_role,
            log_group=self.log_group,
            environment=lambda_environment(
                self.name, props, queue_name=self.queue.queue_name, queue_url=self.queue.queue_url,
                dead_letter_queue_url=self.dead_letter_queue.queue_url, metrics_namespace=metrics_namespace,
                result_table=results.table_name if results else None,
                result_expires_days=results.expires_days if results else None,
            ),
            # With the deployment's key its environment is encrypted with it too (queue URLs and
            # names, no secret); without, Lambda's own key does.
            environment_encryption=key,
            **network,
        )
        for rule, reason in NIST_LAMBDA_ACKS.items():
            Validations.of(function).acknowledge(Acknowledgment(id=rule, reason=reason))
        if vpc is None:
            Validations.of(function).acknowledge(OUTSIDE_VPC_ACK)
        else:
            Validations.of(self.worker_role).acknowledge(VPC_ACCESS_ACK)
        return function


class LambdaPoolAlarms(Construct):
    """A Lambda pool's alarms: the SLA alarm of a Batch pool (a task waited too long: the mapping
    cannot keep up at max_workers, or the function fails to start) and one on the function's
    errors (an invocation that crashed or timed out, not a task that failed: those are batch item
    failures). Both notify the alarm topic (construct.py); no depth alarms, nothing to start."""

    def __init__(self, scope: Construct, construct_id: str, *, pool: LambdaPool) -> None:
        super().__init__(scope, construct_id)
        p = pool.props
        periods = sla_periods(p.age_alarm_seconds)
        self.sla_alarm = cloudwatch.Alarm(
            self,
            "SlaAlarm",
            metric=pool.queue.metric_approximate_number_of_messages_visible(
                period=METRIC_PERIOD, statistic=cloudwatch.Stats.MINIMUM),
            threshold=1,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=(
                f"a Celery task of Lambda pool {pool.name} has waited about {p.age_alarm_seconds} s (a message "
                f"visible in each of {periods} consecutive minutes): max_workers ({p.max_workers}) functions "
                "cannot keep up, or the function fails"
            ),
        )
        self.errors_alarm = cloudwatch.Alarm(
            self,
            "FunctionErrorsAlarm",
            metric=pool.function.metric_errors(period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=(
                f"the function of Lambda pool {pool.name} failed an invocation (it crashed, ran out of memory or "
                "timed out; a task that raised is no error); its log group says why, and SQS delivers the "
                "message again"
            ),
        )

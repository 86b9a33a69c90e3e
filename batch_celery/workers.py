"""Where Celery workers run: the image, Fargate compute, the job queue and the job definitions."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Size, Stack, Validations
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

CONTAINER_DIR = Path(__file__).resolve().parent.parent / "batch_celery_container"

# Job names, not physical resource names: the scaler counts this stack's active workers by them.
WORKER_JOB_NAME = "celery-worker"
FILLER_JOB_NAME = "celery-filler"

WORKER_COMMAND = ["./run_celery_worker.sh"]
FILLER_COMMAND = ["python", "fill-batch-queue.py", "--num-messages", "Ref::numMessages"]
FILLER_DEFAULT_MESSAGES = "100"
FILLER_VCPUS = 0.25
FILLER_MEMORY_MIB = 512
FILLER_TIMEOUT = Duration.minutes(30)

# Retry what the platform broke, stop on what the application decided. Batch retries a failed job
# when no rule matches, so the last rule is a catch-all EXIT. Batch matches with glob patterns.
WORKER_RETRY_STRATEGIES = (
    # Fargate Spot reclaimed the task (two-minute warning, then SIGTERM): the work is still queued.
    batch.RetryStrategy.of(
        batch.Action.RETRY, batch.Reason.custom(on_status_reason="Your Spot Task was interrupted*")
    ),
    # ECR pull or ENI/log set-up failed before the container ran.
    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.CANNOT_PULL_CONTAINER),
    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_reason="ResourceInitializationError*")),
    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_status_reason="Task failed to start*")),
    batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_reason="*")),
)

# What docker build never needs: keeps the asset hash stable across local runs and tests.
IMAGE_EXCLUDES = ["**/__pycache__", "**/*.pyc", "**/.pytest_cache", "**/*.log", "**/*.pid"]


class Workers(Construct):
    """Fargate compute environment, FIFO job queue, worker and filler job definitions.

    Workers consume the task queue (and may publish to it: Celery retries re-publish) and forward
    poison messages to the dead-letter queue; the filler only publishes.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        queue: sqs.IQueue,
        dead_letter_queue: sqs.IQueue,
        platform: str = "linux/amd64",
        max_vcpus: int = 48,
        spot: bool = False,
        worker_vcpus: float = 1,
        worker_memory_mib: int = 2048,
        worker_environment: dict[str, str] | None = None,
        job_timeout: Duration = Duration.hours(4),
        job_attempts: int = 3,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        arm64 = platform == "linux/arm64"

        self.image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(CONTAINER_DIR),
            platform=ecr_assets.Platform.LINUX_ARM64 if arm64 else ecr_assets.Platform.LINUX_AMD64,
            exclude=IMAGE_EXCLUDES,
        )
        container_image = ecs.ContainerImage.from_docker_image_asset(self.image)

        self.compute_environment = batch.FargateComputeEnvironment(
            self,
            "ComputeEnvironment",
            vpc=vpc,
            vpc_subnets=subnets,
            spot=spot,
            maxv_cpus=max_vcpus,
            # No service_role: Batch then uses its service-linked role, which AWS maintains.
        )
        self.job_queue = batch.JobQueue(
            self,
            "JobQueue",
            # No scheduling policy: the queue is FIFO, so workers start in submission order.
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=self.compute_environment, order=1)
            ],
        )

        self.log_group = logs.LogGroup(
            self, "JobLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        cpu_architecture = ecs.CpuArchitecture.ARM64 if arm64 else ecs.CpuArchitecture.X86_64
        region = Stack.of(self).region
        queue_environment = {
            "CELERY_QUEUE_NAME": queue.queue_name,
            "CELERY_QUEUE_URL": queue.queue_url,
            "AWS_DEFAULT_REGION": region,
        }

        self.worker_role = iam.Role(
            self,
            "WorkerRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Celery worker job: consume the task queue, dead-letter poison messages",
        )
        queue.grant_consume_messages(self.worker_role)
        queue.grant_send_messages(self.worker_role)
        dead_letter_queue.grant_send_messages(self.worker_role)

        self.worker_container = batch.EcsFargateContainerDefinition(
            self,
            "WorkerContainer",
            image=container_image,
            command=WORKER_COMMAND,
            cpu=worker_vcpus,
            memory=Size.mebibytes(worker_memory_mib),
            job_role=self.worker_role,
            environment={**queue_environment, **(worker_environment or {})},
            assign_public_ip=False,
            fargate_cpu_architecture=cpu_architecture,
            fargate_operating_system_family=ecs.OperatingSystemFamily.LINUX,
            logging=ecs.LogDriver.aws_logs(stream_prefix="worker", log_group=self.log_group),
            # An init process as PID 1 forwards Batch's SIGTERM to the lifecycle script and reaps
            # the detached Celery worker once it exits (it is reparented to PID 1, not the script).
            linux_parameters=batch.LinuxParameters(self, "WorkerLinuxParameters", init_process_enabled=True),
        )
        self.worker_job_definition = batch.EcsJobDefinition(
            self,
            "WorkerJobDefinition",
            container=self.worker_container,
            timeout=job_timeout,
            retry_attempts=job_attempts,
            retry_strategies=list(WORKER_RETRY_STRATEGIES),
            propagate_tags=True,
        )

        self.filler_role = iam.Role(
            self,
            "FillerRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Queue filler job: publish Celery tasks to the task queue",
        )
        queue.grant_send_messages(self.filler_role)

        self.filler_container = batch.EcsFargateContainerDefinition(
            self,
            "FillerContainer",
            image=container_image,
            command=FILLER_COMMAND,
            cpu=FILLER_VCPUS,
            memory=Size.mebibytes(FILLER_MEMORY_MIB),
            job_role=self.filler_role,
            environment=queue_environment,
            assign_public_ip=False,
            fargate_cpu_architecture=cpu_architecture,
            fargate_operating_system_family=ecs.OperatingSystemFamily.LINUX,
            logging=ecs.LogDriver.aws_logs(stream_prefix="filler", log_group=self.log_group),
        )
        self.filler_job_definition = batch.EcsJobDefinition(
            self,
            "FillerJobDefinition",
            container=self.filler_container,
            parameters={"numMessages": FILLER_DEFAULT_MESSAGES},
            timeout=FILLER_TIMEOUT,
            retry_attempts=1,
            propagate_tags=True,
        )

        for container in (self.worker_container, self.filler_container):
            Validations.of(container.execution_role).acknowledge(
                Acknowledgment(
                    id="AwsSolutions-IAM5[Resource::*]",
                    reason=(
                        "The only wildcard is ecr:GetAuthorizationToken, which IAM does not allow "
                        "to be scoped to a resource; the ECR pull actions are scoped to the CDK "
                        "assets repository and log writes to this stack's job log group."
                    ),
                )
            )

"""One worker pool: its task queue and DLQ, its compute environment, job queue and worker job.

A pool is one kind of compute (Fargate, Fargate Spot, EC2 or EC2 Spot, amd64 or arm64, with or
without GPUs) with its own SQS queue. Its workers may consume only that queue; the scaler (or, in
alarms mode, the pool's alarm rules) submits only this pool's job definition to this pool's job
queue. Scaling and alarms are wired by the construct (construct.py), which sees every pool.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Size, Stack, Tags, Validations
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from batch_celery_container import contract

from .props import PoolProps
from .results import ResultTable
from .task_queue import TaskQueue

WORKER_COMMAND = ["batch-celery-worker"]
# The user the jobs run as: the images' own USER (batch_celery_container/Dockerfile and
# examples/gpu-pool/Dockerfile, which a test holds to it), named in the job definition too.
WORKER_USER = "10001:10001"
# The only writable place in a job's container: the lifecycle script's run folder (mktemp under
# TMPDIR), Python's and the tasks' temporary files. Everything else is the read-only image. A
# volume with a name only is a bind mount on the task's own storage (Fargate's ephemeral storage,
# a Docker volume on EC2), gone with the job; the images declare VOLUME /tmp, so it starts with
# the image's /tmp and its permissions (1777), writable by the non-root user.
SCRATCH = batch.EcsVolume.host(name="scratch", container_path="/tmp")


def scratch_only(job_definition: batch.EcsJobDefinition) -> None:
    """CDK writes the scratch volume with an empty ``Host``, which Batch documents as not for
    Fargate: the name alone says the same on both platforms."""
    job_definition.node.default_child.add_property_override(
        "ContainerProperties.Volumes", [{"Name": SCRATCH.name}])

# The tag every resource of a pool carries, with the pool's name (cost allocation, IAM conditions).
POOL_TAG = "pool"

# Retry what the platform broke, stop on what the application decided. Batch retries a failed job
# when no rule matches, so the last rule is a catch-all EXIT; Batch takes at most 5 rules and
# matches them in order, with glob patterns.
WORKER_RETRY_STRATEGIES = (
    # Fargate Spot reclaimed the task (two-minute warning, then SIGTERM): the work is still queued.
    batch.RetryStrategy.of(
        batch.Action.RETRY, batch.Reason.custom(on_status_reason="Your Spot Task was interrupted*")
    ),
    # EC2 (a Spot reclaim, or a failed instance) took the host away under the job.
    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_status_reason="Host EC2*")),
    # Fargate could not start the task (image pull, ENI, log set-up: ResourceInitializationError
    # and CannotPullContainerError both come with this status reason there).
    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_status_reason="Task failed to start*")),
    # On EC2 an image pull that failed says so in the reason.
    batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.CANNOT_PULL_CONTAINER),
    # Everything else exits, the lifecycle script's own statuses among them: 7 (the worker left
    # before the job timeout) is not a failure to retry; the scaler replaces it if work remains.
    batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_reason="*")),
)

EXECUTION_ROLE_ACK = Acknowledgment(
    id="AwsSolutions-IAM5[Resource::*]",
    reason=(
        "The only wildcard is ecr:GetAuthorizationToken, which IAM does not allow to be scoped to a "
        "resource; the ECR pull actions are scoped to the CDK assets repository and log writes to "
        "this deployment's job log group."
    ),
)


def worker_job_name(pool: str) -> str:
    """Job name of a pool's workers (the scaler counts workers by job definition, not by name)."""
    return f"celery-worker-{pool}"


def worker_environment(
    name: str, props: PoolProps, *, queue_name: str, queue_url: str, region: str,
    metrics_namespace: str | None = None, result_table: str | None = None, result_expires_days: int | None = None,
) -> dict[str, str]:
    """The job environment of a pool's workers: its queue, the props the worker reads, and where
    its metrics and results go (when those are on)."""
    return contract.worker_environment(
        metrics_namespace=metrics_namespace,
        result_table=result_table,
        result_expires_days=result_expires_days,
        pool=name,
        queue_name=queue_name,
        queue_url=queue_url,
        region=region,
        idle_seconds=props.idle_seconds,
        poll_seconds=props.poll_seconds,
        concurrency=props.concurrency,
        task_time_limit_seconds=props.task_time_limit_seconds,
        visibility_timeout_seconds=props.visibility_timeout_seconds,
        stop_grace_seconds=props.stop_grace_seconds,
        # The same setting as the job definition's timeout below: the worker plans its end by it.
        job_timeout_seconds=props.job_timeout_seconds,
    )


def container_definition(
    scope: Construct,
    construct_id: str,
    *,
    pool: PoolProps,
    image: ecs.ContainerImage,
    command: list[str],
    vcpus: float,
    memory_mib: int,
    job_role: iam.IRole,
    environment: dict[str, str],
    log_group: logs.ILogGroup,
    stream_prefix: str,
    gpus: int = 0,
    public_ip: bool = False,
) -> batch.IEcsContainerDefinition:
    """A Fargate or EC2 container for the pool's compute, with an init process as PID 1.

    The init process forwards Batch's SIGTERM to the lifecycle script and reaps the detached
    Celery worker once it exits (it is reparented to PID 1, not the script).
    """
    common = dict(
        image=image,
        command=command,
        memory=Size.mebibytes(memory_mib),
        job_role=job_role,
        environment=environment,
        logging=ecs.LogDriver.aws_logs(stream_prefix=stream_prefix, log_group=log_group),
        readonly_root_filesystem=True,
        volumes=[SCRATCH],
        user=WORKER_USER,
        linux_parameters=batch.LinuxParameters(scope, f"{construct_id}LinuxParameters", init_process_enabled=True),
    )
    if pool.ec2:
        return batch.EcsEc2ContainerDefinition(
            scope, construct_id, cpu=int(vcpus), gpu=gpus or None, **common
        )
    return batch.EcsFargateContainerDefinition(
        scope,
        construct_id,
        cpu=vcpus,
        # network "public" only: the worker's own address is its way out (no NAT there).
        assign_public_ip=public_ip,
        fargate_cpu_architecture=ecs.CpuArchitecture.ARM64 if pool.arm64 else ecs.CpuArchitecture.X86_64,
        fargate_operating_system_family=ecs.OperatingSystemFamily.LINUX,
        **common,
    )


class WorkerPool(Construct):
    """A pool's queue pair, compute environment, FIFO job queue, worker role and job definition."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        props: PoolProps,
        image: ecs.ContainerImage,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_group: logs.ILogGroup,
        security_groups: list[ec2.ISecurityGroup] | None = None,
        public_ip: bool = False,
        metrics_namespace: str | None = None,
        results: ResultTable | None = None,
        dead_letter_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.name, self.props = name, props
        Tags.of(self).add(POOL_TAG, name)
        self.job_name = worker_job_name(name)

        self._task_queue(dead_letter_removal_policy, key)
        self.compute_environment = self._compute_environment(vpc, subnets, security_groups)
        self.job_queue = self._job_queue()
        self.worker_role = self._worker_role(results)
        self.worker_container = self._worker_container(image, log_group, public_ip, metrics_namespace, results)
        self.job_definition = self._job_definition()

    def _task_queue(self, dead_letter_removal_policy: RemovalPolicy, key: kms.IKey | None) -> None:
        self.tasks = TaskQueue.of_pool(self, self.props, dead_letter_removal_policy=dead_letter_removal_policy, key=key)
        self.queue, self.dead_letter_queue = self.tasks.queue, self.tasks.dead_letter_queue

    def _job_queue(self) -> batch.JobQueue:
        return batch.JobQueue(
            self,
            "JobQueue",
            # No scheduling policy: the queue is FIFO, so workers start in submission order.
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=self.compute_environment, order=1)
            ],
            # A job that waits RUNNABLE for a reason that will not go away by itself (no capacity of
            # its instance types, the compute environment at its maximum, a job bigger than any
            # instance) is cancelled after runnable_timeout_seconds; it then ends FAILED with that
            # reason, which the alarm topic hears of (monitoring.py). The scaler submits anew.
            job_state_time_limit_actions=[
                batch.JobStateTimeLimitAction(
                    max_time=Duration.seconds(self.props.runnable_timeout_seconds),
                    reason=reason,
                    action=batch.JobStateTimeLimitActionsAction.CANCEL,
                )
                for reason in (
                    batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY,
                    batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE,
                    batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT,
                )
            ],
        )

    def _worker_role(self, results: ResultTable | None) -> iam.Role:
        role = iam.Role(
            self,
            "WorkerRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description=f"Celery workers of pool {self.name}: consume its task queue, dead-letter poison messages",
        )
        # Its own queue only.
        self.tasks.grant_worker(role)
        if results is not None:
            results.grant_write(role)
        return role

    def _worker_container(self, image: ecs.ContainerImage, log_group: logs.ILogGroup, public_ip: bool,
                          metrics_namespace: str | None, results: ResultTable | None) -> batch.IEcsContainerDefinition:
        name, props = self.name, self.props
        return container_definition(
            self,
            "WorkerContainer",
            pool=props,
            image=image,
            command=WORKER_COMMAND,
            vcpus=props.vcpus,
            memory_mib=props.memory_mib,
            gpus=props.gpus,
            job_role=self.worker_role,
            environment=worker_environment(
                name, props, queue_name=self.queue.queue_name, queue_url=self.queue.queue_url,
                region=Stack.of(self).region, metrics_namespace=metrics_namespace,
                result_table=results.table_name if results else None,
                result_expires_days=results.expires_days if results else None,
            ),
            log_group=log_group,
            stream_prefix=f"worker-{name}",
            public_ip=public_ip,
        )

    def _job_definition(self) -> batch.EcsJobDefinition:
        props = self.props
        job_definition = batch.EcsJobDefinition(
            self,
            "WorkerJobDefinition",
            container=self.worker_container,
            timeout=Duration.seconds(props.job_timeout_seconds),
            retry_attempts=props.job_attempts,
            retry_strategies=list(WORKER_RETRY_STRATEGIES),
            propagate_tags=True,
        )
        scratch_only(job_definition)
        Validations.of(self.worker_container.execution_role).acknowledge(EXECUTION_ROLE_ACK)
        return job_definition

    def _compute_environment(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                             security_groups: list[ec2.ISecurityGroup] | None) -> batch.IComputeEnvironment:
        props = self.props
        if not props.ec2:
            return batch.FargateComputeEnvironment(
                self,
                "ComputeEnvironment",
                vpc=vpc,
                vpc_subnets=subnets,
                security_groups=security_groups,
                spot=props.spot,
                maxv_cpus=props.max_vcpus,
                # No service_role: Batch then uses its service-linked role, which AWS maintains.
            )
        types = props.effective_instance_types
        environment = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "ComputeEnvironment",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=security_groups,
            spot=props.spot,
            minv_cpus=0,
            maxv_cpus=props.max_vcpus,
            # Spot: the pools Spot is least likely to reclaim, at the lowest price among them.
            # On-demand: the cheapest type that fits, then larger ones as needed.
            allocation_strategy=(
                batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED if props.spot
                else batch.AllocationStrategy.BEST_FIT_PROGRESSIVE
            ),
            images=[batch.EcsMachineImage(
                image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA if props.gpus
                else batch.EcsMachineImageType.ECS_AL2023
            )],
            update_to_latest_image_version=True,
        )
        # Batch takes families ("c7g") and "optimal" next to sizes; CDK's InstanceType takes only
        # sizes, so the list goes to CloudFormation as written (props.py checked it).
        cfn = environment.node.default_child
        cfn.add_property_override("ComputeResources.InstanceTypes", list(types))
        Validations.of(environment).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]",
                reason=(
                    "The instance role of a Batch EC2 compute environment needs the ECS agent's "
                    "permissions (register the instance, pull images, write logs); AWS maintains this "
                    "managed policy for exactly that, and the jobs run with their own job roles."
                ),
            )
        )
        return environment

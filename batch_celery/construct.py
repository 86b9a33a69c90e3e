"""``CeleryBatchWorkers``: Celery worker pools on AWS Batch, as one construct to embed in a CDK app.

    from batch_celery.construct import CeleryBatchWorkers
    from batch_celery.props import CeleryBatchWorkersProps, PoolProps

    workers = CeleryBatchWorkers(self, "Workers", CeleryBatchWorkersProps(
        vpc=my_vpc,
        pools={"default": PoolProps(), "gpu": PoolProps(compute="ec2_spot", gpus=1, vcpus=4,
                                                          memory_mib=15000, tasks=("gpu.*",))},
    ))
    workers.pools["gpu"].queue        # and .dead_letter_queue, .job_queue, .job_definition, .worker_role

Per pool: an SQS task queue and DLQ, a compute environment, a job queue, a worker job definition,
depth and SLA alarms; a ``compute: "lambda"`` pool has a function fed by an SQS event source
mapping instead of the Batch resources, and SLA and function-error alarms (lambda_pool.py). Shared: the VPC (given, or a new one), the job log group, one scaler Lambda
(scaler mode), the filler job, the events DLQ and the alarms on every DLQ. ``routes_json`` is the
routing of task names to pool queues (batch_celery_container/routing.py reads it).
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Acknowledgment, Aspects, Duration, FileSystem, RemovalPolicy, Stack, Tags, Validations
from aws_cdk import aws_batch as batch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from batch_celery_container import contract, emf, routing

from . import CONTAINER_DIR, access
from .dashboard import WorkersDashboard
from .lambda_pool import LambdaPool, LambdaPoolAlarms
from .monitoring import PUBLISHERS, Monitoring
from .nag import INLINE_POLICY_ACK, LOG_GROUP_KEY_ACK
from .network import Network, interface_endpoints
from .pool import EXECUTION_ROLE_ACK, WorkerPool, container_definition, scratch_only
from .props import LOG_RETENTION_DAYS, CeleryBatchWorkersProps, PoolProps, SettingsError, pascal
from .results import ResultTable
from .scaling import PoolAlarms, Scaler, events_dead_letter_queue
from .schedules import Schedules

# The name of the build context a pool's own Dockerfile takes the lifecycle script and its helpers
# from (`COPY --from=batch-celery ...`, examples/gpu-pool/Dockerfile).
BUILD_CONTEXT = "batch-celery"
# What docker build never needs: keeps the asset hash stable across local runs and tests.
IMAGE_EXCLUDES = ["**/__pycache__", "**/*.pyc", "**/.pytest_cache", "**/*.log", "**/*.pid"]

# The tag every resource carries; each pool's resources also carry ("pool", its name; pool.py).
PROJECT_TAG = ("project", "batch-celery")

FILLER_JOB_NAME = "celery-filler"
FILLER_COMMAND = ["batch-celery-fill", "--num-messages", "Ref::numMessages"]
FILLER_DEFAULT_MESSAGES = "100"
FILLER_TIMEOUT = Duration.minutes(30)

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


class CeleryBatchWorkers(Construct):
    """Celery worker pools on AWS Batch that start when tasks arrive and stop when their work is done."""

    def __init__(self, scope: Construct, construct_id: str, props: CeleryBatchWorkersProps | None = None) -> None:
        super().__init__(scope, construct_id)
        self.props = props = props or CeleryBatchWorkersProps()
        retention = log_retention(props.log_retention_days)
        # Audit evidence and failed tasks (flow logs, dead-letter queues) outlive the stack by default.
        keep = RemovalPolicy.RETAIN if props.retain_on_delete else RemovalPolicy.DESTROY
        self._images: dict[tuple[str, str], ecs.ContainerImage] = {}
        self._image_assets: dict[tuple[str, str], ecr_assets.DockerImageAsset] = {}

        self._label_and_guard()
        # One customer-managed key for queues, logs, results and the alarm topic (kms_key), or None.
        self.key: kms.IKey | None = self._key()
        subnets, security_groups = self._network(keep)
        self._job_logs(retention)
        # Where the workers' and the scaler's EMF lines put their metrics (emf.py).
        self.metrics_namespace: str = emf.namespace_for(Stack.of(self).stack_name)
        self.results: ResultTable | None = self._results()
        self.pools: dict[str, WorkerPool | LambdaPool] = self._pools(subnets, security_groups, keep, retention)
        self.default_pool = self.pools[props.default_pool]
        self.events_dead_letter_queue = events_dead_letter_queue(self, "EventsDeadLetterQueue", keep, self.key)
        self.scaler: Scaler | None = self._scaler(retention)
        self.alarms: dict[str, PoolAlarms | LambdaPoolAlarms] = self._alarms()
        self.routes_json: str = self._routes_json()
        self._filler(retention)
        self.schedules: Schedules | None = self._schedules(retention)
        self._restrict_queue_access()
        self.monitoring = self._monitoring()
        self.dashboard = self._dashboard()
        if self.schedules is not None:
            self.dashboard.add_schedules_row(self.schedules)

    def _label_and_guard(self) -> None:
        # Every resource says what it belongs to (each pool adds its own name).
        Tags.of(self).add(*PROJECT_TAG)
        # Service trust policies name this account and region (access.py).
        Aspects.of(self).add(access.ConfusedDeputyGuard())
        Validations.of(self).acknowledge(INLINE_POLICY_ACK)

    def _network(self, keep: RemovalPolicy) -> tuple[ec2.SubnetSelection, list[ec2.ISecurityGroup] | None]:
        """The workers' VPC (props.vpc, or a new one): sets ``network`` and ``vpc``; returns the
        workers' subnets and security groups (None: the pool makes its own)."""
        props = self.props
        if props.vpc is None:
            self.network: Network | None = Network(
                self, "Network", mode=props.network, max_azs=props.max_azs, nat_gateways=props.nat_gateways,
                log_retention=log_retention(props.flow_log_retention_days), log_removal_policy=keep,
                key=self.key,
                endpoints=interface_endpoints(ec2_pools=any(pool.ec2 for pool in props.pools.values()),
                                              kms_key=props.kms_key is not False),
            )
            self.vpc: ec2.IVpc = self.network.vpc
            return self.network.worker_subnets, self.network.worker_security_groups
        self.network, self.vpc = None, props.vpc
        if not self.vpc.private_subnets:
            raise SettingsError(
                "vpc", self.vpc.node.path,
                "has no private subnets with egress; the workers need them to reach SQS, ECR and CloudWatch",
            )
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS), None

    def _job_logs(self, retention: logs.RetentionDays) -> None:
        self.log_group = logs.LogGroup(self, "JobLogs", retention=retention, removal_policy=RemovalPolicy.DESTROY,
                                       encryption_key=self.key)
        if self.key is None:
            Validations.of(self.log_group).acknowledge(LOG_GROUP_KEY_ACK)

    def _results(self) -> ResultTable | None:
        props = self.props
        if not props.results:
            return None
        return ResultTable(self, "Results", expires_days=props.result_expires_days, key=self.key)

    @property
    def batch_pools(self) -> dict[str, WorkerPool]:
        """The pools whose workers are Batch jobs (the scaler's, the filler's compute)."""
        return {name: pool for name, pool in self.pools.items() if isinstance(pool, WorkerPool)}

    @property
    def lambda_pools(self) -> dict[str, LambdaPool]:
        """The pools whose tasks run in a Lambda function (compute "lambda", lambda_pool.py)."""
        return {name: pool for name, pool in self.pools.items() if isinstance(pool, LambdaPool)}

    def _lambda_pool(self, name: str, pool: PoolProps, subnets: ec2.SubnetSelection,
                     security_groups: list[ec2.ISecurityGroup] | None, keep: RemovalPolicy,
                     retention: logs.RetentionDays) -> LambdaPool:
        # Network "public": outside the VPC (lambda_pool.py says why); else the workers' subnets.
        in_vpc = self.props.network != "public"
        return LambdaPool(
            self,
            f"{pascal(name)}Pool",
            name=name,
            props=pool,
            image=self.image_asset(pool.image, pool.platform),
            vpc=self.vpc if in_vpc else None,
            subnets=subnets if in_vpc else None,
            security_groups=security_groups if in_vpc else None,
            log_retention=retention,
            metrics_namespace=self.metrics_namespace,
            results=self.results,
            dead_letter_removal_policy=keep,
            key=self.key,
        )

    def _pools(self, subnets: ec2.SubnetSelection, security_groups: list[ec2.ISecurityGroup] | None,
               keep: RemovalPolicy, retention: logs.RetentionDays) -> dict[str, WorkerPool | LambdaPool]:
        props = self.props
        return {
            name: self._lambda_pool(name, pool, subnets, security_groups, keep, retention) if pool.on_lambda
            else WorkerPool(
                self,
                f"{pascal(name)}Pool",
                name=name,
                props=pool,
                image=self.image(pool.image, pool.platform),
                vpc=self.vpc,
                subnets=subnets,
                security_groups=security_groups,
                public_ip=props.network == "public",
                log_group=self.log_group,
                metrics_namespace=self.metrics_namespace,
                results=self.results,
                dead_letter_removal_policy=keep,
                key=self.key,
            )
            for name, pool in props.pools.items()
        }

    def _scaler(self, retention: logs.RetentionDays) -> Scaler | None:
        props = self.props
        if props.scaling_mode != "scaler":
            return None
        return Scaler(
            self,
            "Scaling",
            pools=list(self.batch_pools.values()),
            poll_seconds=props.scaler_poll_seconds,
            idle_check=props.scaler_idle_check,
            events_dead_letter_queue=self.events_dead_letter_queue,
            log_retention=retention,
            metrics_namespace=self.metrics_namespace,
            key=self.key,
        )

    def _alarms(self) -> dict[str, PoolAlarms | LambdaPoolAlarms]:
        return {
            name: LambdaPoolAlarms(self, f"{pascal(name)}Alarms", pool=pool) if isinstance(pool, LambdaPool)
            else PoolAlarms(
                self, f"{pascal(name)}Alarms", pool=pool, scaler=self.scaler,
                events_dead_letter_queue=self.events_dead_letter_queue,
            )
            for name, pool in self.pools.items()
        }

    def _schedules(self, retention: logs.RetentionDays) -> Schedules | None:
        """The deployment's periodic tasks (schedules.py), or None when it has none."""
        props = self.props
        if not props.schedules:
            return None
        return Schedules(
            self,
            "Schedules",
            schedules=props.schedules,
            pool_of={name: props.schedule_pool(name) for name in props.schedules},
            pools=self.pools,
            dead_letter_queue=self.events_dead_letter_queue,
            log_retention=retention,
            key=self.key,
            metrics_namespace=self.metrics_namespace,
        )

    def _routes_json(self) -> str:
        stack = Stack.of(self)
        # The routing's format is routing.py's (which producers parse); the values are tokens here.
        return stack.to_json_string(routing.routes_document(
            default_pool=self.props.default_pool,
            region=stack.region,
            pools={name: routing.PoolRoute(pool.queue.queue_name, pool.queue.queue_url, pool.props.tasks)
                   for name, pool in self.pools.items()},
        ))

    def _monitoring(self) -> Monitoring:
        monitoring = Monitoring(
            self,
            "Monitoring",
            task_dead_letter_queues={name: pool.dead_letter_queue for name, pool in self.pools.items()},
            events_dead_letter_queue=self.events_dead_letter_queue,
            sla_alarms={name: alarms.sla_alarm for name, alarms in self.alarms.items()},
            job_queues={name: pool.job_queue for name, pool in self.batch_pools.items()},
            scaler=self.scaler.function if self.scaler else None,
            alarm_email=self.props.alarm_email,
            key=self.key,
        )
        # A Lambda pool's failed invocations need a human, like a failed worker job.
        for alarms in self.alarms.values():
            if isinstance(alarms, LambdaPoolAlarms):
                alarms.errors_alarm.add_alarm_action(cloudwatch_actions.SnsAction(monitoring.topic))
        return monitoring

    def _dashboard(self) -> WorkersDashboard:
        return WorkersDashboard(
            self,
            "Dashboard",
            pools=self.pools,
            pool_alarms=self.alarms,
            metrics_namespace=self.metrics_namespace,
            monitoring=self.monitoring,
            scaler=self.scaler,
            events_dead_letter_queue=self.events_dead_letter_queue,
        )

    def _key(self) -> kms.IKey | None:
        """kms_key: true makes the key here, with the key policy the services need; an ARN uses
        the user's key, whose policy must say the same (docs/security.md)."""
        if self.props.kms_key is False:
            return None
        for family in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
            Validations.of(self).acknowledge(Acknowledgment(
                id=f"AwsSolutions-IAM5[Action::{family}]",
                reason=(
                    "CDK's key grants (a KMS-encrypted queue's grant_send/consume, the result table's) "
                    "name these action families, on the deployment's one key and no other resource; "
                    "SQS and DynamoDB need data keys of every kind that family holds."
                ),
            ))
        if isinstance(self.props.kms_key, str):
            return kms.Key.from_key_arn(self, "Key", self.props.kms_key)
        stack = Stack.of(self)
        key = kms.Key(
            self, "Key", enable_key_rotation=True, removal_policy=RemovalPolicy.RETAIN,
            description="Encrypts batch-celery's task queues, dead-letter queues, logs, results and alarm topic",
        )
        # CloudWatch Logs encrypts this deployment's log groups (flow, job, scaler logs) only.
        key.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:*"}},
        ))
        # CloudWatch alarms and EventBridge publish to the topic and send to the events DLQ.
        for service in PUBLISHERS:
            key.add_to_resource_policy(iam.PolicyStatement(
                principals=[iam.ServicePrincipal(service)],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ))
        # Producers and operators named by ARN may be of another account, which only the key
        # policy can let in (this account's principals get the key through IAM: CDK's default key
        # policy trusts the account). They use it through SQS alone, for what sending and reading take.
        named = list(dict.fromkeys([*self.props.producer_role_arns, *self.props.operator_role_arns]))
        if named:
            key.add_to_resource_policy(iam.PolicyStatement(
                sid="NamedProducersAndOperatorsThroughSqs",
                principals=[iam.ArnPrincipal(arn) for arn in named],
                actions=list(access.KEY_ACTIONS),
                resources=["*"],
                conditions={"StringEquals": {"kms:ViaService": f"sqs.{stack.region}.amazonaws.com"}},
            ))
        return key

    def _restrict_queue_access(self) -> None:
        """Each queue's policy names who may send and who may read (access.py has the table)."""
        props = self.props
        # Producers: producer_role_arns, and every grantee of grant_send_tasks (added later).
        self._producer_arns: list[str] = list(props.producer_role_arns)
        operators = list(props.operator_role_arns)
        # No operators named: this account's administrators are the operators (their IAM policies
        # decide), so a failed task can be read and redriven without a redeploy.
        account = None if operators else Stack.of(self).account
        filler = self.filler_role.role_arn
        for pool in self.pools.values():
            worker = pool.worker_role.role_arn
            # The schedule sender sends to the queues of the pools its schedules route to.
            scheduled = ([self.schedules.role.role_arn]
                         if self.schedules and pool.name in self.schedules.target_pools else [])
            access.deny_all_but(pool.queue, access.SEND,
                                lambda worker=worker, scheduled=scheduled: [
                                    worker, filler, *scheduled, *self._producer_arns, *operators],
                                account=account)
            access.deny_all_but(pool.queue, access.READ, [worker, *operators], account=account)
            access.deny_all_but(pool.dead_letter_queue, access.SEND, [worker, *operators], account=account)
            access.deny_all_but(pool.dead_letter_queue, access.READ, operators, account=account)
            access.allow(pool.queue, access.SEND, props.producer_role_arns)
            access.allow(pool.queue, access.SEND + access.READ + access.INSPECT, operators)
            access.allow(pool.dead_letter_queue, access.SEND + access.READ + access.INSPECT, operators)
        # The events EventBridge failed to deliver: IAM governs it; named operators of another
        # account need the queue's word too.
        access.allow(self.events_dead_letter_queue, access.READ + access.INSPECT, operators)

    def grant_send_tasks(self, grantee: iam.IGrantable) -> None:
        """An application that sends tasks (Celery with ``routing.producer_settings``): send to
        every pool's queue, and read the results when the stack stores them. Nothing more: it
        cannot receive, delete or purge tasks, nor write results. The queues' policies name it
        among the producers."""
        self._producer_arns.append(access.arn_of(grantee))
        for pool in self.pools.values():
            pool.queue.grant_send_messages(grantee)
        if self.results is not None:
            self.results.grant_read(grantee)

    def image(self, directory: str | None, platform: str) -> ecs.ContainerImage:
        """One image asset per (directory, platform): pools that share an image build it once."""
        key = (str(Path(directory).resolve()) if directory else "", platform)
        if key not in self._images:
            arm64 = platform == "linux/arm64"
            own = {}
            if directory:
                own = dict(
                    # A pool's own Dockerfile takes the lifecycle script and its helpers from here;
                    # the asset hash (the image tag) must change with them, or a deploy would keep
                    # running the old script in that pool.
                    build_contexts={BUILD_CONTEXT: str(CONTAINER_DIR)},
                    extra_hash=FileSystem.fingerprint(str(CONTAINER_DIR), exclude=IMAGE_EXCLUDES),
                )
            asset = ecr_assets.DockerImageAsset(
                self,
                # Bundled, Bundled-arm64, Image1, Image2, ...: unique whatever the directories are called.
                ("Bundled" if not directory else f"Image{len(self._images) + 1}") + ("Arm64" if arm64 else ""),
                directory=key[0] or str(CONTAINER_DIR),
                platform=ecr_assets.Platform.LINUX_ARM64 if arm64 else ecr_assets.Platform.LINUX_AMD64,
                exclude=IMAGE_EXCLUDES,
                **own,
            )
            self._images[key] = ecs.ContainerImage.from_docker_image_asset(asset)
            self._image_assets[key] = asset
        return self._images[key]

    def image_asset(self, directory: str | None, platform: str) -> ecr_assets.DockerImageAsset:
        """The image asset behind ``image``: a Lambda pool's function runs the same image."""
        self.image(directory, platform)
        return self._image_assets[(str(Path(directory).resolve()) if directory else "", platform)]

    def _filler(self, retention: logs.RetentionDays) -> None:
        """The filler job: sends example tasks, routed to every pool, from the default pool's compute
        (the first Batch pool's when the default pool is a Lambda pool)."""
        default = self.default_pool
        compute = default if isinstance(default, WorkerPool) else next(iter(self.batch_pools.values()))
        self.filler_role = iam.Role(
            self,
            "FillerRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Queue filler job: publish Celery tasks to the pools' task queues",
        )
        for pool in self.pools.values():
            pool.queue.grant_send_messages(self.filler_role)
        if self.results is not None:
            self.results.grant_read(self.filler_role)  # --wait reads what the workers wrote
        # The filler is the bundled image for the default pool's platform and compute (its own
        # image may lack the filler); the smallest job that compute runs.
        filler_pool: PoolProps = compute.props
        self.filler_container = container_definition(
            self,
            "FillerContainer",
            pool=filler_pool,
            image=self.image(None, filler_pool.platform),
            command=FILLER_COMMAND,
            vcpus=1 if filler_pool.ec2 else 0.25,
            memory_mib=512,
            job_role=self.filler_role,
            environment=contract.filler_environment(
                queue_name=default.queue.queue_name,
                queue_url=default.queue.queue_url,
                region=Stack.of(self).region,
                routes_json=self.routes_json,
                result_table=self.results.table_name if self.results else None,
                result_expires_days=self.results.expires_days if self.results else None,
            ),
            log_group=self.log_group,
            stream_prefix="filler",
            public_ip=self.props.network == "public",
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
        scratch_only(self.filler_job_definition)
        self.filler_job_queue = compute.job_queue
        Validations.of(self.filler_container.execution_role).acknowledge(EXECUTION_ROLE_ACK)

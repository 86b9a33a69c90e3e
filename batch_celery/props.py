"""The construct's props: one frozen object per pool and one for the whole deployment.

Every default is written here, once. Building a props object validates it: an invalid value raises
``SettingsError`` whose one line names the key, the value and what is allowed, so a mistake fails at
synth (or as soon as a CDK user builds the props), never at deploy. ``settings.py`` builds these
objects from cdk.json; a CDK app that embeds ``CeleryBatchWorkers`` builds them itself.

Rules the worker checks too (visibility timeout, task time limit, grace, concurrency, pool names,
task patterns) come from the container's own modules (``limits``, ``routing``), so synth and the
worker can never disagree.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from batch_celery_container import limits, routing

from . import expressions
from .scaler import warm

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aws_cdk import aws_ec2 as ec2

COMPUTE_KINDS = ("fargate", "fargate_spot", "ec2", "ec2_spot", "lambda")
EC2_KINDS = ("ec2", "ec2_spot")
# A Lambda pool (lambda_pool.py): its tasks run in a function fed by an SQS event source mapping.
LAMBDA = "lambda"
# Lambda's limits: memory in MiB (CPU comes with it: about 1 vCPU per 1,769 MiB, 6 at 10,240), a
# function's timeout, and the event source mapping's MaximumConcurrency (what max_workers becomes).
LAMBDA_MEMORY_RANGE = (128, 10_240)
LAMBDA_MAX_TIMEOUT_SECONDS = 900
LAMBDA_CONCURRENCY_RANGE = (2, 1000)
# The function's timeout is the task's hard limit plus this: the task fails at its limit and the
# function still records the failure and answers before Lambda stops it.
LAMBDA_TIMEOUT_MARGIN_SECONDS = 20
# AWS's guidance for an SQS event source: the queue's visibility timeout at least six times the
# function's timeout (a throttled or retried batch must not come back while it still runs).
LAMBDA_VISIBILITY_FACTOR = 6
# A countdown or eta waits out one receive in SQS (lambda_handler.py), so one receive is not enough.
LAMBDA_MIN_RECEIVE_COUNT = 2
# Settings of a Batch pool's worker jobs and scaling that a Lambda pool has no use for: left at
# their default, or refused with one line (the mapping and Lambda decide these things there).
BATCH_ONLY_KEYS = (
    "idle_seconds", "poll_seconds", "job_timeout_seconds", "job_attempts", "stop_grace_seconds",
    "messages_per_worker", "target_wait_seconds", "min_workers", "min_workers_hours", "low_threshold", "high_threshold", "high_array_size", "runnable_timeout_seconds",
)
PLATFORMS = ("linux/amd64", "linux/arm64")
DEFAULT_POOL = "default"

# Fargate vCPU -> allowed memory in MiB (AWS Batch job definition resourceRequirements for Fargate).
FARGATE_MEMORY_MIB: dict[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4096 + 1, 1024)),
    1: tuple(range(2048, 8192 + 1, 1024)),
    2: tuple(range(4096, 16384 + 1, 1024)),
    4: tuple(range(8192, 30720 + 1, 1024)),
    8: tuple(range(16384, 61440 + 1, 4096)),
    16: tuple(range(32768, 122880 + 1, 8192)),
}
# EC2 jobs reserve whole vCPUs. The largest instances Batch launches have 192 vCPUs, 8 GPUs
# (p5, g6e.48xlarge) and a few TiB of memory; an instance keeps some memory for the ECS agent, so a
# job that asks for all of an instance's nominal memory waits RUNNABLE forever (see docs/operations.md, Troubleshooting).
EC2_VCPUS_RANGE = (1, 192)
EC2_MEMORY_RANGE = (512, 2_097_152)
GPUS_RANGE = (0, 8)
# Instance types (or families) EC2 pools use when `instance_types` is not set.
DEFAULT_INSTANCE_TYPES = {
    ("linux/amd64", False): ("optimal",),
    ("linux/arm64", False): ("c7g", "m7g", "r7g"),
    ("linux/amd64", True): ("g5", "g6"),
    ("linux/arm64", True): ("g5g",),
}
# NVIDIA GPU instance families start with these letters (g4dn, g5, g5g, g6e, gr6, p3, p4d, p5).
GPU_FAMILY_LETTERS = ("g", "p")
# "c7g.large", "m7gd", "g5", "optimal": family letters, generation, attribute letters, optional size.
INSTANCE_TYPE = re.compile(r"^(?P<family>[a-z]+(?P<generation>\d+)(?P<attributes>[a-z-]*))(\.[a-z0-9]+)?$")

# Values CloudWatch Logs accepts for a log group's retention (aws_logs.RetentionDays).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
    1096, 1827, 2192, 2557, 2922, 3288, 3653,
)
# Batch's smallest job timeout. A worker must also be able to take tasks for its idle window and
# finish each before Batch stops it (limits.job_timeout_problem); it stops taking tasks in time.
BATCH_MIN_TIMEOUT_SECONDS = 60
# The dead-letter queue keeps messages for the SQS maximum. SQS counts retention from the
# original enqueue time, so the task queue must keep messages for less than the DLQ does.
DLQ_RETENTION_DAYS = 14
ARRAY_SIZE_RANGE = (2, 10_000)
MAX_WORKERS_RANGE = (1, 10_000)
# A target wait below the scaler's poll interval means nothing more; a day is the SLA alarm's limit too.
TARGET_WAIT_RANGE = (10, 86_400)
# "scaler": the Lambda alone submits workers (the alarms only run it). "alarms": the original
# sample's design, alarm rules submit jobs themselves and no Lambda is deployed.
SCALING_MODES = ("scaler", "alarms")
# Below 5 s a decision (per pool: one GetQueueAttributes, five ListJobs, DescribeJobs) may not be
# done before the next one starts; 60 s is one decision per invocation.
SCALER_POLL_RANGE = (5, 60)
# What a scaler run does with nothing to watch: one check and end ("minute"), or decide its minute ("loop").
SCALER_IDLE_CHECKS = ("minute", "loop")
# One scaler decides for every pool within its poll interval (each pool costs about a second), and
# its POOLS variable must fit Lambda's 4 KB of environment (about 500 bytes a pool once resolved).
MAX_POOLS = 6
# CloudWatch evaluates at most one day of periods (EvaluationPeriods x Period <= 86,400 s).
MAX_ALARM_WINDOW_SECONDS = 86_400
# Batch's job-state time limit (maxTimeSeconds) for a job stuck RUNNABLE.
RUNNABLE_TIMEOUT_RANGE = (600, 86_400)
# One address, as SNS e-mail subscriptions take it; SNS itself sends the confirmation.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# The network modes of a new VPC (network.py).
NETWORK_MODES = ("private", "private-endpoints", "public")
# A KMS key's ARN (not an alias: grants and key policies name keys).
KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}$")
# An IAM role's ARN (any partition, any path): what a queue policy's aws:PrincipalArn is compared to.
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
# CloudFormation stack names: a letter, then letters, digits and hyphens, at most 128 characters.
STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")


class SettingsError(ValueError):
    """One configuration value is invalid; str() is the single line shown to the user."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {describe(value)}: {allowed}")

    def under(self, prefix: str) -> "SettingsError":
        """The same error with its key inside ``prefix`` (e.g. ``batch-celery.pools.gpu.``)."""
        return SettingsError(prefix + self.key, self.value, self.allowed)


def describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    return json.dumps(value) if isinstance(value, (str, bool, int, float, type(None))) else repr(value)


def instance_architecture(instance_type: str) -> str | None:
    """``linux/arm64`` for Graviton types (``a1``, or a ``g`` among the attribute letters after the
    generation: ``c7g``, ``m7gd``, ``c6gn``, ``g5g``), ``linux/amd64`` for the rest, None if the
    text is not an instance type or family."""
    if instance_type == "optimal":
        return "linux/amd64"
    match = INSTANCE_TYPE.match(instance_type)
    if match is None:
        return None
    if match["family"] == "a1" or "g" in match["attributes"]:
        return "linux/arm64"
    return "linux/amd64"


@dataclass(frozen=True)
class PoolProps:
    """One pool of workers: its compute, its worker jobs, its task queue and its scaling."""

    # --- compute ---------------------------------------------------------------------------
    compute: str = "fargate"
    """Where the workers run: "fargate", "fargate_spot", "ec2" or "ec2_spot" (EC2 for GPUs); or
    "lambda": the tasks run in a Lambda function fed from the queue (lambda_pool.py)."""
    platform: str = "linux/amd64"
    """CPU architecture of the image and the compute: "linux/amd64", or "linux/arm64" (Graviton)."""
    vcpus: float = 1
    """vCPUs of one worker job (Fargate: 0.25, 0.5, 1, 2, 4, 8, 16; EC2: 1..192)."""
    memory_mib: int = 2048
    """Memory of one worker job in MiB (Fargate: a size its vCPU allows; EC2: 512..2097152)."""
    gpus: int = 0
    """GPUs of one worker job (EC2 only, 0..8); > 0 uses the ECS GPU AMI."""
    instance_types: tuple[str, ...] = ()
    """EC2 only: instance types or families (their architecture must match platform); default
    "optimal" (amd64), c7g/m7g/r7g (arm64), g5/g6 (GPU amd64) or g5g (GPU arm64)."""
    max_workers: int = 48
    """Cap on worker jobs running at once; the compute environment gets max_workers x vcpus."""
    image: str | None = None
    """None: the bundled container; or a directory with a Dockerfile that takes in the lifecycle
    script from the build context named "batch-celery" (see examples/gpu-pool)."""

    # --- worker ------------------------------------------------------------------------------
    concurrency: int = 1
    """Celery worker processes inside one job (1..64)."""
    task_time_limit_seconds: int = limits.DEFAULT_TASK_TIME_LIMIT_SECONDS
    """Hard time limit of one Celery task (up to 12 h minus the visibility timeout); 3 h: tasks of
    minutes to hours run, and a runaway task holds its worker at most this long."""
    visibility_timeout_seconds: int = limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    """SQS visibility timeout = the crash-recovery window: the worker extends what it holds by a
    heartbeat; a dead worker's messages return within this long."""
    idle_seconds: int = 60
    """A worker job ends after it held no message, with nothing visible or delayed in its queue,
    for this long."""
    poll_seconds: int = 10
    """How often the worker job checks whether its worker is idle (<= idle_seconds)."""
    job_timeout_seconds: int = limits.DEFAULT_JOB_TIMEOUT_SECONDS
    """Batch stops a worker job after this long; its worker takes no task it could not finish
    before then (job timeout - task limit - stop grace - 40 s), then leaves by itself (exit 7)
    and the scaler replaces it if work remains (>= task limit + stop grace + 40 s + idle window)."""
    job_attempts: int = 3
    """Attempts of a worker job on infrastructure failures (1-10); app errors exit at once."""
    stop_grace_seconds: int = limits.DEFAULT_STOP_GRACE_SECONDS
    """After Batch's SIGTERM, seconds the running task gets before its message is released."""

    # --- task queue ----------------------------------------------------------------------------
    tasks: tuple[str, ...] = ()
    """Task names or globs ("gpu.*") routed to this pool; the first pool also takes every task no
    pool names."""
    message_retention_days: int = 4
    """How long the task queue keeps an unprocessed message (1-13 days; the DLQ keeps 14)."""
    max_receive_count: int = 3
    """Receives before a message moves to the dead-letter queue (1-1000)."""

    # --- scaling -----------------------------------------------------------------------------
    target_wait_seconds: int = 90
    """How long a task may wait for a worker: the scaler sizes the pool so that every waiting
    task starts within it, from the run times the pool's tasks report and the starts its jobs
    took (docs/scaling.md). A new worker needs a start first (about a minute on Fargate), so a
    shorter target means "as soon as a start allows" (10..86400)."""
    min_workers: int = 0
    """Warm capacity: workers kept up with nothing to do, for tasks that need seconds, not a
    start's minute (0..max_workers; scaler mode). Each costs what a busy worker costs."""
    min_workers_hours: str | None = None
    """When the ``min_workers`` are kept: ``"[DAYS ]HH:MM-HH:MM[ UTC|+HH:MM]"``, e.g.
    ``"mon-fri 08:00-18:00 +01:00"``; None: all the time."""
    messages_per_worker: int | None = None
    """Override: size by a fixed backlog per worker (acceptable latency / time per message)
    instead of the measured run times; None (the default) sizes to ``target_wait_seconds``."""
    low_threshold: int = 5
    """Visible messages that put the low alarm into ALARM (alarms mode: one worker is submitted)."""
    high_threshold: int = 50
    """Visible messages that put the high alarm into ALARM (alarms mode: an array job)."""
    high_array_size: int = 10
    """Workers in the array job the high alarm submits in alarms mode (2-10000)."""
    age_alarm_seconds: int = 300
    """Latency SLA: the SLA alarm fires once a task has waited (visible) this long (60..86400)."""
    runnable_timeout_seconds: int = 3600
    """A worker job stuck RUNNABLE this long because capacity is short or it asks for more than the
    compute offers is cancelled by Batch, and the alarm topic hears of it (600..86400)."""

    def __post_init__(self) -> None:
        # Lists from JSON become tuples: the props stay immutable and hashable.
        for name in ("instance_types", "tasks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _validate_pool(self)

    @property
    def ec2(self) -> bool:
        return self.compute in EC2_KINDS

    @property
    def on_lambda(self) -> bool:
        """Its tasks run in a Lambda function (lambda_pool.py), not in Batch worker jobs."""
        return self.compute == LAMBDA

    @property
    def function_timeout_seconds(self) -> int:
        """A Lambda pool's function timeout: the task's hard limit and the margin to record it."""
        return self.task_time_limit_seconds + LAMBDA_TIMEOUT_MARGIN_SECONDS

    @property
    def queue_visibility_timeout_seconds(self) -> int:
        """The task queue's visibility timeout: the setting, or for a Lambda pool at least six
        times the function's timeout (AWS's guidance for an SQS event source mapping)."""
        if self.on_lambda:
            return max(self.visibility_timeout_seconds, LAMBDA_VISIBILITY_FACTOR * self.function_timeout_seconds)
        return self.visibility_timeout_seconds

    @property
    def spot(self) -> bool:
        return self.compute.endswith("_spot")

    @property
    def arm64(self) -> bool:
        return self.platform == "linux/arm64"

    @property
    def effective_instance_types(self) -> tuple[str, ...]:
        """The instance types an EC2 pool launches (its own, or the default for its kind)."""
        return self.instance_types or DEFAULT_INSTANCE_TYPES[(self.platform, self.gpus > 0)]

    @property
    def max_vcpus(self) -> int:
        """vCPUs the compute environment may run at once: max_workers whole workers."""
        return math.ceil(self.max_workers * self.vcpus)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# The largest args + kwargs of a schedule, as JSON: they travel in the template and in every fire's
# input; a bigger input belongs in S3, with its key in kwargs.
MAX_SCHEDULE_INPUT_CHARS = 8192
# A task name as Celery routes it: a task pattern (routing.py) without its glob.
TASK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


@dataclass(frozen=True)
class ScheduleProps:
    """One periodic task, sent by EventBridge Scheduler instead of ``celery beat``: at each time,
    a Celery task message with a task id of its own goes to the queue of the pool the task routes
    to (docs/schedules.md)."""

    task: str
    """The Celery task name, e.g. "reports.nightly"; it runs in the pool its name routes to."""
    args: tuple[Any, ...] = ()
    """Positional arguments (JSON values)."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments (a JSON object)."""
    cron: str | None = None
    """EventBridge Scheduler cron: minutes hours day-of-month month day-of-week year, with '?' in
    one day field, e.g. "0 2 * * ? *" (02:00 daily). Exactly one of cron and rate."""
    rate: str | None = None
    """Every N minutes, hours or days, e.g. "5 minutes", "1 hour". Exactly one of cron and rate."""
    timezone: str = "UTC"
    """IANA time zone the cron is read in (daylight saving included), e.g. "Europe/Berlin"."""

    def __post_init__(self) -> None:
        if isinstance(self.args, list):
            object.__setattr__(self, "args", tuple(self.args))
        if isinstance(self.kwargs, Mapping):
            object.__setattr__(self, "kwargs", dict(self.kwargs))
        _validate_schedule(self)

    @property
    def expression(self) -> str:
        """The schedule expression EventBridge Scheduler takes: cron(...) or rate(...)."""
        if self.cron is not None:
            return expressions.cron_expression(self.cron)
        return expressions.rate_expression(self.rate or "")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class CeleryBatchWorkersProps:
    """The whole deployment: the pools, the network and what the pools share."""

    pools: Mapping[str, PoolProps] = field(default_factory=lambda: {DEFAULT_POOL: PoolProps()})
    """Pool name -> pool. The first pool is the default one: tasks no pool names go to it."""
    vpc: "ec2.IVpc | None" = None
    """An existing VPC (workers run in its private subnets with egress); None: a new VPC."""
    max_azs: int = 2
    """Availability Zones of a new VPC (1-2: an environment-agnostic stack can address two)."""
    nat_gateways: int = 1
    """NAT gateways of a new VPC in network "private" (1..max_azs); one keeps cost low."""
    network: str = "private"
    """How a new VPC's workers reach AWS: "private" (NAT gateway), "private-endpoints" (VPC
    endpoints only, HTTPS only, no route out) or "public" (public subnets, a public IP each, no
    inbound rule; Fargate pools only)."""
    log_retention_days: int = 30
    """Retention of the job, scaler and filler logs (a CloudWatch Logs value)."""
    flow_log_retention_days: int = 365
    """Retention of the VPC's flow logs, audit evidence, set apart from the job logs."""
    retain_on_delete: bool = True
    """Keep the flow logs and the dead-letter queues (with their messages) when the stack is
    deleted: audit evidence and failed tasks outlive it. false: they go with the stack."""
    scaling_mode: str = "scaler"
    """Who submits workers: "scaler", the Lambda alone (alarms only run it early); "alarms", no
    Lambda, each pool's alarm rules submit its workers (the original sample's design)."""
    scaler_poll_seconds: int = 10
    """How often the scaler decides, for every pool, within its one invocation a minute (5-60)."""
    scaler_idle_check: str = "minute"
    """When no pool has work (no message, no active worker job, for 5 minutes): "minute", each
    run makes one check and ends (a first message then waits up to a minute to be seen); "loop",
    each run still decides every scaler_poll_seconds (seen within that; about $9 a month more)."""
    alarm_email: str | None = None
    """An address subscribed to the alarm topic (it confirms by mail); None: subscribe your own."""
    results: bool = True
    """Store every task's result (or error) in a DynamoDB table, for ``AsyncResult.get()``."""
    result_expires_days: int = limits.DEFAULT_RESULT_EXPIRES_DAYS
    """Days a result is kept before DynamoDB's TTL deletes it (1-365)."""
    producer_role_arns: tuple[str, ...] = ()
    """Roles of your applications (this or another account) that may send tasks (with kms_key:
    true, they may use the key through SQS for that). With no operators named, any principal of
    this account whose IAM policies allow it may send too."""
    operator_role_arns: tuple[str, ...] = ()
    """Roles of the people who may read, redrive and purge tasks and dead-lettered tasks (this or
    another account); once any is named, only they may. None named: this account's
    administrators may (whoever its IAM policies allow), and no other account."""
    kms_key: bool | str = False
    """Encrypt the queues, dead-letter queues, log groups, result table and alarm topic with one
    customer-managed KMS key: true creates it (rotating yearly), a key ARN uses yours. false: the
    services' own keys (SQS-managed, AWS-owned, AWS-managed), which cost nothing."""
    schedules: Mapping[str, ScheduleProps] = field(default_factory=dict)
    """Schedule name -> periodic task (cron or rate): EventBridge Scheduler sends each task at its
    times to the queue of the pool it routes to, with no process running ``celery beat``."""

    def __post_init__(self) -> None:
        for name in ("producer_role_arns", "operator_role_arns"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        pools = self.pools
        if not isinstance(pools, Mapping) or not pools:
            raise SettingsError("pools", pools, "must be an object of pool name -> pool settings, at least one")
        if len(pools) > MAX_POOLS:
            raise SettingsError(
                "pools", sorted(pools),
                f"at most {MAX_POOLS} pools (one scaler decides for every pool, and its environment holds them all)",
            )
        for name, pool in pools.items():
            problem = routing.pool_name_problem(name) if isinstance(name, str) else "must be a string"
            if problem:
                raise SettingsError(f"pools.{name}", name, f"not a pool name: {problem}")
            if not isinstance(pool, PoolProps):
                raise SettingsError(f"pools.{name}", pool, "must be a PoolProps")
        ids = {}
        for name in pools:
            ids.setdefault(pascal(name), []).append(name)
        for names in ids.values():
            if len(names) > 1:
                raise SettingsError(
                    f"pools.{names[1]}", names[1],
                    f"reads the same as pool {names[0]!r} in output names ({pascal(names[0])}); rename one",
                )
        clash = routing.duplicate_pattern({name: pool.tasks for name, pool in pools.items()})
        if clash:
            pattern, first, second = clash
            where = "listed twice in this pool" if first == second else f"already routed to pool {first!r}"
            raise SettingsError(f"pools.{second}.tasks", pattern, f"{where}; a task goes to one pool")
        object.__setattr__(self, "pools", MappingProxyType(dict(pools)))
        _validate_deployment(self)
        _validate_schedules(self)

    @property
    def default_pool(self) -> str:
        return next(iter(self.pools))

    def schedule_pool(self, name: str) -> str:
        """The pool the schedule ``name``'s task routes to: routing.pool_for, the rule every
        producer applies (a pool's ``tasks``, the default pool for the rest)."""
        return routing.pool_for(_pool_routes(self.pools), self.schedules[name].task)


def pascal(name: str) -> str:
    """``gpu-large`` -> ``GpuLarge``: a pool's part of output and metric names."""
    return "".join(part.capitalize() for part in name.split("-"))


# --- validation ---------------------------------------------------------------------------------


def _fail(key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(key, value, allowed)


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `true` for a count is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _got(value: Any) -> str | None:
    """What a value of the wrong JSON type is, for the error line: a string or a boolean where a
    number belongs reads like the number in cdk.json ("2", true), so the line says which it is."""
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    return None


def _int(props: Any, key: str, low: int | None = None, high: int | None = None) -> int:
    value = getattr(props, key)
    if not _is_int(value):
        got = _got(value)
        if got:
            allowed = _range_text(low, high).removeprefix(", ")
            raise _fail(key, value, f"must be a whole number, got {got}" + (f"; allowed: {allowed}" if allowed else ""))
        raise _fail(key, value, "must be a whole number" + _range_text(low, high))
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(key, value, "must be" + _range_text(low, high).removeprefix(","))
    return value


def _range_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f", {low}..{high}"
    if low is not None:
        return f", >= {low}"
    if high is not None:
        return f", <= {high}"
    return ""


def _check(props: Any, key: str, problem: str | None) -> None:
    """Raise the one line for a shared rule (limits.py, routing.py): None or what is allowed."""
    if problem is not None:
        raise _fail(key, getattr(props, key), problem)


def _one_of(props: Any, key: str, allowed: tuple[str, ...]) -> str:
    value = getattr(props, key)
    if value not in allowed:
        raise _fail(key, value, "must be one of " + ", ".join(json.dumps(a) for a in allowed))
    return value


def _fmt(vcpus: float) -> str:
    return f"{vcpus:g}"


def _validate_pool(p: PoolProps) -> None:
    # Compute.
    compute = _one_of(p, "compute", COMPUTE_KINDS)
    platform = _one_of(p, "platform", PLATFORMS)
    if compute == "fargate_spot" and platform == "linux/arm64":
        raise _fail("compute", compute, 'Fargate Spot runs no linux/arm64 tasks; use "fargate" or "ec2_spot"')
    ec2 = compute in EC2_KINDS
    vcpus = p.vcpus
    if compute == LAMBDA:
        _validate_lambda_pool(p)
    elif ec2:
        _int(p, "vcpus", *EC2_VCPUS_RANGE)
        _int(p, "memory_mib", *EC2_MEMORY_RANGE)
    else:
        fargate_vcpus = ", ".join(_fmt(v) for v in FARGATE_MEMORY_MIB)
        if _got(vcpus):
            raise _fail("vcpus", vcpus, f"must be a number, got {_got(vcpus)}; allowed on Fargate: {fargate_vcpus}")
        if not isinstance(vcpus, (int, float)) or vcpus not in FARGATE_MEMORY_MIB:
            raise _fail("vcpus", vcpus, "must be a Fargate vCPU value: " + fargate_vcpus)
        memory = _int(p, "memory_mib", 1)
        allowed = FARGATE_MEMORY_MIB[vcpus]
        if memory not in allowed:
            shape = (", ".join(str(m) for m in allowed) if vcpus == 0.25
                     else f"{allowed[0]}-{allowed[-1]} in steps of {allowed[1] - allowed[0]}")
            raise _fail("memory_mib", memory, f"not a Fargate memory size for {_fmt(vcpus)} vCPU; allowed: {shape}")
    gpus = _int(p, "gpus", *GPUS_RANGE)
    if gpus and not ec2:
        raise _fail("gpus", gpus, 'Fargate has no GPUs; set compute to "ec2" or "ec2_spot"')
    types = p.instance_types
    if not isinstance(types, tuple) or not all(isinstance(t, str) for t in types):
        raise _fail("instance_types", types, 'must be a list of instance types or families, e.g. ["c7g.xlarge", "m7g"]')
    if types and not ec2:
        raise _fail("instance_types", types, 'only EC2 pools choose instance types; set compute to "ec2" or "ec2_spot"')
    for instance_type in types:
        architecture = instance_architecture(instance_type)
        if architecture is None:
            raise _fail("instance_types", types, f"{instance_type!r} is not an instance type or family (e.g. g5.xlarge, c7g)")
        if architecture != platform:
            raise _fail("instance_types", types, f"{instance_type!r} is {architecture}, the pool's platform is {platform}")
    if gpus:
        cpu_only = [t for t in p.effective_instance_types if not t.startswith(GPU_FAMILY_LETTERS)]
        if cpu_only:
            raise _fail("instance_types", types, f"{cpu_only[0]!r} has no GPU and the pool asks for {gpus}; "
                        "use GPU types (g4dn, g5, g5g, g6, p4d, p5, ...)")
    _int(p, "max_workers", *MAX_WORKERS_RANGE)
    if p.image is not None:
        if not isinstance(p.image, str) or not p.image:
            raise _fail("image", p.image, "must be null (the bundled container) or a directory holding a Dockerfile")
        if not (Path(p.image) / "Dockerfile").is_file():
            raise _fail("image", p.image, f"no Dockerfile in {Path(p.image).resolve()}; give a directory holding one")

    # Worker: the same rules the worker checks on its environment (limits.py).
    _int(p, "concurrency", 1, limits.MAX_CONCURRENCY)
    visibility = _int(p, "visibility_timeout_seconds")
    _check(p, "visibility_timeout_seconds", limits.visibility_timeout_problem(visibility))
    limit = _int(p, "task_time_limit_seconds")
    _check(p, "task_time_limit_seconds", limits.task_time_limit_problem(limit, visibility))
    idle = _int(p, "idle_seconds", 1)
    _int(p, "poll_seconds", 1, idle)
    grace = _int(p, "stop_grace_seconds")
    _check(p, "stop_grace_seconds", limits.stop_grace_problem(grace))
    timeout = _int(p, "job_timeout_seconds", BATCH_MIN_TIMEOUT_SECONDS)
    problem = limits.job_timeout_problem(timeout, limit, grace, idle)
    if problem:
        raise _fail("job_timeout_seconds", timeout,
                    f"{problem} (keys: job_timeout_seconds, task_time_limit_seconds, stop_grace_seconds, "
                    "idle_seconds)")
    _int(p, "job_attempts", 1, 10)

    # Task queue.
    tasks = p.tasks
    if not isinstance(tasks, tuple) or not all(isinstance(t, str) for t in tasks):
        raise _fail("tasks", tasks, 'must be a list of task names or globs, e.g. ["gpu.*", "video.encode"]')
    for pattern in tasks:
        problem = routing.task_pattern_problem(pattern)
        if problem:
            raise _fail("tasks", tasks, f"{pattern!r}: {problem}")
    _int(p, "message_retention_days", 1, DLQ_RETENTION_DAYS - 1)
    _int(p, "max_receive_count", 1, 1000)

    # Scaling.
    _int(p, "target_wait_seconds", *TARGET_WAIT_RANGE)
    _int(p, "min_workers", 0, p.max_workers)
    if p.min_workers_hours is not None:
        if not p.min_workers:
            raise _fail("min_workers_hours", p.min_workers_hours, "keeps min_workers warm; set min_workers >= 1 too")
        try:
            warm.parse(p.min_workers_hours)
        except ValueError as error:
            raise _fail("min_workers_hours", p.min_workers_hours, str(error)) from None
    if p.messages_per_worker is not None:
        _int(p, "messages_per_worker", 1)
    low = _int(p, "low_threshold", 1)
    high = _int(p, "high_threshold", 1)
    if low >= high:
        raise _fail("low_threshold", low, f"must be below high_threshold ({high})")
    _int(p, "high_array_size", *ARRAY_SIZE_RANGE)
    # The SLA alarm counts one-minute periods: an SLA below one period cannot be observed, and
    # CloudWatch evaluates at most a day of periods.
    _int(p, "age_alarm_seconds", 60, MAX_ALARM_WINDOW_SECONDS)
    _int(p, "runnable_timeout_seconds", *RUNNABLE_TIMEOUT_RANGE)


def _validate_lambda_pool(p: PoolProps) -> None:
    """What Lambda cannot do, one line each (the rest of _validate_pool checks what all pools share)."""
    if p.vcpus != 1:
        raise _fail("vcpus", p.vcpus, "a Lambda function's CPU comes with its memory (about 1 vCPU per 1769 MiB, "
                    f"6 at {LAMBDA_MEMORY_RANGE[1]} MiB); leave vcpus out and size memory_mib")
    memory = p.memory_mib
    if not _is_int(memory) or not LAMBDA_MEMORY_RANGE[0] <= memory <= LAMBDA_MEMORY_RANGE[1]:
        raise _fail("memory_mib", memory, "a Lambda function takes {}..{} MiB".format(*LAMBDA_MEMORY_RANGE))
    if p.gpus != 0:
        raise _fail("gpus", p.gpus, 'Lambda has no GPUs; set compute to "ec2" or "ec2_spot"')
    if p.instance_types:
        raise _fail("instance_types", p.instance_types,
                    'a Lambda pool runs on no instances of its own; leave instance_types out or use compute "ec2"')
    low, high = LAMBDA_CONCURRENCY_RANGE
    max_workers = p.max_workers
    if not _is_int(max_workers) or not low <= max_workers <= high:
        raise _fail("max_workers", max_workers,
                    f"a Lambda pool's max_workers is its event source mapping's maximum concurrency, {low}..{high}")
    if p.concurrency != 1:
        raise _fail("concurrency", p.concurrency,
                    "a Lambda function runs one task at a time; max_workers says how many run at once")
    limit = p.task_time_limit_seconds
    most = LAMBDA_MAX_TIMEOUT_SECONDS - LAMBDA_TIMEOUT_MARGIN_SECONDS
    if _is_int(limit) and limit > most:
        raise _fail("task_time_limit_seconds", limit,
                    f"a Lambda pool's tasks may run at most {most} s (Lambda stops a function at "
                    f"{LAMBDA_MAX_TIMEOUT_SECONDS} s, and the function keeps {LAMBDA_TIMEOUT_MARGIN_SECONDS} s to record "
                    'the result); longer tasks belong in a Batch pool ("fargate", "ec2")')
    receives = p.max_receive_count
    if _is_int(receives) and receives < LAMBDA_MIN_RECEIVE_COUNT:
        raise _fail("max_receive_count", receives,
                    f"a Lambda pool needs >= {LAMBDA_MIN_RECEIVE_COUNT}: a task with a countdown or eta waits "
                    "out one receive in SQS before it runs")
    defaults = {f.name: f.default for f in fields(PoolProps)}
    for key in BATCH_ONLY_KEYS:
        if getattr(p, key) != defaults[key]:
            raise _fail(key, getattr(p, key),
                        "a Lambda pool has no Batch worker jobs or scaler; its event source mapping takes the "
                        "messages (max_workers at once); leave it out")


def _validate_deployment(d: CeleryBatchWorkersProps) -> None:
    _int(d, "max_azs", 1, 2)
    _int(d, "nat_gateways", 1, d.max_azs)
    if d.network not in NETWORK_MODES:
        raise _fail("network", d.network,
                    'must be "private" (NAT gateway), "private-endpoints" (VPC endpoints only) or "public" '
                    "(public subnets, Fargate pools only)")
    if d.network != "private" and d.vpc is not None:
        raise _fail("network", d.network, 'shapes a new VPC only; with your own VPC leave it "private"')
    if d.network == "public":
        for name, pool in d.pools.items():
            if pool.ec2:
                raise SettingsError(
                    f"pools.{name}.compute", pool.compute,
                    'cannot run in network "public": EC2 instances there would need public addresses of '
                    'their own; use a Fargate compute, or network "private" or "private-endpoints"',
                )
    if all(pool.on_lambda for pool in d.pools.values()):
        raise SettingsError(
            "pools", sorted(d.pools),
            'at least one pool must run on Batch ("fargate", "fargate_spot", "ec2" or "ec2_spot"): the filler job '
            'runs there; a "lambda" pool runs beside them',
        )
    for key in ("log_retention_days", "flow_log_retention_days"):
        if _int(d, key, 1) not in LOG_RETENTION_DAYS:
            raise _fail(key, getattr(d, key), "must be one of " + ", ".join(str(days) for days in LOG_RETENTION_DAYS))
    if not isinstance(d.retain_on_delete, bool):
        raise _fail("retain_on_delete", d.retain_on_delete,
                    "must be true (keep flow logs and dead-letter queues when the stack is deleted) or false")
    if d.scaling_mode not in SCALING_MODES:
        raise _fail(
            "scaling_mode", d.scaling_mode,
            'must be "scaler" (the Lambda decides; alarms only run it) or "alarms" (no Lambda; the'
            " alarm rules submit workers themselves)",
        )
    _int(d, "scaler_poll_seconds", *SCALER_POLL_RANGE)
    if d.scaling_mode == "alarms":
        for name, pool in d.pools.items():
            if pool.min_workers:
                raise SettingsError("min_workers", pool.min_workers,
                                    'keeps warm workers through the scaler; with scaling_mode "alarms" there is '
                                    "none: set it to 0 or use the scaler").under(f"pools.{name}.")
    if d.scaler_idle_check not in SCALER_IDLE_CHECKS:
        raise _fail("scaler_idle_check", d.scaler_idle_check,
                    'must be "minute" (an idle run makes one check and ends) or "loop" (every run decides '
                    "every scaler_poll_seconds, work or none)")
    if d.alarm_email is not None and (not isinstance(d.alarm_email, str) or not EMAIL.match(d.alarm_email)):
        raise _fail("alarm_email", d.alarm_email, "must be null or one e-mail address, e.g. ops@example.com")
    if not isinstance(d.results, bool):
        raise _fail("results", d.results, "must be true (store task results in DynamoDB) or false")
    _check(d, "result_expires_days", limits.result_expires_days_problem(_int(d, "result_expires_days")))
    if not (isinstance(d.kms_key, bool) or (isinstance(d.kms_key, str) and KMS_KEY_ARN.match(d.kms_key))):
        raise _fail("kms_key", d.kms_key,
                    "must be false (the services' own keys), true (a new customer-managed key) or a KMS key "
                    "ARN, e.g. arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")
    for key in ("producer_role_arns", "operator_role_arns"):
        arns = getattr(d, key)
        if not isinstance(arns, tuple) or not all(isinstance(arn, str) and ROLE_ARN.match(arn) for arn in arns):
            raise _fail(key, list(arns) if isinstance(arns, tuple) else arns,
                        'must be a list of IAM role ARNs, e.g. ["arn:aws:iam::123456789012:role/web"]')


# --- schedules -------------------------------------------------------------------------------------


def _pool_routes(pools: Mapping[str, PoolProps]) -> routing.Routes:
    """The pools' routing as routing.py reads it, each pool standing for its own queue: synth
    routes a schedule's task with the very function the producers and the filler use."""
    return routing.Routes(
        default_pool=next(iter(pools)), region="",
        pools={name: routing.PoolRoute(queue_name=name, queue_url="", tasks=pool.tasks) for name, pool in pools.items()},
    )


def _validate_schedule(s: ScheduleProps) -> None:
    if not isinstance(s.task, str) or not TASK_NAME.fullmatch(s.task):
        raise _fail("task", s.task, "must be one Celery task name, not a glob (1..200 letters, digits, '_', '.', "
                    "':', '-'), e.g. \"reports.nightly\"; it goes to the pool whose tasks match it, else the default pool")
    if not isinstance(s.args, tuple):
        raise _fail("args", s.args, "must be a list of JSON values, e.g. [1, \"a\"]")
    if not isinstance(s.kwargs, dict) or not all(isinstance(key, str) for key in s.kwargs):
        raise _fail("kwargs", s.kwargs, 'must be an object of argument name -> JSON value, e.g. {"day": "today"}')
    for key in ("args", "kwargs"):
        try:
            json.dumps(getattr(s, key), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise _fail(key, getattr(s, key), f"must hold JSON values only ({error})") from None
    size = len(json.dumps([list(s.args), s.kwargs]))
    if size > MAX_SCHEDULE_INPUT_CHARS:
        raise _fail("args", f"{size} characters with kwargs",
                    f"args and kwargs take at most {MAX_SCHEDULE_INPUT_CHARS} characters as JSON; "
                    "put a large input in S3 and its key in kwargs")
    if (s.cron is None) == (s.rate is None):
        raise _fail("cron" if s.cron is not None else "rate", s.cron if s.cron is not None else s.rate,
                    'give exactly one of cron (e.g. "0 2 * * ? *") and rate (e.g. "5 minutes")')
    if s.cron is not None:
        _check(s, "cron", expressions.cron_problem(s.cron))
    else:
        _check(s, "rate", expressions.rate_problem(s.rate))
    _check(s, "timezone", expressions.timezone_problem(s.timezone))


def _validate_schedules(d: CeleryBatchWorkersProps) -> None:
    schedules = d.schedules
    if not isinstance(schedules, Mapping):
        raise _fail("schedules", schedules, "must be an object of schedule name -> schedule settings")
    for name, schedule in schedules.items():
        problem = expressions.schedule_name_problem(name)
        if problem:
            raise SettingsError(f"schedules.{name}", name, f"not a schedule name: {problem}")
        if not isinstance(schedule, ScheduleProps):
            raise SettingsError(f"schedules.{name}", schedule, "must be a ScheduleProps")
    object.__setattr__(d, "schedules", MappingProxyType(dict(schedules)))

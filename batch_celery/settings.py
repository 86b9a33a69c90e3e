"""Every knob of the stack: one frozen, typed, validated object.

`app.py` reads the `batch-celery` block of cdk.json context once and builds `Settings` from it;
constructs receive `Settings` (or single values from it) and never read context or the environment.
Every invalid value fails synth with one `SettingsError` line: the key, the value, what is allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

# The rules the worker checks too (the same file, shipped in its image): written once, so synth and
# the worker can never disagree on what a valid visibility timeout, task time limit or grace is.
from batch_celery_container import limits

CONTEXT_KEY = "batch-celery"

PLATFORMS = ("linux/amd64", "linux/arm64")

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

# Values CloudWatch Logs accepts for a log group's retention (aws_logs.RetentionDays).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
    1096, 1827, 2192, 2557, 2922, 3288, 3653,
)

# Batch's smallest job timeout; a worker must also fit one full task and its idle window
# (plus start-up) before Batch stops it, or every long task would be cut off and redelivered.
BATCH_MIN_TIMEOUT_SECONDS = 60
WORKER_STARTUP_HEADROOM_SECONDS = 60
# The dead-letter queue keeps messages for the SQS maximum. SQS counts retention from the
# original enqueue time, so the task queue must keep messages for less than the DLQ does.
DLQ_RETENTION_DAYS = 14
ARRAY_SIZE_RANGE = (2, 10_000)
# "scaler": the Lambda alone submits workers (the alarms only run it). "alarms": the original
# sample's design, alarm rules submit jobs themselves and no Lambda is deployed.
SCALING_MODES = ("scaler", "alarms")
# Below 5 s a decision (one GetQueueAttributes, five ListJobs, DescribeJobs) may not be done before
# the next one starts; 60 s is one decision per invocation, the old once-a-minute behaviour.
SCALER_POLL_RANGE = (5, 60)
# CloudWatch evaluates at most one day of periods (EvaluationPeriods x Period <= 86,400 s).
MAX_ALARM_WINDOW_SECONDS = 86_400
# Keys that no longer exist, and what replaced them: a context written for an older release gets
# this line instead of "unknown setting".
REPLACED_KEYS = {
    "scaler_enabled": (
        'replaced by scaling_mode: "scaler" (the default: the Lambda scaler decides) or "alarms" '
        "(no Lambda: the alarm rules submit workers themselves); remove scaler_enabled"
    ),
}


class SettingsError(ValueError):
    """One configuration value is invalid; str() is the single line shown to the user."""


def _describe(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, bool, int, float, type(None))) else repr(value)


def _fmt_vcpus(vcpus: float) -> str:
    return f"{vcpus:g}"


@dataclass(frozen=True)
class Settings:
    """Configuration of the stack. Defaults suit a small, cheap deployment."""

    # --- network -------------------------------------------------------------------------
    max_azs: int = 2
    """Availability Zones of the VPC (1-2: an environment-agnostic stack can address two)."""
    nat_gateways: int = 1
    """NAT gateways for the private subnets' egress (1..max_azs); one keeps cost low."""

    # --- image and compute ---------------------------------------------------------------
    platform: str = "linux/amd64"
    """Image and Fargate CPU architecture: linux/amd64, or linux/arm64 for Graviton."""
    max_vcpus: int = 48
    """vCPUs the Fargate compute environment may run at once."""
    spot: bool = False
    """Run workers on Fargate Spot (cheaper, can be reclaimed; reclaimed jobs are retried)."""
    worker_vcpus: float = 1
    """vCPUs of one worker job (a Fargate value: 0.25, 0.5, 1, 2, 4, 8, 16)."""
    worker_memory_mib: int = 2048
    """Memory of one worker job in MiB; must pair with worker_vcpus as Fargate requires."""
    worker_concurrency: int = 1
    """Celery worker processes inside one job."""

    # --- task queue ----------------------------------------------------------------------
    task_time_limit_seconds: int = 900
    """Hard time limit of one Celery task (up to 12 h minus the visibility timeout, see limits.py)."""
    visibility_timeout_seconds: int = limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    """SQS visibility timeout = the crash-recovery window: the worker extends what it holds by a
    heartbeat, so a task may run longer; a dead worker's messages return within this long."""
    message_retention_days: int = 4
    """How long the task queue keeps an unprocessed message (1-13 days; the DLQ keeps 14)."""
    max_receive_count: int = 3
    """Receives before a message moves to the dead-letter queue (1-1000)."""

    # --- worker lifecycle ----------------------------------------------------------------
    idle_seconds: int = 60
    """A worker job ends after its worker held no message, with nothing visible or delayed in the
    queue, for this long (other workers' messages never keep it)."""
    poll_seconds: int = 10
    """How often the worker job checks whether its worker is idle (<= idle_seconds)."""
    job_timeout_seconds: int = 4 * 3600
    """Batch stops a worker job after this long (>= task limit + idle window + 60 s)."""
    job_attempts: int = 3
    """Attempts of a worker job on infrastructure failures (1-10); app errors exit at once."""
    stop_grace_seconds: int = limits.DEFAULT_STOP_GRACE_SECONDS
    """After Batch's SIGTERM, seconds the running task gets to finish before the worker stops it
    and releases its message (Batch kills the job 30 s after SIGTERM)."""
    log_retention_days: int = 30
    """Retention of every log group of the stack (a CloudWatch Logs value)."""

    # --- scaling -------------------------------------------------------------------------
    scaling_mode: str = "scaler"
    """Who submits workers: "scaler", the Lambda alone (alarms only run it early); "alarms", no
    Lambda, the alarm rules submit workers (the original sample's design)."""
    low_threshold: int = 5
    """Visible messages that put the low alarm into ALARM (alarms mode: one worker is submitted)."""
    high_threshold: int = 50
    """Visible messages that put the high alarm into ALARM (alarms mode: an array job is submitted)."""
    high_array_size: int = 10
    """Workers in the array job the high alarm submits in alarms mode (2-10000)."""
    age_alarm_seconds: int = 300
    """Latency SLA: the SLA alarm fires once a task has waited (visible, not picked up) this long."""
    scaler_poll_seconds: int = 10
    """How often the scaler decides within its one invocation a minute (5-60)."""
    messages_per_worker: int = 10
    """Backlog one worker is expected to clear in time = acceptable latency / time per message."""
    max_workers: int | None = field(default=None)
    """Cap on workers the scaler keeps; default and maximum: max_vcpus // worker_vcpus."""

    # -------------------------------------------------------------------------------------

    @classmethod
    def from_context(cls, raw: Mapping[str, Any] | None) -> "Settings":
        """Build settings from the `batch-celery` context block (None or {} = all defaults)."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            # `cdk synth -c 'batch-celery={"spot": true}'` passes the block as a JSON string.
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                pass
        if not isinstance(raw, Mapping):
            raise SettingsError(f"{CONTEXT_KEY} = {_describe(raw)}: must be a JSON object of settings")
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key in REPLACED_KEYS:
                raise _fail(key, raw[key], REPLACED_KEYS[key])
            if key not in known:
                raise SettingsError(
                    f"{CONTEXT_KEY}.{key}: unknown setting; allowed: {', '.join(sorted(known))}"
                )
        return cls(**dict(raw))

    @property
    def worker_capacity(self) -> int:
        """Worker jobs the compute environment can run at once."""
        return math.floor(self.max_vcpus / self.worker_vcpus)

    def __post_init__(self) -> None:
        _validate(self)
        if self.max_workers is None:
            object.__setattr__(self, "max_workers", self.worker_capacity)


def _fail(key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(f"{CONTEXT_KEY}.{key} = {_describe(value)}: {allowed}")


def _int(s: Settings, key: str, low: int | None = None, high: int | None = None) -> int:
    value = getattr(s, key)
    # bool is an int subclass; `true` for a count is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
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


def _check(s: Settings, key: str, problem: str | None) -> None:
    """Raise the one line for a rule of limits.py, which returns None or what is allowed."""
    if problem is not None:
        raise _fail(key, getattr(s, key), problem)


def _bool(s: Settings, key: str) -> None:
    value = getattr(s, key)
    if not isinstance(value, bool):
        raise _fail(key, value, "must be true or false (JSON booleans, not strings)")


def _validate(s: Settings) -> None:
    # Network.
    _int(s, "max_azs", 1, 2)
    _int(s, "nat_gateways", 1, s.max_azs)

    # Image and compute.
    if s.platform not in PLATFORMS:
        raise _fail("platform", s.platform, f"must be one of {', '.join(PLATFORMS)}")
    _bool(s, "spot")
    vcpus = s.worker_vcpus
    if isinstance(vcpus, bool) or not isinstance(vcpus, (int, float)) or vcpus not in FARGATE_MEMORY_MIB:
        raise _fail(
            "worker_vcpus", vcpus,
            "must be a Fargate vCPU value: " + ", ".join(_fmt_vcpus(v) for v in FARGATE_MEMORY_MIB),
        )
    memory = _int(s, "worker_memory_mib", 1)
    allowed_memory = FARGATE_MEMORY_MIB[vcpus]
    if memory not in allowed_memory:
        step = allowed_memory[1] - allowed_memory[0]
        shape = (
            ", ".join(str(m) for m in allowed_memory)
            if vcpus == 0.25
            else f"{allowed_memory[0]}-{allowed_memory[-1]} in steps of {step}"
        )
        raise _fail(
            "worker_memory_mib", memory,
            f"not a Fargate memory size for {_fmt_vcpus(vcpus)} vCPU; allowed: {shape}",
        )
    _int(s, "max_vcpus", math.ceil(vcpus))
    _int(s, "worker_concurrency", 1, limits.MAX_CONCURRENCY)

    # Task queue. The worker's heartbeat keeps a held message invisible, so the visibility timeout
    # no longer bounds a task: SQS's 12 hours from the receive does (limits.py), and the job
    # timeout (below).
    visibility = _int(s, "visibility_timeout_seconds")
    _check(s, "visibility_timeout_seconds", limits.visibility_timeout_problem(visibility))
    limit = _int(s, "task_time_limit_seconds")
    _check(s, "task_time_limit_seconds", limits.task_time_limit_problem(limit, visibility))
    _int(s, "message_retention_days", 1, DLQ_RETENTION_DAYS - 1)
    _int(s, "max_receive_count", 1, 1000)

    # Worker lifecycle.
    idle = _int(s, "idle_seconds", 1)
    _int(s, "poll_seconds", 1, idle)
    timeout = _int(s, "job_timeout_seconds", BATCH_MIN_TIMEOUT_SECONDS)
    needed = limit + idle + WORKER_STARTUP_HEADROOM_SECONDS
    if timeout < needed:
        raise _fail(
            "job_timeout_seconds", timeout,
            f"must be >= task_time_limit_seconds ({limit}) + idle_seconds ({idle})"
            f" + {WORKER_STARTUP_HEADROOM_SECONDS} s start-up = {needed}",
        )
    _int(s, "job_attempts", 1, 10)
    grace = _int(s, "stop_grace_seconds")
    _check(s, "stop_grace_seconds", limits.stop_grace_problem(grace))
    if _int(s, "log_retention_days", 1) not in LOG_RETENTION_DAYS:
        raise _fail(
            "log_retention_days", s.log_retention_days,
            "must be one of " + ", ".join(str(d) for d in LOG_RETENTION_DAYS),
        )

    # Scaling.
    if s.scaling_mode not in SCALING_MODES:
        raise _fail(
            "scaling_mode", s.scaling_mode,
            'must be "scaler" (the Lambda decides; alarms only run it) or "alarms" (no Lambda; the'
            " alarm rules submit workers themselves)",
        )
    low = _int(s, "low_threshold", 1)
    high = _int(s, "high_threshold", 1)
    if low >= high:
        raise _fail("low_threshold", low, f"must be below high_threshold ({high})")
    _int(s, "high_array_size", *ARRAY_SIZE_RANGE)
    # The SLA alarm counts one-minute periods: an SLA below one period cannot be observed, and
    # CloudWatch evaluates at most a day of periods.
    _int(s, "age_alarm_seconds", 60, MAX_ALARM_WINDOW_SECONDS)
    _int(s, "scaler_poll_seconds", *SCALER_POLL_RANGE)
    _int(s, "messages_per_worker", 1)
    if s.max_workers is not None:
        capacity = math.floor(s.max_vcpus / vcpus)
        value = s.max_workers
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= capacity:
            raise _fail(
                "max_workers", value,
                f"must be a whole number 1..{capacity} (max_vcpus {s.max_vcpus} // worker_vcpus"
                f" {_fmt_vcpus(vcpus)}: more workers than the compute environment runs would only queue)",
            )

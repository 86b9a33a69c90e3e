"""The scaler Lambda: for every worker pool, read its queue and worker jobs, submit the missing workers.

Runs every minute on an EventBridge schedule (and when a depth or SLA alarm goes into ALARM).
One function serves every pool; a decision decides for each pool in turn, independently. A run
starts with one decision. While there is work (a pool's queue holds a message, visible, in flight
or delayed, or a worker job of a pool is active) the run goes on deciding every POLL_SECONDS,
starting no decision after LOOP_SECONDS, so a backlog is seen within POLL_SECONDS, not a minute.
With IDLE_CHECK "minute", a run whose decision finds no work, COOLDOWN_SECONDS or more after a
decision last found some, ends there: the idle stack pays for one decision a minute, not a minute
of them (a first message then waits up to a minute for the next run instead of POLL_SECONDS).
With IDLE_CHECK "loop" every run decides for the whole minute, work or none. Everything it needs comes from environment
variables that the CDK stack sets on the function (nothing here is a default the stack does not
control):

    POOLS          JSON list, one object per pool (numbers as JSON numbers or strings of digits):
                   {"pool": "default",                 name, unique; in every log line
                    "queue_url": "https://...",        the pool's task queue, unique
                    "job_queue": "<arn or name>",      its Batch job queue
                    "job_definition": "<arn or name>", its worker job definition; jobs of any
                                                       revision in its job queue count as workers
                    "job_name": "celery-worker-default",
                                                       name given to the jobs submitted for it
                    "messages_per_worker": 0,          0: size to target_wait_seconds from the run
                                                       times the pool's tasks report; >= 1: a fixed
                                                       backlog per worker (policy.py)
                    "target_wait_seconds": 60,         how long a task may wait for a worker, >= 1
                    "start_seconds": 60,               expected SubmitJob to a polling worker, >= 0
                    "max_workers": 48,                 cap on its active workers, >= 0 (0: off)
                    "tasks_per_worker": 1,             tasks one worker runs at once, >= 1
                    "min_workers": 2,                  optional: warm workers kept with nothing to do
                    "warm_hours": "mon-fri 08:00-18:00 +01:00"}
                                                       optional: when (warm.py); "": all the time
                   No two pools share a job queue and a job definition name (each would count the
                   other's workers as its own).
    POLL_SECONDS   seconds between two decisions of one run (>= 1)
    LOOP_SECONDS   no decision starts later than this after the run began (0: one decision)
    IDLE_CHECK     "minute": a run that finds no work past the cool-down ends after its one
                   decision; "loop": every run decides until LOOP_SECONDS
    COOLDOWN_SECONDS
                   ("minute") how long after a decision last found work the runs keep deciding
                   every POLL_SECONDS, because more work often follows (>= 0). Kept in the warm
                   container between runs: a cold start forgets it (the next message then waits
                   for the next run, up to a minute).

Run times (target sizing): the workers' task lines (emf.py ``run_seconds``, dimension pool) are
already CloudWatch metrics; a run that has a waiting message to size for reads each pool's mean
over the last RECENT_SECONDS (or, if no task ran then, over LEARNED_SECONDS) with one
GetMetricData call for all pools, at most once every RUN_TIMES_REFRESH_SECONDS per warm container.
Without METRICS_NAMESPACE, or before the pool has run a task, the run time is unknown and each
waiting message gets a worker of its own (policy.workers_for_target).

Pairing: a pool's job definition is only ever submitted to that pool's job queue, both taken from
the same POOLS entry. IAM cannot express that pairing inside one role (SubmitJob is authorized on
the job queue and the job definition separately), so the stack scopes SubmitJob to the pools' job
queues and definitions, and this handler is what keeps one pool's workers out of another's queue.

Safety rules, per pool: if any of a pool's readings fails, that pool submits nothing in that
decision (never scale on partial information); if a submission fails, that pool stops there (the
next decision re-evaluates from fresh counts, which include any job that did land). Either way the
other pools' decisions go ahead. Each pool's decision prints exactly one JSON line, with its
``pool`` (for CloudWatch Logs Insights: ``filter pool = "gpu"``): an EMF document (with
METRICS_NAMESPACE), except the lines of the decision that ends a run for want of work, which are
plain JSON with ``"idle": true`` (the idle stack writes no metric). A failed one does not end the
loop and counts as work, but the run raises ``ScalerRunFailed`` at its end, naming the failed pools, so it counts once
in the function's Errors metric (and its alarm).

The Lambda asset holds ``batch_celery/scaler`` and the two dependency-free container modules it
shares with the workers (``contract``, ``emf``), at the same paths as in the repository, so the
same imports work locally and in Lambda (scaling.py, SCALER_ASSET_EXCLUDES).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from batch_celery_container import contract, emf

from . import warm
from .policy import submission_plan, workers_for_target, workers_needed

# Listed in lifecycle order on purpose: a job that moves on while we page through the listings is
# then seen again in a later status (and de-duplicated by id) instead of slipping between two.
ACTIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
# Workers on their way: a job (or array child) in these holds no slot yet but will.
STARTING_STATUSES = ACTIVE_STATUSES[:-1]
DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 job ids.

# A decision must not hold up the ones after it (or the next minute's run): few, quick retries.
_BOTO_CONFIG = BotoConfig(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10)
# SubmitJob has no idempotency token: when an attempt takes effect but its answer is lost (a read
# timeout, a 5xx from the front end), a retry submits the workers a second time, past the cap.
# So the submission is tried exactly once; a failed one is re-evaluated by the next decision from
# fresh counts, which then include any job that did land. (``max_attempts`` counts retries in
# botocore's standard mode; ``total_max_attempts`` counts calls.)
SUBMIT_CONFIG = _BOTO_CONFIG.merge(BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}))

ENV_NAMES = ("POOLS", "POLL_SECONDS", "LOOP_SECONDS", "IDLE_CHECK", "COOLDOWN_SECONDS")
# "minute": a run with no work to watch ends after one decision; "loop": every run decides until LOOP_SECONDS.
IDLE_CHECKS = ("minute", "loop")
# Set by the stack; without it the decision lines carry no metrics.
OPTIONAL_ENV_NAMES = (contract.METRICS_NAMESPACE,)
# Each pool's fields in POOLS: the strings, then the whole numbers with their minimum.
POOL_TEXT_FIELDS = ("pool", "queue_url", "job_queue", "job_definition", "job_name")
POOL_NUMBER_FIELDS = {"messages_per_worker": 0, "target_wait_seconds": 1, "start_seconds": 0, "max_workers": 0,
                      "tasks_per_worker": 1}
POOL_FIELDS = POOL_TEXT_FIELDS + tuple(POOL_NUMBER_FIELDS)
# Warm capacity, set only for the pools that keep some.
POOL_OPTIONAL_FIELDS = ("min_workers", "warm_hours")
# The job environment variable that keeps a warm worker from its idle exit until then (epoch
# seconds; run_celery_worker.sh).
WARM_UNTIL = "WARM_UNTIL"
# SubmitJob's jobName: up to 128 letters, digits, hyphens and underscores, the first alphanumeric.
JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class ScalerError(Exception):
    """An AWS call failed; the message names the call and the error code."""


class ScalerRunFailed(RuntimeError):
    """Raised by the Lambda entry point after logging a run that failed (one line: outcome: error)."""


@dataclass(frozen=True)
class PoolConfig:
    """One worker pool: its task queue, and the job queue and job definition of its workers."""

    pool: str
    queue_url: str
    job_queue: str
    job_definition: str
    job_name: str
    messages_per_worker: int
    max_workers: int
    # In-flight messages per busy worker: a worker of concurrency 4 holding 4 messages is one worker.
    tasks_per_worker: int = 1
    # Target sizing (messages_per_worker 0): the wait to meet and the start a new worker needs.
    target_wait_seconds: int = 60
    start_seconds: int = 60
    min_workers: int = 0
    warm_hours: str = ""

    def warm_now(self, now: float) -> tuple[int, float | None]:
        """Warm workers wanted now, and until when (epoch seconds; None: no window end)."""
        if not self.min_workers:
            return 0, None
        if not self.warm_hours:
            return self.min_workers, None
        end = warm.parse(self.warm_hours).window_end(now)
        return (self.min_workers, end) if end is not None else (0, None)

    @classmethod
    def from_json(cls, index: int, item: Any) -> "PoolConfig":
        """One POOLS entry; a bad one raises ``ValueError`` with one line naming the pool and field."""
        if not isinstance(item, dict):
            raise ValueError(f"POOLS[{index}] = {_shown(item)}: must be a JSON object with {', '.join(POOL_FIELDS)}")
        name = item.get("pool")
        label = f"POOLS[{index}]"
        if "pool" in item:
            _require_text(label, "pool", name)
            label = f"POOLS[{index}] ({name})"
        # One line for both, so that a misspelt field reads as what it is.
        faults = [f"lacks {field}" for field in POOL_FIELDS if field not in item]
        faults += [f"has unknown field {field}"
                   for field in sorted(set(item) - set(POOL_FIELDS) - set(POOL_OPTIONAL_FIELDS))]
        if faults:
            raise ValueError(f"{label} {', '.join(faults)}: a pool has exactly {', '.join(POOL_FIELDS)}")
        for field in POOL_TEXT_FIELDS:
            _require_text(label, field, item[field])
        if not JOB_NAME_PATTERN.fullmatch(item["job_name"]):
            raise ValueError(f"{label}.job_name = {_shown(item['job_name'])}: must be 1-128 letters, digits, "
                             "hyphens or underscores, starting with a letter or digit (Batch's job name rule)")
        numbers = {field: _whole(label, field, item[field], minimum) for field, minimum in POOL_NUMBER_FIELDS.items()}
        extra: dict[str, Any] = {}
        if "min_workers" in item:
            extra["min_workers"] = _whole(label, "min_workers", item["min_workers"], 0)
        if item.get("warm_hours"):
            try:
                warm.parse(item["warm_hours"])
            except ValueError as error:
                raise ValueError(f"{label}.warm_hours = {_shown(item['warm_hours'])}: {error}") from None
            extra["warm_hours"] = item["warm_hours"]
        return cls(**{field: item[field] for field in POOL_TEXT_FIELDS}, **numbers, **extra)


@dataclass(frozen=True)
class ScalerConfig:
    pools: tuple[PoolConfig, ...]
    # One decision per run unless told otherwise (callers that build the config themselves).
    poll_seconds: int = 10
    loop_seconds: int = 0
    # Callers that build the config themselves get every run's loop, work or none.
    idle_check: str = "loop"
    cooldown_seconds: int = 0
    # CloudWatch namespace of the decision lines' metrics (emf.py); None: plain JSON lines.
    metrics_namespace: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", tuple(self.pools))
        if self.idle_check not in IDLE_CHECKS:
            raise ValueError(f"IDLE_CHECK={self.idle_check!r} is not allowed: it must be one of {', '.join(IDLE_CHECKS)}")
        if self.cooldown_seconds < 0:
            raise ValueError(f"COOLDOWN_SECONDS={self.cooldown_seconds!r} is not allowed: it must be a whole number >= 0")
        if not self.pools:
            raise ValueError("POOLS = []: must list at least one pool")
        # On every config, however it was built (from_env's too): two pools that read one task
        # queue, or count workers in one job queue by one definition name, would each scale for
        # the other's backlog or workers.
        names: dict[str, int] = {}
        queues: dict[str, int] = {}
        workers: dict[tuple[str, str], int] = {}
        for index, pool in enumerate(self.pools):
            label = f"POOLS[{index}] ({pool.pool})"
            if pool.pool in names:
                raise ValueError(f"{label}.pool = {_shown(pool.pool)}: POOLS[{names[pool.pool]}] has that name "
                                 "already; pool names must be unique")
            names[pool.pool] = index
            if pool.queue_url in queues:
                other = self.pools[queues[pool.queue_url]]
                raise ValueError(f"{label}.queue_url = {_shown(pool.queue_url)}: POOLS[{queues[pool.queue_url]}] "
                                 f"({other.pool}) reads that queue too; each pool needs its own task queue")
            queues[pool.queue_url] = index
            # Workers are counted by job definition name within a job queue, whatever the form
            # (ARN or name) and revision each pool was given.
            key = (_resource_name(pool.job_queue), definition_name(pool.job_definition))
            if key in workers:
                other = self.pools[workers[key]]
                raise ValueError(f"{label}: job_queue {_shown(pool.job_queue)} with job_definition "
                                 f"{_shown(pool.job_definition)} is POOLS[{workers[key]}] ({other.pool})'s pair too; "
                                 "each pool needs its own job queue or job definition")
            workers[key] = index

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "ScalerConfig":
        missing = [name for name in ENV_NAMES if not environ.get(name)]
        if missing:
            raise ValueError(f"missing environment variable(s) {', '.join(missing)}: the stack must set them")
        try:
            items = json.loads(environ["POOLS"])
        except json.JSONDecodeError as error:
            raise ValueError(f"POOLS is not valid JSON: {error}") from None
        if not isinstance(items, list):
            raise ValueError(f"POOLS = {_shown(items)}: must be a JSON list of pool objects")
        return cls(
            pools=tuple(PoolConfig.from_json(index, item) for index, item in enumerate(items)),
            poll_seconds=_int_env(environ, "POLL_SECONDS", minimum=1),
            loop_seconds=_int_env(environ, "LOOP_SECONDS", minimum=0),
            idle_check=environ["IDLE_CHECK"].strip(),
            cooldown_seconds=_int_env(environ, "COOLDOWN_SECONDS", minimum=0),
            metrics_namespace=environ.get(contract.METRICS_NAMESPACE, "").strip() or None,
        )


def _shown(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_text(label: str, field: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{label}.{field} = {_shown(value)}: must be a non-empty string")


def _whole(label: str, field: str, value: Any, minimum: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{label}.{field} = {_shown(value)}: must be a whole number >= {minimum}")
    return number


def _int_env(environ: Mapping[str, str], name: str, *, minimum: int) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={raw!r} is not allowed: it must be a whole number >= {minimum}")
    return value


def _resource_name(name_or_arn: str) -> str:
    """``arn:...:job-queue/NAME`` or ``NAME`` -> ``NAME``."""
    return name_or_arn.rsplit("/", 1)[-1]


def definition_name(job_definition: str) -> str:
    """``arn:...:job-definition/NAME:REV``, ``NAME:REV`` or ``NAME`` -> ``NAME``."""
    name = job_definition.rsplit("/", 1)[-1]
    base, sep, revision = name.rpartition(":")
    return base if sep and revision.isdigit() else name


def queue_counts(sqs: Any, queue_url: str) -> dict[str, int]:
    """Visible, in-flight and delayed message counts (one GetQueueAttributes call)."""
    attributes = _call(
        "sqs:GetQueueAttributes", sqs.get_queue_attributes,
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
    }


def active_workers(batch: Any, job_queue: str, job_definition: str, also: Iterable[str] = (),
                   starts: dict[str, float] | None = None, tally: dict[str, int] | None = None,
                   warm_job_name: str | None = None, known_starts: Iterable[str] = ()) -> int:
    """Workers of this job definition that are active or on their way, array children included.

    Parents are found with ListJobs per active status (array children are skipped there, whether
    or not the listing shows them); each array parent then counts its children that are still
    active, from DescribeJobs' ``statusSummary`` (its full size while that summary is still
    empty, i.e. right after submission). So a parent and its children are never counted twice.
    ``also`` are job ids this run submitted: counted from DescribeJobs even if ListJobs does not
    show them yet (a listing that lags a fresh submission would otherwise let the next decision,
    seconds later, submit the same workers again). ``starts`` gets, for each RUNNING job, the
    seconds from its creation to its start, at no extra call; for an array (whose parent is never
    RUNNING itself) from its creation to its first RUNNING child's start, one ListJobs call per
    array not in ``known_starts``. ``tally`` gets ``starting`` (the active workers not yet
    RUNNING) and ``warm`` (the active workers of jobs named ``warm_job_name``).
    """
    wanted_definition = definition_name(job_definition)
    job_ids: dict[str, None] = {}
    paginator = batch.get_paginator("list_jobs")
    for status in ACTIVE_STATUSES:
        pages = _call(f"batch:ListJobs({status})",
                      lambda **kw: list(paginator.paginate(**kw)), jobQueue=job_queue, jobStatus=status)
        for page in pages:
            for summary in page.get("jobSummaryList", []):
                if is_array_child(summary):
                    continue
                if definition_name(summary.get("jobDefinition", "")) != wanted_definition:
                    continue
                job_ids[summary["jobId"]] = None

    job_ids.update((job_id, None) for job_id in also)
    ids = list(job_ids)
    active = 0
    tally = {} if tally is None else tally
    tally.update(starting=0, warm=0)
    known = set(known_starts)
    for start in range(0, len(ids), DESCRIBE_BATCH):
        jobs = _call("batch:DescribeJobs", batch.describe_jobs, jobs=ids[start:start + DESCRIBE_BATCH])["jobs"]
        for job in jobs:
            working, starting = _active_in(job)
            active += working
            tally["starting"] += starting
            if warm_job_name is not None and job.get("jobName") == warm_job_name:
                tally["warm"] += working
            if starts is not None and job["jobId"] not in known:
                took = _start_of(batch, job, working - starting)
                if took is not None:
                    starts[job["jobId"]] = took
    return active


def _start_of(batch: Any, job: Mapping[str, Any], running: int) -> float | None:
    """Seconds from the job's creation to its (first child's) start, or None if not started yet."""
    created = job.get("createdAt")
    if not created:
        return None
    if not (job.get("arrayProperties") or {}).get("size"):
        started = job.get("startedAt") if job.get("status") == "RUNNING" else None
    elif running > 0:
        try:
            children = _call("batch:ListJobs(array)", batch.list_jobs, arrayJobId=job["jobId"], jobStatus="RUNNING")
        except ScalerError:
            return None   # learned at a later decision; the start is an estimate, not a count
        started = min((c["startedAt"] for c in children.get("jobSummaryList", []) if c.get("startedAt")), default=None)
    else:
        started = None
    return None if not started else max(0.0, (started - created) / 1000)


def is_array_child(summary: Mapping[str, Any]) -> bool:
    """A job summary of an array job's child: children carry their index; their ids are "<parent id>:<index>"."""
    return "index" in (summary.get("arrayProperties") or {}) or ":" in summary.get("jobId", "")


def _active_in(job: Mapping[str, Any]) -> tuple[int, int]:
    """(active workers, of which not yet RUNNING) of one job or array job."""
    if job.get("status") not in ACTIVE_STATUSES:
        return 0, 0
    array = job.get("arrayProperties") or {}
    size = array.get("size")
    if not size:
        return 1, int(job.get("status") in STARTING_STATUSES)
    summary = array.get("statusSummary") or {}
    if not any(summary.values()):
        return int(size), int(size)
    return (sum(int(summary.get(status, 0)) for status in ACTIVE_STATUSES),
            sum(int(summary.get(status, 0)) for status in STARTING_STATUSES))


def warm_job_name(config: PoolConfig) -> str:
    """The name of a pool's warm worker jobs: how the scaler tells them from the others."""
    return config.job_name[:123] + "-warm"


def submit_workers(batch: Any, config: PoolConfig, workers: int, warm_until: float | None = None) -> list[str]:
    """Submit ``workers`` workers of one pool as one job or array job(s); stops at the first failure.

    The job queue, job definition and job name all come from the one ``config``: this is the only
    place a job definition meets a job queue.
    """
    job_ids = []
    for size in submission_plan(workers):
        request = {"jobName": config.job_name, "jobQueue": config.job_queue, "jobDefinition": config.job_definition}
        if warm_until is not None:
            # A warm worker: no idle exit before its window ends (its take window still ends it).
            request["jobName"] = warm_job_name(config)
            request["containerOverrides"] = {"environment": [{"name": WARM_UNTIL, "value": str(int(warm_until))}]}
        if size > 1:
            request["arrayProperties"] = {"size": size}
        try:
            job_ids.append(_call("batch:SubmitJob", batch.submit_job, **request)["jobId"])
        except ScalerError as error:
            raise PartialSubmit(job_ids, str(error)) from error
    return job_ids


class PartialSubmit(ScalerError):
    def __init__(self, job_ids: list[str], message: str):
        super().__init__(message)
        self.job_ids = job_ids


def _call(what: str, function: Any, **kwargs: Any) -> Any:
    try:
        return function(**kwargs)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "Unknown")
        message = error.response.get("Error", {}).get("Message", "")
        raise ScalerError(f"{what} failed: {code}: {message}".rstrip(": ")) from error
    except BotoCoreError as error:
        raise ScalerError(f"{what} failed: {type(error).__name__}: {error}") from error


# Target sizing reads the pools' reported run times at most this often per warm container, over
# about the last RECENT_SECONDS (whole one-hour periods), or LEARNED_SECONDS if no task ran in those
# (a pool that ran its task last week starts sized right); CloudWatch keeps one-hour data points
# for 455 days.
RUN_TIMES_REFRESH_SECONDS = 60
RECENT_SECONDS = 3 * 3600
LEARNED_SECONDS = 14 * 86_400
RUN_TIMES_PERIOD_SECONDS = 3600


@dataclass
class RunTimes:
    """Each pool's mean task run time as its workers reported it (None: none reported), and when
    it was read (wall clock)."""

    seconds: dict[str, float | None]
    read_at: float
    error: str | None = None


def read_run_times(cloudwatch: Any, namespace: str, pools: Iterable[str], now: float) -> RunTimes:
    """One GetMetricData call: per pool, the Sum and SampleCount of ``run_seconds`` in one-hour
    periods over LEARNED_SECONDS; the mean is taken over the last RECENT_SECONDS when a task ran
    in them, else over the whole span. A failed read gives every pool None and the error."""
    pools = list(pools)
    queries = []
    for index, pool in enumerate(pools):
        metric = {"Namespace": namespace, "MetricName": emf.RUN_SECONDS,
                  "Dimensions": [{"Name": emf.POOL, "Value": pool}]}
        for stat in ("Sum", "SampleCount"):
            queries.append({"Id": f"p{index}{stat.lower()}", "ReturnData": True,
                            "MetricStat": {"Metric": metric, "Period": RUN_TIMES_PERIOD_SECONDS, "Stat": stat}})
    series: dict[str, dict[float, float]] = {}
    try:
        request = {"MetricDataQueries": queries,
                   "StartTime": datetime.fromtimestamp(now - LEARNED_SECONDS, timezone.utc),
                   "EndTime": datetime.fromtimestamp(now + 60, timezone.utc)}
        while True:
            answer = _call("cloudwatch:GetMetricData", cloudwatch.get_metric_data, **request)
            for result in answer.get("MetricDataResults", []):
                points = series.setdefault(result["Id"], {})
                for stamp, value in zip(result.get("Timestamps", []), result.get("Values", [])):
                    points[stamp.timestamp()] = float(value)
            if not answer.get("NextToken"):
                break
            request["NextToken"] = answer["NextToken"]
    except ScalerError as error:
        return RunTimes({pool: None for pool in pools}, now, str(error))
    seconds: dict[str, float | None] = {}
    for index, pool in enumerate(pools):
        sums, counts = series.get(f"p{index}sum", {}), series.get(f"p{index}samplecount", {})
        mean = None
        for since in (now - RECENT_SECONDS - RUN_TIMES_PERIOD_SECONDS, float("-inf")):
            count = sum(c for t, c in counts.items() if t >= since)
            if count > 0:
                mean = sum(v for t, v in sums.items() if t >= since) / count
                break
        seconds[pool] = mean
    return RunTimes(seconds, now)


START_SAMPLES = 20


def learned_start(config: PoolConfig, started: Mapping[str, float],
                  samples: dict[str, float] | None) -> tuple[float, str]:
    """The pool's start (SubmitJob to RUNNING): the median of the last START_SAMPLES jobs seen
    RUNNING (``samples``, kept between runs, updated here), else its compute kind's guess."""
    if samples is None:
        samples = {}
    samples.update(started)
    while len(samples) > START_SAMPLES:
        samples.pop(next(iter(samples)))
    if not samples:
        return float(config.start_seconds), "expected"
    ordered = sorted(samples.values())
    return ordered[len(ordered) // 2], "learned"


def scale(config: PoolConfig, sqs: Any, batch: Any, *, submit_batch: Any,
          submitted_ids: list[str] | None = None, run_times: Any = None,
          start_samples: dict[str, float] | None = None, now: float | None = None) -> dict[str, Any]:
    """One pool's scaling decision with the given clients; returns the record that is logged.

    ``batch`` lists and describes jobs (retries are fine); ``submit_batch`` submits them and must
    not retry (a client with ``SUBMIT_CONFIG``), or a lost answer doubles the workers.
    ``submitted_ids`` (what the run submitted for this pool, updated here) are always counted
    while active: DescribeJobs does not filter them by job queue or definition, so they must be
    this pool's alone. ``run_times`` (target sizing) is called only when a message waits: it
    returns the pool's mean run time (None: unknown) and a note for the record.
    """
    submitted_ids = [] if submitted_ids is None else submitted_ids
    now = time.time() if now is None else now
    record: dict[str, Any] = {
        "scaler": "batch-celery",
        "pool": config.pool,
        "max_workers": config.max_workers,
    }
    if config.messages_per_worker:
        record["messages_per_worker"] = config.messages_per_worker
    else:
        record["target_wait_seconds"] = config.target_wait_seconds
    started: dict[str, float] = {}
    tally: dict[str, int] = {}
    try:
        counts = queue_counts(sqs, config.queue_url)
        active = active_workers(batch, config.job_queue, config.job_definition, also=submitted_ids, starts=started,
                                tally=tally, warm_job_name=warm_job_name(config) if config.min_workers else None,
                                known_starts=list(start_samples or ()))
    except ScalerError as error:
        record.update(outcome="read_failed", level="ERROR", submitted=0,
                      error=f"{error}; submitted nothing, the next decision re-evaluates")
        return record

    backlog = counts["visible"] + counts["in_flight"] + counts["delayed"]
    if config.messages_per_worker:
        wanted = workers_needed(counts["visible"], counts["in_flight"], counts["delayed"], active,
                                config.messages_per_worker, config.max_workers,
                                tasks_per_worker=config.tasks_per_worker)
    else:
        task_seconds, note = (None, None)
        if counts["visible"] + counts["delayed"] and run_times is not None:
            task_seconds, note = run_times()
        start_seconds, start_basis = learned_start(config, started, start_samples)
        sizing = workers_for_target(counts["visible"], counts["in_flight"], counts["delayed"], active,
                                    config.max_workers, target_wait_seconds=config.target_wait_seconds,
                                    start_seconds=start_seconds, task_seconds=task_seconds,
                                    tasks_per_worker=config.tasks_per_worker, starting_workers=tally["starting"])
        wanted = sizing.wanted
        record["sizing"] = {**sizing.reasons(), "start_seconds": round(start_seconds, 1),
                            "start_seconds_basis": start_basis}
        if note:
            record["sizing"]["note"] = note
    # Warm capacity: at least min_workers in its hours; the ones started for it (none are active
    # beyond the backlog's) stay up until the window's end instead of their idle exit.
    warm_target, warm_end = config.warm_now(now)
    warm_target = min(warm_target, config.max_workers)
    plain_new = max(0, wanted - active)
    warm_new = max(0, min(warm_target - tally["warm"], config.max_workers - active - plain_new))
    deficit = plain_new + warm_new
    wanted = max(wanted, active + deficit)
    record.update(counts, backlog=backlog, active=active, wanted=wanted, to_submit=deficit)
    if config.min_workers:
        record["warm"] = {"min_workers": warm_target, "active": tally["warm"], "submitted": warm_new,
                          "until": None if warm_end is None else int(warm_end)}
    job_ids: list[str] = []
    submitted = 0
    batches = ((deficit - warm_new, None),
               (warm_new, warm_end if warm_end is not None else warm.ALWAYS_EPOCH))
    for count, warm_until in batches:
        if not count:
            continue
        try:
            job_ids += submit_workers(submit_batch, config, count, warm_until=warm_until)
        except PartialSubmit as error:
            job_ids += error.job_ids
            submitted_ids.extend(job_ids)
            submitted += sum(submission_plan(count)[: len(error.job_ids)])
            record.update(outcome="submit_failed", level="ERROR", submitted=submitted, job_ids=job_ids,
                          error=f"{error}; stopped here, the next decision re-evaluates")
            return record
        submitted += count
    submitted_ids.extend(job_ids)
    record.update(outcome="ok", level="INFO", submitted=deficit, job_ids=job_ids)
    return record


@lru_cache(maxsize=1)
def _clients() -> tuple[Any, Any, Any, Any]:
    # Once per container: warm invocations reuse connections. boto3 itself honours
    # AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL_BATCH, which is how the tests reach moto.
    return (
        boto3.client("sqs", config=_BOTO_CONFIG),
        boto3.client("batch", config=_BOTO_CONFIG),
        boto3.client("batch", config=SUBMIT_CONFIG),
        boto3.client("cloudwatch", config=_BOTO_CONFIG),
    )


def decide(config: PoolConfig, sqs: Any, batch: Any, *, submit_batch: Any,
           submitted_ids: list[str] | None = None, metrics_namespace: str | None = None,
           run_times: Any = None) -> dict[str, Any]:
    """One pool's decision, logged as one JSON line. An unexpected error becomes an ERROR record,
    so one bad answer costs this pool this decision, not the other pools or the rest of the run.

    With ``metrics_namespace`` the line is also an EMF document: its counts (visible, in_flight,
    delayed, active, wanted, submitted) become metrics of the pool, at no API call (emf.py)."""
    record = _decision(config, sqs, batch, submit_batch=submit_batch, submitted_ids=submitted_ids,
                       run_times=run_times)
    log_decision(record, metrics_namespace)
    return record


def _decision(config: PoolConfig, sqs: Any, batch: Any, *, submit_batch: Any,
              submitted_ids: list[str] | None = None, run_times: Any = None,
              start_samples: dict[str, float] | None = None) -> dict[str, Any]:
    try:
        return scale(config, sqs, batch, submit_batch=submit_batch, submitted_ids=submitted_ids,
                     run_times=run_times, start_samples=start_samples)
    except Exception as error:  # noqa: BLE001 - logged, and the run still fails at its end
        return {"scaler": "batch-celery", "pool": config.pool, "outcome": "error", "level": "ERROR",
                "submitted": 0, "error": f"{type(error).__name__}: {error}; the next decision re-evaluates"}


def log_decision(record: dict[str, Any], metrics_namespace: str | None) -> None:
    """Print one decision record: an EMF document with a namespace, plain JSON without."""
    if metrics_namespace:
        line = emf.line(emf.scaler_document(metrics_namespace, record, int(time.time() * 1000)))
    else:
        line = json.dumps(record, sort_keys=True)
    print(line, file=sys.stdout, flush=True)


def found_work(record: Mapping[str, Any]) -> bool:
    """Whether a pool's decision leaves something to watch: a message in its queue (visible, in
    flight or delayed), an active worker job beyond its warm ones, a submission, or a decision that
    failed (it saw nothing, so it cannot say the pool is idle)."""
    # Warm workers a pool keeps with nothing to do are no work to watch: one check a minute keeps them.
    kept = (record.get("warm") or {}).get("active", 0)
    return not (record.get("outcome") == "ok" and record.get("backlog") == 0 and record.get("active", 1) <= kept
                and record.get("submitted") == 0)


# A job this container submitted is counted through DescribeJobs for this long, in every run, not
# only through ListJobs, whose listing may lag a fresh submission (or a job's end).
REMEMBER_SECONDS = 900


@dataclass
class Watch:
    """What a warm Lambda container remembers between runs: when (wall clock, seconds) a decision
    last found work; the pools' run times as last read; the jobs it submitted lately, per pool.
    A cold start begins empty: no cool-down to honour, run times read afresh."""

    last_work: float | None = None
    run_times: RunTimes | None = None
    submitted: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    starts: dict[str, dict[str, float]] = field(default_factory=dict)

    def recent_submissions(self, pool: str, now: float) -> list[str]:
        kept = [(job_id, at) for job_id, at in self.submitted.get(pool, []) if now - at < REMEMBER_SECONDS]
        self.submitted[pool] = kept
        return [job_id for job_id, _ in kept]

    def run_time(self, config: ScalerConfig, pool: str, cloudwatch: Any, now: float) -> tuple[float | None, str | None]:
        """The pool's mean run time, read for every target-sized pool at most once a refresh."""
        if cloudwatch is None or not config.metrics_namespace:
            return None, "no metrics namespace: run times unknown"
        if self.run_times is None or now - self.run_times.read_at >= RUN_TIMES_REFRESH_SECONDS:
            sized = [p.pool for p in config.pools if not p.messages_per_worker]
            fresh = read_run_times(cloudwatch, config.metrics_namespace, sized, now)
            if fresh.error and self.run_times is not None:
                # A failed read keeps what was learned (a throttle must not mean "unknown": a
                # worker per waiting message); it is tried again at the next refresh.
                fresh = RunTimes(self.run_times.seconds, now, fresh.error)
            self.run_times = fresh
        times = self.run_times
        return times.seconds.get(pool), (f"run times unread: {times.error}" if times.error else None)


# One per container: reserved concurrency 1 keeps one container, which the once-a-minute schedule
# keeps warm.
WATCH = Watch()


def run(config: ScalerConfig, sqs: Any, batch: Any, *, submit_batch: Any,
        clock: Any = time.monotonic, sleep: Any = time.sleep, wall: Any = time.time,
        watch: Watch | None = None, cloudwatch: Any = None) -> list[dict[str, Any]]:
    """Decide at 0, POLL, 2 x POLL, ... seconds, while that is before LOOP_SECONDS; each decision
    decides for every pool in POOLS order and returns one record per pool.

    The slots are fixed from the start, so a slow decision does not shift the ones after it; a
    decision that overran a slot skips it rather than running twice back to back.

    With ``idle_check`` "minute" the run ends after the first decision in which no pool found work
    (``found_work``) once ``cooldown_seconds`` have passed since one last did (``watch``, kept
    between runs); that decision's lines are plain JSON marked ``"idle": true``, no metrics. So an
    idle stack's run is one decision, and a busy one loops as before.
    """
    watch = WATCH if watch is None else watch
    start = clock()
    records = []
    # What this container submitted lately, per pool, counted by that pool's every decision.
    submitted_ids = {pool.pool: watch.recent_submissions(pool.pool, wall()) for pool in config.pools}
    slot = 0
    while True:
        # A pool's line is printed at once when it cannot end the run (it found work, or every
        # run loops); the others once the whole decision tells whether it ends the run.
        quiet = []
        for pool in config.pools:
            known = len(submitted_ids[pool.pool])
            record = _decision(pool, sqs, batch, submit_batch=submit_batch, submitted_ids=submitted_ids[pool.pool],
                               run_times=lambda name=pool.pool: watch.run_time(config, name, cloudwatch, wall()),
                               start_samples=watch.starts.setdefault(pool.pool, {}))
            watch.submitted.setdefault(pool.pool, []).extend(
                (job_id, wall()) for job_id in submitted_ids[pool.pool][known:])
            records.append(record)
            if found_work(record):
                watch.last_work = wall()
            if found_work(record) or config.idle_check == "loop":
                log_decision(record, config.metrics_namespace)
            else:
                quiet.append(record)
        ends_idle = (len(quiet) == len(config.pools)
                     and (watch.last_work is None or wall() - watch.last_work >= config.cooldown_seconds))
        for record in quiet:
            if ends_idle:
                record["idle"] = True
            log_decision(record, None if ends_idle else config.metrics_namespace)
        if ends_idle:
            return records
        elapsed = clock() - start
        slot = max(slot + 1, math.ceil(elapsed / config.poll_seconds))
        if slot * config.poll_seconds >= config.loop_seconds:
            return records
        sleep(max(0.0, start + slot * config.poll_seconds - clock()))


def handler(event: Any, context: Any) -> list[dict[str, Any]]:
    """Lambda entry point (``batch_celery.scaler.handler.handler``); the event's content does not matter.

    Returns the run's records (one per pool per decision); raises ``ScalerRunFailed`` after the
    loop if any failed, naming the pools that failed.
    """
    try:
        config = ScalerConfig.from_env(os.environ)
    except ValueError as error:
        record: dict[str, Any] = {"scaler": "batch-celery", "outcome": "config_error", "level": "ERROR",
                                  "submitted": 0, "error": str(error)}
        print(json.dumps(record, sort_keys=True), file=sys.stdout, flush=True)
        raise ScalerRunFailed(f"config_error: {error}") from None
    sqs, batch, submit_batch, cloudwatch = _clients()
    records = run(config, sqs, batch, submit_batch=submit_batch, cloudwatch=cloudwatch)
    failed = [r for r in records if r.get("level") == "ERROR"]
    if failed:
        # After the log lines: the run counts once in the function's Errors metric, which the
        # stack alarms on. Async retries are off, so raising never repeats a submission.
        pools = ", ".join(dict.fromkeys(r["pool"] for r in failed))
        last = failed[-1]
        raise ScalerRunFailed(
            f"{len(failed)} of {len(records)} pool decisions failed (pools: {pools}); "
            f"last: {last['pool']}: {last['outcome']}: {last.get('error', '')}"
        )
    return records

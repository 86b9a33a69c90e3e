"""The scaler Lambda: read the queue and this stack's worker jobs, submit the missing workers.

Runs every minute on an EventBridge schedule (and when a depth or SLA alarm goes into ALARM).
One run decides every POLL_SECONDS, starting no decision after LOOP_SECONDS, then returns: a
backlog is seen within POLL_SECONDS, not a minute. Everything it needs comes from environment
variables that the CDK stack sets on the function (nothing here is a default the stack does not
control):

    QUEUE_URL            the task queue
    JOB_QUEUE            Batch job queue ARN (or name)
    JOB_DEFINITION       worker job definition ARN (or name); jobs of any revision count as workers
    JOB_NAME             name given to the worker jobs this function submits
    MESSAGES_PER_WORKER  acceptable backlog per worker (see policy.py)
    MAX_WORKERS          cap on active workers, normally what the compute environment runs at once
    TASKS_PER_WORKER     tasks one worker runs at once (its Celery concurrency)
    POLL_SECONDS         seconds between two decisions of one run
    LOOP_SECONDS         no decision starts later than this after the run began (0: one decision)

Safety rules: if any reading fails, that decision submits nothing (never scale on partial
information); if a submission fails, that decision stops there (the next one re-evaluates from
fresh counts, which include any job that did land). Each decision prints exactly one JSON line; a
failed decision does not end the loop, but the run raises ``ScalerRunFailed`` at its end, so it
counts once in the function's Errors metric (and its alarm).

Imports are relative so the same files work as ``batch_celery.scaler`` locally and as the
top-level ``scaler`` package inside the Lambda asset.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .policy import submission_plan, workers_needed, workers_to_submit

# Listed in lifecycle order on purpose: a job that moves on while we page through the listings is
# then seen again in a later status (and de-duplicated by id) instead of slipping between two.
ACTIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 job ids.

# A decision must not hold up the ones after it (or the next minute's run): few, quick retries.
_BOTO_CONFIG = BotoConfig(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10)
# SubmitJob has no idempotency token: when an attempt takes effect but its answer is lost (a read
# timeout, a 5xx from the front end), a retry submits the workers a second time, past the cap.
# So the submission is tried exactly once; a failed one is re-evaluated by the next decision from
# fresh counts, which then include any job that did land. (``max_attempts`` counts retries in
# botocore's standard mode; ``total_max_attempts`` counts calls.)
SUBMIT_CONFIG = _BOTO_CONFIG.merge(BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}))

ENV_NAMES = ("QUEUE_URL", "JOB_QUEUE", "JOB_DEFINITION", "JOB_NAME", "MESSAGES_PER_WORKER", "MAX_WORKERS",
             "TASKS_PER_WORKER", "POLL_SECONDS", "LOOP_SECONDS")


class ScalerError(Exception):
    """An AWS call failed; the message names the call and the error code."""


class ScalerRunFailed(RuntimeError):
    """Raised by the Lambda entry point after logging a run that failed (one line: outcome: error)."""


@dataclass(frozen=True)
class ScalerConfig:
    queue_url: str
    job_queue: str
    job_definition: str
    job_name: str
    messages_per_worker: int
    max_workers: int
    # One decision per run unless told otherwise (callers that build the config themselves).
    poll_seconds: int = 10
    loop_seconds: int = 0
    # In-flight messages per busy worker: a worker of concurrency 4 holding 4 messages is one worker.
    tasks_per_worker: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "ScalerConfig":
        missing = [name for name in ENV_NAMES if not environ.get(name)]
        if missing:
            raise ValueError(f"missing environment variable(s) {', '.join(missing)}: the stack must set them")
        return cls(
            queue_url=environ["QUEUE_URL"],
            job_queue=environ["JOB_QUEUE"],
            job_definition=environ["JOB_DEFINITION"],
            job_name=environ["JOB_NAME"],
            messages_per_worker=_int_env(environ, "MESSAGES_PER_WORKER", minimum=1),
            max_workers=_int_env(environ, "MAX_WORKERS", minimum=0),
            poll_seconds=_int_env(environ, "POLL_SECONDS", minimum=1),
            loop_seconds=_int_env(environ, "LOOP_SECONDS", minimum=0),
            tasks_per_worker=_int_env(environ, "TASKS_PER_WORKER", minimum=1),
        )


def _int_env(environ: Mapping[str, str], name: str, *, minimum: int) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={raw!r} is not allowed: it must be a whole number >= {minimum}")
    return value


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


def active_workers(batch: Any, job_queue: str, job_definition: str, also: Iterable[str] = ()) -> int:
    """Workers of this job definition that are active or on their way, array children included.

    Parents are found with ListJobs per active status (array children are skipped there, whether
    or not the listing shows them); each array parent then counts its children that are still
    active, from DescribeJobs' ``statusSummary`` (its full size while that summary is still
    empty, i.e. right after submission). So a parent and its children are never counted twice.
    ``also`` are job ids this run submitted: counted from DescribeJobs even if ListJobs does not
    show them yet (a listing that lags a fresh submission would otherwise let the next decision,
    seconds later, submit the same workers again).
    """
    wanted_definition = definition_name(job_definition)
    job_ids: dict[str, None] = {}
    paginator = batch.get_paginator("list_jobs")
    for status in ACTIVE_STATUSES:
        pages = _call(f"batch:ListJobs({status})",
                      lambda **kw: list(paginator.paginate(**kw)), jobQueue=job_queue, jobStatus=status)
        for page in pages:
            for summary in page.get("jobSummaryList", []):
                if _is_array_child(summary):
                    continue
                if definition_name(summary.get("jobDefinition", "")) != wanted_definition:
                    continue
                job_ids[summary["jobId"]] = None

    job_ids.update((job_id, None) for job_id in also)
    ids = list(job_ids)
    active = 0
    for start in range(0, len(ids), DESCRIBE_BATCH):
        jobs = _call("batch:DescribeJobs", batch.describe_jobs, jobs=ids[start:start + DESCRIBE_BATCH])["jobs"]
        for job in jobs:
            active += _active_in(job)
    return active


def _is_array_child(summary: Mapping[str, Any]) -> bool:
    # Children carry their index; their ids are "<parent id>:<index>".
    return "index" in summary.get("arrayProperties", {}) or ":" in summary.get("jobId", "")


def _active_in(job: Mapping[str, Any]) -> int:
    if job.get("status") not in ACTIVE_STATUSES:
        return 0
    array = job.get("arrayProperties") or {}
    size = array.get("size")
    if not size:
        return 1
    summary = array.get("statusSummary") or {}
    if not any(summary.values()):
        return int(size)
    return sum(int(summary.get(status, 0)) for status in ACTIVE_STATUSES)


def submit_workers(batch: Any, config: ScalerConfig, workers: int) -> list[str]:
    """Submit ``workers`` workers as one job or array job(s); stops at the first failure."""
    job_ids = []
    for size in submission_plan(workers):
        request = {"jobName": config.job_name, "jobQueue": config.job_queue, "jobDefinition": config.job_definition}
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


def scale(config: ScalerConfig, sqs: Any, batch: Any, *, submit_batch: Any,
          submitted_ids: list[str] | None = None) -> dict[str, Any]:
    """One scaling decision with the given clients; returns the record that is logged.

    ``batch`` lists and describes jobs (retries are fine); ``submit_batch`` submits them and must
    not retry (a client with ``SUBMIT_CONFIG``), or a lost answer doubles the workers.
    ``submitted_ids`` (the run's, updated here) are always counted while active.
    """
    submitted_ids = [] if submitted_ids is None else submitted_ids
    record: dict[str, Any] = {
        "scaler": "batch-celery",
        "messages_per_worker": config.messages_per_worker,
        "max_workers": config.max_workers,
    }
    try:
        counts = queue_counts(sqs, config.queue_url)
        active = active_workers(batch, config.job_queue, config.job_definition, also=submitted_ids)
    except ScalerError as error:
        record.update(outcome="read_failed", level="ERROR", submitted=0,
                      error=f"{error}; submitted nothing, the next decision re-evaluates")
        return record

    deficit = workers_to_submit(counts["visible"], counts["in_flight"], counts["delayed"], active,
                                config.messages_per_worker, config.max_workers,
                                tasks_per_worker=config.tasks_per_worker)
    backlog = counts["visible"] + counts["in_flight"] + counts["delayed"]
    wanted = workers_needed(counts["visible"], counts["in_flight"], counts["delayed"], active,
                            config.messages_per_worker, config.max_workers,
                            tasks_per_worker=config.tasks_per_worker)
    record.update(counts, backlog=backlog, active=active, wanted=wanted, to_submit=deficit)
    try:
        job_ids = submit_workers(submit_batch, config, deficit)
    except PartialSubmit as error:
        submitted_ids.extend(error.job_ids)
        submitted = sum(submission_plan(deficit)[: len(error.job_ids)])
        record.update(outcome="submit_failed", level="ERROR", submitted=submitted, job_ids=error.job_ids,
                      error=f"{error}; stopped here, the next decision re-evaluates")
        return record
    submitted_ids.extend(job_ids)
    record.update(outcome="ok", level="INFO", submitted=deficit, job_ids=job_ids)
    return record


@lru_cache(maxsize=1)
def _clients() -> tuple[Any, Any, Any]:
    # Once per container: warm invocations reuse connections. boto3 itself honours
    # AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL_BATCH, which is how the tests reach moto.
    return (
        boto3.client("sqs", config=_BOTO_CONFIG),
        boto3.client("batch", config=_BOTO_CONFIG),
        boto3.client("batch", config=SUBMIT_CONFIG),
    )


def decide(config: ScalerConfig, sqs: Any, batch: Any, *, submit_batch: Any,
           submitted_ids: list[str] | None = None) -> dict[str, Any]:
    """One decision, logged as one JSON line. An unexpected error becomes an ERROR record, so one
    bad answer costs this decision, not the rest of the run."""
    try:
        record = scale(config, sqs, batch, submit_batch=submit_batch, submitted_ids=submitted_ids)
    except Exception as error:  # noqa: BLE001 - logged, and the run still fails at its end
        record = {"scaler": "batch-celery", "outcome": "error", "level": "ERROR", "submitted": 0,
                  "error": f"{type(error).__name__}: {error}; the next decision re-evaluates"}
    print(json.dumps(record, sort_keys=True), file=sys.stdout, flush=True)
    return record


def run(config: ScalerConfig, sqs: Any, batch: Any, *, submit_batch: Any,
        clock: Any = time.monotonic, sleep: Any = time.sleep) -> list[dict[str, Any]]:
    """Decide at 0, POLL, 2 x POLL, ... seconds, while that is before LOOP_SECONDS.

    The slots are fixed from the start, so a slow decision does not shift the ones after it; a
    decision that overran a slot skips it rather than running twice back to back.
    """
    start = clock()
    records = []
    submitted_ids: list[str] = []  # what this run submitted, counted by every later decision
    slot = 0
    while True:
        records.append(decide(config, sqs, batch, submit_batch=submit_batch, submitted_ids=submitted_ids))
        elapsed = clock() - start
        slot = max(slot + 1, math.ceil(elapsed / config.poll_seconds))
        if slot * config.poll_seconds >= config.loop_seconds:
            return records
        sleep(max(0.0, start + slot * config.poll_seconds - clock()))


def handler(event: Any, context: Any) -> list[dict[str, Any]]:
    """Lambda entry point (``scaler.handler.handler``); the event's content does not matter.

    Returns the run's decision records; raises ``ScalerRunFailed`` after the loop if any failed.
    """
    try:
        config = ScalerConfig.from_env(os.environ)
    except ValueError as error:
        record: dict[str, Any] = {"scaler": "batch-celery", "outcome": "config_error", "level": "ERROR",
                                  "submitted": 0, "error": str(error)}
        print(json.dumps(record, sort_keys=True), file=sys.stdout, flush=True)
        raise ScalerRunFailed(f"config_error: {error}") from None
    sqs, batch, submit_batch = _clients()
    records = run(config, sqs, batch, submit_batch=submit_batch)
    failed = [r for r in records if r.get("level") == "ERROR"]
    if failed:
        # After the log lines: the run counts once in the function's Errors metric, which the
        # stack alarms on. Async retries are off, so raising never repeats a submission.
        last = failed[-1]
        raise ScalerRunFailed(
            f"{len(failed)} of {len(records)} decisions failed; last: {last['outcome']}: {last.get('error', '')}"
        )
    return records

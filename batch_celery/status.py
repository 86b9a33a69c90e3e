"""``python -m batch_celery status``: where each pool stands, from the deployed stack or the local run.

    python -m batch_celery status [--stack NAME] [--region REGION] [--json]
    python -m batch_celery status --local [--json]      # while `make demo` runs

Per pool: the task queue's waiting, in-flight and delayed messages, the dead-letter queue's
messages, the pool's worker jobs by Batch state (active ones now; SUCCEEDED and FAILED created in
the last hour), and the scaler's last decision for the pool (from its log group, the last 15
minutes). The deployed stack is found by its outputs (CloudFormation DescribeStacks); every
reading is one read-only call, so an operator role needs cloudformation:DescribeStacks,
sqs:GetQueueAttributes, batch:ListJobs and logs:FilterLogEvents.

``--local`` reads the run file the demo keeps up to date (``.demo/run.json``): the same output
names pointing at the demo's moto server, whose queues are read live, and the demo's workers and
decisions in place of Batch's and the scaler's log group.

Exit status: 0; 1 with one line when credentials, the region, the stack or the local run are
missing or AWS cannot be reached; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from batch_celery.local import runfile
from batch_celery.props import pascal
from batch_celery_container import routing

RUN_FILE = runfile.DEFAULT_PATH
ACTIVE_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
FINISHED_STATES = ("SUCCEEDED", "FAILED")
FINISHED_WINDOW_SECONDS = 3600
DECISION_WINDOW_SECONDS = 15 * 60


class StatusError(RuntimeError):
    """The one line shown when the status cannot be read at all."""


@dataclass
class PoolStatus:
    pool: str
    visible: int | None = None
    in_flight: int | None = None
    delayed: int | None = None
    dead_lettered: int | None = None
    jobs: dict[str, int] = field(default_factory=dict)
    decision: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


# -- where the outputs come from -----------------------------------------------------------------


def stack_outputs(cloudformation: Any, stack: str, region: str) -> dict[str, str]:
    from botocore.exceptions import ClientError

    try:
        [described] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            raise StatusError(f"stack {stack} not found in region {region}; deploy it (make deploy) "
                              "or name yours with --stack NAME / --region REGION") from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    if "Routes" not in outputs:
        raise StatusError(f"stack {stack} in {region} has no batch-celery outputs (no Routes output); "
                          "is it a batch-celery stack, and has its deployment finished?")
    return outputs


def pool_names(outputs: Mapping[str, str]) -> list[str]:
    """The stack's pools in its order (the default first), from its Routes output."""
    try:
        return list(routing.parse_routes(outputs["Routes"]).pools)
    except routing.RoutingError as error:
        raise StatusError(f"the stack's Routes output cannot be read: {error}") from None


# -- readings ----------------------------------------------------------------------------------


def read_queues(sqs: Any, outputs: Mapping[str, str], status: PoolStatus) -> None:
    from batch_celery.scaler.handler import ScalerError, queue_counts

    prefix = f"Pool{pascal(status.pool)}"
    try:
        counts = queue_counts(sqs, outputs[f"{prefix}QueueUrl"])
        status.visible, status.in_flight, status.delayed = counts["visible"], counts["in_flight"], counts["delayed"]
        status.dead_lettered = queue_counts(sqs, outputs[f"{prefix}DeadLetterQueueUrl"])["visible"]
    except (ScalerError, KeyError) as error:
        status.errors.append(f"queues: {error}")


def read_jobs(batch: Any, outputs: Mapping[str, str], status: PoolStatus, now: float) -> None:
    """The pool's worker jobs (its job definition's, not the filler's) by state; an array job
    counts as its size (one worker per child)."""
    from batch_celery.scaler.handler import definition_name

    prefix = f"Pool{pascal(status.pool)}"
    job_queue, definition = outputs.get(f"{prefix}JobQueueArn"), outputs.get(f"{prefix}JobDefinitionArn")
    if not job_queue or not definition:
        status.errors.append("worker jobs: the stack has no job queue or job definition output for this pool")
        return
    wanted = definition_name(definition)
    try:
        for state in ACTIVE_STATES + FINISHED_STATES:
            count = 0
            for page in batch.get_paginator("list_jobs").paginate(jobQueue=job_queue, jobStatus=state):
                for job in page["jobSummaryList"]:
                    if definition_name(job.get("jobDefinition", "")) != wanted:
                        continue
                    if state in FINISHED_STATES and job.get("createdAt", 0) / 1000 < now - FINISHED_WINDOW_SECONDS:
                        continue
                    count += int((job.get("arrayProperties") or {}).get("size") or 1)
            status.jobs[state] = count
    except Exception as error:  # noqa: BLE001 - one pool's failed reading is shown, not fatal
        status.errors.append(f"worker jobs: {_reason(error)}")


def last_decisions(logs: Any, log_group: str, now: float) -> dict[str, dict[str, Any]]:
    """The newest decision record per pool in the scaler's log group (the last 15 minutes)."""
    latest: dict[str, dict[str, Any]] = {}
    paginator = logs.get_paginator("filter_log_events")
    for page in paginator.paginate(logGroupName=log_group, startTime=int((now - DECISION_WINDOW_SECONDS) * 1000)):
        for event in page.get("events", []):
            try:
                record = json.loads(event["message"])
            except ValueError:
                continue  # Lambda's own START/END/REPORT lines
            if not isinstance(record, dict) or record.get("scaler") != "batch-celery" or "pool" not in record:
                continue
            record = {k: v for k, v in record.items() if k != "_aws"}
            record["time"] = event["timestamp"] / 1000
            if record["time"] >= latest.get(record["pool"], {}).get("time", 0):
                latest[record["pool"]] = record
    return latest


# -- the two sources -----------------------------------------------------------------------------


def deployed_status(stack: str, region: str | None) -> tuple[str, list[PoolStatus]]:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
    # AWS_REGION is what AWS runtimes and most shells set; boto3 itself reads AWS_DEFAULT_REGION.
    session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    if not session.region_name:
        raise StatusError("no AWS region: set AWS_REGION or AWS_DEFAULT_REGION (or a profile's region) or pass --region")
    region = session.region_name
    client = lambda name: session.client(name, config=config)  # noqa: E731
    outputs = stack_outputs(client("cloudformation"), stack, region)
    now = time.time()
    statuses = [PoolStatus(pool) for pool in pool_names(outputs)]
    sqs, batch = client("sqs"), client("batch")
    for status in statuses:
        read_queues(sqs, outputs, status)
        read_jobs(batch, outputs, status, now)
    if "ScalerLogGroupName" in outputs:
        try:
            decisions = last_decisions(client("logs"), outputs["ScalerLogGroupName"], now)
        except Exception as error:  # noqa: BLE001
            for status in statuses:
                status.errors.append(f"scaler: {_reason(error)}")
        else:
            for status in statuses:
                status.decision = decisions.get(status.pool)
    return f"stack {stack} in {region}" + ("" if "ScalerLogGroupName" in outputs else " (alarms mode: no scaler)"), statuses


def local_status(run_file: Path = RUN_FILE) -> tuple[str, list[PoolStatus]]:
    try:
        run = runfile.read(run_file)
    except FileNotFoundError:
        raise StatusError("no local run: start one with `make demo` (it writes .demo/run.json)") from None
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    sqs = boto3.client("sqs", endpoint_url=run["endpoint"], region_name=run["region"], aws_access_key_id="testing",
                       aws_secret_access_key="testing",
                       config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
    statuses = []
    for pool in pool_names(run["outputs"]):
        status = PoolStatus(pool, jobs=dict(run["workers"].get(pool, {})), decision=run["decisions"].get(pool))
        try:
            read_queues(sqs, run["outputs"], status)
        except BotoCoreError:
            raise StatusError(f"the local run at {run['endpoint']} has ended (its moto server does not answer); "
                              "start one with `make demo`") from None
        if status.errors and "Could not connect" in status.errors[-1]:
            raise StatusError(f"the local run at {run['endpoint']} has ended (its moto server does not answer); "
                              "start one with `make demo`")
        statuses.append(status)
    return f"local run on {run['endpoint']} (worker processes stand in for Batch jobs)", statuses


# -- output --------------------------------------------------------------------------------------


def render(title: str, statuses: Sequence[PoolStatus]) -> str:
    lines = [title]
    for s in statuses:
        queue = ("queue: unreadable" if s.visible is None else
                 f"queue: {s.visible} waiting, {s.in_flight} in flight, {s.delayed} delayed; DLQ: {s.dead_lettered}")
        jobs = ", ".join(f"{state} {s.jobs[state]}" for state in ACTIVE_STATES + FINISHED_STATES if state in s.jobs)
        lines.append(f"pool {s.pool}")
        lines.append(f"  {queue}")
        lines.append(f"  worker jobs: {jobs or 'none'} (SUCCEEDED/FAILED: created in the last hour)")
        if s.decision:
            d = s.decision
            when = datetime.fromtimestamp(d["time"], timezone.utc).strftime("%H:%M:%S UTC")
            line = (f"  scaler at {when}: {d.get('outcome')}, wanted {d.get('wanted', '-')}, active {d.get('active', '-')}, "
                    f"submitted {d.get('submitted', 0)}")
            if d.get("error"):
                line += f"; {d['error']}"
            lines.append(line)
        else:
            lines.append("  scaler: no decision in the last 15 minutes")
        lines.extend(f"  error: {error}" for error in s.errors)
    return "\n".join(lines)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"status: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m batch_celery status", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", help="the stack's name [cdk.json's stack_name, else BatchCelery]")
    parser.add_argument("--region", help="the stack's region [boto3's: AWS_REGION or the profile's]")
    parser.add_argument("--local", action="store_true", help="the local run of `make demo` instead")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        if args.local:
            title, statuses = local_status()
        else:
            stack = args.stack or _default_stack_name()
            title, statuses = deployed_status(stack, args.region)
    except StatusError as error:
        print(f"status: {error}", file=sys.stderr)
        return 1
    except NoCredentialsError:
        print("status: no AWS credentials found (configure a profile, set AWS_PROFILE, or use --local for "
              "the local run)", file=sys.stderr)
        return 1
    except NoRegionError:
        print("status: no AWS region: set AWS_REGION or AWS_DEFAULT_REGION (or a profile's region) or pass --region",
              file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"status: AWS could not be read: {_reason(error)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"source": title, "pools": [asdict(s) for s in statuses]}, indent=2, default=str))
    else:
        print(render(title, statuses))
    return 0


def _default_stack_name() -> str:
    """The stack name `cdk deploy` would use: cdk.json's setting, as app.py reads it."""
    from batch_celery.local.template import project_context
    from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError

    try:
        return Settings.from_context(project_context().get(CONTEXT_KEY)).stack_name
    except SettingsError as error:
        raise StatusError(f"cdk.json: {error}") from None

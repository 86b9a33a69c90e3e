"""``python -m batch_celery status``: where each pool stands, from the deployed stack or the local run.

    python -m batch_celery status [--stack NAME] [--region REGION] [--json]
    python -m batch_celery status --local [--json]      # while `make demo` runs

Per pool: the task queue's waiting, in-flight and delayed messages, the dead-letter queue's
messages, the pool's worker jobs by Batch state (active ones now; SUCCEEDED and FAILED created in
the last hour; an array job counts each child in its own state), and the scaler's last decision
for the pool (from its log group, the last 15 minutes). The deployed stack is found by its outputs
(CloudFormation DescribeStacks); every reading is read-only, so an operator role needs
cloudformation:DescribeStacks, sqs:GetQueueAttributes, batch:ListJobs, batch:DescribeJobs and
logs:FilterLogEvents.

With schedules (the ``Schedules`` output), each schedule follows: its task, pool, expression and
time zone, and its last fire in the last 25 hours (the schedule sender's log group: the scheduled
time, the task id, how late it was sent) with the number of fires in that window; the sender's
log group takes logs:FilterLogEvents as the scaler's does.

``--local`` reads the run file the demo keeps up to date (``.demo/run.json``, see
batch_celery/runfile.py): the same output names pointing at the demo's moto server, whose queues are read
live, and the demo's worker processes and decisions in place of Batch's and the scaler's log group.
It also shows each pool's last failed task run with its reason (the exception's last line, from the
run's metrics line: task_metrics.py).

Exit status: 0; 1 with one line when credentials, the region, the stack or the local run are
missing or AWS cannot be reached; 2 on bad arguments. One pool's failed reading is shown in that
pool's block (``error: ...``) and does not stop the others.
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
from typing import Any, Callable, Mapping, Sequence

from batch_celery import runfile
from batch_celery.props import pascal
from batch_celery_container import routing

RUN_FILE = runfile.DEFAULT_PATH
ACTIVE_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
FINISHED_STATES = ("SUCCEEDED", "FAILED")
FINISHED_WINDOW_SECONDS = 3600
DECISION_WINDOW_SECONDS = 15 * 60
DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 job ids.
# A daily schedule's last fire is in this window whatever the time of day.
SCHEDULE_WINDOW_SECONDS = 25 * 3600

# Where the figures come from, and what the worker-jobs and scaler lines say about it.
SCALER, ALARMS, LOCAL = "scaler", "alarms", "local"
JOBS_NOTE = {SCALER: "SUCCEEDED/FAILED: created in the last hour", ALARMS: "SUCCEEDED/FAILED: created in the last hour",
             LOCAL: "worker processes of this run"}


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
    # The last failed task run: task, task_id, reason (its exception's last line), count, time.
    last_failure: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class ScheduleStatus:
    schedule: str
    task: str = ""
    pool: str = ""
    expression: str = ""
    timezone: str = ""
    # The newest fire's record (task_id, scheduled_time, schedule_lag_seconds, time) and the count.
    last_fire: dict[str, Any] | None = None
    fires: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Report:
    source: str
    """One line: which stack in which region, or which local run."""
    scaling: str
    """SCALER (decisions from its log group), ALARMS (no scaler) or LOCAL (the demo's decisions)."""
    pools: list[PoolStatus]
    schedules: list[ScheduleStatus] = field(default_factory=list)


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
    if "Routes" not in outputs:
        raise StatusError("no Routes output: the pools cannot be named")
    try:
        return list(routing.parse_routes(outputs["Routes"]).pools)
    except routing.RoutingError as error:
        raise StatusError(f"the Routes output cannot be read: {error}") from None


# -- readings ----------------------------------------------------------------------------------


def read_queues(sqs: Any, outputs: Mapping[str, str], status: PoolStatus) -> None:
    from batch_celery.scaler.handler import ScalerError, queue_counts

    prefix = f"Pool{pascal(status.pool)}"
    missing = [f"{prefix}{name}" for name in ("QueueUrl", "DeadLetterQueueUrl") if not outputs.get(f"{prefix}{name}")]
    if missing:
        status.errors.append(f"queues: no {' or '.join(missing)} output")
        return
    try:
        counts = queue_counts(sqs, outputs[f"{prefix}QueueUrl"])
        status.visible, status.in_flight, status.delayed = counts["visible"], counts["in_flight"], counts["delayed"]
        status.dead_lettered = queue_counts(sqs, outputs[f"{prefix}DeadLetterQueueUrl"])["visible"]
    except ScalerError as error:
        status.errors.append(f"queues: {error}")


def read_jobs(batch: Any, outputs: Mapping[str, str], status: PoolStatus, now: float) -> None:
    """The pool's worker jobs (its job definition's, not the filler's) by Batch state.

    Active jobs are listed per state, however old; finished ones with one listing of the jobs
    created in the last hour (ListJobs' AFTER_CREATED_AT filter, so a week of finished jobs is not
    paged through). As in the scaler (handler.active_workers), array children are not counted from
    the listing (moto lists them, Batch may): each array parent's children are counted from
    DescribeJobs' ``statusSummary``, each in its own state, so a parent PENDING while three of its
    children run counts as RUNNING 3, and nothing is counted twice.
    """
    from batch_celery.scaler.handler import definition_name, is_array_child

    prefix = f"Pool{pascal(status.pool)}"
    if outputs.get(f"{prefix}FunctionName"):
        return  # a Lambda pool (compute "lambda"): its function runs the tasks, no worker jobs
    job_queue, definition = outputs.get(f"{prefix}JobQueueArn"), outputs.get(f"{prefix}JobDefinitionArn")
    if not job_queue or not definition:
        status.errors.append(f"worker jobs: no {prefix}JobQueueArn or {prefix}JobDefinitionArn output")
        return
    wanted = definition_name(definition)
    since_ms = (now - FINISHED_WINDOW_SECONDS) * 1000
    recent = [{"name": "AFTER_CREATED_AT", "values": [str(int(since_ms))]}]
    try:
        parents: dict[str, Mapping[str, Any]] = {}
        arrays: set[str] = set()
        paginator = batch.get_paginator("list_jobs")
        for listing in [{"jobStatus": state} for state in ACTIVE_STATES] + [{"filters": recent}]:
            for page in paginator.paginate(jobQueue=job_queue, **listing):
                for job in page.get("jobSummaryList", []):
                    if definition_name(job.get("jobDefinition", "")) != wanted:
                        continue
                    if is_array_child(job):
                        arrays.add(job["jobId"].split(":")[0])
                    else:
                        if (job.get("arrayProperties") or {}).get("size"):
                            arrays.add(job["jobId"])
                        parents.setdefault(job["jobId"], job)  # a job that changed state between listings: once
        described: dict[str, Mapping[str, Any]] = {}
        array_ids = [job_id for job_id in parents if job_id in arrays]
        for start in range(0, len(array_ids), DESCRIBE_BATCH):
            for job in batch.describe_jobs(jobs=array_ids[start:start + DESCRIBE_BATCH])["jobs"]:
                described[job["jobId"]] = job
    except Exception as error:  # noqa: BLE001 - one pool's failed reading is shown, not fatal
        status.errors.append(f"worker jobs: {_reason(error)}")
        return
    counts = dict.fromkeys(ACTIVE_STATES + FINISHED_STATES, 0)
    for job_id, job in parents.items():
        array = (described.get(job_id) or {}).get("arrayProperties") or {}
        summary = array.get("statusSummary") or {}
        if any(summary.values()):
            by_state = {state: int(summary.get(state) or 0) for state in counts}
        else:  # a plain job, or an array whose children Batch has not created yet
            size = array.get("size") or (job.get("arrayProperties") or {}).get("size") or 1
            by_state = {job.get("status", ""): int(size)}
        created_recently = job.get("createdAt", 0) >= since_ms
        for state, count in by_state.items():
            if state in counts and (state in ACTIVE_STATES or created_recently):
                counts[state] += count
    status.jobs = counts


def last_decisions(logs: Any, log_group: str, now: float) -> dict[str | None, dict[str, Any]]:
    """The newest decision record per pool in the scaler's log group (the last 15 minutes).

    A record without a pool (the scaler's ``config_error``: no pool was decided) is kept under
    None; it stands for every pool's last decision when it is the newer one.
    """
    latest: dict[str | None, dict[str, Any]] = {}
    paginator = logs.get_paginator("filter_log_events")
    for page in paginator.paginate(logGroupName=log_group, startTime=int((now - DECISION_WINDOW_SECONDS) * 1000)):
        for event in page.get("events", []):
            try:
                record = json.loads(event["message"])
            except ValueError:
                continue  # Lambda's own START/END/REPORT lines
            if not isinstance(record, dict) or record.get("scaler") != "batch-celery":
                continue
            record = {k: v for k, v in record.items() if k != "_aws"}
            record["time"] = event["timestamp"] / 1000
            pool = record.get("pool")
            if record["time"] >= latest.get(pool, {}).get("time", 0):
                latest[pool] = record
    return latest


def schedule_statuses(outputs: Mapping[str, str]) -> list[ScheduleStatus]:
    """The stack's schedules from its ``Schedules`` output (none without it)."""
    if not outputs.get("Schedules"):
        return []
    try:
        schedules = json.loads(outputs["Schedules"])
    except ValueError as error:
        raise StatusError(f"the Schedules output cannot be read: {_reason(error)}") from None
    return [ScheduleStatus(name, **{k: str(v) for k, v in (entry or {}).items()
                                    if k in ("task", "pool", "expression", "timezone")})
            for name, entry in schedules.items()]


def read_fires(logs: Any, log_group: str, statuses: Sequence[ScheduleStatus], now: float) -> None:
    """Each schedule's newest fire and count of fires in the sender's log group (the last 25 hours)."""
    from batch_celery_container.schedule_sender import RECORD_MARKER

    by_name = {status.schedule: status for status in statuses}
    paginator = logs.get_paginator("filter_log_events")
    for page in paginator.paginate(logGroupName=log_group, startTime=int((now - SCHEDULE_WINDOW_SECONDS) * 1000)):
        for event in page.get("events", []):
            try:
                record = json.loads(event["message"])
            except ValueError:
                continue  # Lambda's own START/END/REPORT lines
            if not isinstance(record, dict) or record.get("sender") != RECORD_MARKER:
                continue
            status = by_name.get(record.get("schedule"))
            if status is None:
                continue
            record = {k: v for k, v in record.items() if k != "_aws"}
            record["time"] = event["timestamp"] / 1000
            status.fires += 1
            if record["time"] >= (status.last_fire or {}).get("time", 0):
                status.last_fire = record


def _decision_for(decisions: Mapping[str | None, dict[str, Any]], pool: str) -> dict[str, Any] | None:
    own, every = decisions.get(pool), decisions.get(None)
    if own and every:
        return own if own["time"] >= every["time"] else every
    return own or every


# -- the two sources -----------------------------------------------------------------------------


def aws_clients(region: str | None) -> tuple[str, Callable[[str], Any]]:
    """(the region, a factory of boto3 clients in it) with short timeouts: an unreachable endpoint
    is one line within seconds, not minutes of retries. Shared by status and doctor."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
    # AWS_REGION is what AWS runtimes and most shells set; boto3 itself reads AWS_DEFAULT_REGION.
    session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    if not session.region_name:
        raise StatusError("no AWS region: set AWS_REGION or AWS_DEFAULT_REGION (or a profile's region) or pass --region")
    return session.region_name, lambda name: session.client(name, config=config)


def deployed_status(stack: str, region: str | None) -> Report:
    region, client = aws_clients(region)
    outputs = stack_outputs(client("cloudformation"), stack, region)
    now = time.time()
    statuses = [PoolStatus(pool) for pool in pool_names(outputs)]
    sqs, batch = client("sqs"), client("batch")
    for status in statuses:
        read_queues(sqs, outputs, status)
        read_jobs(batch, outputs, status, now)
    scaling = SCALER if "ScalerLogGroupName" in outputs else ALARMS
    if scaling == SCALER:
        try:
            decisions = last_decisions(client("logs"), outputs["ScalerLogGroupName"], now)
        except Exception as error:  # noqa: BLE001
            for status in statuses:
                status.errors.append(f"scaler: {_reason(error)}")
        else:
            for status in statuses:
                status.decision = _decision_for(decisions, status.pool)
    source = f"stack {stack} in {region}" + (" (alarms mode: no scaler)" if scaling == ALARMS else "")
    schedules = schedule_statuses(outputs)
    if schedules and outputs.get("ScheduleSenderLogGroupName"):
        try:
            read_fires(client("logs"), outputs["ScheduleSenderLogGroupName"], schedules, now)
        except Exception as error:  # noqa: BLE001
            for schedule in schedules:
                schedule.errors.append(f"fires: {_reason(error)}")
    return Report(source, scaling, statuses, schedules)


def read_local_run(run_file: Path) -> dict[str, Any]:
    """The run file of `make demo`: its endpoint, region, outputs, workers and decisions."""
    try:
        run = runfile.read(run_file)
        for key in ("endpoint", "region", "outputs"):
            run[key]  # noqa: B018 - a file without them cannot be used
        run["workers"], run["decisions"] = run.get("workers") or {}, run.get("decisions") or {}
        run["failures"] = run.get("failures") or {}
        return run
    except FileNotFoundError:
        raise StatusError(f"no local run: start one with `make demo` (it writes {_shown_path(run_file)})") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StatusError(f"the run file {_shown_path(run_file)} cannot be read ({_reason(error)}); "
                          "it is rewritten while `make demo` runs, and removed when it ends") from None


def local_clients(run: Mapping[str, Any]) -> Callable[[str], Any]:
    """A factory of boto3 clients on the local run's moto server, once it is known to answer."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    client = lambda name: boto3.client(  # noqa: E731
        name, endpoint_url=run["endpoint"], region_name=run["region"], aws_access_key_id="testing",
        aws_secret_access_key="testing", config=config)
    try:
        client("sqs").list_queues(MaxResults=1)
    except BotoCoreError:
        # The demo removes its file when it ends; one left behind is from a run that was killed.
        raise StatusError(f"the local run at {run['endpoint']} has ended (its moto server does not answer); "
                          "start one with `make demo`") from None
    return client


def local_status(run_file: Path | None = None) -> Report:
    run = read_local_run(RUN_FILE if run_file is None else run_file)
    endpoint, outputs, workers, decisions = run["endpoint"], run["outputs"], run["workers"], run["decisions"]
    pools = pool_names(outputs)
    sqs = local_clients(run)("sqs")
    statuses = []
    for pool in pools:
        status = PoolStatus(pool, jobs={state: int(n) for state, n in (workers.get(pool) or {}).items()},
                            decision=decisions.get(pool), last_failure=run["failures"].get(pool))
        read_queues(sqs, outputs, status)
        statuses.append(status)
    schedules = schedule_statuses(outputs)
    fires = run.get("schedule_fires") or {}
    for schedule in schedules:
        schedule.last_fire = fires.get(schedule.schedule)
        schedule.fires = int((schedule.last_fire or {}).get("count") or 0)
    return Report(f"local run on {endpoint} (worker processes stand in for Batch jobs)", LOCAL, statuses, schedules)


# -- output --------------------------------------------------------------------------------------


def render(report: Report) -> str:
    lines = [report.source]
    for s in report.pools:
        queue = ("queue: unreadable" if s.visible is None else
                 f"queue: {s.visible} waiting, {s.in_flight} in flight, {s.delayed} delayed; DLQ: {s.dead_lettered}")
        states = [state for state in ACTIVE_STATES + FINISHED_STATES if state in s.jobs]
        jobs = ", ".join(f"{state} {s.jobs[state]}" for state in states)
        lines.append(f"pool {s.pool}")
        lines.append(f"  {queue}")
        lines.append(f"  worker jobs: {jobs} ({JOBS_NOTE[report.scaling]})" if jobs else "  worker jobs: unreadable")
        if report.scaling == ALARMS:
            lines.append("  scaler: no scaler (alarms mode)")
        elif s.decision:
            d = s.decision
            when = datetime.fromtimestamp(d["time"], timezone.utc).strftime("%H:%M:%S UTC")
            line = (f"  scaler at {when}: {d.get('outcome')}, wanted {d.get('wanted', '-')}, "
                    f"active {d.get('active', '-')}, submitted {d.get('submitted', 0)}")
            if d.get("error"):
                line += f"; {d['error']}"
            lines.append(line)
        else:
            lines.append("  scaler: no decision in the last 15 minutes")
        if s.last_failure:
            f = s.last_failure
            when = datetime.fromtimestamp(f.get("time") or 0, timezone.utc).strftime("%H:%M:%S UTC")
            runs = f.get("count") or 1
            lines.append(f"  last failure at {when} ({runs} failed run{'s' if runs != 1 else ''}): "
                         f"{f.get('task')}[{str(f.get('task_id') or '')[:8]}]: {f.get('reason') or 'no reason given'}")
        lines.extend(f"  error: {error}" for error in s.errors)
    lines.extend(_schedule_lines(report))
    return "\n".join(lines)


def _schedule_lines(report: Report) -> list[str]:
    lines = []
    window = "this run" if report.scaling == LOCAL else "the last 25 hours"
    for s in report.schedules:
        zone = f" {s.timezone}" if s.expression.startswith("cron(") else ""
        lines.append(f"schedule {s.schedule}: {s.task} to pool {s.pool}, {s.expression}{zone}")
        if s.last_fire:
            f = s.last_fire
            when = datetime.fromtimestamp(f.get("time") or 0, timezone.utc).strftime("%H:%M:%S UTC")
            lines.append(f"  last fire sent at {when} for {f.get('scheduled_time')} "
                         f"(task id {str(f.get('task_id') or '')[:8]}, {float(f.get('schedule_lag_seconds') or 0):g} s "
                         f"late); {s.fires} fire{'s' if s.fires != 1 else ''} in {window}")
        elif not s.errors:
            lines.append(f"  no fire in {window}")
        lines.extend(f"  error: {error}" for error in s.errors)
    return lines


def as_json(report: Report) -> str:
    pools = []
    for s in report.pools:
        pool = asdict(s)
        if s.decision and "time" in s.decision:
            pool["decision"]["time_utc"] = datetime.fromtimestamp(s.decision["time"], timezone.utc).isoformat()
        pools.append(pool)
    document: dict[str, Any] = {"source": report.source, "scaling": report.scaling, "pools": pools}
    if report.schedules:
        document["schedules"] = [asdict(s) for s in report.schedules]
    return json.dumps(document, indent=2, default=str)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"status: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m batch_celery status", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", help="the stack's name [cdk.json's stack_name, else BatchCelery]")
    parser.add_argument("--region", help="the stack's region [boto3's: AWS_REGION, AWS_DEFAULT_REGION or the profile's]")
    parser.add_argument("--local", action="store_true", help="the local run of `make demo` instead")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.local and (args.stack or args.region):
        parser.error("--local reads the local run: it takes no --stack or --region")
    try:
        if args.local:
            report = local_status()
        else:
            report = deployed_status(args.stack or _default_stack_name(), args.region)
    except Exception as error:  # noqa: BLE001 - the known ones are one line, the rest raise
        line = error_line(error)
        if line is None:
            raise
        print(f"status: {line}", file=sys.stderr)
        return 1
    print(as_json(report) if args.json else render(report))
    return 0


def error_line(error: BaseException) -> str | None:
    """The one line for an error that stops a command before it can read anything (missing
    credentials or region, no stack, no local run, AWS unreachable); None for any other error."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    if isinstance(error, StatusError):
        return str(error)
    if isinstance(error, NoCredentialsError):
        return "no AWS credentials found (configure a profile, set AWS_PROFILE, or use --local for the local run)"
    if isinstance(error, NoRegionError):
        return "no AWS region: set AWS_REGION or AWS_DEFAULT_REGION (or a profile's region) or pass --region"
    if isinstance(error, (ClientError, BotoCoreError)):
        return f"AWS could not be read: {_reason(error)}"
    return None


def _default_stack_name() -> str:
    """The stack name `cdk deploy` would use: cdk.json's setting, as app.py reads it."""
    from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError, project_context

    try:
        return Settings.from_context(project_context().get(CONTEXT_KEY)).stack_name
    except SettingsError as error:
        raise StatusError(f"cdk.json: {error}") from None
    except ValueError as error:  # cdk.json or cdk.context.json is not JSON
        raise StatusError(f"cdk.json cannot be read ({_reason(error)}); pass --stack NAME") from None

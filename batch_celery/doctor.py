"""``python -m batch_celery doctor``: a first-deploy check of a deployed stack, one line per check.

    python -m batch_celery doctor [--stack NAME] [--region REGION] [--timeout SECONDS]
                                  [--submit | --no-submit] [--json]
    python -m batch_celery doctor --local [--run-file PATH] [--timeout SECONDS] [--json]

What no local test can prove, checked on the account itself:

- ``probe <pool>``: a probe task (``batch_celery.probe``, registered by the bundled Celery app, so
  by every pool's image) is sent to each pool's queue with the stack's producer settings and must
  come back SUCCESS in the result table from a real worker job. That proves the image, the job
  and execution roles, the network (ECR, SQS, DynamoDB), the read-only root with its /tmp volume
  and the results; the probe reports the uid it ran as, writes and reads a file under /tmp and
  says whether the root filesystem is read-only, and the doctor holds it to the job definition's
  promise (not root, /tmp writable, root read-only). One message does not start a worker in alarms
  mode (the first alarm fires at 5), so there the doctor submits one worker job per pool itself
  (``--submit``, the default in alarms mode); in scaler mode it waits for the scaler, which also
  proves the scaler (``--submit`` there as well: no wait for the scaler).
- ``dlq <pool>``: the caller can read each dead-letter queue (ReceiveMessage with visibility 0
  and no wait: nothing is hidden, moved or deleted), which the queues' deny statements and a
  customer-managed key can forbid.
- ``alarm topic``: the alarm topic has at least one confirmed subscriber.

``--local`` checks the local run of `make demo` (its run file): the probe goes through the demo's
own scaler loop and a real worker process of the lifecycle script; what a local process cannot
show (the user, the read-only root) is reported, not judged. Exit status: 0 when every check
passed or was skipped, 1 when one failed or nothing could be read (one line), 2 on bad arguments.
See docs/doctor.md for what each failure means and the permissions the caller needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from batch_celery import status
from batch_celery import runfile
from batch_celery.props import pascal
from batch_celery_container import contract, routing

OK, FAIL, SKIP = "ok", "FAIL", "skip"
DEFAULT_TIMEOUT = 600  # an EC2 pool from zero: an instance, the ECS agent, a CUDA image pull
# Poll intervals: each poll costs a GetItem and a ListJobs per pool still waiting.
POLL_SECONDS, LOCAL_POLL_SECONDS = 5.0, 0.5
# Worker jobs created this long before the probe are shown too: a worker already up takes it.
JOBS_LOOKBACK_SECONDS = 600
DOCTOR_JOB_NAME = "batch-celery-doctor"
READY_STATES = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return text + (f"; fix: {self.fix}" if self.fix and self.status != OK else "")


@dataclass
class Target:
    """Where the checks run: a deployed stack or the local run, and the clients to reach it."""

    source: str
    outputs: Mapping[str, str]
    region: str
    client: Callable[[str], Any]
    local: bool = False
    scaling: str = status.SCALER
    # Local only: the run file, re-read while waiting (the demo's worker processes by state).
    run_file: Path | None = None
    endpoint: str | None = None


@dataclass
class Probe:
    pool: str
    queue_name: str
    task_id: str
    nonce: str
    sent_at: float
    job_id: str | None = None
    seen: str = ""
    check: Check | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)


# -- finding the target --------------------------------------------------------------------------


def deployed_target(stack: str, region: str | None) -> Target:
    region, client = status.aws_clients(region)
    outputs = status.stack_outputs(client("cloudformation"), stack, region)
    scaling = status.SCALER if "ScalerLogGroupName" in outputs else status.ALARMS
    mode = " (alarms mode: no scaler)" if scaling == status.ALARMS else ""
    return Target(f"stack {stack} in {region}{mode}", outputs, region, client, scaling=scaling)


def local_target(run_file: Path) -> Target:
    run = status.read_local_run(run_file)
    client = status.local_clients(run)
    return Target(f"local run on {run['endpoint']} (worker processes stand in for Batch jobs)", run["outputs"],
                  run["region"], client, local=True, scaling=status.LOCAL, run_file=run_file,
                  endpoint=run["endpoint"])


def caller_arn(target: Target) -> str | None:
    """The caller's IAM ARN as a queue policy names it: an assumed role's session becomes its role."""
    try:
        arn = target.client("sts").get_caller_identity()["Arn"]
    except Exception:  # noqa: BLE001 - only used to word a fix
        return None
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        role = parts[5].split("/")[1]
        return f"arn:aws:iam::{parts[4]}:role/{role}"
    return arn


# -- the probe -----------------------------------------------------------------------------------


def producer_app(target: Target):
    """A Celery app that sends as the user's application does (routing.producer_settings). Its
    result backend only names the key of a result (Celery's DynamoDB backend stores
    ``str(b"celery-task-meta-<id>")``): the doctor reads the table with its own client, so a
    missing permission there is named precisely and the local run needs no endpoint variables."""
    from celery import Celery

    settings = dict(routing.producer_settings({"stack": dict(target.outputs)}, "stack"))
    if target.local and target.endpoint:
        from urllib.parse import urlsplit

        from batch_celery_local.motoserver import ACCESS_KEY, SECRET_KEY

        endpoint = urlsplit(target.endpoint)
        settings["broker_url"] = f"sqs://{ACCESS_KEY}:{SECRET_KEY}@{endpoint.hostname}:{endpoint.port}//"
        settings["broker_transport_options"] = {**settings["broker_transport_options"], "is_secure": False}
    app = Celery("batch-celery-doctor", set_as_current=False)
    app.conf.update(settings, task_ignore_result=True, broker_connection_retry=False,
                    broker_connection_max_retries=1)
    return app


def send_probes(target: Target, app: Any, pools: Sequence[str], timeout: float) -> tuple[list[Probe], list[Check]]:
    """One probe per pool, on that pool's queue; a pool whose probe cannot be sent gets its FAIL."""
    routes = routing.parse_routes(target.outputs[routing.OUTPUT_NAME])
    probes, failed = [], []
    for pool in pools:
        queue = routes.pools[pool].queue_name
        nonce, task_id = uuid.uuid4().hex, str(uuid.uuid4())
        try:
            # Expires: a probe no worker took in time is discarded by the worker that takes it later.
            app.send_task(contract.PROBE_TASK, kwargs={"nonce": nonce}, queue=queue, task_id=task_id,
                          expires=timeout + 600, retry=False)
        except Exception as error:  # noqa: BLE001 - one pool's failure is its line
            failed.append(Check(f"probe {pool}", FAIL, f"could not send the probe to {queue}: {_reason(error)}",
                                _send_fix(error)))
            continue
        probes.append(Probe(pool, queue, task_id, nonce, time.time()))
    return probes, failed


def submit_workers(target: Target, probes: Sequence[Probe]) -> list[Check]:
    """One worker job per pool, as the scaler or an alarm rule would submit it."""
    batch, failed = target.client("batch"), []
    for probe in probes:
        prefix = f"Pool{pascal(probe.pool)}"
        if target.outputs.get(f"{prefix}FunctionName"):
            continue  # a Lambda pool: its event source mapping hands the probe to the function
        job_queue, definition = target.outputs.get(f"{prefix}JobQueueArn"), target.outputs.get(f"{prefix}JobDefinitionArn")
        if not job_queue or not definition:
            missing = " and ".join(n for n, v in ((f"{prefix}JobQueueArn", job_queue),
                                                  (f"{prefix}JobDefinitionArn", definition)) if not v)
            probe.check = Check(f"probe {probe.pool}", FAIL, f"cannot submit a worker job: no {missing} output",
                                "deploy this version of the stack (it publishes both), or run with --no-submit "
                                "and let the scaler start the worker")
            continue
        try:
            probe.job_id = batch.submit_job(jobName=f"{DOCTOR_JOB_NAME}-{probe.pool}", jobQueue=job_queue,
                                            jobDefinition=definition)["jobId"]
        except Exception as error:  # noqa: BLE001
            probe.check = Check(f"probe {probe.pool}", FAIL, f"batch:SubmitJob failed: {_reason(error)}",
                                f"allow the caller batch:SubmitJob on {job_queue} and the pool's job definition, "
                                "or run with --no-submit (scaler mode) to let the scaler start the worker")
            failed.append(probe.check)
    return failed


def read_result(target: Target, app: Any, task_id: str) -> dict[str, Any] | None:
    """Celery's result document of ``task_id`` in the result table, None while there is none."""
    backend = app.backend
    # The key and the value as Celery's DynamoDB backend writes them (its get(): str(key)).
    item = target.client("dynamodb").get_item(
        TableName=target.outputs[routing.RESULT_TABLE_OUTPUT],
        Key={contract.RESULT_KEY_ATTRIBUTE: {"S": str(backend.get_key_for_task(task_id))}}, ConsistentRead=True,
    ).get("Item")
    if not item:
        return None
    return backend.decode_result(item["result"]["B"])


def worker_jobs(target: Target, probe: Probe) -> list[dict[str, Any]]:
    """The pool's worker jobs created since shortly before the probe (the doctor's, the scaler's,
    an alarm rule's), newest first; array children are left out (their parent stands for them)."""
    from batch_celery.scaler.handler import definition_name, is_array_child

    prefix = f"Pool{pascal(probe.pool)}"
    job_queue, definition = target.outputs.get(f"{prefix}JobQueueArn"), target.outputs.get(f"{prefix}JobDefinitionArn")
    if not job_queue or not definition:
        return []
    since = int((probe.sent_at - JOBS_LOOKBACK_SECONDS) * 1000)
    jobs = []
    for page in target.client("batch").get_paginator("list_jobs").paginate(
            jobQueue=job_queue, filters=[{"name": "AFTER_CREATED_AT", "values": [str(since)]}]):
        for job in page.get("jobSummaryList", []):
            if not is_array_child(job) and definition_name(job.get("jobDefinition", "")) == definition_name(definition):
                jobs.append(job)
    return sorted(jobs, key=lambda job: job.get("createdAt", 0), reverse=True)


def describe_jobs(jobs: Sequence[Mapping[str, Any]], own: str | None) -> str:
    if not jobs:
        return "no worker job yet"
    parts = []
    for job in jobs[:3]:
        reason = " ".join(filter(None, [job.get("statusReason"), (job.get("container") or {}).get("reason")]))
        exit_code = (job.get("container") or {}).get("exitCode")
        mine = " (the doctor's)" if job["jobId"] == own else ""
        text = f"job {job['jobId'][:8]}{mine} {job.get('status')}"
        text += f" exit {exit_code}" if exit_code is not None else ""
        parts.append(text + (f" ({reason})" if reason else ""))
    more = f" and {len(jobs) - 3} more" if len(jobs) > 3 else ""
    return ", ".join(parts) + more


def local_workers(target: Target, pool: str) -> str:
    try:
        states = (runfile.read(target.run_file).get("workers") or {}).get(pool) or {}
    except (OSError, ValueError):
        return "the run file is gone (the local run ended)"
    return "worker processes: " + (", ".join(f"{state} {n}" for state, n in states.items()) or "none")


def judge(target: Target, probe: Probe, meta: Mapping[str, Any], waited: float) -> Check:
    """The probe's result held to what the job definition promises (deployed) or reported (local)."""
    name = f"probe {probe.pool}"
    state = meta.get("status")
    if state != "SUCCESS":
        error = meta.get("result")
        if isinstance(error, BaseException):  # Celery's backend decodes a stored error into an exception
            error = f"{type(error).__name__}: {error}"
        elif isinstance(error, dict):
            error = f"{error.get('exc_type')}: {error.get('exc_message')}"
        return Check(name, FAIL, f"the probe ended {state} after {waited:.0f} s: {error}",
                     "read the worker job's log for batch_celery.probe; the image must run this version's "
                     "celery_app.py (a pool's own image copies it: COPY --from=batch-celery)")
    r = meta.get("result") or {}
    where = f"job {r['job_id'][:8]}" if r.get("job_id") else "a local worker process"
    root = {True: "root read-only", False: "root writable", None: "root unknown"}[r.get("root_read_only")]
    scratch = f"{r.get('scratch')} writable" if r.get("scratch_writable") else f"{r.get('scratch')} NOT writable ({r.get('scratch_error')})"
    facts = f"uid {r.get('uid')}, {scratch}, {root}"
    if r.get("nonce") != probe.nonce:
        return Check(name, FAIL, f"the result is not this probe's ({facts})", "run the doctor again")
    if r.get("pool") not in (None, probe.pool):
        return Check(name, FAIL, f"pool {r.get('pool')}'s worker answered the probe for {probe.pool}",
                     "the pools' job definitions and queues are crossed: redeploy the stack")
    if target.local:
        return Check(name, OK, f"SUCCESS in {waited:.0f} s from {where}: {facts} (a local process: user and "
                               "filesystem are this machine's, not judged)")
    problems, fixes = [], []
    if r.get("uid") == 0:
        problems.append("the worker runs as root")
        fixes.append("the image must not override the job's user 10001:10001 (USER 10001:10001, as "
                     "examples/gpu-pool/Dockerfile)")
    if not r.get("scratch_writable"):
        problems.append(f"{r.get('scratch')} is not writable")
        fixes.append("declare VOLUME /tmp in the pool's image, so the job's scratch volume starts world-writable")
    if r.get("root_read_only") is False:
        problems.append("the root filesystem is writable")
        fixes.append("the job definition must set readonlyRootFilesystem (redeploy this version of the stack)")
    if problems:
        return Check(name, FAIL, f"SUCCESS from {where}, but {'; '.join(problems)} ({facts})", "; ".join(fixes))
    return Check(name, OK, f"SUCCESS in {waited:.0f} s from {where}: {facts}")


def timed_out(target: Target, probe: Probe, timeout: float, submitted: bool) -> Check:
    """What to fix when no result came within the timeout, from what was seen meanwhile."""
    name, seen = f"probe {probe.pool}", probe.seen or "nothing seen"
    detail = f"no result within {timeout:.0f} s; seen: {seen}"
    states = {job.get("status") for job in probe.jobs}
    if target.local:
        fix = ("no local worker took the probe: the local run starts workers only while `make demo` runs "
               "(its scaler loop); start it, then run the doctor in another terminal")
    elif not probe.jobs and submitted:
        fix = "the submitted job is not listed: check the pool's job queue in the Batch console"
    elif not probe.jobs and target.scaling == status.SCALER:
        fix = ("the scaler started no worker: `python -m batch_celery status` shows its last decision and "
               "error; or run the doctor with --submit")
    elif not probe.jobs:
        fix = ("alarms mode starts workers at 5 waiting messages or after a task waited 300 s: run the "
               "doctor with --submit (its default in alarms mode)")
    elif states <= {"SUBMITTED", "PENDING", "RUNNABLE"}:
        fix = ("the job never started: a full or short compute environment (docs/operations.md, Troubleshooting, 'Worker "
               "jobs stay RUNNABLE'); an EC2 pool from zero may need a longer --timeout")
    elif "FAILED" in states and not states & {"STARTING", "RUNNING", "SUCCEEDED"}:
        fix = ("the worker job failed: its status reason above, its log in CloudWatch (CannotPullContainerError "
               "or ResourceInitializationError: the subnets reach no ECR; exit 2: configuration, see the log)")
    else:
        fix = ("a worker ran but stored no result for the probe: read its log for batch_celery.probe "
               "(it needs dynamodb:PutItem on the result table and the task queue's receive rights)")
    return Check(name, FAIL, detail, fix)


def run_probes(target: Target, pools: Sequence[str], *, timeout: float, submit: bool,
               say: Callable[[str], None]) -> list[Check]:
    """Send a probe to every pool, start workers if asked, wait for the results (all at once)."""
    if routing.RESULT_TABLE_OUTPUT not in target.outputs:
        return [Check(f"probe {pool}", SKIP, "this stack stores no results (results: false): the doctor cannot "
                      "see a probe come back", "deploy with results on (the default) to run the probe; meanwhile "
                      "watch a worker job's log in CloudWatch") for pool in pools]
    app = producer_app(target)
    try:
        return _run_probes(target, app, pools, timeout=timeout, submit=submit, say=say)
    finally:
        app.close()


def _run_probes(target: Target, app: Any, pools: Sequence[str], *, timeout: float, submit: bool,
                say: Callable[[str], None]) -> list[Check]:
    probes, checks = send_probes(target, app, pools, timeout)
    if submit and not target.local:
        submit_workers(target, probes)
    interval = LOCAL_POLL_SECONDS if target.local else POLL_SECONDS
    started = time.monotonic()
    waiting = [p for p in probes if p.check is None]
    if waiting:
        how = ("the local run's scaler loop" if target.local else "one job per pool submitted by the doctor"
               if submit else "the scaler" if target.scaling == status.SCALER else "the alarms")
        say(f"waiting up to {timeout:.0f} s for {len(waiting)} probe(s); workers from {how}")
    while waiting:
        for probe in list(waiting):
            waited = time.monotonic() - started
            try:
                meta = read_result(target, app, probe.task_id)
            except Exception as error:  # noqa: BLE001
                probe.check = Check(f"probe {probe.pool}", FAIL, f"the result table cannot be read: {_reason(error)}",
                                    "allow the caller dynamodb:GetItem on the result table (ResultTableName); "
                                    "workers.grant_send_tasks(role) grants it")
            else:
                if meta and meta.get("status") in READY_STATES:
                    probe.check = judge(target, probe, meta, waited)
                else:
                    _observe(target, probe, say, waited)
                    own = next((j for j in probe.jobs if j["jobId"] == probe.job_id), None)
                    if own and own.get("status") == "FAILED":
                        probe.check = timed_out(target, probe, waited, submit)
                        probe.check.detail = f"the worker job failed after {waited:.0f} s; seen: {probe.seen}"
            if probe.check:
                waiting.remove(probe)
        if not waiting:
            break
        if time.monotonic() - started >= timeout:
            for probe in waiting:
                probe.check = timed_out(target, probe, timeout, submit)
            break
        time.sleep(interval)
    return checks + [p.check for p in probes]


def _observe(target: Target, probe: Probe, say: Callable[[str], None], waited: float) -> None:
    if target.local:
        seen = local_workers(target, probe.pool)
    else:
        try:
            probe.jobs = worker_jobs(target, probe)
            seen = describe_jobs(probe.jobs, probe.job_id)
        except Exception as error:  # noqa: BLE001 - the jobs are only seen, the probe decides
            seen = f"worker jobs unreadable ({_reason(error)})"
    if seen != probe.seen:
        probe.seen = seen
        say(f"[{waited:3.0f}s] {probe.pool}: {seen}")


# -- the dead-letter queues and the alarm topic ---------------------------------------------------


def check_dlq(target: Target, pool: str, caller: str | None) -> Check:
    name, prefix = f"dlq {pool}", f"Pool{pascal(pool)}"
    url = target.outputs.get(f"{prefix}DeadLetterQueueUrl")
    if not url:
        return Check(name, FAIL, f"no {prefix}DeadLetterQueueUrl output", "deploy this version of the stack")
    sqs = target.client("sqs")
    try:
        # Visibility 0 and no wait: whatever is received stays visible, nothing is moved or deleted.
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=0, WaitTimeSeconds=0)
    except Exception as error:  # noqa: BLE001
        return Check(name, FAIL, f"the caller cannot read it: {_reason(error)}", dlq_fix(error, caller))
    try:
        waiting = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
                      ["Attributes"]["ApproximateNumberOfMessages"])
        held = f"; it holds {waiting} failed task(s): see docs/operations.md, Troubleshooting, 'A task lands in the DLQ'" if waiting else "; empty"
    except Exception:  # noqa: BLE001
        held = ""
    return Check(name, OK, f"readable by {caller or 'the caller'}{held}")


def dlq_fix(error: BaseException, caller: str | None) -> str:
    code = _code(error)
    who = caller or "your role"
    if "kms" in code.lower():
        return (f"let {who} use the queues' key: kms:Decrypt on the stack's key (kms_key: true; an IAM "
                "policy suffices), or a statement for it in your own key's policy (kms_key: an ARN)")
    if "accessdenied" in code.lower().replace("_", ""):
        return (f"name {who} in operator_role_arns (cdk.json) and deploy: the DLQs deny reading to everyone "
                "else once operators are named; without them the caller needs sqs:ReceiveMessage from IAM")
    if "nonexistentqueue" in code.lower() or "doesnotexist" in code.lower():
        return "the queue is gone: was it deleted by hand? deploy the stack again"
    return "check the caller's credentials and network; see docs/doctor.md"


def check_topic(target: Target) -> Check:
    name, arn = "alarm topic", target.outputs.get("AlarmTopicArn")
    if not arn:
        if target.local:
            return Check(name, SKIP, "the local run has no alarm topic (the demo creates no SNS topic: moto "
                                     "evaluates no alarms); on AWS this checks AlarmTopicArn's subscribers")
        return Check(name, FAIL, "no AlarmTopicArn output", "deploy this version of the stack")
    try:
        subscriptions = [s for page in target.client("sns").get_paginator("list_subscriptions_by_topic").paginate(
            TopicArn=arn) for s in page.get("Subscriptions", [])]
    except Exception as error:  # noqa: BLE001
        return Check(name, FAIL, f"its subscribers cannot be listed: {_reason(error)}",
                     f"allow the caller sns:ListSubscriptionsByTopic on {arn}")
    return topic_check(arn, subscriptions)


def topic_check(arn: str, subscriptions: Sequence[Mapping[str, Any]]) -> Check:
    """At least one confirmed subscriber: SNS lists an unconfirmed one as PendingConfirmation."""
    confirmed = [s for s in subscriptions if s.get("SubscriptionArn", "").startswith("arn:")]
    pending = [s for s in subscriptions if s.get("SubscriptionArn") == "PendingConfirmation"]
    topic = arn.rsplit(":", 1)[-1]
    if confirmed:
        who = ", ".join(sorted({f"{s.get('Protocol')} {s.get('Endpoint')}" for s in confirmed}))
        return Check("alarm topic", OK, f"{topic} has {len(confirmed)} confirmed subscriber(s): {who}")
    if pending:
        who = ", ".join(sorted(f"{s.get('Protocol')} {s.get('Endpoint')}" for s in pending))
        return Check("alarm topic", FAIL, f"{topic}'s subscriptions await confirmation: {who}",
                     "open the confirmation message SNS sent and confirm (an email's link expires after 3 days; "
                     "subscribe again if it did)")
    return Check("alarm topic", FAIL, f"{topic} has no subscriber: no alarm reaches anyone",
                 f"set alarm_email in cdk.json and deploy, or aws sns subscribe --topic-arn {arn} --protocol email "
                 "--notification-endpoint you@example.com, then confirm")


# -- the command ---------------------------------------------------------------------------------


def diagnose(target: Target, *, timeout: float, submit: bool, say: Callable[[str], None]) -> list[Check]:
    pools = status.pool_names(target.outputs)
    caller = caller_arn(target)
    checks = run_probes(target, pools, timeout=timeout, submit=submit, say=say)
    checks += [check_dlq(target, pool, caller) for pool in pools]
    checks.append(check_topic(target))
    return checks


def render(target: Target, checks: Sequence[Check]) -> str:
    failed = sum(c.status == FAIL for c in checks)
    summary = (f"doctor: {len(checks) - failed} of {len(checks)} checks passed or skipped"
               + (f", {failed} FAILED" if failed else ""))
    return "\n".join([target.source, *(c.line() for c in checks), summary])


def as_json(target: Target, checks: Sequence[Check]) -> str:
    return json.dumps({"source": target.source, "checks": [asdict(c) for c in checks],
                       "ok": not any(c.status == FAIL for c in checks)}, indent=2)


def _code(error: BaseException) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", "")) or type(error).__name__


def _send_fix(error: BaseException) -> str:
    code = _code(error).lower()
    if "kms" in code:
        return "let the caller use the queues' key (kms:GenerateDataKey and kms:Decrypt)"
    if "accessdenied" in code.replace("_", ""):
        return ("name the caller's role in producer_role_arns or operator_role_arns and deploy: the task queues "
                "refuse senders they do not name")
    return "check the caller's credentials and network (docs/doctor.md)"


def _reason(error: BaseException) -> str:
    return status._reason(error)  # noqa: SLF001 - one wording for both commands


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"doctor: {message} (see --help)\n")


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds; allowed: 1..3600") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: 1..3600")
    return value


RUN_FILE = status.RUN_FILE


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m batch_celery doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", help="the stack's name [cdk.json's stack_name, else BatchCelery]")
    parser.add_argument("--region", help="the stack's region [boto3's: AWS_REGION, AWS_DEFAULT_REGION or the profile's]")
    parser.add_argument("--local", action="store_true", help="the local run of `make demo` instead")
    parser.add_argument("--run-file", type=Path, default=None, help=f"with --local: the run file [{RUN_FILE}]")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for every probe's result [{DEFAULT_TIMEOUT}]")
    parser.add_argument("--submit", action=argparse.BooleanOptionalAction, default=None,
                        help="submit one worker job per pool (batch:SubmitJob) instead of waiting for the "
                             "scaler [alarms mode: submit; scaler mode: wait for the scaler]")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    if args.local and (args.stack or args.region or args.submit):
        parser.error("--local checks the local run: it takes no --stack, --region or --submit")
    if args.run_file and not args.local:
        parser.error("--run-file goes with --local")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - progress, not the report
    try:
        if args.local:
            target = local_target(args.run_file or RUN_FILE)
        else:
            target = deployed_target(args.stack or status._default_stack_name(), args.region)  # noqa: SLF001
        submit = args.submit if args.submit is not None else target.scaling == status.ALARMS
        checks = diagnose(target, timeout=args.timeout, submit=submit, say=say)
    except Exception as error:  # noqa: BLE001 - the known ones are one line, the rest raise
        line = status.error_line(error)
        if line is None:
            raise
        print(f"doctor: {line}", file=sys.stderr)
        return 1
    print(as_json(target, checks) if args.json else render(target, checks))
    return 1 if any(c.status == FAIL for c in checks) else 0

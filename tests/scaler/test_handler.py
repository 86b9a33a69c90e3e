"""The scaler Lambda handler against moto server (SQS, Batch, IAM, EC2 on 127.0.0.1).

moto's Docker-less Batch (``use_docker: False``) moves every job straight to SUCCEEDED, so it
cannot hold a job in an active state. Tests that need workers "already coming" switch the
server to its regular Batch backend with a manual state transition that is never reached: jobs
then stay SUBMITTED (no container is ever started, so no Docker engine is needed). The fixture
restores the server's configuration afterwards, because the server is shared by the session.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import boto3
import pytest

from batch_celery.local.faults import LOST_RESPONSE, THROTTLE, ApiProxy
from batch_celery.scaler import handler as scaler

def _moto_api(server, path, body=None):
    request = urllib.request.Request(
        f"{server.endpoint}/moto-api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


@pytest.fixture(scope="module")
def aws(moto_server):
    """Clients on moto plus one Fargate compute environment (it needs a VPC and a service role)."""
    moto_server.configure({"batch": {"use_docker": False}})
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=moto_server.region
    )
    clients = {name: session.client(name, endpoint_url=moto_server.endpoint)
               for name in ("sqs", "batch", "iam", "ec2")}
    ec2 = clients["ec2"]
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"scaler-{uuid.uuid4().hex[:8]}", Description="scaler tests",
                                      VpcId=vpc)["GroupId"]
    role = clients["iam"].create_role(RoleName=f"batch-service-{uuid.uuid4().hex[:8]}",
                                      AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    clients["compute_environment"] = clients["batch"].create_compute_environment(
        computeEnvironmentName=f"scaler-ce-{uuid.uuid4().hex[:8]}", type="MANAGED", state="ENABLED",
        serviceRole=role["Role"]["Arn"],
        computeResources={"type": "FARGATE", "maxvCpus": 48, "subnets": [subnet], "securityGroupIds": [group]},
    )["computeEnvironmentArn"]
    return clients


@pytest.fixture
def stack(aws):
    """A fresh task queue, job queue and worker job definition, as the stack would create them."""
    suffix = uuid.uuid4().hex[:8]
    batch = aws["batch"]
    queue_url = aws["sqs"].create_queue(QueueName=f"tasks-{suffix}",
                                        Attributes={"VisibilityTimeout": "1800"})["QueueUrl"]
    job_queue = batch.create_job_queue(
        jobQueueName=f"jobs-{suffix}", state="ENABLED", priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": aws["compute_environment"]}],
    )["jobQueueArn"]
    job_definition = _register_definition(batch, f"worker-{suffix}")
    return scaler.ScalerConfig(queue_url=queue_url, job_queue=job_queue, job_definition=job_definition,
                               job_name=f"batch-celery-worker-{suffix}", messages_per_worker=10, max_workers=48)


def _register_definition(batch, name):
    return batch.register_job_definition(
        jobDefinitionName=name, type="container", platformCapabilities=["FARGATE"],
        containerProperties={"image": "worker:latest", "command": ["./run_celery_worker.sh"],
                             "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                      {"type": "MEMORY", "value": "2048"}]},
    )["jobDefinitionArn"]


@pytest.fixture
def jobs_stay_active(moto_server):
    """Switch moto to its regular Batch backend with jobs held in SUBMITTED; restore afterwards."""
    previous = json.loads(_moto_api(moto_server, "config"))
    moto_server.configure({"batch": {"use_docker": True}})
    _moto_api(moto_server, "state-manager/set-transition",
              {"model_name": "batch::job", "transition": {"progression": "manual", "times": 10**9}})
    try:
        yield
    finally:
        _moto_api(moto_server, "state-manager/unset-transition", {"model_name": "batch::job"})
        moto_server.configure({"batch": previous.get("batch", {"use_docker": False})})


def _send(sqs, queue_url, count, **extra):
    for start in range(0, count, 10):
        entries = [{"Id": str(i), "MessageBody": "task", **extra} for i in range(min(10, count - start))]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _jobs_in(batch, config):
    """Top-level jobs in the job queue, whatever their status (children skipped)."""
    found = {}
    for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
        for summary in batch.list_jobs(jobQueue=config.job_queue, jobStatus=status)["jobSummaryList"]:
            if ":" not in summary["jobId"]:
                found[summary["jobId"]] = summary
    if not found:
        return []
    return batch.describe_jobs(jobs=list(found))["jobs"]


def _run(config, aws):
    return scaler.scale(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"])


def test_submits_one_array_job_sized_to_the_backlog(aws, stack):
    _send(aws["sqs"], stack.queue_url, 35)

    record = _run(stack, aws)

    assert record["outcome"] == "ok"
    assert (record["visible"], record["active"], record["wanted"], record["submitted"]) == (35, 0, 4, 4)
    [job] = _jobs_in(aws["batch"], stack)
    assert job["arrayProperties"]["size"] == 4
    assert job["jobName"] == stack.job_name
    assert job["jobDefinition"] == stack.job_definition


def test_submits_a_plain_job_for_a_single_worker(aws, stack):
    _send(aws["sqs"], stack.queue_url, 3)

    record = _run(stack, aws)

    assert record["submitted"] == 1
    [job] = _jobs_in(aws["batch"], stack)
    assert "arrayProperties" not in job or not job["arrayProperties"].get("size")


def test_submits_nothing_for_an_empty_queue(aws, stack):
    record = _run(stack, aws)

    assert (record["outcome"], record["backlog"], record["submitted"]) == ("ok", 0, 0)
    assert _jobs_in(aws["batch"], stack) == []


def test_never_submits_beyond_max_workers(aws, stack):
    config = scaler.ScalerConfig(**{**stack.__dict__, "max_workers": 3})
    _send(aws["sqs"], config.queue_url, 100)

    record = _run(config, aws)

    assert (record["wanted"], record["submitted"]) == (3, 3)
    [job] = _jobs_in(aws["batch"], config)
    assert job["arrayProperties"]["size"] == 3


def test_counts_in_flight_and_delayed_messages(aws, stack):
    sqs = aws["sqs"]
    _send(sqs, stack.queue_url, 10)
    received = sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600)
    _send(sqs, stack.queue_url, 5, DelaySeconds=900)
    _send(sqs, stack.queue_url, 25)

    record = _run(stack, aws)

    assert len(received["Messages"]) == 10
    assert (record["visible"], record["in_flight"], record["delayed"]) == (25, 10, 5)
    # No worker is active, so the 10 in-flight messages hold no worker of this stack (orphans
    # return within the visibility window): ceil((25 visible + 5 delayed) / 10) = 3 workers.
    # (Counting in-flight as waiting would give 4; swapping visible and in-flight, 2.)
    assert stack.messages_per_worker == 10
    assert (record["wanted"], record["submitted"]) == (3, 3)
    assert sum(job.get("arrayProperties", {}).get("size") or 1 for job in _jobs_in(aws["batch"], stack)) == 3


def test_finished_workers_do_not_count(aws, stack):
    _send(aws["sqs"], stack.queue_url, 20)
    first = _run(stack, aws)
    # moto's Docker-less Batch has already moved those jobs to SUCCEEDED: they are no help.
    second = _run(stack, aws)

    assert (first["submitted"], second["active"], second["submitted"]) == (2, 0, 2)


def test_submits_only_the_missing_workers_when_jobs_are_active(aws, stack, jobs_stay_active):
    batch = aws["batch"]
    batch.submit_job(jobName=stack.job_name, jobQueue=stack.job_queue, jobDefinition=stack.job_definition,
                     arrayProperties={"size": 3})
    batch.submit_job(jobName="alarm-rule-worker", jobQueue=stack.job_queue, jobDefinition=stack.job_definition)
    _send(aws["sqs"], stack.queue_url, 60)

    first = _run(stack, aws)
    second = _run(stack, aws)

    # An array parent and its three children are three workers, not four; a job named by an alarm
    # rule is a worker too, because it runs the worker job definition.
    assert (first["active"], first["wanted"], first["submitted"]) == (4, 6, 2)
    assert (second["active"], second["submitted"]) == (6, 0)


def test_submits_nothing_when_enough_workers_are_active(aws, stack, jobs_stay_active):
    aws["batch"].submit_job(jobName=stack.job_name, jobQueue=stack.job_queue, jobDefinition=stack.job_definition,
                            arrayProperties={"size": 5})
    _send(aws["sqs"], stack.queue_url, 45)

    record = _run(stack, aws)

    assert (record["active"], record["wanted"], record["submitted"]) == (5, 5, 0)
    assert len(_jobs_in(aws["batch"], stack)) == 1


def test_counts_only_the_children_still_active(aws, stack, moto_server, jobs_stay_active):
    batch = aws["batch"]
    parent = batch.submit_job(jobName=stack.job_name, jobQueue=stack.job_queue,
                              jobDefinition=stack.job_definition, arrayProperties={"size": 3})["jobId"]
    # Let moto move the children on: with no Docker engine they end FAILED, while moto leaves
    # the parent SUBMITTED, so only the children's statusSummary tells that nobody is coming.
    _moto_api(moto_server, "state-manager/unset-transition", {"model_name": "batch::job"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        summary = batch.describe_jobs(jobs=[parent])["jobs"][0]["arrayProperties"]["statusSummary"]
        if summary["FAILED"] == 3:
            break
        time.sleep(0.2)
    _send(aws["sqs"], stack.queue_url, 15)

    record = _run(stack, aws)

    assert batch.describe_jobs(jobs=[parent])["jobs"][0]["status"] == "SUBMITTED"
    assert (record["active"], record["submitted"]) == (0, 2)


def test_ignores_active_jobs_of_other_job_definitions(aws, stack, jobs_stay_active):
    batch = aws["batch"]
    filler = _register_definition(batch, f"filler-{uuid.uuid4().hex[:8]}")
    batch.submit_job(jobName="fill-queue", jobQueue=stack.job_queue, jobDefinition=filler,
                     arrayProperties={"size": 4})
    _send(aws["sqs"], stack.queue_url, 15)

    record = _run(stack, aws)

    assert (record["active"], record["submitted"]) == (0, 2)


def test_counts_workers_of_any_revision_of_the_job_definition(aws, stack, jobs_stay_active):
    batch = aws["batch"]
    batch.submit_job(jobName=stack.job_name, jobQueue=stack.job_queue, jobDefinition=stack.job_definition)
    newer = _register_definition(batch, scaler.definition_name(stack.job_definition))
    config = scaler.ScalerConfig(**{**stack.__dict__, "job_definition": newer})
    _send(aws["sqs"], config.queue_url, 15)

    record = _run(config, aws)

    assert newer != stack.job_definition
    assert (record["active"], record["submitted"]) == (1, 1)


def test_rejects_unreadable_queue_and_submits_nothing(aws, stack):
    config = scaler.ScalerConfig(**{**stack.__dict__, "queue_url": stack.queue_url + "-missing"})

    record = _run(config, aws)

    assert (record["outcome"], record["submitted"]) == ("read_failed", 0)
    assert record["error"].startswith("sqs:GetQueueAttributes failed: ")
    assert _jobs_in(aws["batch"], stack) == []


def test_rejects_unknown_job_queue_and_submits_nothing(aws, stack):
    _send(aws["sqs"], stack.queue_url, 30)
    config = scaler.ScalerConfig(**{**stack.__dict__, "job_queue": "no-such-job-queue"})

    record = _run(config, aws)

    assert (record["outcome"], record["submitted"]) == ("read_failed", 0)
    assert "batch:ListJobs(SUBMITTED) failed: ClientException" in record["error"]
    assert _jobs_in(aws["batch"], stack) == []


def test_reports_a_failed_submission_and_stops(aws, stack):
    _send(aws["sqs"], stack.queue_url, 30)
    config = scaler.ScalerConfig(**{**stack.__dict__, "job_definition": "no-such-definition:1"})

    record = _run(config, aws)

    assert (record["outcome"], record["to_submit"], record["submitted"]) == ("submit_failed", 3, 0)
    assert record["error"].startswith("batch:SubmitJob failed: ClientException")
    assert _jobs_in(aws["batch"], stack) == []


# --- throttling: moto never throttles, so a small proxy answers chosen Batch calls with a real
# HTTP 429 TooManyRequestsException (what Batch returns) and forwards everything else to moto.

def _batch_clients(endpoint, moto_server):
    """The two Batch clients the Lambda builds (reads retry, the submission does not), via ``endpoint``."""
    def client(config):
        return boto3.client("batch", endpoint_url=endpoint, region_name=moto_server.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing", config=config)
    return client(scaler._BOTO_CONFIG), client(scaler.SUBMIT_CONFIG)


def _faults_on(action, fault):
    return lambda called: fault if called == action else None


def test_throttled_listing_submits_nothing(aws, stack, moto_server):
    _send(aws["sqs"], stack.queue_url, 30)
    with ApiProxy(moto_server.endpoint, _faults_on("/v1/listjobs", THROTTLE)) as proxy:
        batch, submit = _batch_clients(proxy.endpoint, moto_server)
        record = scaler.scale(stack, aws["sqs"], batch, submit_batch=submit)

    assert (record["outcome"], record["submitted"]) == ("read_failed", 0)
    assert "TooManyRequestsException" in record["error"]
    assert proxy.counts["/v1/submitjob"] == 0


def test_throttled_submission_is_reported_and_tried_once(aws, stack, moto_server):
    _send(aws["sqs"], stack.queue_url, 30)
    with ApiProxy(moto_server.endpoint, _faults_on("/v1/submitjob", THROTTLE)) as proxy:
        batch, submit = _batch_clients(proxy.endpoint, moto_server)
        record = scaler.scale(stack, aws["sqs"], batch, submit_batch=submit)

    assert (record["outcome"], record["to_submit"], record["submitted"]) == ("submit_failed", 3, 0)
    assert "TooManyRequestsException" in record["error"]
    assert proxy.counts["/v1/submitjob"] == 1


def test_lost_submit_answer_never_doubles_the_workers(aws, stack, moto_server, jobs_stay_active,
                                                      lambda_env, monkeypatch, capsys):
    # The real Lambda wiring (handler._clients) through a proxy that lets SubmitJob take effect
    # and then answers 500, as a front-end timeout would: the workers exist but the scaler was told
    # otherwise. A retry would submit them again; the run's next decision must count them instead,
    # and the run must still fail so that the Errors alarm sees it.
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "2")
    _send(aws["sqs"], stack.queue_url, 30)
    with ApiProxy(moto_server.endpoint, _faults_on("/v1/submitjob", LOST_RESPONSE)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BATCH", proxy.endpoint)
        scaler._clients.cache_clear()
        with pytest.raises(scaler.ScalerRunFailed, match=r"^1 of 2 decisions failed; last: submit_failed: "):
            scaler.handler({}, None)

    first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (first["outcome"], first["submitted"]) == ("submit_failed", 0)
    assert (second["outcome"], second["active"], second["submitted"]) == ("ok", 3, 0)
    assert proxy.counts["/v1/submitjob"] == 1
    assert [job.get("arrayProperties", {}).get("size") for job in _jobs_in(aws["batch"], stack)] == [3]


# --- the Lambda entry point: configuration from the environment, one JSON line per decision.

@pytest.fixture
def lambda_env(monkeypatch, moto_server, stack):
    for name, value in moto_server.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QUEUE_URL", stack.queue_url)
    monkeypatch.setenv("JOB_QUEUE", stack.job_queue)
    monkeypatch.setenv("JOB_DEFINITION", stack.job_definition)
    monkeypatch.setenv("JOB_NAME", stack.job_name)
    monkeypatch.setenv("MESSAGES_PER_WORKER", "10")
    monkeypatch.setenv("MAX_WORKERS", "48")
    monkeypatch.setenv("TASKS_PER_WORKER", "1")
    # One decision per run unless a test asks for a loop.
    monkeypatch.setenv("POLL_SECONDS", "10")
    monkeypatch.setenv("LOOP_SECONDS", "0")
    scaler._clients.cache_clear()  # clients are per container; this test is a fresh container
    yield
    scaler._clients.cache_clear()


def test_handler_reads_env_and_logs_one_json_line_per_decision(aws, stack, lambda_env, capsys):
    _send(aws["sqs"], stack.queue_url, 25)

    returned = scaler.handler({"source": "aws.events"}, None)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    logged = json.loads(lines[0])
    assert [logged] == returned
    assert {k: logged[k] for k in ("outcome", "visible", "in_flight", "delayed", "active", "wanted", "submitted")} == {
        "outcome": "ok", "visible": 25, "in_flight": 0, "delayed": 0, "active": 0, "wanted": 3, "submitted": 3}


def test_handler_decides_every_poll_seconds_until_loop_seconds(aws, stack, lambda_env, jobs_stay_active,
                                                               monkeypatch, capsys):
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "3")
    _send(aws["sqs"], stack.queue_url, 25)

    started = time.monotonic()
    returned = scaler.handler({}, None)
    took = time.monotonic() - started

    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logged == returned
    # Decisions at 0, 1 and 2 s; none at 3 s (not before LOOP_SECONDS); the run then returns.
    assert [r["outcome"] for r in logged] == ["ok", "ok", "ok"]
    assert 2.0 <= took < 3.0 + 2.0
    # The first decision submits the deficit; the later ones count those workers as active.
    assert [(r["active"], r["submitted"]) for r in logged] == [(0, 3), (3, 0), (3, 0)]
    assert len(_jobs_in(aws["batch"], stack)) == 1


def test_a_backlog_that_arrives_mid_run_is_served_by_the_next_decision(aws, stack, jobs_stay_active, capsys):
    config = scaler.ScalerConfig(**{**stack.__dict__, "poll_seconds": 1, "loop_seconds": 2})
    sent = []

    def sleep_after_sending(seconds):
        # Between the first and the second decision, as an application would.
        if not sent:
            _send(aws["sqs"], stack.queue_url, 15)
            sent.append(15)
        time.sleep(seconds)

    records = scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], sleep=sleep_after_sending)

    assert [(r["backlog"], r["submitted"]) for r in records] == [(0, 0), (15, 2)]


class _FakeClock:
    def __init__(self):
        self.now = 0.0
        self.starts = []

    def sleep(self, seconds):
        assert seconds >= 0
        self.now += seconds


def test_run_keeps_fixed_slots_and_skips_the_ones_a_slow_decision_overran(monkeypatch, capsys):
    clock = _FakeClock()
    durations = iter([1, 15, 1, 1, 1, 1, 1])

    def fake_scale(config, sqs, batch, *, submit_batch, submitted_ids):
        clock.starts.append(clock.now)
        clock.now += next(durations)
        return {"outcome": "ok", "level": "INFO", "submitted": 0}

    monkeypatch.setattr(scaler, "scale", fake_scale)
    config = scaler.ScalerConfig("q", "jq", "jd", "jn", 10, 48, poll_seconds=10, loop_seconds=55)

    records = scaler.run(config, None, None, submit_batch=None, clock=lambda: clock.now, sleep=clock.sleep)

    # The shipped timing (POLL 10, LOOP 55) decides at 0, 10, 20, ... 50 s; the decision at 10 s
    # took 15 s, so the 20 s slot is skipped rather than run late, and the later slots stay put.
    assert clock.starts == [0, 10, 30, 40, 50]
    assert len(records) == len(capsys.readouterr().out.splitlines()) == 5


def test_a_failing_decision_is_logged_and_the_loop_goes_on(monkeypatch, capsys):
    clock = _FakeClock()
    outcomes = iter([RuntimeError("unexpected answer"), "ok", "ok"])

    def fake_scale(config, sqs, batch, *, submit_batch, submitted_ids):
        clock.now += 0.1
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return {"outcome": outcome, "level": "INFO", "submitted": 0}

    monkeypatch.setattr(scaler, "scale", fake_scale)
    config = scaler.ScalerConfig("q", "jq", "jd", "jn", 10, 48, poll_seconds=5, loop_seconds=15)

    records = scaler.run(config, None, None, submit_batch=None, clock=lambda: clock.now, sleep=clock.sleep)

    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logged == records
    assert [(r["outcome"], r["level"]) for r in records] == [("error", "ERROR"), ("ok", "INFO"), ("ok", "INFO")]
    assert records[0]["error"].startswith("RuntimeError: unexpected answer")


def test_handler_fails_the_run_if_any_decision_failed(aws, stack, lambda_env, monkeypatch, capsys):
    monkeypatch.setenv("QUEUE_URL", stack.queue_url + "-missing")
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "1")

    with pytest.raises(scaler.ScalerRunFailed,
                       match=r"^1 of 1 decisions failed; last: read_failed: sqs:GetQueueAttributes"):
        scaler.handler({}, None)

    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["outcome"] == "read_failed"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_WORKERS", "-1", "MAX_WORKERS='-1' is not allowed: it must be a whole number >= 0"),
        ("MESSAGES_PER_WORKER", "0", "MESSAGES_PER_WORKER='0' is not allowed: it must be a whole number >= 1"),
        ("MESSAGES_PER_WORKER", "ten", "MESSAGES_PER_WORKER='ten' is not allowed: it must be a whole number >= 1"),
        ("POLL_SECONDS", "0", "POLL_SECONDS='0' is not allowed: it must be a whole number >= 1"),
        ("TASKS_PER_WORKER", "0", "TASKS_PER_WORKER='0' is not allowed: it must be a whole number >= 1"),
        ("LOOP_SECONDS", "-5", "LOOP_SECONDS='-5' is not allowed: it must be a whole number >= 0"),
        ("QUEUE_URL", "", "missing environment variable(s) QUEUE_URL: the stack must set them"),
        ("LOOP_SECONDS", "", "missing environment variable(s) LOOP_SECONDS: the stack must set them"),
    ],
)
def test_handler_rejects_bad_configuration(aws, stack, lambda_env, monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    _send(aws["sqs"], stack.queue_url, 25)

    with pytest.raises(scaler.ScalerRunFailed) as failed:
        scaler.handler({}, None)

    assert str(failed.value) == f"config_error: {message}"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert (record["outcome"], record["level"], record["submitted"], record["error"]) == (
        "config_error", "ERROR", 0, message)
    assert _jobs_in(aws["batch"], stack) == []


class _LaggingBatch:
    """Batch whose ListJobs does not show a job yet while DescribeJobs does: the eventual
    consistency moto cannot play (its listings are always current)."""

    def __init__(self, described: dict[str, str]):
        self.described = described

    def get_paginator(self, name):
        assert name == "list_jobs"
        return self

    def paginate(self, **kwargs):
        return [{"jobSummaryList": []}]

    def describe_jobs(self, jobs):
        return {"jobs": [{"jobId": j, "status": self.described[j]} for j in jobs if j in self.described]}


def test_jobs_this_run_submitted_count_even_before_listjobs_shows_them():
    batch = _LaggingBatch({"fresh": "SUBMITTED", "done": "SUCCEEDED"})

    assert scaler.active_workers(batch, "queue", "definition") == 0
    # The run's own submissions count while active, so the next decision does not submit them again.
    assert scaler.active_workers(batch, "queue", "definition", also=["fresh", "done"]) == 1

"""The scaler Lambda handler against moto server (SQS, Batch, IAM, EC2 on 127.0.0.1).

moto's Docker-less Batch (``use_docker: False``) moves every job straight to SUCCEEDED, so it
cannot hold a job in an active state. Tests that need workers "already coming" switch the
server to its regular Batch backend with a manual state transition that is never reached: jobs
then stay SUBMITTED (no container is ever started, so no Docker engine is needed). The fixture
restores the server's configuration afterwards, because the server is shared by the session.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.exceptions import ClientError

from harness.faults import LOST_RESPONSE, THROTTLE, ApiProxy
from batch_celery.scaler import handler as scaler
from batch_celery.scaler import warm


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
               for name in ("sqs", "batch", "iam", "ec2", "cloudwatch")}
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


def _make_pool(aws, name, *, job_queue=None, **fields):
    """A fresh task queue, job queue (unless given) and worker job definition for one pool, as the
    stack would create them."""
    suffix = uuid.uuid4().hex[:8]
    batch = aws["batch"]
    queue_url = aws["sqs"].create_queue(QueueName=f"tasks-{name}-{suffix}",
                                        Attributes={"VisibilityTimeout": "1800"})["QueueUrl"]
    if job_queue is None:
        job_queue = batch.create_job_queue(
            jobQueueName=f"jobs-{name}-{suffix}", state="ENABLED", priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": aws["compute_environment"]}],
        )["jobQueueArn"]
    job_definition = _register_definition(batch, f"worker-{name}-{suffix}")
    return scaler.PoolConfig(**{
        "pool": name, "queue_url": queue_url, "job_queue": job_queue, "job_definition": job_definition,
        "job_name": f"celery-worker-{name}-{suffix}", "messages_per_worker": 10, "max_workers": 48,
        "tasks_per_worker": 1, **fields})


@pytest.fixture
def pool(aws):
    """One pool, as a single-pool stack would create it."""
    return _make_pool(aws, "default")


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


@pytest.fixture
def lambda_runtime(monkeypatch, moto_server):
    """The function's environment but POOLS: clients on moto, one decision per run."""
    for name, value in moto_server.client_env().items():
        monkeypatch.setenv(name, value)
    # One decision per run unless a test asks for a loop; the stack's idle check and cool-down.
    monkeypatch.setenv("POLL_SECONDS", "10")
    monkeypatch.setenv("LOOP_SECONDS", "0")
    monkeypatch.setenv("IDLE_CHECK", "minute")
    monkeypatch.setenv("COOLDOWN_SECONDS", "300")
    scaler._clients.cache_clear()  # clients are per container; this test is a fresh container
    monkeypatch.setattr(scaler, "WATCH", scaler.Watch())  # and remembers no earlier run
    yield
    scaler._clients.cache_clear()


@pytest.fixture
def lambda_env(lambda_runtime, monkeypatch, pool):
    """The function's whole environment, POOLS holding the one pool of the ``pool`` fixture."""
    monkeypatch.setenv("POOLS", _pools_env(pool))


def _pools_env(*pools, **overrides):
    """POOLS as the stack sets it: one JSON object per pool, numbers as JSON numbers."""
    return json.dumps([{**dataclasses.asdict(pool), **overrides} for pool in pools])


def _no_wait(seconds):
    """``run``'s sleep for tests that want its decisions back to back."""


def _send(sqs, queue_url, count, **extra):
    for start in range(0, count, 10):
        entries = [{"Id": str(i), "MessageBody": "task", **extra} for i in range(min(10, count - start))]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _jobs_in(batch, config):
    """Top-level jobs in the pool's job queue, whatever their status or definition (children skipped)."""
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


def test_submits_one_array_job_sized_to_the_backlog(aws, pool):
    _send(aws["sqs"], pool.queue_url, 35)

    record = _run(pool, aws)

    assert record["outcome"] == "ok"
    assert (record["visible"], record["active"], record["wanted"], record["submitted"]) == (35, 0, 4, 4)
    [job] = _jobs_in(aws["batch"], pool)
    assert job["arrayProperties"]["size"] == 4
    assert job["jobName"] == pool.job_name
    assert job["jobDefinition"] == pool.job_definition


def test_submits_a_plain_job_for_a_single_worker(aws, pool):
    _send(aws["sqs"], pool.queue_url, 3)

    record = _run(pool, aws)

    assert record["submitted"] == 1
    [job] = _jobs_in(aws["batch"], pool)
    assert "arrayProperties" not in job or not job["arrayProperties"].get("size")


def test_submits_nothing_for_an_empty_queue(aws, pool):
    record = _run(pool, aws)

    assert (record["outcome"], record["backlog"], record["submitted"]) == ("ok", 0, 0)
    assert _jobs_in(aws["batch"], pool) == []


def test_never_submits_beyond_max_workers(aws, pool):
    config = dataclasses.replace(pool, max_workers=3)
    _send(aws["sqs"], config.queue_url, 100)

    record = _run(config, aws)

    assert (record["wanted"], record["submitted"]) == (3, 3)
    [job] = _jobs_in(aws["batch"], config)
    assert job["arrayProperties"]["size"] == 3


def test_counts_in_flight_and_delayed_messages(aws, pool):
    sqs = aws["sqs"]
    _send(sqs, pool.queue_url, 10)
    received = sqs.receive_message(QueueUrl=pool.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600)
    _send(sqs, pool.queue_url, 5, DelaySeconds=900)
    _send(sqs, pool.queue_url, 25)

    record = _run(pool, aws)

    assert len(received["Messages"]) == 10
    assert (record["visible"], record["in_flight"], record["delayed"]) == (25, 10, 5)
    # No worker is active, so the 10 in-flight messages hold no worker of this pool (orphans
    # return within the visibility window): ceil((25 visible + 5 delayed) / 10) = 3 workers.
    # (Counting in-flight as waiting would give 4; swapping visible and in-flight, 2.)
    assert pool.messages_per_worker == 10
    assert (record["wanted"], record["submitted"]) == (3, 3)
    assert sum(job.get("arrayProperties", {}).get("size") or 1 for job in _jobs_in(aws["batch"], pool)) == 3


def test_finished_workers_do_not_count(aws, pool):
    _send(aws["sqs"], pool.queue_url, 20)
    first = _run(pool, aws)
    # moto's Docker-less Batch has already moved those jobs to SUCCEEDED: they are no help.
    second = _run(pool, aws)

    assert (first["submitted"], second["active"], second["submitted"]) == (2, 0, 2)


def test_submits_only_the_missing_workers_when_jobs_are_active(aws, pool, jobs_stay_active):
    batch = aws["batch"]
    batch.submit_job(jobName=pool.job_name, jobQueue=pool.job_queue, jobDefinition=pool.job_definition,
                     arrayProperties={"size": 3})
    batch.submit_job(jobName="alarm-rule-worker", jobQueue=pool.job_queue, jobDefinition=pool.job_definition)
    _send(aws["sqs"], pool.queue_url, 60)

    first = _run(pool, aws)
    second = _run(pool, aws)

    # An array parent and its three children are three workers, not four; a job named by an alarm
    # rule is a worker too, because it runs the worker job definition.
    assert (first["active"], first["wanted"], first["submitted"]) == (4, 6, 2)
    assert (second["active"], second["submitted"]) == (6, 0)


def test_submits_nothing_when_enough_workers_are_active(aws, pool, jobs_stay_active):
    aws["batch"].submit_job(jobName=pool.job_name, jobQueue=pool.job_queue, jobDefinition=pool.job_definition,
                            arrayProperties={"size": 5})
    _send(aws["sqs"], pool.queue_url, 45)

    record = _run(pool, aws)

    assert (record["active"], record["wanted"], record["submitted"]) == (5, 5, 0)
    assert len(_jobs_in(aws["batch"], pool)) == 1


def test_counts_only_the_children_still_active(aws, pool, moto_server, jobs_stay_active):
    batch = aws["batch"]
    parent = batch.submit_job(jobName=pool.job_name, jobQueue=pool.job_queue,
                              jobDefinition=pool.job_definition, arrayProperties={"size": 3})["jobId"]
    # Let moto move the children on: with no Docker engine they end FAILED, while moto leaves
    # the parent SUBMITTED, so only the children's statusSummary tells that nobody is coming.
    _moto_api(moto_server, "state-manager/unset-transition", {"model_name": "batch::job"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        summary = batch.describe_jobs(jobs=[parent])["jobs"][0]["arrayProperties"]["statusSummary"]
        if summary["FAILED"] == 3:
            break
        time.sleep(0.2)
    _send(aws["sqs"], pool.queue_url, 15)

    record = _run(pool, aws)

    assert batch.describe_jobs(jobs=[parent])["jobs"][0]["status"] == "SUBMITTED"
    assert (record["active"], record["submitted"]) == (0, 2)


def test_ignores_active_jobs_of_other_job_definitions(aws, pool, jobs_stay_active):
    batch = aws["batch"]
    filler = _register_definition(batch, f"filler-{uuid.uuid4().hex[:8]}")
    batch.submit_job(jobName="fill-queue", jobQueue=pool.job_queue, jobDefinition=filler,
                     arrayProperties={"size": 4})
    _send(aws["sqs"], pool.queue_url, 15)

    record = _run(pool, aws)

    assert (record["active"], record["submitted"]) == (0, 2)


def test_counts_workers_of_any_revision_of_the_job_definition(aws, pool, jobs_stay_active):
    batch = aws["batch"]
    batch.submit_job(jobName=pool.job_name, jobQueue=pool.job_queue, jobDefinition=pool.job_definition)
    newer = _register_definition(batch, scaler.definition_name(pool.job_definition))
    config = dataclasses.replace(pool, job_definition=newer)
    _send(aws["sqs"], config.queue_url, 15)

    record = _run(config, aws)

    assert newer != pool.job_definition
    assert (record["active"], record["submitted"]) == (1, 1)


def test_rejects_unreadable_queue_and_submits_nothing(aws, pool):
    config = dataclasses.replace(pool, queue_url=pool.queue_url + "-missing")

    record = _run(config, aws)

    assert (record["outcome"], record["submitted"]) == ("read_failed", 0)
    assert record["error"].startswith("sqs:GetQueueAttributes failed: ")
    assert _jobs_in(aws["batch"], pool) == []


def test_rejects_unknown_job_queue_and_submits_nothing(aws, pool):
    _send(aws["sqs"], pool.queue_url, 30)
    config = dataclasses.replace(pool, job_queue="no-such-job-queue")

    record = _run(config, aws)

    assert (record["outcome"], record["submitted"]) == ("read_failed", 0)
    assert "batch:ListJobs(SUBMITTED) failed: ClientException" in record["error"]
    assert _jobs_in(aws["batch"], pool) == []


def test_reports_a_failed_submission_and_stops(aws, pool):
    _send(aws["sqs"], pool.queue_url, 30)
    config = dataclasses.replace(pool, job_definition="no-such-definition:1")

    record = _run(config, aws)

    assert (record["outcome"], record["to_submit"], record["submitted"]) == ("submit_failed", 3, 0)
    assert record["error"].startswith("batch:SubmitJob failed: ClientException")
    assert _jobs_in(aws["batch"], pool) == []


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


def test_throttled_listing_submits_nothing(aws, pool, moto_server):
    _send(aws["sqs"], pool.queue_url, 30)
    with ApiProxy(moto_server.endpoint, _faults_on("/v1/listjobs", THROTTLE)) as proxy:
        batch, submit = _batch_clients(proxy.endpoint, moto_server)
        record = scaler.scale(pool, aws["sqs"], batch, submit_batch=submit)

    assert (record["outcome"], record["submitted"]) == ("read_failed", 0)
    assert "TooManyRequestsException" in record["error"]
    assert proxy.counts["/v1/submitjob"] == 0


def test_throttled_submission_is_reported_and_tried_once(aws, pool, moto_server):
    _send(aws["sqs"], pool.queue_url, 30)
    with ApiProxy(moto_server.endpoint, _faults_on("/v1/submitjob", THROTTLE)) as proxy:
        batch, submit = _batch_clients(proxy.endpoint, moto_server)
        record = scaler.scale(pool, aws["sqs"], batch, submit_batch=submit)

    assert (record["outcome"], record["to_submit"], record["submitted"]) == ("submit_failed", 3, 0)
    assert "TooManyRequestsException" in record["error"]
    assert proxy.counts["/v1/submitjob"] == 1


def test_lost_submit_answer_never_doubles_the_workers(aws, pool, moto_server, jobs_stay_active,
                                                      lambda_env, monkeypatch, capsys):
    # The real Lambda wiring (handler._clients) through a proxy that lets SubmitJob take effect
    # and then answers 500, as a front-end timeout would: the workers exist but the scaler was told
    # otherwise. A retry would submit them again; the run's next decision must count them instead,
    # and the run must still fail so that the Errors alarm sees it.
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "2")
    _send(aws["sqs"], pool.queue_url, 30)
    with ApiProxy(moto_server.endpoint, _faults_on("/v1/submitjob", LOST_RESPONSE)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BATCH", proxy.endpoint)
        scaler._clients.cache_clear()
        with pytest.raises(scaler.ScalerRunFailed,
                           match=r"^1 of 2 pool decisions failed \(pools: default\); last: default: submit_failed: "):
            scaler.handler({}, None)

    first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (first["outcome"], first["submitted"]) == ("submit_failed", 0)
    assert (second["outcome"], second["active"], second["submitted"]) == ("ok", 3, 0)
    assert proxy.counts["/v1/submitjob"] == 1
    assert [job.get("arrayProperties", {}).get("size") for job in _jobs_in(aws["batch"], pool)] == [3]


# --- several pools served by one function: each decides alone, with its own resources and cap.

def test_each_pool_submits_its_own_job_definition_to_its_own_job_queue(aws):
    cpu, gpu = _make_pool(aws, "cpu"), _make_pool(aws, "gpu")
    _send(aws["sqs"], cpu.queue_url, 35)
    _send(aws["sqs"], gpu.queue_url, 12)

    records = scaler.run(scaler.ScalerConfig(pools=(cpu, gpu)), aws["sqs"], aws["batch"], submit_batch=aws["batch"])

    assert [(r["pool"], r["outcome"], r["visible"], r["submitted"]) for r in records] == [
        ("cpu", "ok", 35, 4), ("gpu", "ok", 12, 2)]
    [cpu_job] = _jobs_in(aws["batch"], cpu)
    [gpu_job] = _jobs_in(aws["batch"], gpu)
    assert (cpu_job["jobName"], cpu_job["jobDefinition"], cpu_job["arrayProperties"]["size"]) == (
        cpu.job_name, cpu.job_definition, 4)
    assert (gpu_job["jobName"], gpu_job["jobDefinition"], gpu_job["arrayProperties"]["size"]) == (
        gpu.job_name, gpu.job_definition, 2)
    assert (cpu_job["jobQueue"], gpu_job["jobQueue"]) == (cpu.job_queue, gpu.job_queue)


def test_each_pool_is_capped_by_its_own_max_workers(aws):
    small, large = _make_pool(aws, "small", max_workers=2), _make_pool(aws, "large", max_workers=5)
    for pool in (small, large):
        _send(aws["sqs"], pool.queue_url, 100)

    records = scaler.run(scaler.ScalerConfig(pools=(small, large)), aws["sqs"], aws["batch"],
                         submit_batch=aws["batch"])

    assert [(r["pool"], r["max_workers"], r["wanted"], r["submitted"]) for r in records] == [
        ("small", 2, 2, 2), ("large", 5, 5, 5)]
    assert [job["arrayProperties"]["size"] for job in _jobs_in(aws["batch"], small)] == [2]
    assert [job["arrayProperties"]["size"] for job in _jobs_in(aws["batch"], large)] == [5]


def test_pools_sharing_a_job_queue_count_only_their_own_workers(aws, jobs_stay_active):
    # Both pools submit to one job queue; each counts only its job definition's workers and the
    # jobs this run submitted for it (DescribeJobs would count the other pool's ids as well).
    first = _make_pool(aws, "first")
    second = _make_pool(aws, "second", job_queue=first.job_queue)
    _send(aws["sqs"], first.queue_url, 25)
    _send(aws["sqs"], second.queue_url, 15)
    config = scaler.ScalerConfig(pools=(first, second), poll_seconds=1, loop_seconds=2)

    records = scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], sleep=_no_wait)

    assert [(r["pool"], r["active"], r["submitted"]) for r in records] == [
        ("first", 0, 3), ("second", 0, 2), ("first", 3, 0), ("second", 2, 0)]
    jobs = _jobs_in(aws["batch"], first)
    assert sorted((job["jobName"], job["jobDefinition"]) for job in jobs) == sorted(
        [(first.job_name, first.job_definition), (second.job_name, second.job_definition)])


def test_a_pool_that_cannot_be_read_leaves_the_others_deciding(aws, lambda_runtime, monkeypatch, capsys):
    broken, healthy = _make_pool(aws, "broken"), _make_pool(aws, "healthy")
    _send(aws["sqs"], broken.queue_url, 30)
    _send(aws["sqs"], healthy.queue_url, 30)
    aws["sqs"].delete_queue(QueueUrl=broken.queue_url)
    monkeypatch.setenv("POOLS", _pools_env(broken, healthy))

    with pytest.raises(scaler.ScalerRunFailed,
                       match=r"^1 of 2 pool decisions failed \(pools: broken\); last: broken: read_failed: "
                             r"sqs:GetQueueAttributes failed: "):
        scaler.handler({}, None)

    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["pool"], r["outcome"], r["submitted"]) for r in logged] == [
        ("broken", "read_failed", 0), ("healthy", "ok", 3)]
    assert _jobs_in(aws["batch"], broken) == []
    assert [job["arrayProperties"]["size"] for job in _jobs_in(aws["batch"], healthy)] == [3]


def test_a_pool_whose_submission_fails_leaves_the_others_deciding(aws, capsys):
    healthy = _make_pool(aws, "healthy")
    broken = _make_pool(aws, "broken", job_definition="no-such-definition:1")
    _send(aws["sqs"], broken.queue_url, 30)
    _send(aws["sqs"], healthy.queue_url, 15)

    records = scaler.run(scaler.ScalerConfig(pools=(broken, healthy)), aws["sqs"], aws["batch"],
                         submit_batch=aws["batch"])

    assert [(r["pool"], r["outcome"], r["to_submit"], r["submitted"]) for r in records] == [
        ("broken", "submit_failed", 3, 0), ("healthy", "ok", 2, 2)]
    assert [json.loads(line)["pool"] for line in capsys.readouterr().out.splitlines()] == ["broken", "healthy"]
    assert [job["arrayProperties"]["size"] for job in _jobs_in(aws["batch"], healthy)] == [2]


# --- the Lambda entry point: configuration from the environment, one JSON line per pool per decision.

def test_handler_reads_env_and_logs_one_json_line_per_decision(aws, pool, lambda_env, capsys):
    _send(aws["sqs"], pool.queue_url, 25)

    returned = scaler.handler({"source": "aws.events"}, None)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    logged = json.loads(lines[0])
    assert [logged] == returned
    assert {k: logged[k] for k in ("pool", "outcome", "visible", "in_flight", "delayed", "active", "wanted",
                                   "submitted")} == {
        "pool": "default", "outcome": "ok", "visible": 25, "in_flight": 0, "delayed": 0, "active": 0, "wanted": 3,
        "submitted": 3}


def test_handler_reads_numbers_given_as_strings_of_digits(aws, pool, lambda_env, monkeypatch, capsys):
    monkeypatch.setenv("POOLS", _pools_env(pool, messages_per_worker="5", max_workers="4", tasks_per_worker="2"))
    _send(aws["sqs"], pool.queue_url, 25)

    [record] = scaler.handler({}, None)

    # ceil(25 / 5) = 5 workers wanted, capped at 4.
    assert (record["messages_per_worker"], record["max_workers"], record["submitted"]) == (5, 4, 4)


def test_handler_decides_every_poll_seconds_until_loop_seconds(aws, pool, lambda_env, jobs_stay_active,
                                                               monkeypatch, capsys):
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "3")
    _send(aws["sqs"], pool.queue_url, 25)

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
    assert len(_jobs_in(aws["batch"], pool)) == 1


def test_a_backlog_that_arrives_mid_run_is_served_by_the_next_decision(aws, pool, jobs_stay_active, capsys):
    config = scaler.ScalerConfig(pools=(pool,), poll_seconds=1, loop_seconds=2)
    sent = []

    def sleep_after_sending(seconds):
        # Between the first and the second decision, as an application would.
        if not sent:
            _send(aws["sqs"], pool.queue_url, 15)
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


def _offline_pool(name="p"):
    """A pool for runs whose ``scale`` is replaced: its resources are never called."""
    return scaler.PoolConfig(name, f"q-{name}", f"jq-{name}", f"jd-{name}", f"jn-{name}", 10, 48)


def test_run_keeps_fixed_slots_and_skips_the_ones_a_slow_decision_overran(monkeypatch, capsys):
    clock = _FakeClock()
    durations = iter([1, 15, 1, 1, 1, 1, 1])

    def fake_scale(config, sqs, batch, *, submit_batch, submitted_ids, **_):
        clock.starts.append(clock.now)
        clock.now += next(durations)
        return {"pool": config.pool, "outcome": "ok", "level": "INFO", "submitted": 0}

    monkeypatch.setattr(scaler, "scale", fake_scale)
    config = scaler.ScalerConfig(pools=(_offline_pool(),), poll_seconds=10, loop_seconds=55)

    records = scaler.run(config, None, None, submit_batch=None, clock=lambda: clock.now, sleep=clock.sleep)

    # The shipped timing (POLL 10, LOOP 55) decides at 0, 10, 20, ... 50 s; the decision at 10 s
    # took 15 s, so the 20 s slot is skipped rather than run late, and the later slots stay put.
    assert clock.starts == [0, 10, 30, 40, 50]
    assert len(records) == len(capsys.readouterr().out.splitlines()) == 5


def test_a_failing_decision_is_logged_and_the_loop_goes_on(monkeypatch, capsys):
    clock = _FakeClock()
    # Pool a's first decision raises; pool b is still decided in that same decision.
    outcomes = iter([RuntimeError("unexpected answer"), "ok", "ok", "ok"])

    def fake_scale(config, sqs, batch, *, submit_batch, submitted_ids, **_):
        clock.now += 0.1
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return {"pool": config.pool, "outcome": outcome, "level": "INFO", "submitted": 0}

    monkeypatch.setattr(scaler, "scale", fake_scale)
    config = scaler.ScalerConfig(pools=(_offline_pool("a"), _offline_pool("b")), poll_seconds=5, loop_seconds=10)

    records = scaler.run(config, None, None, submit_batch=None, clock=lambda: clock.now, sleep=clock.sleep)

    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logged == records
    assert [(r["pool"], r["outcome"], r["level"]) for r in records] == [
        ("a", "error", "ERROR"), ("b", "ok", "INFO"), ("a", "ok", "INFO"), ("b", "ok", "INFO")]
    assert records[0]["error"].startswith("RuntimeError: unexpected answer")


def test_handler_fails_the_run_if_any_decision_failed(aws, pool, lambda_env, monkeypatch, capsys):
    monkeypatch.setenv("POOLS", _pools_env(pool, queue_url=pool.queue_url + "-missing"))
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "1")

    with pytest.raises(scaler.ScalerRunFailed,
                       match=r"^1 of 1 pool decisions failed \(pools: default\); last: default: read_failed: "
                             r"sqs:GetQueueAttributes"):
        scaler.handler({}, None)

    [line] = capsys.readouterr().out.splitlines()
    assert (json.loads(line)["pool"], json.loads(line)["outcome"]) == ("default", "read_failed")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("POOLS", "", "missing environment variable(s) POOLS: the stack must set them"),
        ("POOLS", '[{"pool": "default"}]',
         "POOLS[0] (default) lacks queue_url, lacks job_queue, lacks job_definition, lacks job_name, "
         "lacks messages_per_worker, lacks target_wait_seconds, lacks start_seconds, lacks max_workers, lacks tasks_per_worker: a pool has exactly pool, "
         "queue_url, job_queue, job_definition, job_name, messages_per_worker, target_wait_seconds, start_seconds, max_workers, tasks_per_worker"),
        ("POLL_SECONDS", "0", "POLL_SECONDS='0' is not allowed: it must be a whole number >= 1"),
        ("LOOP_SECONDS", "-5", "LOOP_SECONDS='-5' is not allowed: it must be a whole number >= 0"),
        ("LOOP_SECONDS", "", "missing environment variable(s) LOOP_SECONDS: the stack must set them"),
        ("IDLE_CHECK", "sometimes", "IDLE_CHECK='sometimes' is not allowed: it must be one of minute, loop"),
        ("COOLDOWN_SECONDS", "-1", "COOLDOWN_SECONDS='-1' is not allowed: it must be a whole number >= 0"),
    ],
)
def test_handler_rejects_bad_configuration(aws, pool, lambda_env, monkeypatch, capsys, name, value, message):
    if value:
        monkeypatch.setenv(name, value)
    else:
        monkeypatch.delenv(name)
    _send(aws["sqs"], pool.queue_url, 25)

    with pytest.raises(scaler.ScalerRunFailed) as failed:
        scaler.handler({}, None)

    assert str(failed.value) == f"config_error: {message}"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert (record["outcome"], record["level"], record["submitted"], record["error"]) == (
        "config_error", "ERROR", 0, message)
    assert _jobs_in(aws["batch"], pool) == []


# --- POOLS validation: every bad value is one line naming the pool and the field.

_GOOD = {"pool": "default", "queue_url": "https://sqs.local/1/tasks-default", "job_queue": "jobs-default",
         "job_definition": "worker-default", "job_name": "celery-worker-default",
         "messages_per_worker": 10, "target_wait_seconds": 90, "start_seconds": 60, "max_workers": 48,
         "tasks_per_worker": 1}
_GPU = {**_GOOD, "pool": "gpu", "queue_url": "https://sqs.local/1/tasks-gpu", "job_queue": "jobs-gpu",
        "job_definition": "worker-gpu", "job_name": "celery-worker-gpu"}
_ARN = "arn:aws:batch:eu-west-1:123456789012"


def _environ(pools):
    return {"POOLS": pools if isinstance(pools, str) else json.dumps(pools), "POLL_SECONDS": "10",
            "LOOP_SECONDS": "55", "IDLE_CHECK": "minute", "COOLDOWN_SECONDS": "300"}


def test_reads_pools_from_the_environment():
    config = scaler.ScalerConfig.from_env(_environ([_GOOD, {**_GPU, "max_workers": "8", "tasks_per_worker": "4"}]))

    assert (config.poll_seconds, config.loop_seconds) == (10, 55)
    assert config.pools == (scaler.PoolConfig(**_GOOD),
                            scaler.PoolConfig(**{**_GPU, "max_workers": 8, "tasks_per_worker": 4}))


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        pytest.param("[{", "POOLS is not valid JSON: Expecting property name enclosed in double quotes: "
                     "line 1 column 3 (char 2)", id="not JSON"),
        pytest.param({"pool": "default"}, 'POOLS = {"pool": "default"}: must be a JSON list of pool objects',
                     id="not a list"),
        pytest.param([], "POOLS = []: must list at least one pool", id="no pool"),
        pytest.param([_GOOD, "gpu"], 'POOLS[1] = "gpu": must be a JSON object with pool, queue_url, job_queue, '
                     "job_definition, job_name, messages_per_worker, target_wait_seconds, start_seconds, max_workers, tasks_per_worker",
                     id="not an object"),
        pytest.param([{k: v for k, v in _GOOD.items() if k != "pool"}],
                     "POOLS[0] lacks pool: a pool has exactly pool, queue_url, job_queue, job_definition, job_name, "
                     "messages_per_worker, target_wait_seconds, start_seconds, max_workers, tasks_per_worker", id="no name"),
        pytest.param([{**_GOOD, "pool": ""}], 'POOLS[0].pool = "": must be a non-empty string', id="empty name"),
        pytest.param([_GOOD, {**_GPU, "pool": 7}], "POOLS[1].pool = 7: must be a non-empty string", id="name not text"),
        pytest.param([_GOOD, {**{k: v for k, v in _GPU.items() if k != "max_workers"}, "max_worker": 8}],
                     "POOLS[1] (gpu) lacks max_workers, has unknown field max_worker: a pool has exactly pool, "
                     "queue_url, job_queue, job_definition, job_name, messages_per_worker, target_wait_seconds, "
                     "start_seconds, max_workers, tasks_per_worker", id="misspelt field"),
        pytest.param([_GOOD, {**_GPU, "queue_url": ""}], 'POOLS[1] (gpu).queue_url = "": must be a non-empty string',
                     id="empty queue url"),
        pytest.param([{**_GOOD, "job_queue": None}], "POOLS[0] (default).job_queue = null: must be a non-empty string",
                     id="job queue null"),
        pytest.param([{**_GOOD, "job_definition": " "}],
                     'POOLS[0] (default).job_definition = " ": must be a non-empty string', id="blank definition"),
        pytest.param([{**_GOOD, "job_name": "celery worker"}],
                     'POOLS[0] (default).job_name = "celery worker": must be 1-128 letters, digits, hyphens or '
                     "underscores, starting with a letter or digit (Batch's job name rule)", id="job name with space"),
        pytest.param([{**_GOOD, "job_name": "w" * 129}],
                     f'POOLS[0] (default).job_name = "{"w" * 116}...: must be 1-128 letters, digits, hyphens or '
                     "underscores, starting with a letter or digit (Batch's job name rule)", id="job name too long"),
        pytest.param([_GOOD, {**_GPU, "max_workers": -1}],
                     "POOLS[1] (gpu).max_workers = -1: must be a whole number >= 0", id="negative cap"),
        pytest.param([_GOOD, {**_GPU, "max_workers": "-1"}],
                     'POOLS[1] (gpu).max_workers = "-1": must be a whole number >= 0', id="negative cap as text"),
        pytest.param([{**_GOOD, "messages_per_worker": -1}],
                     "POOLS[0] (default).messages_per_worker = -1: must be a whole number >= 0", id="negative per worker"),
        pytest.param([{**_GOOD, "target_wait_seconds": 0}],
                     "POOLS[0] (default).target_wait_seconds = 0: must be a whole number >= 1", id="zero target"),
        pytest.param([{**_GOOD, "messages_per_worker": "ten"}],
                     'POOLS[0] (default).messages_per_worker = "ten": must be a whole number >= 0', id="words"),
        pytest.param([{**_GOOD, "messages_per_worker": 2.5}],
                     "POOLS[0] (default).messages_per_worker = 2.5: must be a whole number >= 0", id="fraction"),
        pytest.param([{**_GOOD, "max_workers": True}],
                     "POOLS[0] (default).max_workers = true: must be a whole number >= 0", id="boolean"),
        pytest.param([{**_GOOD, "max_workers": " 4"}],
                     'POOLS[0] (default).max_workers = " 4": must be a whole number >= 0', id="padded digits"),
        pytest.param([{**_GOOD, "tasks_per_worker": 0}],
                     "POOLS[0] (default).tasks_per_worker = 0: must be a whole number >= 1", id="zero concurrency"),
        pytest.param([_GOOD, {**_GPU, "pool": "default"}],
                     'POOLS[1] (default).pool = "default": POOLS[0] has that name already; pool names must be unique',
                     id="same name"),
        pytest.param([_GOOD, {**_GPU, "queue_url": _GOOD["queue_url"]}],
                     'POOLS[1] (gpu).queue_url = "https://sqs.local/1/tasks-default": POOLS[0] (default) reads that '
                     "queue too; each pool needs its own task queue", id="same task queue"),
        pytest.param([_GOOD, {**_GPU, "job_queue": "jobs-default", "job_definition": "worker-default"}],
                     'POOLS[1] (gpu): job_queue "jobs-default" with job_definition "worker-default" is POOLS[0] '
                     "(default)'s pair too; each pool needs its own job queue or job definition", id="same pair"),
        # The same pair written as ARNs with a revision: workers are counted by definition name.
        pytest.param([_GOOD, {**_GPU, "job_queue": f"{_ARN}:job-queue/jobs-default",
                              "job_definition": f"{_ARN}:job-definition/worker-default:3"}],
                     f'POOLS[1] (gpu): job_queue "{_ARN}:job-queue/jobs-default" with job_definition '
                     f'"{_ARN}:job-definition/worker-default:3" is POOLS[0] (default)\'s pair too; each pool needs '
                     "its own job queue or job definition", id="same pair as ARNs"),
    ],
)
def test_rejects_bad_pools(pools, message):
    with pytest.raises(ValueError) as rejected:
        scaler.ScalerConfig.from_env(_environ(pools))

    assert str(rejected.value) == message
    assert "\n" not in message


def test_pools_may_share_a_job_queue_or_a_job_definition():
    shared_queue = {**_GPU, "job_queue": _GOOD["job_queue"]}
    shared_definition = {**_GPU, "pool": "spot", "queue_url": "https://sqs.local/1/tasks-spot",
                         "job_queue": "jobs-spot", "job_definition": _GOOD["job_definition"]}

    config = scaler.ScalerConfig.from_env(_environ([_GOOD, shared_queue, shared_definition]))

    assert [pool.pool for pool in config.pools] == ["default", "gpu", "spot"]


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


def test_with_a_metrics_namespace_each_decision_line_is_also_an_emf_document(aws, pool, lambda_env, monkeypatch,
                                                                             capsys):
    from tests.emf_spec import dimension_sets, emf_lines, metric_units

    monkeypatch.setenv("METRICS_NAMESPACE", "BatchCelery/Test")
    _send(aws["sqs"], pool.queue_url, 25)

    [record] = scaler.handler({}, None)

    [line] = emf_lines(capsys.readouterr().out)  # checked against the EMF specification
    assert {key: line[key] for key in record} == record  # the decision record, unchanged
    assert metric_units(line) == dict.fromkeys(("visible", "in_flight", "delayed", "active", "wanted", "submitted"),
                                               "Count")
    assert dimension_sets(line, "wanted") == [["pool"]]
    assert (line["pool"], line["visible"], line["wanted"], line["submitted"]) == ("default", 25, 3, 3)
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "BatchCelery/Test"


# --- the idle check: a run with nothing to watch is one decision, with no metric.

def test_an_idle_run_makes_one_check_and_ends_without_metrics(aws, lambda_runtime, monkeypatch, capsys):
    from batch_celery import status

    cpu, gpu = _make_pool(aws, "cpu"), _make_pool(aws, "gpu")
    monkeypatch.setenv("POOLS", _pools_env(cpu, gpu))
    monkeypatch.setenv("LOOP_SECONDS", "55")
    monkeypatch.setenv("METRICS_NAMESPACE", "BatchCelery/Test")

    started = time.monotonic()
    records = scaler.handler({}, None)
    took = time.monotonic() - started

    # Every queue empty, no worker job: one decision, not 55 s of them.
    assert took < 10
    lines = capsys.readouterr().out.splitlines()
    logged = [json.loads(line) for line in lines]
    assert logged == records
    assert [(r["pool"], r["outcome"], r["backlog"], r["active"], r["submitted"], r["idle"]) for r in logged] == [
        ("cpu", "ok", 0, 0, 0, True), ("gpu", "ok", 0, 0, 0, True)]
    # Plain JSON lines: no EMF document, so an idle month publishes no custom metric.
    assert all("_aws" not in r for r in logged)
    # status reads it as each pool's last decision.
    events = [{"message": line, "timestamp": 1_000_000} for line in lines]

    class Logs:
        def get_paginator(self, _):
            return type("Pages", (), {"paginate": lambda self, **_: [{"events": events}]})()

    decisions = status.last_decisions(Logs(), "scaler-logs", now=1_000.0)
    assert {pool: (d["outcome"], d["wanted"], d["active"]) for pool, d in decisions.items()} == {
        "cpu": ("ok", 0, 0), "gpu": ("ok", 0, 0)}


def test_a_message_in_any_pool_keeps_the_run_deciding_with_metrics(aws, lambda_runtime, monkeypatch, capsys):
    from tests.emf_spec import emf_lines

    busy, quiet = _make_pool(aws, "busy"), _make_pool(aws, "quiet")
    _send(aws["sqs"], busy.queue_url, 1)
    monkeypatch.setenv("POOLS", _pools_env(busy, quiet))
    monkeypatch.setenv("POLL_SECONDS", "1")
    monkeypatch.setenv("LOOP_SECONDS", "2")
    monkeypatch.setenv("METRICS_NAMESPACE", "BatchCelery/Test")

    records = scaler.handler({}, None)

    # Decisions at 0 and 1 s (the loop), each pool's line an EMF document, the quiet pool's too.
    assert [(r["pool"], r["backlog"]) for r in records] == [("busy", 1), ("quiet", 0)] * 2
    assert [line["pool"] for line in emf_lines(capsys.readouterr().out)] == ["busy", "quiet"] * 2
    assert not any(r.get("idle") for r in records)


def _backlogs(clock, per_decision):
    """A ``scale`` whose pool sees the next backlog of ``per_decision`` at each decision."""
    backlogs = iter(per_decision)

    def fake_scale(config, sqs, batch, *, submit_batch, submitted_ids, **_):
        clock.starts.append(clock.now)
        clock.now += 0.5
        backlog = next(backlogs)
        if backlog is None:
            return {"scaler": "batch-celery", "pool": config.pool, "outcome": "read_failed", "level": "ERROR",
                    "submitted": 0, "error": "sqs:GetQueueAttributes failed: Throttling"}
        return {"scaler": "batch-celery", "pool": config.pool, "outcome": "ok", "level": "INFO", "visible": backlog,
                "in_flight": 0, "delayed": 0, "backlog": backlog, "active": 0, "wanted": 0, "submitted": 0}

    return fake_scale


def _minute_run(monkeypatch, per_decision, *, watch, cooldown_seconds=300, idle_check="minute"):
    clock = _FakeClock()
    monkeypatch.setattr(scaler, "scale", _backlogs(clock, per_decision))
    config = scaler.ScalerConfig(pools=(_offline_pool(),), poll_seconds=10, loop_seconds=55,
                                 idle_check=idle_check, cooldown_seconds=cooldown_seconds)
    # Wall-clock time 1,000,000 s at the run's start, moving with the fake clock.
    records = scaler.run(config, None, None, submit_batch=None, clock=lambda: clock.now, sleep=clock.sleep,
                         wall=lambda: 1_000_000 + clock.now, watch=watch)
    return clock, records


def test_a_run_ends_at_its_first_idle_decision_once_the_cool_down_is_over(monkeypatch, capsys):
    watch = scaler.Watch()

    clock, records = _minute_run(monkeypatch, [3, 0, 0, 0, 0, 0], watch=watch, cooldown_seconds=20)

    # Work at 0 s; idle at 10 s, still within the 20 s cool-down; idle at 20 s: over, the run ends.
    assert clock.starts == [0, 10, 20]
    assert [r.get("idle", False) for r in records] == [False, False, True]
    assert watch.last_work == 1_000_000.5


def test_the_cool_down_carries_over_to_the_next_runs_of_a_warm_container(monkeypatch, capsys):
    # A decision found work 100 s before this run: the run decides its whole minute.
    clock, records = _minute_run(monkeypatch, [0] * 6, watch=scaler.Watch(last_work=1_000_000 - 100))
    assert clock.starts == [0, 10, 20, 30, 40, 50]
    assert not any(r.get("idle") for r in records)

    # 300 s before: the cool-down is over, one check.
    clock, records = _minute_run(monkeypatch, [0] * 6, watch=scaler.Watch(last_work=1_000_000 - 300))
    assert clock.starts == [0]
    assert records[0]["idle"] is True


def test_a_cold_container_checks_once(monkeypatch, capsys):
    # It remembers no work: no cool-down to honour.
    clock, _ = _minute_run(monkeypatch, [0] * 6, watch=scaler.Watch())

    assert clock.starts == [0]


def test_a_failed_reading_counts_as_work(monkeypatch, capsys):
    # It saw nothing, so it cannot call the pool idle: the run goes on and tries again.
    clock, records = _minute_run(monkeypatch, [None, 0, 0, 0, 0, 0], watch=scaler.Watch(), cooldown_seconds=0)

    assert clock.starts == [0, 10]
    assert [(r["outcome"], r.get("idle", False)) for r in records] == [("read_failed", False), ("ok", True)]


def test_idle_check_loop_decides_the_whole_minute_with_nothing_to_do(monkeypatch, capsys):
    clock, records = _minute_run(monkeypatch, [0] * 6, watch=scaler.Watch(), idle_check="loop")

    assert clock.starts == [0, 10, 20, 30, 40, 50]
    assert not any(r.get("idle") for r in records)


# --- Target sizing: run times read from the workers' metrics, starts from the jobs.

def _report_run_times(cloudwatch, namespace, pool, seconds, *, ago=600):
    """Run times as the workers' EMF lines become metrics: run_seconds, dimension pool."""
    stamp = datetime.now(timezone.utc) - timedelta(seconds=ago)
    cloudwatch.put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": "run_seconds", "Dimensions": [{"Name": "pool", "Value": pool}], "Timestamp": stamp,
         "Value": value, "Unit": "Seconds"} for value in seconds])


def _target_config(pool, namespace):
    # A pool name of its own: moto's GetMetricData matches on the dimensions, not the namespace.
    sized = dataclasses.replace(pool, pool=f"pool-{uuid.uuid4().hex[:6]}", messages_per_worker=0,
                                target_wait_seconds=90, start_seconds=60)
    return sized, scaler.ScalerConfig(pools=(sized,), metrics_namespace=namespace)


def test_a_pool_that_never_reported_a_run_gets_a_worker_per_waiting_message(aws, pool):
    sized, config = _target_config(pool, f"BatchCelery/never-{uuid.uuid4().hex[:6]}")
    _send(aws["sqs"], sized.queue_url, 20)
    watch = scaler.Watch()

    [record] = scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], watch=watch,
                          cloudwatch=aws["cloudwatch"], sleep=_no_wait)

    assert record["submitted"] == 20
    assert record["sizing"]["task_seconds_basis"] == "unknown"
    assert (record["sizing"]["per_new_worker"], record["sizing"]["start_seconds_basis"]) == (1, "expected")


def test_short_reported_run_times_let_one_worker_take_several_waiting_messages(aws, pool):
    namespace = f"BatchCelery/short-{uuid.uuid4().hex[:6]}"
    sized, config = _target_config(pool, namespace)
    _report_run_times(aws["cloudwatch"], namespace, sized.pool, [10, 20, 30])   # mean 20 s
    _send(aws["sqs"], sized.queue_url, 20)

    [record] = scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], watch=scaler.Watch(),
                          cloudwatch=aws["cloudwatch"], sleep=_no_wait)

    # A new worker polls after 60 s and starts a 20 s task at 60 and 80 s, both within 90 s:
    # 20 waiting messages want 10 workers.
    assert record["sizing"]["task_seconds"] == 20.0
    assert record["sizing"]["task_seconds_basis"] == "learned"
    assert (record["sizing"]["per_new_worker"], record["submitted"]) == (2, 10)


def test_long_reported_run_times_give_every_waiting_message_its_worker(aws, pool):
    namespace = f"BatchCelery/long-{uuid.uuid4().hex[:6]}"
    sized, config = _target_config(pool, namespace)
    # Reported days ago: a pool that ran its task last week starts sized right.
    _report_run_times(aws["cloudwatch"], namespace, sized.pool, [7200, 7200], ago=3 * 86_400)
    _send(aws["sqs"], sized.queue_url, 20)

    [record] = scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], watch=scaler.Watch(),
                          cloudwatch=aws["cloudwatch"], sleep=_no_wait)

    assert (record["sizing"]["task_seconds"], record["submitted"]) == (7200.0, 20)


def test_run_times_are_read_once_a_refresh_for_every_pool(aws, pool, monkeypatch):
    namespace = f"BatchCelery/refresh-{uuid.uuid4().hex[:6]}"
    sized, config = _target_config(pool, namespace)
    calls = []
    real = aws["cloudwatch"].get_metric_data
    monkeypatch.setattr(aws["cloudwatch"], "get_metric_data", lambda **kw: calls.append(kw) or real(**kw))
    _send(aws["sqs"], sized.queue_url, 3)
    watch = scaler.Watch()
    wall = iter([1000.0 + t for t in range(0, 400, 1)])

    for _ in range(3):
        scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], watch=watch,
                   cloudwatch=aws["cloudwatch"], sleep=_no_wait, wall=lambda: next(wall))

    assert len(calls) == 1
    assert [q["MetricStat"]["Stat"] for q in calls[0]["MetricDataQueries"]] == ["Sum", "SampleCount"]


def test_an_unreadable_run_time_sizes_as_unknown_and_says_why(aws, pool):
    sized, config = _target_config(pool, "BatchCelery/unreadable")

    class Broken:
        def get_metric_data(self, **_):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "GetMetricData")

    _send(aws["sqs"], sized.queue_url, 2)
    [record] = scaler.run(config, aws["sqs"], aws["batch"], submit_batch=aws["batch"], watch=scaler.Watch(),
                          cloudwatch=Broken(), sleep=_no_wait)

    assert (record["outcome"], record["submitted"]) == ("ok", 2)
    assert record["sizing"]["note"] == "run times unread: cloudwatch:GetMetricData failed: AccessDenied: not allowed"


def test_a_start_is_learned_from_the_jobs_it_describes():
    config = scaler.PoolConfig("p", "q", "jq", "jd", "jn", 0, 48, start_seconds=60)
    samples: dict = {}

    assert scaler.learned_start(config, {}, samples) == (60.0, "expected")
    assert scaler.learned_start(config, {"a": 40.0, "b": 50.0, "c": 90.0}, samples) == (50.0, "learned")
    # Only the last START_SAMPLES jobs count.
    scaler.learned_start(config, {f"j{i}": 30.0 for i in range(scaler.START_SAMPLES)}, samples)
    assert scaler.learned_start(config, {}, samples) == (30.0, "learned")


# --- Warm capacity: min_workers, in their hours, kept up with nothing to do.

def _warm(pool, **fields):
    return dataclasses.replace(pool, messages_per_worker=0, **fields)


def _warm_until(job):
    environment = (job.get("container") or {}).get("environment") or []
    overrides = {e["name"]: e["value"] for e in environment}
    return overrides.get(scaler.WARM_UNTIL)


def test_an_empty_pool_keeps_its_min_workers_warm_and_counts_them_as_no_work(aws, pool, jobs_stay_active):
    warm_pool = _warm(pool, min_workers=2)

    first = scaler.scale(warm_pool, aws["sqs"], aws["batch"], submit_batch=aws["batch"])
    second = scaler.scale(warm_pool, aws["sqs"], aws["batch"], submit_batch=aws["batch"])

    assert (first["submitted"], first["warm"]["submitted"], second["submitted"]) == (2, 2, 0)
    [job] = _jobs_in(aws["batch"], warm_pool)
    # No window end: warm until its job's take window ends it.
    assert job["arrayProperties"]["size"] == 2
    assert _warm_until(job) == str(warm.ALWAYS_EPOCH)
    # Two warm workers and nothing else: the run may end at its first decision (one check a minute).
    assert not scaler.found_work(second)


def test_a_backlog_gets_plain_workers_beside_the_warm_ones(aws, pool, jobs_stay_active):
    warm_pool = _warm(pool, min_workers=1)
    _send(aws["sqs"], warm_pool.queue_url, 3)

    record = scaler.scale(warm_pool, aws["sqs"], aws["batch"], submit_batch=aws["batch"])

    # A run time unknown: a worker per waiting task, and the warm one beside them: the backlog's
    # workers leave by their idle rule once it is done, the warm one stays.
    assert (record["submitted"], record["warm"]["submitted"]) == (4, 1)
    jobs = {job["jobName"]: job for job in _jobs_in(aws["batch"], warm_pool)}
    assert jobs[warm_pool.job_name]["arrayProperties"]["size"] == 3
    assert _warm_until(jobs[warm_pool.job_name]) is None
    assert _warm_until(jobs[scaler.warm_job_name(warm_pool)]) == str(warm.ALWAYS_EPOCH)
    # The next decision counts the warm job by its name: no second warm worker.
    again = scaler.scale(warm_pool, aws["sqs"], aws["batch"], submit_batch=aws["batch"])
    assert (again["warm"]["active"], again["warm"]["submitted"]) == (1, 0)


def test_outside_its_hours_a_pool_keeps_no_warm_worker(aws, pool, jobs_stay_active):
    # Saturday 03:00 UTC: outside "mon-fri 08:00-18:00".
    saturday_night = datetime(2026, 12, 5, 3, 0, tzinfo=timezone.utc).timestamp()
    monday_morning = datetime(2026, 12, 7, 9, 30, tzinfo=timezone.utc).timestamp()
    warm_pool = _warm(pool, min_workers=2, warm_hours="mon-fri 08:00-18:00 UTC")

    night = scaler.scale(warm_pool, aws["sqs"], aws["batch"], submit_batch=aws["batch"], now=saturday_night)
    morning = scaler.scale(warm_pool, aws["sqs"], aws["batch"], submit_batch=aws["batch"], now=monday_morning)

    assert (night["submitted"], night["warm"]["min_workers"]) == (0, 0)
    assert (morning["submitted"], morning["warm"]["until"]) == (2, int(datetime(2026, 12, 7, 18, 0,
                                                                                 tzinfo=timezone.utc).timestamp()))
    [job] = _jobs_in(aws["batch"], warm_pool)
    assert _warm_until(job) == str(morning["warm"]["until"])


def test_pools_carry_warm_capacity_only_when_they_keep_some():
    plain = scaler.PoolConfig.from_json(0, _GOOD)
    warm_pool = scaler.PoolConfig.from_json(0, {**_GOOD, "min_workers": 2, "warm_hours": "mon-fri 08:00-18:00 UTC"})

    assert (plain.min_workers, plain.warm_hours) == (0, "")
    assert (warm_pool.min_workers, warm_pool.warm_hours) == (2, "mon-fri 08:00-18:00 UTC")
    with pytest.raises(ValueError) as rejected:
        scaler.PoolConfig.from_json(0, {**_GOOD, "min_workers": 1, "warm_hours": "weekdays"})
    assert str(rejected.value).startswith('POOLS[0] (default).warm_hours = "weekdays": must have the form')


def test_workers_not_yet_running_are_counted_as_starting(aws, pool, jobs_stay_active):
    sized = dataclasses.replace(pool, messages_per_worker=0)
    _send(aws["sqs"], sized.queue_url, 3)
    first = scaler.scale(sized, aws["sqs"], aws["batch"], submit_batch=aws["batch"])
    _send(aws["sqs"], sized.queue_url, 2)

    second = scaler.scale(sized, aws["sqs"], aws["batch"], submit_batch=aws["batch"])

    # The 3 jobs are held SUBMITTED: they are starting, and each covers one waiting message (run
    # time unknown); the 2 new messages get 2 more.
    assert (first["submitted"], second["active"], second["sizing"]["free_up"], second["submitted"]) == (3, 3, 3, 2)


def test_an_array_job_learns_its_start_from_its_first_running_child():
    class Batch:
        def list_jobs(self, **request):
            assert request == {"arrayJobId": "parent", "jobStatus": "RUNNING"}
            return {"jobSummaryList": [{"jobId": "parent:1", "startedAt": 1_000_050_000},
                                       {"jobId": "parent:0", "startedAt": 1_000_045_000}]}

    parent = {"jobId": "parent", "status": "PENDING", "createdAt": 1_000_000_000,
              "arrayProperties": {"size": 2, "statusSummary": {"RUNNING": 2}}}

    # The parent of an array is never RUNNING itself; its first child started 45 s after it.
    assert scaler._start_of(Batch(), parent, running=2) == 45.0
    assert scaler._start_of(Batch(), {**parent, "arrayProperties": {"size": 2, "statusSummary": {"RUNNABLE": 2}}},
                            running=0) is None


def test_a_failed_run_time_read_keeps_what_was_learned():
    config = scaler.ScalerConfig(pools=(scaler.PoolConfig("p", "q", "jq", "jd", "jn", 0, 48),),
                                 metrics_namespace="BatchCelery/test")

    class Flaky:
        calls = 0

        def get_metric_data(self, **_):
            Flaky.calls += 1
            if Flaky.calls > 1:
                raise ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "GetMetricData")
            now = datetime.now(timezone.utc)
            return {"MetricDataResults": [{"Id": "p0sum", "Timestamps": [now], "Values": [60.0]},
                                          {"Id": "p0samplecount", "Timestamps": [now], "Values": [3.0]}]}

    watch = scaler.Watch()
    assert watch.run_time(config, "p", Flaky(), 1000.0)[0] == 20.0
    seconds, note = watch.run_time(config, "p", Flaky(), 1000.0 + scaler.RUN_TIMES_REFRESH_SECONDS)
    assert seconds == 20.0 and note.startswith("run times unread: cloudwatch:GetMetricData failed: Throttling")

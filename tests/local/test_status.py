"""`python -m batch_celery status` against moto: a stack found by its outputs, real queues, Batch
jobs and scaler log lines; the local run's file; and one line when something is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from batch_celery import status
from batch_celery.local import REPO_ROOT, runfile
from batch_celery.local.queues import create_queue_pair
from batch_celery_container import routing


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_celery", "status", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _moto_env(moto_server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto_server.client_env())
    return env


def _wait_for(batch, job_ids: list[str], state: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(j["status"] == state for j in batch.describe_jobs(jobs=job_ids)["jobs"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs {job_ids} did not reach {state}")


@pytest.fixture(scope="module")
def deployed(moto_server):
    """Two pools as a deployed stack leaves them: queues with messages, worker jobs that ran, the
    scaler's decision lines, and a CloudFormation stack whose outputs name them all."""
    tag = uuid.uuid4().hex[:6]
    sqs, batch, logs = (moto_server.client(name) for name in ("sqs", "batch", "logs"))
    queues = {pool: create_queue_pair(sqs, f"status-{tag}-{pool}") for pool in ("default", "gpu")}
    for pool, count in (("default", 5), ("gpu", 2)):
        for index in range(count):
            sqs.send_message(QueueUrl=queues[pool].url, MessageBody=f"task {index}")
    sqs.send_message(QueueUrl=queues["default"].dlq_url, MessageBody="a poison task")

    role = moto_server.client("iam").create_role(RoleName=f"batch-{tag}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(computeEnvironmentName=f"status-{tag}", type="UNMANAGED",
                                                   state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
    definitions, job_queues = {}, {}
    for pool in ("default", "gpu"):
        job_queues[pool] = batch.create_job_queue(
            jobQueueName=f"status-{tag}-{pool}", state="ENABLED", priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])["jobQueueArn"]
        definitions[pool] = batch.register_job_definition(
            jobDefinitionName=f"status-{tag}-worker-{pool}", type="container",
            containerProperties={"image": "worker", "vcpus": 1, "memory": 512})["jobDefinitionArn"]
    filler = batch.register_job_definition(jobDefinitionName=f"status-{tag}-filler", type="container",
                                           containerProperties={"image": "worker", "vcpus": 1, "memory": 512})
    # Without Docker moto ends a job SUCCEEDED; with it (and no Docker here), FAILED.
    moto_server.configure({"batch": {"use_docker": False}})
    succeeded = [batch.submit_job(jobName="celery-worker", jobQueue=job_queues["default"], jobDefinition=definitions["default"])["jobId"]
                 for _ in range(2)]
    succeeded.append(batch.submit_job(jobName="celery-filler", jobQueue=job_queues["default"],
                                      jobDefinition=filler["jobDefinitionArn"])["jobId"])  # not a worker
    _wait_for(batch, succeeded, "SUCCEEDED")
    moto_server.configure({"batch": {"use_docker": True}})
    try:
        failed = [batch.submit_job(jobName="celery-worker", jobQueue=job_queues["gpu"], jobDefinition=definitions["gpu"])["jobId"]]
        _wait_for(batch, failed, "FAILED")
    finally:
        moto_server.configure({"batch": {"use_docker": False}})

    group = f"/status/{tag}/scaler"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="run")
    now = int(time.time() * 1000)
    decision = {"scaler": "batch-celery", "outcome": "ok", "in_flight": 0, "delayed": 0, "level": "INFO"}
    logs.put_log_events(logGroupName=group, logStreamName="run", logEvents=[
        {"timestamp": now - 30_000, "message": json.dumps({**decision, "pool": "default", "visible": 9, "active": 0,
                                                           "wanted": 1, "submitted": 1})},
        {"timestamp": now - 20_000, "message": "START RequestId: 1 Version: $LATEST"},
        {"timestamp": now - 10_000, "message": json.dumps({**decision, "pool": "default", "visible": 5, "active": 1,
                                                           "wanted": 1, "submitted": 0, "_aws": {}})},
        {"timestamp": now - 5_000, "message": json.dumps({**decision, "pool": "gpu", "outcome": "submit_failed",
                                                          "visible": 2, "active": 0, "wanted": 1, "submitted": 0,
                                                          "error": "SubmitJob failed: AccessDenied"})},
    ])

    routes = routing.routes_document(default_pool="default", region=moto_server.region, pools={
        pool: routing.PoolRoute(q.name, q.url, ("gpu.*",) if pool == "gpu" else ()) for pool, q in queues.items()})
    outputs = {"Routes": json.dumps(routes), "ScalerLogGroupName": group}
    for pool, q in queues.items():
        p = f"Pool{pool.title()}"
        outputs.update({f"{p}QueueUrl": q.url, f"{p}DeadLetterQueueUrl": q.dlq_url,
                        f"{p}JobQueueArn": job_queues[pool], f"{p}JobDefinitionArn": definitions[pool]})
    stack = f"Status{tag}"
    template = {"Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()}}
    moto_server.client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps(template))
    return stack


def test_prints_each_pools_queues_jobs_and_last_decision(moto_server, deployed) -> None:
    result = _run(_moto_env(moto_server), "--stack", deployed)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"stack {deployed} in {moto_server.region}"
    assert lines[1:4] == [
        "pool default",
        "  queue: 5 waiting, 0 in flight, 0 delayed; DLQ: 1",
        "  worker jobs: SUBMITTED 0, PENDING 0, RUNNABLE 0, STARTING 0, RUNNING 0, SUCCEEDED 2, FAILED 0 "
        "(SUCCEEDED/FAILED: created in the last hour)",
    ]
    assert lines[4].startswith("  scaler at ") and lines[4].endswith(" UTC: ok, wanted 1, active 1, submitted 0")
    assert lines[5:8] == [
        "pool gpu",
        "  queue: 2 waiting, 0 in flight, 0 delayed; DLQ: 0",
        "  worker jobs: SUBMITTED 0, PENDING 0, RUNNABLE 0, STARTING 0, RUNNING 0, SUCCEEDED 0, FAILED 1 "
        "(SUCCEEDED/FAILED: created in the last hour)",
    ]
    assert lines[8].endswith("submit_failed, wanted 1, active 0, submitted 0; SubmitJob failed: AccessDenied")
    assert len(lines) == 9


def test_json_gives_the_same_figures(moto_server, deployed) -> None:
    result = _run(_moto_env(moto_server), "--stack", deployed, "--json")
    assert result.returncode == 0, result.stderr
    pools = {p["pool"]: p for p in json.loads(result.stdout)["pools"]}
    assert (pools["default"]["visible"], pools["default"]["dead_lettered"], pools["default"]["jobs"]["SUCCEEDED"]) == (5, 1, 2)
    assert pools["gpu"]["jobs"]["FAILED"] == 1 and pools["gpu"]["decision"]["outcome"] == "submit_failed"


def test_a_missing_stack_is_one_line(moto_server) -> None:
    result = _run(_moto_env(moto_server), "--stack", "NoSuchStack")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"status: stack NoSuchStack not found in region {moto_server.region}; deploy it (make deploy) "
        "or name yours with --stack NAME / --region REGION")


def test_missing_credentials_are_one_line_without_any_network_call(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_REGION="eu-west-1",
               AWS_EC2_METADATA_DISABLED="true")
    started = time.monotonic()
    result = _run(env, "--stack", "Any")
    assert result.returncode == 1
    assert result.stderr.strip() == ("status: no AWS credentials found (configure a profile, set AWS_PROFILE, "
                                     "or use --local for the local run)")
    assert time.monotonic() - started < 30


def test_bad_arguments_are_one_line() -> None:
    result = _run(dict(os.environ), "--stacks", "x")
    assert result.returncode == 2 and result.stderr.startswith("status: unrecognized arguments: --stacks x")
    assert len(result.stderr.strip().splitlines()) == 1


def test_local_run_file_gives_live_queue_counts_and_the_demos_workers(moto_server, tmp_path) -> None:
    sqs = moto_server.client("sqs")
    queue = create_queue_pair(sqs, f"status-local-{uuid.uuid4().hex[:6]}")
    for index in range(3):
        sqs.send_message(QueueUrl=queue.url, MessageBody=str(index))
    routes = routing.routes_document(default_pool="default", region=moto_server.region,
                                     pools={"default": routing.PoolRoute(queue.name, queue.url, ())})
    path = tmp_path / "run.json"
    runfile.write(path, endpoint=moto_server.endpoint, region=moto_server.region,
                  outputs={"Routes": json.dumps(routes), "PoolDefaultQueueUrl": queue.url,
                           "PoolDefaultDeadLetterQueueUrl": queue.dlq_url},
                  workers={"default": {"RUNNING": 2, "SUCCEEDED": 1, "FAILED": 0}},
                  decisions={"default": {"scaler": "batch-celery", "pool": "default", "outcome": "ok", "wanted": 2,
                                         "active": 2, "submitted": 0, "time": time.time()}})
    title, [pool] = status.local_status(path)
    assert title == f"local run on {moto_server.endpoint} (worker processes stand in for Batch jobs)"
    assert (pool.visible, pool.in_flight, pool.dead_lettered, pool.jobs["RUNNING"]) == (3, 0, 0, 2)
    assert "  scaler at " in status.render(title, [pool])

    with pytest.raises(status.StatusError, match=r"^no local run: start one with `make demo`"):
        status.local_status(tmp_path / "none.json")
    # A run file left by a run whose server is gone.
    runfile.write(path, endpoint="http://127.0.0.1:9", region="us-east-1", outputs={
        "Routes": json.dumps(routes), "PoolDefaultQueueUrl": queue.url, "PoolDefaultDeadLetterQueueUrl": queue.dlq_url},
        workers={}, decisions={})
    with pytest.raises(status.StatusError, match=r"^the local run at http://127.0.0.1:9 has ended"):
        status.local_status(path)

"""`python -m batch_celery status` against moto: a stack found by its outputs, real queues, Batch
jobs (array jobs too) and scaler log lines; the local run's file; and one line when something is
missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from batch_celery import status
from batch_celery import runfile
from batch_celery_local import REPO_ROOT
from batch_celery_local.queues import create_queue_pair
from batch_celery_container import routing

DECISION = {"scaler": "batch-celery", "outcome": "ok", "in_flight": 0, "delayed": 0, "level": "INFO"}


def _run(env: dict[str, str], *args: str, command: str = "status") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_celery", command, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _moto_env(moto_server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto_server.client_env())
    return env


def _wait_for(batch, job_ids: list[str], done) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(done(job) for job in batch.describe_jobs(jobs=job_ids)["jobs"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs {job_ids} did not finish")


def _create_stack(moto_server, name: str, outputs: dict[str, str]) -> str:
    template = {"Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()}}
    moto_server.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))
    return name


def _decision_log(moto_server, group: str, records: list[tuple[int, dict | str]]) -> None:
    """``records``: (milliseconds ago, a decision record or a raw line)."""
    logs = moto_server.client("logs")
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="run")
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName="run", logEvents=[
        {"timestamp": now - ago, "message": line if isinstance(line, str) else json.dumps(line)}
        for ago, line in sorted(records, key=lambda r: -r[0])])


@pytest.fixture(scope="module")
def deployed(moto_server) -> dict[str, object]:
    """Two pools as a deployed stack leaves them: queues with messages, worker jobs that ran (plain
    and array, plus a filler job that is not a worker), the scaler's decision lines, and
    CloudFormation stacks whose outputs name them all."""
    tag = uuid.uuid4().hex[:6]
    sqs, batch = moto_server.client("sqs"), moto_server.client("batch")
    queues = {pool: create_queue_pair(sqs, f"status-{tag}-{pool}") for pool in ("default", "gpu")}
    for pool, count in (("default", 5), ("gpu", 2)):
        for index in range(count):
            sqs.send_message(QueueUrl=queues[pool].url, MessageBody=f"task {index}")
    sqs.send_message(QueueUrl=queues["default"].dlq_url, MessageBody="a poison task")
    sqs.receive_message(QueueUrl=queues["default"].url, MaxNumberOfMessages=1, VisibilityTimeout=600)
    sqs.send_message(QueueUrl=queues["gpu"].url, MessageBody="later", DelaySeconds=600)

    role = moto_server.client("iam").create_role(RoleName=f"batch-{tag}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(computeEnvironmentName=f"status-{tag}", type="UNMANAGED",
                                                   state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
    definitions, job_queues = {}, {}
    container = {"image": "worker", "vcpus": 1, "memory": 512}
    for pool in ("default", "gpu"):
        job_queues[pool] = batch.create_job_queue(
            jobQueueName=f"status-{tag}-{pool}", state="ENABLED", priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])["jobQueueArn"]
        definitions[pool] = batch.register_job_definition(
            jobDefinitionName=f"status-{tag}-worker-{pool}", type="container",
            containerProperties=container)["jobDefinitionArn"]
    filler = batch.register_job_definition(jobDefinitionName=f"status-{tag}-filler", type="container",
                                           containerProperties=container)["jobDefinitionArn"]

    def submit(pool: str, definition: str, size: int = 1) -> str:
        return batch.submit_job(jobName="celery-worker", jobQueue=job_queues[pool], jobDefinition=definition,
                                **({"arrayProperties": {"size": size}} if size > 1 else {}))["jobId"]

    # Without Docker moto ends a job SUCCEEDED; with it (and no Docker here), FAILED.
    moto_server.configure({"batch": {"use_docker": False}})
    # default: 2 plain workers + an array of 3 = SUCCEEDED 5; the filler's job is not a worker.
    # moto lists the array's children beside their parent: counted once each, not 1 + 3.
    succeeded = [submit("default", definitions["default"]), submit("default", definitions["default"]),
                 submit("default", definitions["default"], size=3), submit("default", filler)]
    _wait_for(batch, succeeded, lambda job: job["status"] == "SUCCEEDED")
    moto_server.configure({"batch": {"use_docker": True}})
    try:
        # gpu: 1 plain worker + an array of 2, all FAILED = FAILED 3 (moto leaves such an array's
        # parent SUBMITTED: its children count in their own state, the parent not at all).
        failed = [submit("gpu", definitions["gpu"]), submit("gpu", definitions["gpu"], size=2)]
        _wait_for(batch, failed, lambda job: job["status"] == "FAILED" or (
            job.get("arrayProperties", {}).get("statusSummary", {}).get("FAILED") == 2))
    finally:
        moto_server.configure({"batch": {"use_docker": False}})

    group = f"/status/{tag}/scaler"
    _decision_log(moto_server, group, [
        (30_000, {**DECISION, "pool": "default", "visible": 9, "active": 0, "wanted": 1, "submitted": 1}),
        (20_000, "START RequestId: 1 Version: $LATEST"),
        (10_000, {**DECISION, "pool": "default", "visible": 5, "active": 1, "wanted": 1, "submitted": 0, "_aws": {}}),
        (5_000, {**DECISION, "pool": "gpu", "outcome": "submit_failed", "visible": 2, "active": 0, "wanted": 1,
                 "submitted": 0, "level": "ERROR", "error": "SubmitJob failed: AccessDenied"}),
    ])
    broken = f"/status/{tag}/broken-scaler"
    _decision_log(moto_server, broken, [
        (10_000, {**DECISION, "pool": "default", "visible": 5, "active": 1, "wanted": 1, "submitted": 0}),
        (3_000, {"scaler": "batch-celery", "outcome": "config_error", "level": "ERROR", "submitted": 0,
                 "error": "POOLS: not JSON"}),
    ])

    routes = routing.routes_document(default_pool="default", region=moto_server.region, pools={
        pool: routing.PoolRoute(q.name, q.url, ("gpu.*",) if pool == "gpu" else ()) for pool, q in queues.items()})
    outputs = {"Routes": json.dumps(routes)}
    for pool, q in queues.items():
        p = f"Pool{pool.title()}"
        outputs.update({f"{p}QueueName": q.name, f"{p}QueueUrl": q.url, f"{p}DeadLetterQueueUrl": q.dlq_url,
                        f"{p}JobQueueArn": job_queues[pool], f"{p}JobDefinitionArn": definitions[pool]})
    return {
        "scaler": _create_stack(moto_server, f"Status{tag}", {**outputs, "ScalerLogGroupName": group}),
        "alarms": _create_stack(moto_server, f"Status{tag}Alarms", outputs),
        "broken": _create_stack(moto_server, f"Status{tag}Broken", {**outputs, "ScalerLogGroupName": broken}),
    }


def test_prints_each_pools_queues_jobs_and_last_decision(moto_server, deployed) -> None:
    stack = deployed["scaler"]
    result = _run(_moto_env(moto_server), "--stack", stack)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"stack {stack} in {moto_server.region}"
    assert lines[1:4] == [
        "pool default",
        "  queue: 4 waiting, 1 in flight, 0 delayed; DLQ: 1",
        "  worker jobs: SUBMITTED 0, PENDING 0, RUNNABLE 0, STARTING 0, RUNNING 0, SUCCEEDED 5, FAILED 0 "
        "(SUCCEEDED/FAILED: created in the last hour)",
    ]
    assert lines[4].startswith("  scaler at ") and lines[4].endswith(" UTC: ok, wanted 1, active 1, submitted 0")
    assert lines[5:8] == [
        "pool gpu",
        "  queue: 2 waiting, 0 in flight, 1 delayed; DLQ: 0",
        "  worker jobs: SUBMITTED 0, PENDING 0, RUNNABLE 0, STARTING 0, RUNNING 0, SUCCEEDED 0, FAILED 3 "
        "(SUCCEEDED/FAILED: created in the last hour)",
    ]
    assert lines[8].endswith(" UTC: submit_failed, wanted 1, active 0, submitted 0; SubmitJob failed: AccessDenied")
    assert len(lines) == 9


def test_json_gives_the_same_figures(moto_server, deployed) -> None:
    result = _run(_moto_env(moto_server), "--stack", deployed["scaler"], "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    pools = {p["pool"]: p for p in report["pools"]}
    assert report["scaling"] == "scaler" and list(pools) == ["default", "gpu"]
    default, gpu = pools["default"], pools["gpu"]
    assert (default["visible"], default["in_flight"], default["delayed"], default["dead_lettered"]) == (4, 1, 0, 1)
    assert (gpu["visible"], gpu["in_flight"], gpu["delayed"], gpu["dead_lettered"]) == (2, 0, 1, 0)
    assert (default["jobs"]["SUCCEEDED"], gpu["jobs"]["FAILED"], gpu["jobs"]["SUBMITTED"]) == (5, 3, 0)
    assert (default["decision"]["visible"], "_aws" in default["decision"]) == (5, False)
    assert gpu["decision"]["outcome"] == "submit_failed" and gpu["decision"]["time_utc"].endswith("+00:00")
    assert (default["errors"], gpu["errors"]) == ([], [])


def test_alarms_mode_says_there_is_no_scaler(moto_server, deployed) -> None:
    result = _run(_moto_env(moto_server), "--stack", deployed["alarms"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"stack {deployed['alarms']} in {moto_server.region} (alarms mode: no scaler)"
    assert lines.count("  scaler: no scaler (alarms mode)") == 2


def test_a_newer_config_error_is_every_pools_last_decision(moto_server, deployed) -> None:
    result = _run(_moto_env(moto_server), "--stack", deployed["broken"])
    assert result.returncode == 0, result.stderr
    scaler_lines = [line for line in result.stdout.splitlines() if line.startswith("  scaler")]
    assert len(scaler_lines) == 2
    assert all(line.endswith(": config_error, wanted -, active -, submitted 0; POOLS: not JSON")
               for line in scaler_lines), scaler_lines


def test_one_pools_failed_reading_stays_in_its_block(moto_server, deployed) -> None:
    outputs = {o["OutputKey"]: o["OutputValue"] for o in moto_server.client("cloudformation").describe_stacks(
        StackName=deployed["alarms"])["Stacks"][0]["Outputs"]}
    outputs["PoolGpuQueueUrl"] = outputs["PoolGpuQueueUrl"] + "-deleted"
    stack = _create_stack(moto_server, f"{deployed['alarms']}Gone", outputs)
    result = _run(_moto_env(moto_server), "--stack", stack)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2] == "  queue: 4 waiting, 1 in flight, 0 delayed; DLQ: 1"
    assert lines[6] == "  queue: unreadable"
    assert lines[9].startswith("  error: queues: sqs:GetQueueAttributes failed: ") and len(lines) == 10


def test_a_missing_stack_is_one_line(moto_server) -> None:
    result = _run(_moto_env(moto_server), "--stack", "NoSuchStack")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"status: stack NoSuchStack not found in region {moto_server.region}; deploy it (make deploy) "
        "or name yours with --stack NAME / --region REGION")


def test_a_stack_without_batch_celery_outputs_is_one_line(moto_server) -> None:
    stack = _create_stack(moto_server, f"Other{uuid.uuid4().hex[:6]}", {"Something": "else"})
    result = _run(_moto_env(moto_server), "--stack", stack)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == (
        f"status: stack {stack} in {moto_server.region} has no batch-celery outputs (no Routes output); "
        "is it a batch-celery stack, and has its deployment finished?")


def test_an_unreachable_endpoint_is_one_line_within_seconds(moto_server) -> None:
    env = {**_moto_env(moto_server), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    started = time.monotonic()
    result = _run(env, "--stack", "Any")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("status: AWS could not be read: Could not connect to the endpoint URL")
    assert len(result.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 15


def test_missing_credentials_are_one_line_without_any_network_call(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_REGION="eu-west-1",
               AWS_EC2_METADATA_DISABLED="true")
    started = time.monotonic()
    result = _run(env, "--stack", "Any")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == ("status: no AWS credentials found (configure a profile, set AWS_PROFILE, "
                                     "or use --local for the local run)")
    assert time.monotonic() - started < 10


def test_a_missing_region_is_one_line(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_EC2_METADATA_DISABLED="true")
    result = _run(env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == ("status: no AWS region: set AWS_REGION or AWS_DEFAULT_REGION "
                                     "(or a profile's region) or pass --region")


def test_rejects_unknown_arguments_in_one_line() -> None:
    result = _run(dict(os.environ), "--stacks", "x")
    assert result.returncode == 2 and result.stderr.startswith("status: unrecognized arguments: --stacks x")
    assert len(result.stderr.strip().splitlines()) == 1


def test_rejects_an_unknown_command_listing_the_commands() -> None:
    result = _run(dict(os.environ), command="stats")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("python -m batch_celery: unknown command 'stats'; commands: status: ")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def local_run(moto_server, tmp_path):
    """A run file as the demo writes it, for one pool whose queues are real on moto."""
    sqs = moto_server.client("sqs")
    queue = create_queue_pair(sqs, f"status-local-{uuid.uuid4().hex[:6]}")
    routes = routing.routes_document(default_pool="default", region=moto_server.region,
                                     pools={"default": routing.PoolRoute(queue.name, queue.url, ())})
    outputs = {"Routes": json.dumps(routes), "PoolDefaultQueueName": queue.name, "PoolDefaultQueueUrl": queue.url,
               "PoolDefaultDeadLetterQueueUrl": queue.dlq_url}
    path = tmp_path / ".demo" / "run.json"
    runfile.write(path, endpoint=moto_server.endpoint, region=moto_server.region, outputs=outputs,
                  workers={"default": {"RUNNING": 2, "SUCCEEDED": 1, "FAILED": 0}},
                  decisions={"default": {**DECISION, "pool": "default", "visible": 3, "wanted": 2,
                                         "active": 2, "submitted": 0, "time": time.time()}})
    return path, queue, outputs


def test_local_run_gives_live_queue_counts_and_the_demos_workers(moto_server, local_run) -> None:
    path, queue, _ = local_run
    sqs = moto_server.client("sqs")
    for index in range(3):
        sqs.send_message(QueueUrl=queue.url, MessageBody=str(index))
    report = status.local_status(path)
    assert report.source == f"local run on {moto_server.endpoint} (worker processes stand in for Batch jobs)"
    [pool] = report.pools
    assert (pool.visible, pool.in_flight, pool.dead_lettered, pool.jobs) == (
        3, 0, 0, {"RUNNING": 2, "SUCCEEDED": 1, "FAILED": 0})
    lines = status.render(report).splitlines()
    assert lines[1:4] == ["pool default", "  queue: 3 waiting, 0 in flight, 0 delayed; DLQ: 0",
                          "  worker jobs: RUNNING 2, SUCCEEDED 1, FAILED 0 (worker processes of this run)"]
    assert lines[4].endswith(" UTC: ok, wanted 2, active 2, submitted 0") and len(lines) == 5
    # Live: the next reading sees the queue as it is now.
    sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="poison")
    assert status.local_status(path).pools[0].dead_lettered == 1


def test_without_a_run_file_local_is_one_line(tmp_path) -> None:
    with pytest.raises(status.StatusError, match=r"^no local run: start one with `make demo`"):
        status.local_status(tmp_path / "none.json")


def test_a_run_whose_server_is_gone_is_one_line(local_run) -> None:
    path, _, outputs = local_run
    runfile.write(path, endpoint="http://127.0.0.1:9", region="us-east-1", outputs=outputs, workers={}, decisions={})
    started = time.monotonic()
    with pytest.raises(status.StatusError, match=r"^the local run at http://127.0.0.1:9 has ended"):
        status.local_status(path)
    assert time.monotonic() - started < 10


def test_a_damaged_run_file_is_one_line(tmp_path) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"endpoint": ')
    with pytest.raises(status.StatusError, match=r"^the run file .*run.json cannot be read \("):
        status.local_status(path)
    runfile.write(path, endpoint="http://127.0.0.1:9", region="us-east-1", outputs={}, workers={}, decisions={})
    with pytest.raises(status.StatusError, match=r"^no Routes output: the pools cannot be named$"):
        status.local_status(path)


def test_status_local_prints_the_run(moto_server, local_run, monkeypatch, capsys) -> None:
    """The command as an operator types it (on this test's run file, not the checkout's)."""
    path, _, _ = local_run
    monkeypatch.setattr(status, "RUN_FILE", path)
    assert status.main(["--local"]) == 0
    out, err = capsys.readouterr()
    assert (out.splitlines()[2], err) == ("  queue: 0 waiting, 0 in flight, 0 delayed; DLQ: 0", "")
    path.unlink()
    assert status.main(["--local"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"status: no local run: start one with `make demo` (it writes {path})\n")

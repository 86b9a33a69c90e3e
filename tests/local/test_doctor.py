"""`python -m batch_celery doctor`: the probe through a real worker of the real lifecycle script on
the local stand-in (queues from the synthesized template, the demo's scaler loop), the DLQ and
alarm-topic checks, and the deployed path against moto (a stack found by its outputs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
from botocore.exceptions import ClientError

from batch_celery import doctor
from batch_celery_local import REPO_ROOT
from batch_celery_local.demo import LocalRun, demo_overrides
from batch_celery_local.queues import create_queue_pair, create_result_table
from batch_celery_local.template import project_context, read_spec, synthesize
from batch_celery.settings import CONTEXT_KEY, Settings
from batch_celery_container import contract, routing
from harness.lifecycle import poll_until, running_script, worker_env


def _moto_env(moto_server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto_server.client_env())
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_celery", "doctor", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


# -- the local stand-in: what `make demo` starts ------------------------------------------------


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """The demo's two pools (cdk.json's and the GPU example with its own image), as synthesized."""
    context = project_context()
    overrides, _ = demo_overrides(context, second_pool=True)
    settings = Settings.from_context({**context, **overrides}.get(CONTEXT_KEY))
    return read_spec(synthesize(tmp_path_factory.mktemp("doctor-synth"), overrides), settings)


@pytest.fixture
def local_run(moto_server, spec, tmp_path):
    run = LocalRun(server=moto_server, spec=spec, work_dir=tmp_path, max_workers=dict.fromkeys(spec.pools, 1),
                   idle_seconds=2, poll_seconds=1, run_file=tmp_path / "run.json")
    run.write_run_file()
    try:
        yield run
    finally:
        run.stop(grace=15)


@contextmanager
def scaler_loop(run: LocalRun):
    """The demo's loop: the scaler's policy starts lifecycle-script workers for what waits."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            run.scale_once()
            run.write_run_file()
            stop.wait(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


@pytest.mark.slow
def test_local_probe_comes_back_from_a_real_worker_of_each_pool(local_run, capsys) -> None:
    with scaler_loop(local_run):
        code = doctor.main(["--local", "--run-file", str(local_run.run_file), "--timeout", "90"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("local run on http://127.0.0.1:"), out
    uid = os.getuid()
    for pool in ("default", "gpu"):
        [probe] = [line for line in lines if line.startswith(f"ok    probe {pool}: ")]
        assert re.search(rf"SUCCESS in \d+ s from a local worker process: uid {uid}, \S+ writable, root ", probe), probe
        assert f"ok    dlq {pool}: readable by arn:aws:sts::123456789012:user/moto; empty" in lines, out
    assert ("skip  alarm topic: the local run has no alarm topic (the demo creates no SNS topic: moto evaluates "
            "no alarms); on AWS this checks AlarmTopicArn's subscribers") in lines, out
    assert lines[-1] == "doctor: 5 of 5 checks passed or skipped" and code == 0, out + err
    assert "waiting up to 90 s for 2 probe(s); workers from the local run's scaler loop" in err
    # Each pool's own worker ran its probe: the gpu pool's with its image's task module loaded.
    # The doctor saw the stored result, which the worker writes before it logs the success, and
    # its log reaches the file line by line: the line comes, but not at one moment.
    succeeded = re.compile(rf"Task {re.escape(contract.PROBE_TASK)}\[[0-9a-f-]+\] succeeded")
    for pool in ("default", "gpu"):
        workers = local_run.pools[pool].workers
        assert workers, f"no worker was started for pool {pool}"
        poll_until(lambda: succeeded.search(workers[0].log_path.read_text()), timeout=30, interval=0.2)
        log = workers[0].log_path.read_text()
        assert succeeded.search(log), log[-2000:]
    # The gpu worker runs with its own image's task module, and still answers the probe.
    assert "'pool': 'gpu'" in log and "'task_modules': ['gpu_tasks']" in log, log[-2000:]


@pytest.mark.slow
def test_local_probe_without_a_worker_fails_with_the_fix(local_run, capsys) -> None:
    started = time.monotonic()
    code = doctor.main(["--local", "--run-file", str(local_run.run_file), "--timeout", "2"])
    out, _ = capsys.readouterr()
    assert code == 1 and time.monotonic() - started < 30, out
    [probe] = [line for line in out.splitlines() if line.startswith("FAIL  probe default: ")]
    assert probe == ("FAIL  probe default: no result within 2 s; seen: worker processes: RUNNING 0, SUCCEEDED 0, "
                     "FAILED 0; fix: no local worker took the probe: the local run starts workers only while "
                     "`make demo` runs (its scaler loop); start it, then run the doctor in another terminal")
    assert out.splitlines()[-1] == "doctor: 3 of 5 checks passed or skipped, 2 FAILED", out


def test_local_without_a_run_is_one_line(tmp_path, capsys) -> None:
    assert doctor.main(["--local", "--run-file", str(tmp_path / "none.json")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("doctor: no local run: start one with `make demo`")


# -- a deployed stack, on moto -----------------------------------------------------------------


def _create_stack(moto_server, name: str, outputs: dict[str, str]) -> str:
    template = {"Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()}}
    moto_server.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))
    return name


@pytest.fixture(scope="module")
def deployed(moto_server):
    """One pool as a deployed stack leaves it: queues, result table, a Batch job queue and worker
    job definition, an alarm topic; the outputs name them all."""
    tag = uuid.uuid4().hex[:6]
    queues = create_queue_pair(moto_server.client("sqs"), f"doctor-{tag}", visibility_timeout=30)
    table = create_result_table(moto_server.client("dynamodb"), f"doctor-{tag}-results")
    batch = moto_server.client("batch")
    role = moto_server.client("iam").create_role(RoleName=f"doctor-{tag}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(computeEnvironmentName=f"doctor-{tag}", type="UNMANAGED",
                                                   state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
    job_queue = batch.create_job_queue(jobQueueName=f"doctor-{tag}", state="ENABLED", priority=1,
                                       computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])
    definition = batch.register_job_definition(jobDefinitionName=f"doctor-{tag}-worker", type="container",
                                               containerProperties={"image": "worker", "vcpus": 1, "memory": 512})
    topic = moto_server.client("sns").create_topic(Name=f"doctor-{tag}-alarms")["TopicArn"]
    routes = routing.routes_document(default_pool="default", region=moto_server.region,
                                     pools={"default": routing.PoolRoute(queues.name, queues.url, ())})
    outputs = {"Routes": json.dumps(routes), "PoolDefaultQueueName": queues.name, "PoolDefaultQueueUrl": queues.url,
               "PoolDefaultDeadLetterQueueUrl": queues.dlq_url, "PoolDefaultJobQueueArn": job_queue["jobQueueArn"],
               "PoolDefaultJobDefinitionArn": definition["jobDefinitionArn"], "AlarmTopicArn": topic,
               routing.RESULT_TABLE_OUTPUT: table, "ScalerLogGroupName": f"/doctor/{tag}/scaler"}
    return {"outputs": outputs, "queues": queues, "table": table, "topic": topic, "tag": tag}


@pytest.mark.slow
def test_deployed_probe_comes_back_through_a_worker_and_is_held_to_the_job_definition(moto_server, deployed, tmp_path):
    stack = _create_stack(moto_server, f"Doctor{deployed['tag']}Ok", deployed["outputs"])
    moto_server.client("sns").subscribe(TopicArn=deployed["topic"], Protocol="email", Endpoint="ops@example.com")
    # The worker the scaler would start: the real lifecycle script on the pool's queue, results on.
    env = worker_env(moto_server, deployed["queues"], tmp_path, **{contract.RESULT_TABLE: deployed["table"],
                                                                   contract.POOL: "default"})
    (tmp_path / "worker").mkdir()
    with running_script(env, tmp_path / "worker.out") as worker:
        result = _run(_moto_env(moto_server), "--stack", stack, "--no-submit", "--timeout", "60")
        worker.signal(15)
        worker.wait(30)
    lines = result.stdout.splitlines()
    assert lines[0] == f"stack {stack} in {moto_server.region}", result.stdout + result.stderr
    # A local process is not the job definition's container: it may run as root with a writable
    # root, and the doctor says so on a deployed stack.
    probe = next(line for line in lines if " probe default: " in line)
    if os.getuid() == 0:
        assert probe.startswith("FAIL  probe default: SUCCESS from a local worker process, but the worker runs as "
                                "root; the root filesystem is writable"), probe
        assert "fix: the image must not override the job's user 10001:10001" in probe
    else:
        assert "the root filesystem is writable" in probe, probe
    assert "ok    dlq default: readable by arn:aws:sts::123456789012:user/moto; empty" in lines
    assert re.search(r"^ok    alarm topic: doctor-\w+-alarms has 1 confirmed subscriber\(s\): email ops@example.com$",
                     "\n".join(lines), re.MULTILINE), result.stdout
    assert "workers from the scaler" in result.stderr and result.returncode == 1


@pytest.mark.slow
def test_deployed_probe_whose_job_stores_no_result_fails_with_what_was_seen(moto_server, deployed):
    outputs = {**deployed["outputs"]}
    del outputs["ScalerLogGroupName"]  # alarms mode: the doctor submits the worker job itself
    stack = _create_stack(moto_server, f"Doctor{deployed['tag']}Alarms", outputs)
    moto_server.configure({"batch": {"use_docker": False}})  # moto ends the job SUCCEEDED, running nothing
    result = _run(_moto_env(moto_server), "--stack", stack, "--timeout", "4")
    lines = result.stdout.splitlines()
    assert lines[0] == f"stack {stack} in {moto_server.region} (alarms mode: no scaler)"
    probe = next(line for line in lines if " probe default: " in line)
    assert re.match(r"^FAIL  probe default: no result within 4 s; seen: job \w{8} \(the doctor's\) SUCCEEDED", probe), probe
    assert probe.endswith("fix: a worker ran but stored no result for the probe: read its log for batch_celery.probe "
                          "(it needs dynamodb:PutItem on the result table and the task queue's receive rights)"), probe
    assert "workers from one job per pool submitted by the doctor" in result.stderr
    jobs = moto_server.client("batch").list_jobs(jobQueue=outputs["PoolDefaultJobQueueArn"],
                                                 filters=[{"name": "JOB_NAME", "values": ["batch-celery-doctor-*"]}])
    assert [job["jobName"] for job in jobs["jobSummaryList"]] == ["batch-celery-doctor-default"]
    assert result.returncode == 1


def test_deployed_without_results_skips_the_probe_and_names_a_topic_without_subscribers(moto_server, deployed):
    outputs = {k: v for k, v in deployed["outputs"].items() if k != routing.RESULT_TABLE_OUTPUT}
    outputs["AlarmTopicArn"] = moto_server.client("sns").create_topic(Name=f"doctor-{deployed['tag']}-quiet")["TopicArn"]
    stack = _create_stack(moto_server, f"Doctor{deployed['tag']}NoResults", outputs)
    result = _run(_moto_env(moto_server), "--stack", stack, "--timeout", "5")
    lines = result.stdout.splitlines()
    assert lines[1].startswith("skip  probe default: this stack stores no results (results: false)"), result.stdout
    assert lines[3] == (f"FAIL  alarm topic: doctor-{deployed['tag']}-quiet has no subscriber: no alarm reaches "
                        f"anyone; fix: set alarm_email in cdk.json and deploy, or aws sns subscribe --topic-arn "
                        f"{outputs['AlarmTopicArn']} --protocol email --notification-endpoint you@example.com, "
                        "then confirm")
    assert lines[-1] == "doctor: 2 of 3 checks passed or skipped, 1 FAILED" and result.returncode == 1


def test_json_gives_the_same_checks(moto_server, deployed) -> None:
    outputs = {k: v for k, v in deployed["outputs"].items() if k != routing.RESULT_TABLE_OUTPUT}
    stack = _create_stack(moto_server, f"Doctor{deployed['tag']}Json", outputs)
    result = _run(_moto_env(moto_server), "--stack", stack, "--json")
    report = json.loads(result.stdout)
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("probe default", "skip"), ("dlq default", "ok"), ("alarm topic", report["checks"][2]["status"])]
    assert report["ok"] is (report["checks"][2]["status"] == "ok")


def test_a_pending_subscription_is_not_a_subscriber() -> None:
    check = doctor.topic_check("arn:aws:sns:eu-west-1:1:alarms", [
        {"SubscriptionArn": "PendingConfirmation", "Protocol": "email", "Endpoint": "ops@example.com"}])
    assert check.line() == ("FAIL  alarm topic: alarms's subscriptions await confirmation: email ops@example.com; "
                            "fix: open the confirmation message SNS sent and confirm (an email's link expires after "
                            "3 days; subscribe again if it did)")


@pytest.mark.parametrize(("code", "fix"), [
    ("AccessDenied", "name arn:aws:iam::1:role/ops in operator_role_arns (cdk.json) and deploy"),
    ("KmsAccessDenied", "let arn:aws:iam::1:role/ops use the queues' key: kms:Decrypt"),
    ("KMS.AccessDeniedException", "let arn:aws:iam::1:role/ops use the queues' key: kms:Decrypt"),
])
def test_a_dlq_the_caller_cannot_read_names_the_fix(code, fix) -> None:
    error = ClientError({"Error": {"Code": code, "Message": "denied"}}, "ReceiveMessage")
    assert doctor.dlq_fix(error, "arn:aws:iam::1:role/ops").startswith(fix)


def test_a_missing_stack_is_one_line(moto_server) -> None:
    result = _run(_moto_env(moto_server), "--stack", "NoSuchStack")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == (f"doctor: stack NoSuchStack not found in region {moto_server.region}; deploy it "
                                     "(make deploy) or name yours with --stack NAME / --region REGION")


def test_an_unreachable_endpoint_is_one_line_within_seconds(moto_server) -> None:
    started = time.monotonic()
    result = _run({**_moto_env(moto_server), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "--stack", "Any")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("doctor: AWS could not be read: Could not connect to the endpoint URL")
    assert len(result.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 20


def test_missing_credentials_are_one_line(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_REGION="eu-west-1",
               AWS_EC2_METADATA_DISABLED="true")
    result = _run(env, "--stack", "Any")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == ("doctor: no AWS credentials found (configure a profile, set AWS_PROFILE, "
                                     "or use --local for the local run)")


@pytest.mark.parametrize(("argv", "message"), [
    (["--timeout", "0"], "doctor: argument --timeout: 0 is out of range; allowed: 1..3600"),
    (["--local", "--stack", "X"], "doctor: --local checks the local run: it takes no --stack, --region or --submit"),
    (["--run-file", "x.json"], "doctor: --run-file goes with --local"),
])
def test_rejects_bad_arguments_in_one_line(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        doctor.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"{message} (see --help)\n"

"""The local run's machinery: a short run ends clean; an interrupted one leaves nothing behind.

These run the real demo as a subprocess (synth, moto server, filler, lifecycle scripts, workers),
exactly as `make demo` does, with a few trivial tasks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_celery.local import template
from batch_celery.local.demo import MARKER_VARIABLE, parse_args

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^demo: (\d+)/(\d+) tasks done by (\d+) workers in (\d+) s, (\d+) lost$")


def demo_processes() -> list[int]:
    """Every live process started by any local run (they all carry the marker variable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{MARKER_VARIABLE}=".encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def moto_servers_of(pid: int) -> list[int]:
    """moto server processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and b"moto.server" in cmdline and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def run_demo(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "batch_celery.local", "--plain", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(autouse=True)
def no_leftovers_before():
    assert demo_processes() == [], "a previous local run left processes behind"


def test_short_run_does_every_task_and_leaves_no_process():
    demo = run_demo("--tasks", "8", "--task", "trivial", "--max-workers", "2", "--idle-seconds", "2",
                    "--messages-per-worker", "4")
    output, _ = demo.communicate(timeout=240)
    last = output.strip().splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, output
    done, total, workers, _, lost = map(int, match.groups())
    assert (done, total, lost) == (8, 8, 0), output
    assert 1 <= workers <= 2, output
    assert demo.returncode == 0, output
    assert demo_processes() == []


def test_interrupted_run_stops_every_process_and_the_server():
    # Long tasks so the interrupt lands while workers are busy.
    demo = run_demo("--tasks", "40", "--task", "calculate_pi", "--max-workers", "2", "--idle-seconds", "30")
    started_workers = False
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        lines.append(line)
        if "workers running" in line and "started 0" not in line:
            started_workers = True
            break
    assert started_workers, "".join(lines)
    servers = moto_servers_of(demo.pid)
    assert servers, "the demo should be running its moto server"
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 1, output
    assert "interrupted" in output
    summary = SUMMARY.match(output.strip().splitlines()[-1])
    assert summary, output
    # Unfinished tasks are still in the queue (or were done): the summary counts none as lost.
    assert int(summary.group(5)) == 0, output
    assert demo_processes() == []
    for pid in servers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_queue_attributes_come_from_the_synthesized_stack(tmp_path):
    spec = template.read_spec(template.synthesize(tmp_path))
    # The stack's defaults (batch_celery/settings.py); the local queue is created with exactly these.
    # The visibility timeout is the crash window (300 s), shorter than a task may run (900 s): the
    # worker's heartbeat keeps what it holds invisible.
    assert (spec.queue.visibility_timeout, spec.worker_environment["TASK_TIME_LIMIT_SECONDS"]) == (300, "900")
    assert spec.worker_environment["STOP_GRACE_SECONDS"] == "20"
    assert spec.queue.max_receive_count >= 1
    assert spec.queue.dlq_retention_seconds > spec.queue.retention_seconds
    assert spec.worker_environment["VISIBILITY_TIMEOUT_SECONDS"] == str(spec.queue.visibility_timeout)
    assert {"IDLE_SECONDS", "POLL_SECONDS", "WORKER_CONCURRENCY"} <= set(spec.worker_environment)
    assert int(spec.scaler_environment["MESSAGES_PER_WORKER"]) >= 1


def test_the_local_run_uses_the_projects_cdk_context(tmp_path):
    # What a user sets in cdk.json reaches the local queue and workers as it reaches AWS.
    assert "@aws-cdk/aws-ec2:restrictDefaultSecurityGroup" in template.project_context()
    spec = template.read_spec(template.synthesize(
        tmp_path, {"batch-celery": {"max_receive_count": 7, "idle_seconds": 90, "messages_per_worker": 4}}))
    assert spec.queue.max_receive_count == 7
    assert spec.worker_environment["IDLE_SECONDS"] == "90"
    assert spec.scaler_environment["MESSAGES_PER_WORKER"] == "4"


def test_queues_created_locally_match_the_spec(moto_server, tmp_path):
    import boto3

    spec = template.QueueSpec(visibility_timeout=123, retention_seconds=3600, max_receive_count=4,
                              dlq_retention_seconds=7200, managed_sse=True)
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint, region_name=moto_server.region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    pair = template.create_queues(sqs, "spec-check", spec)
    attributes = sqs.get_queue_attributes(QueueUrl=pair.url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "123"
    assert attributes["MessageRetentionPeriod"] == "3600"
    assert '"maxReceiveCount": "4"' in attributes["RedrivePolicy"] or '"maxReceiveCount": 4' in attributes["RedrivePolicy"]
    dlq = sqs.get_queue_attributes(QueueUrl=pair.dlq_url, AttributeNames=["MessageRetentionPeriod"])["Attributes"]
    assert dlq["MessageRetentionPeriod"] == "7200"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "0"], "--tasks: 0 is out of range; allowed: 1..10000"),
        (["--max-workers", "lots"], "--max-workers: 'lots' is not a whole number; allowed: 1..16"),
        (["--task", "sleep"], "--task: invalid choice: 'sleep'"),
    ],
)
def test_rejects_bad_arguments_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1

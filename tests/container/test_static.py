"""Lint of the script and the Dockerfile; the settings, the queue reader and the external-program task."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_celery import CONTAINER_DIR as CONTAINER
from harness.lifecycle import environment, worker_env

BIN = Path(sys.executable).parent

sys.path.insert(0, str(CONTAINER))
from worker_settings import ConfigError, WorkerSettings  # noqa: E402

BASE_ENV = {
    "CELERY_QUEUE_NAME": "jobs",
    "CELERY_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def test_script_is_shellcheck_clean():
    result = subprocess.run([str(BIN / "shellcheck"), "run_celery_worker.sh"], cwd=CONTAINER, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=CONTAINER, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_pins_base_and_runs_as_non_root():
    text = (CONTAINER / "Dockerfile").read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert base.split()[1].startswith("python:3.11.") and "-slim-" in base
    assert "USER 10001" in text
    assert 'CMD ["batch-celery-worker"]' in text
    # The worker goes in as the package an own image installs: requirements first, then the folder.
    assert "RUN pip install --no-deps --no-compile /opt/batch-celery-worker" in text
    assert text.index("-r requirements.txt") < text.index("--no-deps")


def test_broker_speaks_to_real_sqs_with_default_credentials():
    settings = WorkerSettings.from_env(BASE_ENV)
    config = settings.celery_config()
    assert config["broker_url"] == "sqs://"  # no keys: boto3's chain (the Batch job role)
    assert config["broker_transport_options"]["is_secure"] is True
    assert config["broker_transport_options"]["predefined_queues"] == {"jobs": {"url": BASE_ENV["CELERY_QUEUE_URL"]}}
    # The visibility timeout is the crash-recovery window; held messages are extended every third.
    assert config["broker_transport_options"]["visibility_timeout"] == 300
    assert config["broker_transport_options"]["heartbeat_seconds"] == 100
    assert (config["task_time_limit"], config["task_soft_time_limit"]) == (10800, 10740)  # 3 h, a minute below
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["task_acks_on_failure"] is False and config["task_acks_on_timeout"] is False


def test_task_may_run_longer_than_the_visibility_timeout():
    # Before the heartbeat a 4-hour task needed a 4-hour visibility timeout (and a 4-hour wait after a crash).
    settings = WorkerSettings.from_env({**BASE_ENV, "TASK_TIME_LIMIT_SECONDS": str(4 * 3600)})
    assert (settings.task_time_limit_seconds, settings.visibility_timeout_seconds) == (14400, 300)


def test_broker_speaks_to_local_endpoint():
    settings = WorkerSettings.from_env({**BASE_ENV, "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:5000"})
    assert settings.broker_url == "sqs://127.0.0.1:5000//"
    assert settings.celery_config()["broker_transport_options"]["is_secure"] is False


def test_ships_prefetch_one_and_dead_letter_safe_consumer():
    config = WorkerSettings.from_env(BASE_ENV).celery_config()
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_consumer"] == "dead_letter_consumer:Consumer"
    # A failed task is back after 30 s x its receive count, never later than the visibility timeout.
    assert config["broker_transport_options"]["failed_task_retry_seconds"] == 30
    short = WorkerSettings.from_env({**BASE_ENV, "VISIBILITY_TIMEOUT_SECONDS": "6", "TASK_TIME_LIMIT_SECONDS": "5"})
    assert short.celery_config()["broker_transport_options"]["failed_task_retry_seconds"] == 6
    tuned = WorkerSettings.from_env({**BASE_ENV, "WORKER_PREFETCH_MULTIPLIER": "4"})
    assert tuned.celery_config()["worker_prefetch_multiplier"] == 4


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"CELERY_QUEUE_NAME": ""}, "CELERY_QUEUE_NAME is not set"),
        ({"CELERY_QUEUE_URL": "jobs"}, "is not a queue URL"),
        ({"CELERY_QUEUE_NAME": "other"}, "does not end with CELERY_QUEUE_NAME='other'"),
        ({"AWS_DEFAULT_REGION": ""}, "AWS_REGION or AWS_DEFAULT_REGION must be set"),
        ({"WORKER_CONCURRENCY": "65"}, "WORKER_CONCURRENCY=65 is out of range; allowed: 1..64"),
        ({"WORKER_PREFETCH_MULTIPLIER": "0"}, "WORKER_PREFETCH_MULTIPLIER=0 is out of range; allowed: 1..100"),
        ({"TASK_TIME_LIMIT_SECONDS": "43000"}, "TASK_TIME_LIMIT_SECONDS=43000 is not allowed; allowed: 1..42900 seconds"),
        ({"VISIBILITY_TIMEOUT_SECONDS": "lots"}, "is not a whole number"),
        ({"VISIBILITY_TIMEOUT_SECONDS": "5"}, "VISIBILITY_TIMEOUT_SECONDS=5 is not allowed; allowed: 6..43200"),
        ({"HEARTBEAT_SECONDS": "200"}, "HEARTBEAT_SECONDS=200 is not allowed; allowed: 1..150 seconds"),
        ({"STOP_GRACE_SECONDS": "30"}, "STOP_GRACE_SECONDS=30 is not allowed; allowed: 1..25 seconds"),
        ({"AWS_ENDPOINT_URL_SQS": "localhost:4566"}, "is not an endpoint"),
    ],
)
def test_rejects_bad_settings(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        WorkerSettings.from_env({**BASE_ENV, **overrides})


def test_queue_depth_reports_failure_in_one_line(moto_server, make_queues, tmp_path):
    from batch_celery_local.motoserver import free_port

    env = worker_env(moto_server, make_queues(), tmp_path, endpoint=f"http://127.0.0.1:{free_port()}")
    result = subprocess.run([sys.executable, "queue_depth.py", "--total"], cwd=CONTAINER, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("queue_depth: cannot read ") and len(result.stderr.strip().splitlines()) == 1


def test_queue_depth_counts_visible_in_flight_and_delayed(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=60)
    for _ in range(3):
        sqs.send_message(QueueUrl=queues.url, MessageBody="x")
    sqs.send_message(QueueUrl=queues.url, MessageBody="later", DelaySeconds=60)
    sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=1)
    env = worker_env(moto_server, queues, tmp_path)
    result = subprocess.run([sys.executable, "queue_depth.py"], cwd=CONTAINER, env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["2", "1", "1"], result.stderr


def test_external_program_task_uses_the_remaining_cpus(moto_server, make_queues, tmp_path):
    with environment(worker_env(moto_server, make_queues(visibility_timeout=60), tmp_path)):
        sys.modules.pop("celery_app", None)
        import celery_app

        threads = celery_app.threads_for_external_program()
        digest = celery_app.parallel_digest.apply(kwargs={"megabytes": 2, "rounds": 2}).get()
        sys.modules.pop("celery_app", None)
    assert 1 <= threads <= celery_app.available_cpus()
    lanes = []
    for lane in range(threads):
        block = hashlib.sha256(f"lane-{lane}".encode()).digest() * (1 << 15)
        state = b""
        for _ in range(2):
            hasher = hashlib.sha256(state)
            for _ in range(2):
                hasher.update(block)
            state = hasher.digest()
        lanes.append(state)
    assert digest == hashlib.sha256(b"".join(lanes)).hexdigest()


def test_held_count_unknown_without_a_fresh_state_file(tmp_path):
    # The lifecycle script takes "unknown" for "not idle": it must get a failure, not a 0.
    env = {"WORKER_RUN_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    missing = subprocess.run([sys.executable, "held_messages.py", "held"], cwd=CONTAINER, env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and "no fresh held.json" in missing.stderr

    (tmp_path / "held.json").write_text('{"written": 0, "held": []}')  # written long ago
    stale = subprocess.run([sys.executable, "held_messages.py", "held"], cwd=CONTAINER, env=env, capture_output=True, text=True)
    assert stale.returncode == 1

    (tmp_path / "held.json").write_text(json.dumps({"written": time.time(), "held": [{"receipt_handle": "r", "queue_url": "u"}]}))
    fresh = subprocess.run([sys.executable, "held_messages.py", "held"], cwd=CONTAINER, env=env, capture_output=True, text=True)
    assert (fresh.returncode, fresh.stdout.strip()) == (0, "1")


def test_script_default_task_limit_is_the_workers():
    # A local run without the job's environment: the script's stop timeout and deadline must
    # count with the same task limit the worker applies (limits.py writes it once).
    import limits

    script = (CONTAINER / "run_celery_worker.sh").read_text()
    assert f'TASK_LIMIT_SECONDS="${{TASK_TIME_LIMIT_SECONDS:-{limits.DEFAULT_TASK_TIME_LIMIT_SECONDS}}}"' in script


def test_script_exit_statuses_the_stack_acts_on_are_the_contracts():
    import contract

    script = (CONTAINER / "run_celery_worker.sh").read_text()
    assert f"readonly EXIT_JOB_DEADLINE={contract.EXIT_JOB_DEADLINE}\n" in script

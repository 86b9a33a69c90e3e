"""Settings: documented defaults, and one clear line for every invalid value."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError
from batch_celery_container import limits

from .conftest import REPO


def test_defaults_are_a_small_cheap_deployment() -> None:
    s = Settings()
    assert (s.max_azs, s.nat_gateways, s.platform, s.max_vcpus, s.spot) == (2, 1, "linux/amd64", 48, False)
    assert (s.worker_vcpus, s.worker_memory_mib, s.task_time_limit_seconds, s.visibility_timeout_seconds) == (
        1, 2048, 900, 300)
    assert (s.low_threshold, s.high_threshold, s.high_array_size, s.age_alarm_seconds) == (5, 50, 10, 300)
    assert (s.scaling_mode, s.scaler_poll_seconds, s.messages_per_worker, s.max_workers) == ("scaler", 10, 10, 48)
    assert s.stop_grace_seconds == 20


def test_worker_rules_come_from_the_shared_limits_module() -> None:
    # The worker checks the same values with the same module; a default restated here would drift.
    s = Settings()
    assert s.visibility_timeout_seconds == limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    assert s.stop_grace_seconds == limits.DEFAULT_STOP_GRACE_SECONDS


def test_task_time_limit_may_exceed_the_visibility_timeout() -> None:
    # The heartbeat keeps a running task's message invisible: a 4-hour task with a 5-minute window.
    s = Settings(task_time_limit_seconds=4 * 3600, visibility_timeout_seconds=300, job_timeout_seconds=5 * 3600)
    assert (s.task_time_limit_seconds, s.visibility_timeout_seconds) == (14400, 300)


def test_task_time_limit_may_reach_12_hours_minus_the_window() -> None:
    s = Settings(task_time_limit_seconds=43200 - 300, job_timeout_seconds=43200)
    assert s.task_time_limit_seconds == 42900


def test_max_workers_defaults_to_the_compute_environments_capacity() -> None:
    assert Settings(worker_vcpus=0.25, worker_memory_mib=1024).max_workers == 192
    assert Settings(worker_vcpus=4, worker_memory_mib=8192, max_vcpus=50).max_workers == 12


def test_committed_cdk_json_block_is_valid() -> None:
    block = json.loads((REPO / "cdk.json").read_text())["context"][CONTEXT_KEY]
    Settings.from_context(block)


def test_context_block_may_be_a_json_string_from_the_command_line() -> None:
    assert Settings.from_context('{"spot": true}').spot is True


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().spot = True  # type: ignore[misc]


INVALID = [
    ({"low_threshold": 0}, "batch-celery.low_threshold = 0: must be >= 1"),
    ({"high_threshold": -5}, "batch-celery.high_threshold = -5: must be >= 1"),
    ({"low_threshold": 50}, "batch-celery.low_threshold = 50: must be below high_threshold (50)"),
    ({"high_array_size": 1}, "batch-celery.high_array_size = 1: must be 2..10000"),
    ({"high_array_size": 10001}, "batch-celery.high_array_size = 10001: must be 2..10000"),
    ({"worker_vcpus": 3}, "batch-celery.worker_vcpus = 3: must be a Fargate vCPU value: 0.25, 0.5, 1, 2, 4, 8, 16"),
    ({"worker_memory_mib": 1000},
     "batch-celery.worker_memory_mib = 1000: not a Fargate memory size for 1 vCPU; allowed: 2048-8192 in steps of 1024"),
    ({"worker_vcpus": 0.25, "worker_memory_mib": 4096},
     "batch-celery.worker_memory_mib = 4096: not a Fargate memory size for 0.25 vCPU; allowed: 512, 1024, 2048"),
    ({"visibility_timeout_seconds": 5},
     "batch-celery.visibility_timeout_seconds = 5: allowed: 6..43200 seconds (it is the window in which a crashed"
     " worker's task returns to the queue; default 300)"),
    ({"visibility_timeout_seconds": 50000},
     "batch-celery.visibility_timeout_seconds = 50000: allowed: 6..43200 seconds (it is the window in which a"
     " crashed worker's task returns to the queue; default 300)"),
    ({"visibility_timeout_seconds": "300"}, 'batch-celery.visibility_timeout_seconds = "300": must be a whole number'),
    ({"task_time_limit_seconds": 42901, "job_timeout_seconds": 43200},
     "batch-celery.task_time_limit_seconds = 42901: allowed: 1..42900 seconds (SQS keeps a received message for at"
     " most 12 h = 43200 s, minus one visibility timeout of 300 s)"),
    ({"task_time_limit_seconds": 40000, "visibility_timeout_seconds": 3600, "job_timeout_seconds": 43200},
     "batch-celery.task_time_limit_seconds = 40000: allowed: 1..39600 seconds (SQS keeps a received message for at"
     " most 12 h = 43200 s, minus one visibility timeout of 3600 s)"),
    ({"task_time_limit_seconds": 0},
     "batch-celery.task_time_limit_seconds = 0: allowed: 1..42900 seconds (SQS keeps a received message for at"
     " most 12 h = 43200 s, minus one visibility timeout of 300 s)"),
    ({"task_time_limit_seconds": 4 * 3600},
     "batch-celery.job_timeout_seconds = 14400: must be >= task_time_limit_seconds (14400) + idle_seconds (60)"
     " + 60 s start-up = 14520"),
    ({"stop_grace_seconds": 0},
     "batch-celery.stop_grace_seconds = 0: allowed: 1..25 seconds (Batch kills a job 30 s after SIGTERM; 5 s are"
     " kept to release the task's message)"),
    ({"stop_grace_seconds": 26},
     "batch-celery.stop_grace_seconds = 26: allowed: 1..25 seconds (Batch kills a job 30 s after SIGTERM; 5 s are"
     " kept to release the task's message)"),
    ({"stop_grace_seconds": 2.5}, "batch-celery.stop_grace_seconds = 2.5: must be a whole number"),
    ({"scaling_mode": "lambda"},
     'batch-celery.scaling_mode = "lambda": must be "scaler" (the Lambda decides; alarms only run it) or "alarms"'
     " (no Lambda; the alarm rules submit workers themselves)"),
    ({"scaling_mode": True},
     'batch-celery.scaling_mode = true: must be "scaler" (the Lambda decides; alarms only run it) or "alarms"'
     " (no Lambda; the alarm rules submit workers themselves)"),
    ({"scaler_poll_seconds": 4}, "batch-celery.scaler_poll_seconds = 4: must be 5..60"),
    ({"scaler_poll_seconds": 61}, "batch-celery.scaler_poll_seconds = 61: must be 5..60"),
    ({"scaler_poll_seconds": "10"}, 'batch-celery.scaler_poll_seconds = "10": must be a whole number, 5..60'),
    ({"scaler_enabled": False},
     'batch-celery.scaler_enabled = false: replaced by scaling_mode: "scaler" (the default: the Lambda scaler'
     ' decides) or "alarms" (no Lambda: the alarm rules submit workers themselves); remove scaler_enabled'),
    ({"job_timeout_seconds": 900},
     "batch-celery.job_timeout_seconds = 900: must be >= task_time_limit_seconds (900) + idle_seconds (60)"
     " + 60 s start-up = 1020"),
    ({"poll_seconds": 120}, "batch-celery.poll_seconds = 120: must be 1..60"),
    ({"spot": "yes"}, 'batch-celery.spot = "yes": must be true or false (JSON booleans, not strings)'),
    ({"platform": "linux/386"}, 'batch-celery.platform = "linux/386": must be one of linux/amd64, linux/arm64'),
    ({"max_azs": 3}, "batch-celery.max_azs = 3: must be 1..2"),
    ({"nat_gateways": 0}, "batch-celery.nat_gateways = 0: must be 1..2"),
    ({"max_vcpus": 2.5}, "batch-celery.max_vcpus = 2.5: must be a whole number, >= 1"),
    ({"max_workers": 0},
     "batch-celery.max_workers = 0: must be a whole number 1..48 (max_vcpus 48 // worker_vcpus 1: more workers"
     " than the compute environment runs would only queue)"),
    ({"max_workers": 49},
     "batch-celery.max_workers = 49: must be a whole number 1..48 (max_vcpus 48 // worker_vcpus 1: more workers"
     " than the compute environment runs would only queue)"),
    ({"messages_per_worker": 0}, "batch-celery.messages_per_worker = 0: must be >= 1"),
    ({"age_alarm_seconds": 30}, "batch-celery.age_alarm_seconds = 30: must be 60..86400"),
    ({"age_alarm_seconds": 86401}, "batch-celery.age_alarm_seconds = 86401: must be 60..86400"),
    ({"message_retention_days": 14}, "batch-celery.message_retention_days = 14: must be 1..13"),
    ({"max_receive_count": 0}, "batch-celery.max_receive_count = 0: must be 1..1000"),
    ({"job_attempts": 11}, "batch-celery.job_attempts = 11: must be 1..10"),
    ({"log_retention_days": 10},
     "batch-celery.log_retention_days = 10: must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400,"
     " 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653"),
    ({"worker_concurrency": 0}, "batch-celery.worker_concurrency = 0: must be 1..64"),
    ({"idle_seconds": True}, "batch-celery.idle_seconds = true: must be a whole number, >= 1"),
]


@pytest.mark.parametrize("block, message", INVALID, ids=[next(iter(b)) + "=" + json.dumps(b[next(iter(b))]) for b, _ in INVALID])
def test_rejects_invalid_value(block: dict, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_context(block)
    assert str(raised.value) == message
    assert "\n" not in str(raised.value)


def test_rejects_unknown_keys() -> None:
    with pytest.raises(SettingsError, match=r"^batch-celery\.max_cpus: unknown setting; allowed: age_alarm_seconds, "):
        Settings.from_context({"max_cpus": 4})


def test_rejects_a_block_that_is_not_an_object() -> None:
    with pytest.raises(SettingsError, match=r'^batch-celery = \[1\]: must be a JSON object of settings$'):
        Settings.from_context([1])


def test_app_prints_one_error_line_and_exits_2() -> None:
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps({CONTEXT_KEY: {"low_threshold": 0}})}
    result = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and "!!" not in line]
    assert lines == ["error: batch-celery.low_threshold = 0: must be >= 1"]

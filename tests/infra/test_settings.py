"""Settings: documented defaults, and one clear line for every invalid value."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError

from .conftest import REPO


def test_defaults_are_a_small_cheap_deployment() -> None:
    s = Settings()
    assert (s.max_azs, s.nat_gateways, s.platform, s.max_vcpus, s.spot) == (2, 1, "linux/amd64", 48, False)
    assert (s.worker_vcpus, s.worker_memory_mib, s.task_time_limit_seconds, s.visibility_timeout_seconds) == (
        1, 2048, 900, 1800)
    assert (s.low_threshold, s.high_threshold, s.high_array_size, s.age_alarm_seconds) == (5, 50, 10, 300)
    assert (s.scaler_enabled, s.messages_per_worker, s.max_workers) == (True, 10, 48)


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
    ({"visibility_timeout_seconds": 600},
     "batch-celery.visibility_timeout_seconds = 600: must be >= task_time_limit_seconds (900) + 60 s headroom = 960,"
     " or a running task is delivered twice"),
    ({"visibility_timeout_seconds": 930},
     "batch-celery.visibility_timeout_seconds = 930: must be >= task_time_limit_seconds (900) + 60 s headroom = 960,"
     " or a running task is delivered twice"),
    ({"visibility_timeout_seconds": 50000}, "batch-celery.visibility_timeout_seconds = 50000: must be 0..43200"),
    ({"job_timeout_seconds": 900},
     "batch-celery.job_timeout_seconds = 900: must be >= task_time_limit_seconds (900) + idle_seconds (60)"
     " + 60 s start-up = 1020"),
    ({"poll_seconds": 120}, "batch-celery.poll_seconds = 120: must be 1..60"),
    ({"spot": "yes"}, 'batch-celery.spot = "yes": must be true or false (JSON booleans, not strings)'),
    ({"scaler_enabled": 1}, "batch-celery.scaler_enabled = 1: must be true or false (JSON booleans, not strings)"),
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
    ({"age_alarm_seconds": 30}, "batch-celery.age_alarm_seconds = 30: must be >= 60"),
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

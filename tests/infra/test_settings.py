"""Settings and props: documented defaults, and one clear line for every invalid value."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch_celery.props import MAX_POOLS, CeleryBatchWorkersProps, PoolProps, SettingsError
from batch_celery.settings import CONTEXT_KEY, Settings
from batch_celery_container import limits

from .conftest import REPO

P = "batch-celery.pools"
FARGATE_VCPUS = "must be a Fargate vCPU value: 0.25, 0.5, 1, 2, 4, 8, 16"
INSTANCE_TYPE_TEXT = "is not an instance type or family (e.g. g5.xlarge, c7g)"
TASK_PATTERN = ("allowed: a task name or a glob with '*' (e.g. 'gpu.*', 'video.encode') of 1..200 characters, each a"
                " letter, digit, '_', '.', '-', ':' or '*'")
POOL_NAME = ("not a pool name: allowed: lowercase letters, digits and dashes, starting with a letter, not ending with"
             " a dash, at most 32 characters (e.g. 'gpu', 'video-encode')")
GRACE = "allowed: 1..25 seconds (Batch kills a job 30 s after SIGTERM; 5 s are kept to release the task's message)"
VISIBILITY = ("allowed: 6..43200 seconds (it is the window in which a crashed worker's task returns to the queue;"
              " default 300)")
MOVED = 'moved into a pool: "pools": {{"default": {{"{}": ...}}}}'


def test_defaults_are_a_small_cheap_deployment() -> None:
    s = Settings()
    assert (s.stack_name, s.vpc_id) == ("BatchCelery", None)
    d = s.props
    assert (d.max_azs, d.nat_gateways, d.vpc, d.log_retention_days) == (2, 1, None, 30)
    assert (d.scaling_mode, d.scaler_poll_seconds, d.default_pool) == ("scaler", 10, "default")
    assert dict(d.pools) == {"default": PoolProps()}
    p = PoolProps()
    assert (p.compute, p.platform, p.vcpus, p.memory_mib, p.gpus, p.instance_types, p.image) == (
        "fargate", "linux/amd64", 1, 2048, 0, (), None)
    assert (p.max_workers, p.max_vcpus, p.concurrency, p.tasks) == (48, 48, 1, ())
    assert (p.task_time_limit_seconds, p.visibility_timeout_seconds, p.stop_grace_seconds) == (3 * 3600, 300, 20)
    assert (p.idle_seconds, p.poll_seconds, p.job_timeout_seconds, p.job_attempts) == (60, 10, 8 * 3600, 3)
    assert (p.message_retention_days, p.max_receive_count) == (4, 3)
    assert (p.low_threshold, p.high_threshold, p.high_array_size, p.age_alarm_seconds, p.messages_per_worker) == (
        5, 50, 10, 300, None)
    assert p.target_wait_seconds == 90


def test_worker_rules_come_from_the_shared_limits_module() -> None:
    # The worker checks the same values with the same module; a default restated here would drift.
    p = PoolProps()
    assert p.visibility_timeout_seconds == limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    assert p.stop_grace_seconds == limits.DEFAULT_STOP_GRACE_SECONDS
    assert p.task_time_limit_seconds == limits.DEFAULT_TASK_TIME_LIMIT_SECONDS
    assert p.job_timeout_seconds == limits.DEFAULT_JOB_TIMEOUT_SECONDS


def test_a_two_hour_task_runs_on_the_defaults_with_room() -> None:
    p = PoolProps()
    # Celery's soft limit (the task's own stop) is 59 minutes past a 2-hour task.
    assert limits.soft_time_limit(p.task_time_limit_seconds) - 2 * 3600 == 59 * 60
    # A worker takes tasks for about 5 h of its 8 h job: a 2-hour task taken at the last moment
    # still ends (hard limit) before Batch's timeout, and a job serves at least two such tasks.
    window = limits.take_window_seconds(p.job_timeout_seconds, p.task_time_limit_seconds, p.stop_grace_seconds)
    assert window == 8 * 3600 - 3 * 3600 - 20 - 40
    assert window >= 2 * 2 * 3600


def test_job_timeout_rule_is_the_one_the_worker_checks() -> None:
    # Synth refuses exactly what the lifecycle script (limits.py take-window) refuses.
    shortest = limits.min_job_timeout(3600, 20, 60)
    assert PoolProps(task_time_limit_seconds=3600, job_timeout_seconds=shortest).job_timeout_seconds == shortest
    assert limits.job_timeout_problem(shortest, 3600, 20, 60) is None
    assert limits.job_timeout_problem(shortest - 1, 3600, 20, 60) is not None
    with pytest.raises(SettingsError, match="job_timeout_seconds"):
        PoolProps(task_time_limit_seconds=3600, job_timeout_seconds=shortest - 1)


def test_task_time_limit_may_exceed_the_visibility_timeout() -> None:
    # The heartbeat keeps a running task's message invisible: a 4-hour task with a 5-minute window.
    p = PoolProps(task_time_limit_seconds=4 * 3600, visibility_timeout_seconds=300, job_timeout_seconds=5 * 3600)
    assert (p.task_time_limit_seconds, p.visibility_timeout_seconds) == (14400, 300)


def test_task_time_limit_may_reach_12_hours_minus_the_window() -> None:
    assert PoolProps(task_time_limit_seconds=43200 - 300, job_timeout_seconds=43200).task_time_limit_seconds == 42900


def test_compute_environment_gets_max_workers_whole_workers() -> None:
    assert PoolProps(vcpus=0.25, memory_mib=1024, max_workers=10).max_vcpus == 3
    assert PoolProps(compute="ec2_spot", gpus=1, vcpus=4, memory_mib=15000, max_workers=4).max_vcpus == 16


@pytest.mark.parametrize("pool, types", [
    (PoolProps(compute="ec2"), ("optimal",)),
    (PoolProps(compute="ec2", platform="linux/arm64"), ("c7g", "m7g", "r7g")),
    (PoolProps(compute="ec2_spot", gpus=1), ("g5", "g6")),
    (PoolProps(compute="ec2_spot", gpus=1, platform="linux/arm64"), ("g5g",)),
    (PoolProps(compute="ec2", instance_types=["m7i.large", "c7i"]), ("m7i.large", "c7i")),
])
def test_ec2_instance_types_default_by_platform_and_gpus(pool: PoolProps, types: tuple) -> None:
    assert pool.effective_instance_types == types


def test_committed_cdk_json_block_is_valid() -> None:
    block = json.loads((REPO / "cdk.json").read_text())["context"][CONTEXT_KEY]
    Settings.from_context(block)


def test_context_block_may_be_a_json_string_from_the_command_line() -> None:
    s = Settings.from_context('{"pools": {"default": {"compute": "fargate_spot"}}}')
    assert s.props.pools["default"].spot is True


def test_first_pool_is_the_default_pool_and_lists_become_tuples() -> None:
    s = Settings.from_context({"pools": {"gpu": {"compute": "ec2", "gpus": 1, "tasks": ["gpu.*"]}, "default": {}}})
    assert s.props.default_pool == "gpu"
    assert list(s.props.pools) == ["gpu", "default"]
    assert s.props.pools["gpu"].tasks == ("gpu.*",)


def test_settings_and_props_are_frozen() -> None:
    s = Settings.from_context({"pools": {"default": {}}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.stack_name = "Other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.props.pools["default"].vcpus = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.props.pools["other"] = PoolProps()  # type: ignore[index]


def test_stack_name_and_vpc_id_are_read() -> None:
    s = Settings.from_context({"stack_name": "BatchCelery-Staging", "vpc_id": "vpc-0123456789abcdef0"})
    assert (s.stack_name, s.vpc_id) == ("BatchCelery-Staging", "vpc-0123456789abcdef0")


INVALID = [
    # --- pools and their names
    # A misspelt key gets the closest one and where the full list is, not every key.
    ({"pools": {"default": {"cpus": 2}}},
     f'{P}.default.cpus = 2: unknown pool setting; did you mean "vcpus"? (every pool key is in'
     " docs/configuration.md#pools)"),
    ({"pools": {"default": {"max_worker": 2}}},
     f'{P}.default.max_worker = 2: unknown pool setting; did you mean "max_workers"? (every pool key is in'
     " docs/configuration.md#pools)"),
    ({"pools": {"default": {"qwerty": 1}}},
     f"{P}.default.qwerty = 1: unknown pool setting (every pool key is in docs/configuration.md#pools)"),
    ({"alarm_mail": "ops@example.com"},
     'batch-celery.alarm_mail = "ops@example.com": unknown setting; did you mean "alarm_email"? (every key is in'
     " docs/configuration.md)"),
    ({"max_worker": 4},
     'batch-celery.max_worker = 4: unknown setting; "max_workers" is a pool setting:'
     ' "pools": {"default": {"max_workers": ...}} (every key is in docs/configuration.md)'),
    ({"qwerty": 1}, "batch-celery.qwerty = 1: unknown setting (every key is in docs/configuration.md)"),
    ({"pools": {"default": {"runnable_timeout_seconds": 300}}},
     f"{P}.default.runnable_timeout_seconds = 300: must be 600..86400"),
    ({"alarm_email": "ops"}, 'batch-celery.alarm_email = "ops": must be null or one e-mail address, e.g. ops@example.com'),
    ({"results": "yes"}, 'batch-celery.results = "yes": must be true (store task results in DynamoDB) or false'),
    ({"result_expires_days": 0}, "batch-celery.result_expires_days = 0: allowed: 1..365 days (results are deleted that long after the task ended; default 7)"),
    ({"result_expires_days": 400}, "batch-celery.result_expires_days = 400: allowed: 1..365 days (results are deleted that long after the task ended; default 7)"),
    ({"pools": {"GPU": {}}}, f'{P}.GPU = "GPU": {POOL_NAME}'),
    ({"pools": {"gpu-": {}}}, f'{P}.gpu- = "gpu-": {POOL_NAME}'),
    ({"pools": {}}, f"{P} = {{}}: must be an object of pool name -> pool settings, at least one"),
    ({"pools": {"gpu": []}}, f"{P}.gpu = []: must be an object of pool settings ({{}} for the defaults)"),
    ({"pools": {"a-1b": {}, "a1b": {}}},
     f'{P}.a1b = "a1b": reads the same as pool \'a-1b\' in output names (A1b); rename one'),
    # --- compute
    ({"pools": {"gpu": {"compute": "ecs"}}},
     f'{P}.gpu.compute = "ecs": must be one of "fargate", "fargate_spot", "ec2", "ec2_spot", "lambda"'),
    ({"pools": {"arm": {"compute": "fargate_spot", "platform": "linux/arm64"}}},
     f'{P}.arm.compute = "fargate_spot": Fargate Spot runs no linux/arm64 tasks; use "fargate" or "ec2_spot"'),
    ({"pools": {"arm": {"platform": "linux/386"}}},
     f'{P}.arm.platform = "linux/386": must be one of "linux/amd64", "linux/arm64"'),
    ({"pools": {"gpu": {"gpus": 1}}}, f'{P}.gpu.gpus = 1: Fargate has no GPUs; set compute to "ec2" or "ec2_spot"'),
    ({"pools": {"gpu": {"compute": "ec2", "gpus": 9}}}, f"{P}.gpu.gpus = 9: must be 0..8"),
    ({"pools": {"gpu": {"instance_types": ["g5"]}}},
     f'{P}.gpu.instance_types = ["g5"]: only EC2 pools choose instance types; set compute to "ec2" or "ec2_spot"'),
    ({"pools": {"big": {"compute": "ec2", "instance_types": ["c7g"]}}},
     f"{P}.big.instance_types = [\"c7g\"]: 'c7g' is linux/arm64, the pool's platform is linux/amd64"),
    ({"pools": {"gpu": {"compute": "ec2", "gpus": 1, "platform": "linux/arm64", "instance_types": ["g5"]}}},
     f"{P}.gpu.instance_types = [\"g5\"]: 'g5' is linux/amd64, the pool's platform is linux/arm64"),
    ({"pools": {"gpu": {"compute": "ec2_spot", "gpus": 1, "instance_types": ["g5.xlarge", "c5.large"]}}},
     f"{P}.gpu.instance_types = [\"g5.xlarge\", \"c5.large\"]: 'c5.large' has no GPU and the pool asks for 1; "
     "use GPU types (g4dn, g5, g5g, g6, p4d, p5, ...)"),
    ({"pools": {"gpu": {"compute": "ec2", "instance_types": ["G5.xlarge"]}}},
     f"{P}.gpu.instance_types = [\"G5.xlarge\"]: 'G5.xlarge' {INSTANCE_TYPE_TEXT}"),
    ({"pools": {"gpu": {"compute": "ec2", "instance_types": "g5"}}},
     f'{P}.gpu.instance_types = "g5": must be a list of instance types or families, e.g. ["c7g.xlarge", "m7g"]'),
    ({"pools": {"default": {"vcpus": 3}}}, f"{P}.default.vcpus = 3: {FARGATE_VCPUS}"),
    # A value of the wrong JSON type says which type it got: "2" reads like 2 in cdk.json.
    ({"pools": {"default": {"vcpus": True}}},
     f"{P}.default.vcpus = true: must be a number, got the boolean true; allowed on Fargate: 0.25, 0.5, 1, 2, 4, 8, 16"),
    ({"pools": {"default": {"vcpus": "2"}}},
     f'{P}.default.vcpus = "2": must be a number, got the string "2"; allowed on Fargate: 0.25, 0.5, 1, 2, 4, 8, 16'),
    ({"pools": {"gpu": {"compute": "ec2", "vcpus": "2"}}},
     f'{P}.gpu.vcpus = "2": must be a whole number, got the string "2"; allowed: 1..192'),
    ({"pools": {"default": {"vcpus": 2, "memory_mib": 2048}}},
     f"{P}.default.memory_mib = 2048: not a Fargate memory size for 2 vCPU; allowed: 4096-16384 in steps of 1024"),
    ({"pools": {"default": {"vcpus": 0.25, "memory_mib": 4096}}},
     f"{P}.default.memory_mib = 4096: not a Fargate memory size for 0.25 vCPU; allowed: 512, 1024, 2048"),
    ({"pools": {"gpu": {"compute": "ec2", "vcpus": 0}}}, f"{P}.gpu.vcpus = 0: must be 1..192"),
    ({"pools": {"gpu": {"compute": "ec2", "vcpus": 193}}}, f"{P}.gpu.vcpus = 193: must be 1..192"),
    ({"pools": {"gpu": {"compute": "ec2", "vcpus": 0.5}}}, f"{P}.gpu.vcpus = 0.5: must be a whole number, 1..192"),
    ({"pools": {"gpu": {"compute": "ec2", "memory_mib": 256}}}, f"{P}.gpu.memory_mib = 256: must be 512..2097152"),
    ({"pools": {"default": {"max_workers": 0}}}, f"{P}.default.max_workers = 0: must be 1..10000"),
    ({"pools": {"default": {"image": "examples"}}},
     f'{P}.default.image = "examples": no Dockerfile in {REPO / "examples"}; give a directory holding one'),
    ({"pools": {"default": {"image": ""}}},
     f'{P}.default.image = "": must be null (the bundled container) or a directory holding a Dockerfile'),
    # --- worker
    ({"pools": {"default": {"concurrency": 65}}}, f"{P}.default.concurrency = 65: must be 1..64"),
    ({"pools": {"default": {"concurrency": 0}}}, f"{P}.default.concurrency = 0: must be 1..64"),
    ({"pools": {"default": {"visibility_timeout_seconds": 5}}},
     f"{P}.default.visibility_timeout_seconds = 5: {VISIBILITY}"),
    ({"pools": {"default": {"visibility_timeout_seconds": 50000}}},
     f"{P}.default.visibility_timeout_seconds = 50000: {VISIBILITY}"),
    ({"pools": {"default": {"visibility_timeout_seconds": "300"}}},
     f'{P}.default.visibility_timeout_seconds = "300": must be a whole number, got the string "300"'),
    ({"pools": {"default": {"task_time_limit_seconds": 42901, "job_timeout_seconds": 43200}}},
     f"{P}.default.task_time_limit_seconds = 42901: allowed: 1..42900 seconds (SQS keeps a received message for at"
     " most 12 h = 43200 s, minus one visibility timeout of 300 s)"),
    ({"pools": {"default": {"task_time_limit_seconds": 40000, "visibility_timeout_seconds": 3600,
                            "job_timeout_seconds": 43200}}},
     f"{P}.default.task_time_limit_seconds = 40000: allowed: 1..39600 seconds (SQS keeps a received message for at"
     " most 12 h = 43200 s, minus one visibility timeout of 3600 s)"),
    ({"pools": {"default": {"task_time_limit_seconds": 0}}},
     f"{P}.default.task_time_limit_seconds = 0: allowed: 1..42900 seconds (SQS keeps a received message for at"
     " most 12 h = 43200 s, minus one visibility timeout of 300 s)"),
    ({"pools": {"default": {"task_time_limit_seconds": 4 * 3600, "job_timeout_seconds": 4 * 3600}}},
     f"{P}.default.job_timeout_seconds = 14400: must be >= 14520: the task time limit (14400 s) + the stop grace"
     " (20 s) + 40 s to start and stop + the idle window (60 s), so that a worker can take tasks for at least its"
     " idle window and finish each before the job timeout (keys: job_timeout_seconds, task_time_limit_seconds,"
     " stop_grace_seconds, idle_seconds)"),
    ({"pools": {"default": {"job_timeout_seconds": 3 * 3600}}},
     f"{P}.default.job_timeout_seconds = 10800: must be >= 10920: the task time limit (10800 s) + the stop grace"
     " (20 s) + 40 s to start and stop + the idle window (60 s), so that a worker can take tasks for at least its"
     " idle window and finish each before the job timeout (keys: job_timeout_seconds, task_time_limit_seconds,"
     " stop_grace_seconds, idle_seconds)"),
    ({"pools": {"default": {"stop_grace_seconds": 26}}}, f"{P}.default.stop_grace_seconds = 26: {GRACE}"),
    ({"pools": {"default": {"stop_grace_seconds": 0}}}, f"{P}.default.stop_grace_seconds = 0: {GRACE}"),
    ({"pools": {"default": {"stop_grace_seconds": 2.5}}},
     f"{P}.default.stop_grace_seconds = 2.5: must be a whole number"),
    ({"pools": {"default": {"poll_seconds": 120}}}, f"{P}.default.poll_seconds = 120: must be 1..60"),
    ({"pools": {"default": {"idle_seconds": True}}},
     f"{P}.default.idle_seconds = true: must be a whole number, got the boolean true; allowed: >= 1"),
    ({"pools": {"default": {"job_attempts": 11}}}, f"{P}.default.job_attempts = 11: must be 1..10"),
    # --- task queue and routing
    ({"pools": {"default": {}, "gpu": {"compute": "ec2", "gpus": 1, "tasks": ["gpu.*"]},
                "big": {"compute": "ec2", "tasks": ["gpu.*"]}}},
     f'{P}.big.tasks = "gpu.*": already routed to pool \'gpu\'; a task goes to one pool'),
    ({"pools": {"gpu": {"tasks": ["gpu.*", "gpu.*"]}}},
     f'{P}.gpu.tasks = "gpu.*": listed twice in this pool; a task goes to one pool'),
    ({"pools": {"gpu": {"tasks": ["gpu jobs"]}}}, f"{P}.gpu.tasks = [\"gpu jobs\"]: 'gpu jobs': {TASK_PATTERN}"),
    ({"pools": {"gpu": {"tasks": "gpu.*"}}},
     f'{P}.gpu.tasks = "gpu.*": must be a list of task names or globs, e.g. ["gpu.*", "video.encode"]'),
    ({"pools": {"default": {"message_retention_days": 14}}},
     f"{P}.default.message_retention_days = 14: must be 1..13"),
    ({"pools": {"default": {"max_receive_count": 0}}}, f"{P}.default.max_receive_count = 0: must be 1..1000"),
    # --- scaling
    ({"pools": {"default": {"low_threshold": 0}}}, f"{P}.default.low_threshold = 0: must be >= 1"),
    ({"pools": {"default": {"high_threshold": -5}}}, f"{P}.default.high_threshold = -5: must be >= 1"),
    ({"pools": {"default": {"low_threshold": 50}}},
     f"{P}.default.low_threshold = 50: must be below high_threshold (50)"),
    ({"pools": {"default": {"high_array_size": 1}}}, f"{P}.default.high_array_size = 1: must be 2..10000"),
    ({"pools": {"default": {"messages_per_worker": 0}}}, f"{P}.default.messages_per_worker = 0: must be >= 1"),
    ({"pools": {"default": {"target_wait_seconds": 5}}}, f"{P}.default.target_wait_seconds = 5: must be 10..86400"),
    ({"pools": {"default": {"min_workers": 49}}}, f"{P}.default.min_workers = 49: must be 0..48"),
    ({"pools": {"default": {"min_workers_hours": "08:00-18:00"}}},
     f'{P}.default.min_workers_hours = "08:00-18:00": keeps min_workers warm; set min_workers >= 1 too'),
    ({"pools": {"default": {"min_workers": 1, "min_workers_hours": "mon-fri 18:00-08:00"}}},
     f'{P}.default.min_workers_hours = "mon-fri 18:00-08:00": the window must start before it ends within one '
     'day (18:00-08:00); "[DAYS ]HH:MM-HH:MM[ UTC|+HH:MM|-HH:MM]", e.g. "mon-fri 08:00-18:00 +01:00"'),
    ({"pools": {"default": {"min_workers": 1, "min_workers_hours": "mon-fri 08:00-18:00 Berlin"}}},
     f"{P}.default.min_workers_hours = \"mon-fri 08:00-18:00 Berlin\": 'Berlin' is not UTC or an offset from it "
     "(-12:00 to +14:00); time zone names such as Europe/Berlin are not taken: the scaler's runtime may have no "
     "zone database"),
    ({"scaling_mode": "alarms", "pools": {"default": {"min_workers": 1}}},
     f'{P}.default.min_workers = 1: keeps warm workers through the scaler; with scaling_mode "alarms" there is '
     "none: set it to 0 or use the scaler"),
    ({"pools": {"default": {"age_alarm_seconds": 30}}}, f"{P}.default.age_alarm_seconds = 30: must be 60..86400"),
    ({"pools": {"default": {"age_alarm_seconds": 86401}}},
     f"{P}.default.age_alarm_seconds = 86401: must be 60..86400"),
    # --- keys that have a new place: the line says where
    ({"worker_vcpus": 2}, "batch-celery.worker_vcpus = 2: " + MOVED.format("vcpus")),
    ({"worker_memory_mib": 4096}, "batch-celery.worker_memory_mib = 4096: " + MOVED.format("memory_mib")),
    ({"worker_concurrency": 2}, "batch-celery.worker_concurrency = 2: " + MOVED.format("concurrency")),
    ({"platform": "linux/arm64"}, 'batch-celery.platform = "linux/arm64": ' + MOVED.format("platform")),
    ({"task_time_limit_seconds": 60},
     "batch-celery.task_time_limit_seconds = 60: " + MOVED.format("task_time_limit_seconds")),
    ({"spot": True},
     'batch-celery.spot = true: replaced by a pool\'s compute: "pools": {"default": {"compute": "fargate_spot"}}'),
    ({"max_vcpus": 16},
     "batch-celery.max_vcpus = 16: replaced by a pool's max_workers (its compute gets max_workers x vcpus):"
     ' "pools": {"default": {"max_workers": 48}}'),
    ({"scaler_enabled": False},
     'batch-celery.scaler_enabled = false: replaced by scaling_mode: "scaler" (the default: the Lambda scaler'
     ' decides) or "alarms" (no Lambda: the alarm rules submit workers themselves); remove scaler_enabled'),
    # --- deployment
    ({"stack_name": "1BatchCelery"},
     'batch-celery.stack_name = "1BatchCelery": must be a CloudFormation stack name: a letter, then letters,'
     " digits and hyphens (<= 128)"),
    ({"stack_name": "batch_celery"},
     'batch-celery.stack_name = "batch_celery": must be a CloudFormation stack name: a letter, then letters,'
     " digits and hyphens (<= 128)"),
    ({"vpc_id": "vpc-123"},
     'batch-celery.vpc_id = "vpc-123": must be null (a new VPC) or a VPC id such as vpc-0123456789abcdef0'),
    ({"vpc_id": "vpc-0123456789abcdef0", "max_azs": 1},
     "batch-celery.max_azs = 1: shapes a new VPC only; remove it when vpc_id is set"),
    ({"vpc_id": "vpc-0123456789abcdef0", "nat_gateways": 1},
     "batch-celery.nat_gateways = 1: shapes a new VPC only; remove it when vpc_id is set"),
    ({"max_azs": 3}, "batch-celery.max_azs = 3: must be 1..2"),
    ({"nat_gateways": 0}, "batch-celery.nat_gateways = 0: must be 1..2"),
    ({"log_retention_days": 10},
     "batch-celery.log_retention_days = 10: must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400,"
     " 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653"),
    ({"scaling_mode": "lambda"},
     'batch-celery.scaling_mode = "lambda": must be "scaler" (the Lambda decides; alarms only run it) or "alarms"'
     " (no Lambda; the alarm rules submit workers themselves)"),
    ({"scaler_poll_seconds": 4}, "batch-celery.scaler_poll_seconds = 4: must be 5..60"),
    ({"scaler_poll_seconds": "10"},
     'batch-celery.scaler_poll_seconds = "10": must be a whole number, got the string "10"; allowed: 5..60'),
]


def _case_id(block: dict) -> str:
    text = json.dumps(block, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


@pytest.mark.parametrize("block, message", INVALID, ids=[_case_id(b) for b, _ in INVALID])
def test_rejects_invalid_value(block: dict, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pool's image directory is relative to cdk.json's folder, where the CDK CLI runs app.py.
    monkeypatch.chdir(REPO)
    with pytest.raises(SettingsError) as raised:
        Settings.from_context(block)
    assert str(raised.value) == message
    assert "\n" not in str(raised.value)


def test_rejects_more_pools_than_one_scaler_serves() -> None:
    pools = {f"p{i}": {} for i in range(MAX_POOLS + 1)}
    with pytest.raises(SettingsError, match=rf"^batch-celery\.pools = \[.*\]: at most {MAX_POOLS} pools "):
        Settings.from_context({"pools": pools})
    Settings.from_context({"pools": {f"p{i}": {} for i in range(MAX_POOLS)}})


def test_rejects_unknown_keys_naming_the_closest_one_not_all() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_context({"nat_gateway": 1})
    assert str(raised.value) == ('batch-celery.nat_gateway = 1: unknown setting; did you mean "nat_gateways"?'
                                 " (every key is in docs/configuration.md)")
    # The reference it points to exists and lists the key it suggests.
    assert "| `nat_gateways` |" in (REPO / "docs" / "configuration.md").read_text()


def test_rejects_a_block_that_is_not_an_object() -> None:
    with pytest.raises(SettingsError, match=r'^batch-celery = \[1\]: must be a JSON object of settings$'):
        Settings.from_context([1])


def test_props_built_in_code_fail_with_the_same_line_without_the_context_prefix() -> None:
    # A CDK app that embeds the construct builds the props itself and gets the same one line.
    with pytest.raises(SettingsError) as raised:
        PoolProps(vcpus=3)
    assert str(raised.value) == f"vcpus = 3: {FARGATE_VCPUS}"
    with pytest.raises(SettingsError) as raised:
        CeleryBatchWorkersProps(pools={"a": PoolProps(tasks=("x.*",)), "b": PoolProps(tasks=("x.*",))})
    assert str(raised.value) == 'pools.b.tasks = "x.*": already routed to pool \'a\'; a task goes to one pool'
    with pytest.raises(SettingsError) as raised:
        CeleryBatchWorkersProps(pools={"gpu": {"gpus": 1}})  # type: ignore[dict-item]
    assert str(raised.value) == "pools.gpu = {'gpus': 1}: must be a PoolProps"


# --- app.py: one line and exit 2 --------------------------------------------------------------

def _run_app(tmp_path: Path, block: dict) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env.update(CDK_CONTEXT_JSON=json.dumps({CONTEXT_KEY: block}), CDK_OUTDIR=str(tmp_path / "cdk.out"))
    return subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("block, line", [
    ({"pools": {"gpu": {"compute": "ec2", "instance_types": ["c7g"]}}},
     f"error: {P}.gpu.instance_types = [\"c7g\"]: 'c7g' is linux/arm64, the pool's platform is linux/amd64"),
    ({"vpc_id": "vpc-0123456789abcdef0"},
     'error: batch-celery.vpc_id = "vpc-0123456789abcdef0": CDK looks the VPC up at synth: run cdk with AWS'
     " credentials and a region (CDK_DEFAULT_ACCOUNT and CDK_DEFAULT_REGION are unset)"),
], ids=["bad-pool-setting", "vpc_id-without-account-and-region"])
def test_app_prints_one_error_line_and_exits_2(tmp_path: Path, block: dict, line: str) -> None:
    result = _run_app(tmp_path, block)
    assert result.returncode == 2
    lines = [text for text in result.stderr.splitlines() if text.strip() and "!!" not in text]
    assert lines == [line]


def _table_rows(text: str) -> dict[str, str]:
    return {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")}


def _defaults() -> dict[str, object]:
    from dataclasses import fields

    from batch_celery.props import CeleryBatchWorkersProps, PoolProps

    return {f.name: f.default for props in (PoolProps, CeleryBatchWorkersProps) for f in fields(props)
            if isinstance(f.default, int) and not isinstance(f.default, bool)}


def test_the_configuration_reference_lists_every_key_with_its_default() -> None:
    # docs/configuration.md is where users look keys up: a key missing there does not exist for them.
    from dataclasses import fields

    from batch_celery.props import CeleryBatchWorkersProps, PoolProps
    from batch_celery.settings import DEPLOYMENT_KEYS, STACK_KEYS

    reference = (REPO / "docs" / "configuration.md").read_text()
    pools_table = reference[reference.index("### Pools"):reference.index("### Deployment settings")]
    deployment_table = reference[reference.index("### Deployment settings"):reference.index("### Schedules")]
    rows = _table_rows(pools_table)
    assert set(rows) == set(PoolProps.keys())
    for f in fields(PoolProps):
        if isinstance(f.default, int) and not isinstance(f.default, bool):
            assert f"| {f.default} |" in rows[f.name], f"{f.name}: the reference's default is not {f.default}"
    listed = set(_table_rows(deployment_table))
    assert listed == {"pools", "schedules", *STACK_KEYS, *DEPLOYMENT_KEYS}
    assert {f.name for f in fields(CeleryBatchWorkersProps)} - {"vpc"} <= listed
    from batch_celery.props import ScheduleProps

    assert set(_table_rows(reference[reference.index("### Schedules"):])) == set(ScheduleProps.keys())


def test_the_readmes_settings_are_keys_with_their_defaults() -> None:
    # The README shows the settings most changed: each is a real key, with its real default.
    from dataclasses import fields

    from batch_celery.props import CeleryBatchWorkersProps, PoolProps

    readme = (REPO / "README.md").read_text()
    rows = _table_rows(readme[readme.index("## Configuration"):readme.index("## What it costs")])
    keys = {f.name for props in (PoolProps, CeleryBatchWorkersProps) for f in fields(props)}
    assert 8 <= len(rows) <= 12 and set(rows) <= keys, sorted(set(rows) - keys)
    for name, row in rows.items():
        if name in _defaults():
            assert f"| {_defaults()[name]} |" in row, f"{name}: the README's default is not {_defaults()[name]}"

"""The worker's environment contract: whatever pool settings synth accepts, the worker starts with.

The CDK side builds each pool's job environment with ``contract.worker_environment`` from the
pool's props (batch_celery/pool.py); the worker reads it with worker_settings.py and the lifecycle
script. These tests feed the edges of every rule both sides check through that one function and
start the real worker code on it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest

from batch_celery import CONTAINER_DIR
from batch_celery.pool import worker_environment
from batch_celery.props import PoolProps, SettingsError
from batch_celery_container import contract, limits
from harness.lifecycle import running_script, worker_env

SCRIPT_TEXT = (CONTAINER_DIR / "run_celery_worker.sh").read_text()
SETTINGS_TEXT = (CONTAINER_DIR / "worker_settings.py").read_text()

# Pools at the edges of what props.py (synth) accepts; each must give a worker environment the
# worker accepts as it is.
EDGE_POOLS = {
    "defaults": PoolProps(),
    "shortest-window": PoolProps(visibility_timeout_seconds=limits.MIN_VISIBILITY_TIMEOUT_SECONDS,
                                 task_time_limit_seconds=1, idle_seconds=1, poll_seconds=1),
    "longest-task": PoolProps(task_time_limit_seconds=limits.max_task_time_limit(300),
                              job_timeout_seconds=limits.max_task_time_limit(300) + 60 + 60),
    "longest-window": PoolProps(visibility_timeout_seconds=limits.SQS_MAX_HOLD_SECONDS - 1,
                                task_time_limit_seconds=1),
    "most-processes": PoolProps(concurrency=limits.MAX_CONCURRENCY, stop_grace_seconds=limits.MAX_STOP_GRACE_SECONDS),
    "least-grace": PoolProps(stop_grace_seconds=1, idle_seconds=600, poll_seconds=600),
    "gpu": PoolProps(compute="ec2_spot", gpus=8, vcpus=192, memory_mib=2_097_152, platform="linux/amd64"),
}


def _environment(name: str, pool: PoolProps) -> dict[str, str]:
    # The very function the stack builds each pool's job environment with.
    return worker_environment(name, pool, queue_name="pool-queue", region="eu-west-1",
                              queue_url="https://sqs.eu-west-1.amazonaws.com/123456789012/pool-queue")


def test_every_contract_variable_is_read_by_the_worker_or_its_script() -> None:
    constants = {value: name for name, value in vars(contract).items() if name.isupper() and isinstance(value, str)}
    for variable in contract.WORKER_VARIABLES + contract.FEATURE_VARIABLES:
        in_script = re.search(rf"\$\{{?{variable}\b", SCRIPT_TEXT)
        in_settings = f"contract.{constants[variable]}" in SETTINGS_TEXT
        assert in_script or in_settings, f"{variable} is set by the stack but read by nobody"
    # worker_settings.py reads the contract's names through the constants, never as literals.
    for variable in contract.WORKER_VARIABLES + contract.FEATURE_VARIABLES:
        assert f'"{variable}"' not in SETTINGS_TEXT, variable


def test_the_environment_holds_exactly_the_contract() -> None:
    env = _environment("default", PoolProps())
    assert tuple(env) == contract.WORKER_VARIABLES
    assert contract.missing(env) == []
    assert contract.missing({**env, contract.POOL: " "}) == [contract.POOL]
    # Metrics and results add their variables only when they are on.
    featured = worker_environment("default", PoolProps(), queue_name="q", region="eu-west-1",
                                  queue_url="https://sqs.eu-west-1.amazonaws.com/123456789012/q",
                                  metrics_namespace="BatchCelery/S", result_table="results-1", result_expires_days=3)
    assert set(featured) == set(contract.WORKER_VARIABLES + contract.FEATURE_VARIABLES)
    assert (featured[contract.RESULT_TABLE], featured[contract.RESULT_EXPIRES_DAYS]) == ("results-1", "3")


@pytest.mark.parametrize("days", [1, limits.MAX_RESULT_EXPIRES_DAYS])
def test_result_expiry_synth_accepts_the_worker_accepts(days: int) -> None:
    from batch_celery.props import CeleryBatchWorkersProps

    CeleryBatchWorkersProps(result_expires_days=days)
    env = {"PATH": "/usr/bin:/bin", **_environment("p", PoolProps()), contract.RESULT_TABLE: "results-1",
           contract.RESULT_EXPIRES_DAYS: str(days)}
    result = subprocess.run([sys.executable, "worker_settings.py"], cwd=CONTAINER_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"results in DynamoDB table results-1 for {days} days" in result.stdout


@pytest.mark.parametrize("variable, value, expected", [
    (contract.RESULT_EXPIRES_DAYS, str(limits.MAX_RESULT_EXPIRES_DAYS + 1), "allowed: 1..365 days"),
    (contract.RESULT_EXPIRES_DAYS, "0", "allowed: 1..365 days"),
    (contract.RESULT_TABLE, "a b", "allowed: a DynamoDB table name"),
])
def test_bad_result_settings_are_one_line_in_the_worker_and_at_synth(variable: str, value: str, expected: str) -> None:
    from batch_celery.props import CeleryBatchWorkersProps

    env = {"PATH": "/usr/bin:/bin", **_environment("p", PoolProps()), contract.RESULT_TABLE: "results-1",
           variable: value}
    result = subprocess.run([sys.executable, "worker_settings.py"], cwd=CONTAINER_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert variable in result.stderr and expected in result.stderr
    if variable == contract.RESULT_EXPIRES_DAYS:
        with pytest.raises(SettingsError, match=expected):
            CeleryBatchWorkersProps(result_expires_days=int(value))


@pytest.mark.parametrize("name", sorted(EDGE_POOLS))
def test_every_pool_synth_accepts_passes_the_workers_own_check(name: str) -> None:
    env = {"PATH": "/usr/bin:/bin", **_environment(name, EDGE_POOLS[name])}
    result = subprocess.run([sys.executable, "worker_settings.py"], cwd=CONTAINER_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.startswith(f"pool {name}, queue pool-queue in eu-west-1")


@pytest.mark.parametrize("change", [
    {"visibility_timeout_seconds": limits.MIN_VISIBILITY_TIMEOUT_SECONDS - 1},
    {"task_time_limit_seconds": limits.max_task_time_limit(300) + 1},
    {"concurrency": limits.MAX_CONCURRENCY + 1},
    {"stop_grace_seconds": limits.MAX_STOP_GRACE_SECONDS + 1},
])
def test_what_the_worker_refuses_synth_refuses_too(change: dict) -> None:
    # The same values the worker exits 2 on (one line) fail synth first: the rules are one.
    key, value = next(iter(change.items()))
    with pytest.raises(SettingsError) as caught:
        replace(PoolProps(), **change)
    assert caught.value.key == key
    env = {"PATH": "/usr/bin:/bin", **_environment("p", PoolProps())}
    variable = {"visibility_timeout_seconds": contract.VISIBILITY_TIMEOUT_SECONDS,
                "task_time_limit_seconds": contract.TASK_TIME_LIMIT_SECONDS,
                "concurrency": contract.CONCURRENCY,
                "stop_grace_seconds": contract.STOP_GRACE_SECONDS}[key]
    env[variable] = str(value)
    result = subprocess.run([sys.executable, "worker_settings.py"], cwd=CONTAINER_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert variable in result.stderr


@pytest.mark.slow
def test_a_real_worker_starts_on_a_pools_environment_and_leaves_when_idle(moto_server, make_queues, tmp_path) -> None:
    # The shortest window synth allows, two processes and the least grace: the script starts the
    # worker, finds it idle and stops it cleanly (exit 0).
    pool = replace(EDGE_POOLS["shortest-window"], concurrency=2, stop_grace_seconds=1, idle_seconds=2)
    queues = make_queues(visibility_timeout=pool.visibility_timeout_seconds)
    env = worker_env(moto_server, queues, tmp_path)
    pool_env = _environment("edge", pool)
    # The queue is the local one; everything else exactly as the stack sets it.
    for variable in (contract.QUEUE_NAME, contract.QUEUE_URL, contract.REGION):
        pool_env.pop(variable)
    env.update(pool_env)
    with running_script(env, tmp_path / "out.log") as run:
        status = run.wait(timeout=90)
    assert status == 0, run.output[-3000:]
    assert "pool edge" in run.output

"""examples/gpu-pool: its Dockerfile lints clean, and its task runs (on the CPU here) in a real worker
of the gpu pool, which leaves the other pool's tasks alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batch_celery import CONTAINER_DIR
from batch_celery_local import REPO_ROOT
from batch_celery_local.queues import message_counts, total_messages
from harness.lifecycle import environment, fill, running_script, wait_until, worker_env

EXAMPLE = REPO_ROOT / "examples" / "gpu-pool"
BIN = Path(sys.executable).parent


def _expected_checksum(n: int, seed: int) -> float:
    """The CPU path's result, computed here independently of the task."""
    rng = np.random.default_rng(seed)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    return round(float((a @ b).sum(dtype=np.float64)), 3)


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=EXAMPLE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_takes_the_worker_in_one_step_and_runs_as_non_root():
    text = (EXAMPLE / "Dockerfile").read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert re.fullmatch(r"FROM nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", base)
    worker_steps = [line for line in text.splitlines() if "--no-deps" in line and line.startswith("RUN")]
    assert worker_steps == ["RUN pip install --no-deps --no-compile /opt/batch-celery"]
    assert "run_celery_worker.sh" not in text
    assert "-r /opt/batch-celery/requirements.txt" in text  # the worker's own pins
    assert "ENV CELERY_TASK_MODULES=gpu_tasks" in text
    assert "USER 10001" in text and text.rstrip().endswith('CMD ["batch-celery-worker"]')


def test_requirements_are_pinned():
    lines = [line for line in (EXAMPLE / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", line) for line in lines), lines


@pytest.fixture
def gpu_tasks(moto_server, make_queues, tmp_path):
    """The example's task module as the worker imports it (its app configured from a worker's env)."""
    sys.path[:0] = [str(CONTAINER_DIR), str(EXAMPLE)]
    try:
        with environment(worker_env(moto_server, make_queues(), tmp_path, CELERY_TASK_MODULES="gpu_tasks")):
            sys.modules.pop("celery_app", None)
            import gpu_tasks

            yield gpu_tasks
    finally:
        sys.modules.pop("gpu_tasks", None)
        sys.modules.pop("celery_app", None)
        sys.path.remove(str(CONTAINER_DIR))
        sys.path.remove(str(EXAMPLE))


def test_task_runs_on_the_cpu_without_a_gpu(gpu_tasks):
    assert gpu_tasks.matmul.name == "gpu.matmul"
    result = gpu_tasks.matmul(n=48, seed=7)
    assert (result["n"], result["device"], result["checksum"]) == (48, "cpu (numpy)", _expected_checksum(48, 7))
    assert json.loads(json.dumps(result)) == result  # JSON-serialisable, as the worker's settings demand


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"n": 0}, "n=0 is not allowed; allowed: a whole number 1..16384"),
        ({"n": 16385}, "n=16385 is not allowed; allowed: a whole number 1..16384"),
        ({"n": "64"}, "n='64' is not allowed; allowed: a whole number 1..16384"),
        ({"n": True}, "n=True is not allowed"),
        ({"n": 8, "seed": -1}, "seed=-1 is not allowed; allowed: a whole number >= 0"),
    ],
)
def test_task_rejects_bad_input(gpu_tasks, kwargs, expected):
    with pytest.raises(ValueError) as error:
        gpu_tasks.matmul(**kwargs)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


@pytest.mark.slow
def test_gpu_pool_worker_runs_its_tasks_and_leaves_other_pools_alone(moto_server, sqs, make_queues, tmp_path):
    default, gpu = make_queues(visibility_timeout=30), make_queues(visibility_timeout=30)
    routes = json.dumps({
        "default_pool": "default",
        "region": moto_server.region,
        "pools": {
            "default": {"queue_name": default.name, "queue_url": default.url, "tasks": []},
            "gpu": {"queue_name": gpu.name, "queue_url": gpu.url, "tasks": ["gpu.*"]},
        },
    })
    # The filler job as the stack runs it: both pools' tasks, each to its pool's queue.
    filler_env = worker_env(moto_server, default, tmp_path, CELERY_ROUTES=routes)
    fill(filler_env, 2, "gpu.matmul", kwargs={"n": 32, "seed": 3})
    fill(filler_env, 1, "batch.calculate_pi", args=[1000])

    # The gpu pool's worker job, with the example's task module where the image puts it.
    env = worker_env(moto_server, gpu, tmp_path, WORKER_POOL="gpu", CELERY_TASK_MODULES="gpu_tasks",
                     PYTHONPATH=f"{REPO_ROOT}:{EXAMPLE}")
    with running_script(env, tmp_path / "gpu.log") as run:
        wait_until(lambda: total_messages(sqs, gpu.url) == 0, timeout=120, what="the gpu queue to drain")
        status = run.wait(timeout=60)
    output = run.output
    assert status == 0, output[-3000:]
    assert f"pool gpu, queue {gpu.name}" in output
    expected = f"'device': 'cpu (numpy)', 'checksum': {_expected_checksum(32, 3)}"
    done = re.findall(r"Task gpu\.matmul\[[0-9a-f-]+\] succeeded in [0-9.]+s: \{'n': 32, (.*?), 'seconds'", output)
    assert done == [expected, expected], output[-3000:]
    # The default pool's task is still waiting there, never received by the gpu worker.
    assert message_counts(sqs, default.url) == (1, 0, 0)
    message = sqs.receive_message(QueueUrl=default.url, AttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"

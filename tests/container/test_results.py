"""Results and per-task metrics with a real worker on moto server: DynamoDB via Celery's backend,
the filler's ``--wait``, an application's ``AsyncResult.get()``, and one EMF line per task run."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter

import pytest
from celery import Celery

from batch_celery import CONTAINER_DIR
from batch_celery_local.queues import create_result_table
from batch_celery_container import contract, limits
from harness.lifecycle import environment, fill, running_script, wait_until, worker_env
from tests.emf_spec import emf_lines

NAMESPACE = "BatchCelery/Test"
_tables = itertools.count()


@pytest.fixture(scope="module")
def dynamodb(moto_server):
    return moto_server.client("dynamodb")


@pytest.fixture
def results_env(moto_server, make_queues, dynamodb, tmp_path):
    """A worker environment with a result table and metrics, as the stack sets them."""
    table = create_result_table(dynamodb, f"results-{next(_tables)}")
    queues = make_queues(visibility_timeout=30)
    return worker_env(moto_server, queues, tmp_path, **{
        contract.RESULT_TABLE: table, contract.METRICS_NAMESPACE: NAMESPACE, contract.POOL: "default"})


def _filler(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "fill-batch-queue.py", *argv], cwd=CONTAINER_DIR, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _summary(result: subprocess.CompletedProcess) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("results: "))


def test_results_round_trip_and_one_metrics_line_per_task(results_env, dynamodb, tmp_path) -> None:
    env = results_env
    with running_script(env, tmp_path / "out.log") as run:
        done = _filler(env, "-n", "4", "--task", "probe.record", "--args", '["ok"]', "--wait", "60")
        failed = _filler(env, "-n", "2", "--task", "probe.fail", "--args", '["bad"]', "--wait", "60")

        # The user's application: its own Celery app, the same broker, the table as result backend.
        sys.path.insert(0, str(CONTAINER_DIR))  # the worker's modules import each other by name
        from worker_settings import WorkerSettings

        settings = WorkerSettings.from_env(env)
        app = Celery("application", set_as_current=False)
        app.conf.update(settings.celery_config())
        app.conf.update(result_backend=f"dynamodb://@{settings.region}/{settings.result_table}")
        with environment(env):
            assert app.send_task("probe.record", args=["from-app"]).get(timeout=60) == "from-app"
            with pytest.raises(RuntimeError, match="probe.fail app fails on purpose"):
                app.send_task("probe.fail", args=["app"]).get(timeout=60)
        # Every run writes its line after its result; 8 runs (a failed one may run again later).
        wait_until(lambda: len(emf_lines(run.output)) >= 8, timeout=30, what="eight metrics lines")
        output = run.output

    assert done.returncode == 0, done.stderr
    assert _summary(done).startswith("results: 4 done, 0 failed, 0 pending of 4 after ")
    assert failed.returncode == 3, failed.stderr
    assert _summary(failed).startswith("results: 0 done, 2 failed, 0 pending of 2 after ")
    assert failed.stdout.count("RuntimeError: probe.fail bad fails on purpose") == 2
    assert "2/2: 0 done, 2 failed, 0 pending" in failed.stderr  # the progress bar, on stderr

    # Each result expires result_expires_days after it was written (DynamoDB TTL deletes it).
    items = dynamodb.scan(TableName=env[contract.RESULT_TABLE])["Items"]
    assert len(items) == 8
    for item in items:
        expires = int(item[contract.RESULT_TTL_ATTRIBUTE]["N"]) - float(item["timestamp"]["N"])
        assert abs(expires - limits.DEFAULT_RESULT_EXPIRES_DAYS * 86400) <= 1

    lines = emf_lines(output)
    outcomes = Counter((line["task"], line["outcome"]) for line in lines)
    assert outcomes[("probe.record", "succeeded")] == 5
    assert outcomes[("probe.fail", "failed")] >= 3
    assert {line["pool"] for line in lines} == {"default"}
    assert {d["Namespace"] for line in lines for d in line["_aws"]["CloudWatchMetrics"]} == {NAMESPACE}
    assert all(line["wait_seconds"] >= 0 and line["run_seconds"] >= 0 for line in lines)


@pytest.mark.slow
def test_wait_is_measured_from_when_the_task_was_due_and_run_from_its_start(results_env, tmp_path) -> None:
    env = results_env
    fill(env, 2, "probe.record", kwargs={"tag": "queued", "seconds": 1.0})
    time.sleep(4)  # the tasks wait in the queue before any worker runs
    with running_script(env, tmp_path / "out.log") as run:
        wait_until(lambda: len(emf_lines(run.output)) >= 2, timeout=60, what="two metrics lines")
        fill(env, 1, "probe.record", kwargs={"tag": "later"}, countdown=3)
        wait_until(lambda: len(emf_lines(run.output)) >= 3, timeout=60, what="the countdown task's line")
        first, second, later = emf_lines(run.output)[:3]
    # Queued 4 s before the worker started: at least that long waiting, one second running.
    assert first["wait_seconds"] >= 4 and second["wait_seconds"] >= 4
    assert first["run_seconds"] >= 1.0 and second["run_seconds"] >= 1.0
    # Sent with a countdown of 3 s to a running worker: the wait runs from its ETA, not its send.
    assert later["wait_seconds"] < 2.0, later


def test_wait_reports_pending_tasks_when_no_worker_runs(results_env) -> None:
    result = _filler(results_env, "-n", "3", "--task", "probe.record", "--wait", "2")
    assert result.returncode == 3, result.stderr
    assert _summary(result).startswith("results: 0 done, 0 failed, 3 pending of 3 after ")


def test_wait_without_a_result_table_is_one_line(results_env) -> None:
    env = {k: v for k, v in results_env.items() if k != contract.RESULT_TABLE}
    result = _filler(env, "-n", "1", "--wait")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "fill-batch-queue: --wait needs the result table, and CELERY_RESULT_TABLE is not set "
        "(the stack sets it unless its setting results is false)")

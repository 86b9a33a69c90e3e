"""The worker images, built from their Dockerfiles as a deploy builds them and run as Batch runs
their job definitions (read-only root filesystem, user 10001, the scratch volume at /tmp, init
process, the job's environment) against moto: the bundled image drains its queue and exits 0, a
TERM mid-task gives the task back at once, and an own-image pool (examples/cpu-pool) runs its tasks.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid

import pytest

from batch_celery_local.queues import message_counts, total_messages
from batch_celery_container import contract
from harness import image
from harness.lifecycle import fill, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("image")]

# Container start, worker start, its warm shutdown and a loaded machine.
MARGIN = 20
PI_TERMS = 20_000
# About a minute of pure Python here: still running whenever the TERM comes.
LONG_PI_TERMS = 1_000_000_000
# Celery's line when the worker takes a task.
STARTED = re.compile(r"Task batch\.calculate_pi\[[0-9a-f-]+\] received")


def _send(run, count: int, task: str, args: list) -> None:
    """Send with the stack's real filler, configured from the job's own environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    fill({**env, **run.env}, count, task, args=args)


def _probe(results: list[dict], nonce: str) -> dict:
    """The probe task's report (who it ran as, what it could write) from the result table."""
    reports = [r["result"] for r in results if isinstance(r.get("result"), dict) and r["result"].get("nonce") == nonce]
    assert len(reports) == 1, results
    return reports[0]


def _ran_as_the_job_definition_says(report: dict, job: image.WorkerJob) -> None:
    uid, gid = (int(part) for part in job.user.split(":"))
    assert (report["uid"], report["gid"]) == (uid, gid)
    assert report["root_read_only"] is True
    assert report["scratch"] == "/tmp" and report["scratch_writable"] is True, report["scratch_error"]


def test_bundled_image_drains_its_queue_and_exits_0(pools, job_run, sqs, dynamodb, tmp_path):
    pool = pools["default"]
    assert pool.job.read_only_root and pool.job.user == "10001:10001" and pool.job.mounts  # what is under test
    run = job_run("default")
    nonce = uuid.uuid4().hex
    _send(run, 12, "batch.calculate_pi", [PI_TERMS])
    _send(run, 1, contract.PROBE_TASK, [nonce])

    with image.running(pool.job, pool.image, run.env, tmp_path / "container.log") as container:
        status = container.wait(timeout=180)

    assert status == 0, container.output[-3000:]
    assert total_messages(sqs, run.queues.url) == 0
    assert total_messages(sqs, run.queues.dlq_url) == 0
    results = run.results(dynamodb)
    assert [r["status"] for r in results] == ["SUCCESS"] * 13, results
    assert sum(isinstance(r["result"], float) and abs(r["result"] - 3.14159) < 1e-3 for r in results) == 12
    _ran_as_the_job_definition_says(_probe(results, nonce), pool.job)
    # The worker's log reaches the job's output (CloudWatch on AWS).
    assert container.output.count("succeeded in") == 13
    assert "exiting with status 0" in container.output


def test_term_mid_task_gives_the_task_back_at_once_and_exits_143(pools, job_run, sqs, dynamodb, tmp_path):
    pool = pools["default"]
    run = job_run("default")
    grace = int(run.env[contract.STOP_GRACE_SECONDS])
    visibility = int(run.env[contract.VISIBILITY_TIMEOUT_SECONDS])
    _send(run, 1, "batch.calculate_pi", [LONG_PI_TERMS])

    with image.running(pool.job, pool.image, run.env, tmp_path / "container.log") as container:
        container.wait_for(STARTED, timeout=90)
        assert message_counts(sqs, run.queues.url) == (0, 1, 0), container.output[-3000:]
        container.stop_signal(signal.SIGTERM)  # what Batch sends on a stop, a timeout, a Spot reclaim
        status = container.wait(timeout=grace + MARGIN)
        exited_at = time.monotonic()
        # Visible again at once, not after the queue's visibility timeout.
        visible = poll_until(lambda: message_counts(sqs, run.queues.url)[0] == 1, timeout=5)
        visible_after = time.monotonic() - exited_at

    assert status == 143, container.output[-3000:]
    assert visible, (f"the task is not visible again {visible_after:.0f} s after the exit (visibility timeout "
                     f"{visibility} s):\n{container.output[-3000:]}")
    assert run.results(dynamodb) == [], container.output[-3000:]
    assert f"did not finish within {grace} s" in container.output
    assert "released 1 held message(s) at once" in container.output


def test_own_image_pool_runs_its_tasks(pools, job_run, sqs, dynamodb, tmp_path):
    pool = pools["cpu"]
    run = job_run("cpu")
    nonce = uuid.uuid4().hex
    _send(run, 3, "cpu.count_primes", [100_000])
    _send(run, 1, contract.PROBE_TASK, [nonce])

    with image.running(pool.job, pool.image, run.env, tmp_path / "container.log") as container:
        status = container.wait(timeout=180)

    assert status == 0, container.output[-3000:]
    assert total_messages(sqs, run.queues.url) == 0
    results = run.results(dynamodb)
    assert [r["status"] for r in results] == ["SUCCESS"] * 4, results
    primes = [r["result"]["primes"] for r in results if "primes" in r["result"]]
    assert primes == [9592] * 3
    report = _probe(results, nonce)
    _ran_as_the_job_definition_says(report, pool.job)
    assert report["pool"] == "cpu" and "cpu_tasks" in report["task_modules"]

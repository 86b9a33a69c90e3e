"""`status` and `doctor` with a Lambda pool (compute "lambda"): it has no worker jobs to read or
submit (the stack publishes PoolXFunctionName instead of a job queue and definition)."""

from __future__ import annotations

from types import SimpleNamespace

from batch_celery import doctor, status

OUTPUTS = {"PoolLightFunctionName": "stack-WorkersLightPoolFunction", "PoolDefaultJobQueueArn": "jq",
           "PoolDefaultJobDefinitionArn": "arn:aws:batch:us-east-1:123456789012:job-definition/w:1"}


class NoBatch:
    """A Batch client no Lambda pool may call."""

    def __getattr__(self, name):
        raise AssertionError(f"Batch called for a Lambda pool: {name}")


def test_status_reads_no_worker_jobs_of_a_lambda_pool_and_reports_no_error() -> None:
    pool = status.PoolStatus("light")
    status.read_jobs(NoBatch(), OUTPUTS, pool, now=0.0)
    assert (pool.jobs, pool.errors) == ({}, [])


def test_doctor_submits_no_worker_job_for_a_lambda_pool() -> None:
    target = SimpleNamespace(outputs=OUTPUTS, client=lambda name: NoBatch())
    probe = doctor.Probe("light", "queue", "task-id", "nonce", 0.0)
    assert doctor.submit_workers(target, [probe]) == []
    assert probe.job_id is None and probe.check is None

"""Fixtures of the image tests: one synthesized stack with the bundled pool and the own-image CPU
pool, each pool's image built once per run from its cloud assembly asset, and per test the
job's environment resolved onto fresh moto queues and a result table."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch_celery_local.queues import QueuePair, create_result_table
from batch_celery_local.template import create_queues, read_spec, synthesize
from batch_celery.settings import CONTEXT_KEY
from batch_celery_container import contract
from harness import image

REPO = Path(__file__).resolve().parents[2]
# Short idle windows and grace so a run takes seconds; everything else is the pools' defaults.
QUICK = {"idle_seconds": 3, "poll_seconds": 1, "stop_grace_seconds": 3}
POOLS = {
    "default": QUICK,
    "cpu": {**QUICK, "image": "examples/cpu-pool", "tasks": ["cpu.*"]},
}
# The Dockerfile behind each pool's image, which the asset must hold unchanged.
DOCKERFILES = {"default": REPO / "batch_celery_container" / "Dockerfile", "cpu": REPO / "examples" / "cpu-pool" / "Dockerfile"}

_names = itertools.count()


@pytest.fixture(scope="session")
def engine():
    """podman, or a skip saying why it cannot be had here (not root, no apt)."""
    reason = image.unavailable()
    if reason:
        pytest.skip(f"image tests: {reason}")
    return image.base_image()


@dataclass(frozen=True)
class BuiltPool:
    job: image.WorkerJob
    image: str
    spec: object  # the pool's PoolSpec (queue attributes) from the template


def _synthesize_and_build(outdir: Path) -> dict:
    """Synthesize the app with both pools into ``outdir`` and build each pool's image asset as a
    deploy would. Returns what the tests need, as JSON: the template and each pool's image tag."""
    template = synthesize(outdir, {CONTEXT_KEY: {"pools": POOLS}})
    images = {}
    for name, dockerfile in DOCKERFILES.items():
        asset = image.image_asset(outdir, image.worker_job(template, name).image_tag)
        assert (asset.directory / asset.dockerfile).read_bytes() == dockerfile.read_bytes(), \
            f"pool {name}'s image asset does not hold {dockerfile.relative_to(REPO)} unchanged"
        # Run by id: another run on this machine may build over the tag meanwhile.
        images[name] = image.build(asset, f"localhost/batch-celery-image-test/{name}:latest")
    return {"template": template, "images": images}


@pytest.fixture(scope="session")
def built(engine, tmp_path_factory) -> dict:
    """The synthesized template and the pools' images, made once per run: under xdist the first
    worker to need them makes them while the others wait on a lock, then all read the result
    (xdist_group alone would do, but pytest 9.2 makes xdist 3.8 ignore it: pytest-xdist#1386)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _synthesize_and_build(tmp_path_factory.mktemp("cdk.out"))
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / "image-stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = shared / "image-stack.json"
        if not result.exists():
            (shared / "image-stack").mkdir(exist_ok=True)
            result.write_text(json.dumps(_synthesize_and_build(shared / "image-stack")))
        return json.loads(result.read_text())


@pytest.fixture(scope="session")
def pools(built) -> dict[str, BuiltPool]:
    """Every pool's worker job definition and its image."""
    specs = read_spec(built["template"]).pools
    return {name: BuiltPool(job=image.worker_job(built["template"], name), image=tag, spec=specs[name])
            for name, tag in built["images"].items()}


@dataclass(frozen=True)
class JobRun:
    """What one test needs to run a pool's job: its environment on moto, its queues, its results."""

    env: dict[str, str]
    queues: QueuePair
    result_table: str

    def results(self, dynamodb) -> list[dict]:
        """Celery's result documents in the result table."""
        items = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=self.result_table):
            items += [json.loads(item["result"]["B"]) for item in page["Items"]]
        return items


@pytest.fixture(scope="session")
def sqs(moto_server):
    return moto_server.client("sqs")


@pytest.fixture(scope="session")
def dynamodb(moto_server):
    return moto_server.client("dynamodb")


@pytest.fixture
def job_run(moto_server, sqs, dynamodb, built, pools):
    """``job_run(pool)``: the pool's job environment from the template, with its queue (created with
    the template's attributes), region and result table resolved to moto, and moto's endpoint and
    dummy credentials where a job gets its task role's."""

    def make(pool: str) -> JobRun:
        job, spec = pools[pool].job, pools[pool].spec
        suffix = f"{os.getpid()}-{next(_names)}"
        queues = create_queues(sqs, f"image-{pool}-{suffix}", spec.queue)
        tables = [key for key, r in built["template"]["Resources"].items() if r["Type"] == "AWS::DynamoDB::GlobalTable"]
        assert len(tables) == 1, f"expected the stack's one result table, found {tables}"
        table = create_result_table(dynamodb, f"image-results-{suffix}")
        env = image.resolve_environment(job, {
            (job.queue_id, "Ref"): queues.url,
            (job.queue_id, "QueueName"): queues.name,
            ("AWS::Region", "Ref"): moto_server.region,
            (tables[0], "Ref"): table,
        })
        env.update(moto_server.client_env())
        assert env[contract.RESULT_TABLE] == table
        return JobRun(env=env, queues=queues, result_table=table)

    return make

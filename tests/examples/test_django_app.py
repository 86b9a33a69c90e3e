"""The README's "Send tasks from your application", run: a Django project whose Celery broker is
Redis sends its heavy task to batch-celery and reads the result, with settings taken from the
stack's outputs file by ``routing.producer_settings``.

Real parts on 127.0.0.1: Redis is fakeredis's TCP server (the Redis protocol, kombu's own Redis
transport), SQS and DynamoDB are moto server, the worker is the lifecycle script with the
example's task module, Django serves the example's views through its test client.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from fakeredis import TcpFakeServer

from batch_celery import CONTAINER_DIR
from batch_celery_local import REPO_ROOT
from batch_celery_local.queues import create_queue_pair, create_result_table
from batch_celery_container import contract, routing
from harness.lifecycle import running_script, worker_env

EXAMPLE = REPO_ROOT / "examples" / "django-app"
STACK = "BatchCelery"
_stacks = itertools.count()

# What the web tier does: POST an upload, then poll the encode's state, as a browser would.
DRIVER = """
import json, sys, time
import django
django.setup()
from django.test import Client

client = Client()
response = client.post("/videos/encode", {"key": "uploads/cat.mov"})
print(json.dumps({"status": response.status_code, **response.json()}), flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    state = client.get(f"/videos/encode/{response.json()['task_id']}").json()
    if state["state"] in ("SUCCESS", "FAILURE"):
        break
    time.sleep(0.5)
print(json.dumps(state), flush=True)
"""


@pytest.fixture(scope="module")
def sqs(moto_server):
    return moto_server.client("sqs")


@pytest.fixture
def redis_server():
    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack(moto_server, sqs, tmp_path):
    """Two pools as a stack would have them (video.* on its own pool), their queues on moto, a
    result table, and the outputs file `cdk deploy --outputs-file` writes for them."""
    name = f"django-{os.getpid()}-{next(_stacks)}"
    pools = {"default": create_queue_pair(sqs, f"{name}-default", visibility_timeout=30),
             "encode": create_queue_pair(sqs, f"{name}-encode", visibility_timeout=30)}
    table = create_result_table(moto_server.client("dynamodb"), f"{name}-results")
    routes = routing.routes_document(default_pool="default", region=moto_server.region, pools={
        "default": routing.PoolRoute(pools["default"].name, pools["default"].url),
        "encode": routing.PoolRoute(pools["encode"].name, pools["encode"].url, ("video.*",)),
    })
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({STACK: {routing.OUTPUT_NAME: json.dumps(routes),
                                           routing.RESULT_TABLE_OUTPUT: table, "OtherOutput": "x"}}))
    return pools, table, outputs


def django_env(moto_server, redis_url: str, outputs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto_server.client_env())  # credentials and endpoints; on AWS, the app's IAM role
    env.update(
        DJANGO_SETTINGS_MODULE="mysite.settings",
        REDIS_URL=redis_url,
        BATCH_CELERY_OUTPUTS=str(outputs),
        # The example's project, and routing.py as a project would have it (copied, or on the path).
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(CONTAINER_DIR)]),
    )
    return env


def test_a_django_app_on_redis_sends_its_heavy_task_here_and_reads_the_result(
        moto_server, sqs, redis_server, stack, tmp_path) -> None:
    pools, table, outputs = stack
    encode_pool = pools["encode"]
    # The encode pool's worker, with the example's task module as its image would have it.
    env = worker_env(moto_server, encode_pool, tmp_path, **{
        contract.RESULT_TABLE: table, contract.POOL: "encode",
        contract.TASK_MODULES: "video_tasks",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE / "batch_tasks"), str(REPO_ROOT)]),
    })
    with running_script(env, tmp_path / "worker.out") as run:
        web = subprocess.run([sys.executable, "-c", DRIVER, "60"], cwd=EXAMPLE,
                             env=django_env(moto_server, redis_server, outputs),
                             capture_output=True, text=True, timeout=120)
        worker_output = run.output
    assert web.returncode == 0, web.stderr
    posted, state = map(json.loads, web.stdout.strip().splitlines())
    assert posted["status"] == 202, posted
    assert state == {"task_id": posted["task_id"], "state": "SUCCESS", "result": {
        "key": "uploads/cat.mov", "preset": "1080p", "output": "uploads/cat.1080p.mp4"}}, (state, worker_output)
    assert f"Task video.encode[{posted['task_id']}] succeeded" in worker_output

    # The light task went to the project's Redis broker (kombu's list named after the queue),
    # and nothing but the encode reached batch-celery: the default pool's queue stayed empty.
    [message] = redis.Redis.from_url(redis_server).lrange("celery", 0, -1)
    assert json.loads(message)["headers"]["task"] == "videos.notify_uploaded"
    counts = sqs.get_queue_attributes(QueueUrl=pools["default"].url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == counts["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_producer_settings_come_from_the_outputs_file(stack) -> None:
    pools, table, outputs = stack
    settings = routing.producer_settings(outputs)
    assert settings["broker_url"] == "sqs://"  # no key in it: boto3's chain (the IAM role) signs
    assert settings["task_routes"] == {"video.*": {"queue": pools["encode"].name}}
    assert settings["task_default_queue"] == pools["default"].name
    assert set(settings["broker_transport_options"]["predefined_queues"]) == {p.name for p in pools.values()}
    assert settings["result_backend"].endswith(f"/{table}") and settings["result_backend"].startswith("dynamodb://@")
    assert settings["accept_content"] == ["json"]


def test_producer_settings_without_a_result_table_have_no_backend(stack, tmp_path) -> None:
    _, _, outputs = stack
    document = json.loads(outputs.read_text())
    del document[STACK][routing.RESULT_TABLE_OUTPUT]
    assert "result_backend" not in routing.producer_settings(document)


@pytest.mark.parametrize("content, message", [
    ("{", "is not JSON"),
    ('{"Other": {"X": "1"}}', "no stack in the outputs has a 'Routes' output; stacks: Other"),
])
def test_a_bad_outputs_file_is_one_line(tmp_path, content, message) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(content)
    with pytest.raises(routing.RoutingError, match=message) as error:
        routing.producer_settings(path)
    assert "\n" not in str(error.value)

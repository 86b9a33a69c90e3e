"""The Django example, run: a project whose Celery broker is Redis sends its heavy task to
batch-celery, and batch-celery's worker runs that task in the project's own Celery app
(CELERY_APP=mysite, from the example's Dockerfile), Django settings, models and database included.

Real parts on 127.0.0.1: Redis is fakeredis's TCP server (the Redis protocol, kombu's own Redis
transport), SQS and DynamoDB are moto server, the worker is the lifecycle script, the database is
an SQLite file both sides reach, Django serves the example's views through its test client. The
failing task runs in the demo's own machinery (LocalRun), so its event log and `status --local`
are the ones `make demo` shows, and the producer finds the demo as the docs' recipe says.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from fakeredis import TcpFakeServer

from batch_celery import CONTAINER_DIR, status
from batch_celery_local import REPO_ROOT
from batch_celery_local.demo import LocalRun
from batch_celery_local.queues import create_queue_pair, create_result_table
from batch_celery_local.template import PoolSpec, QueueSpec, StackSpec
from batch_celery_container import contract, routing
from harness.lifecycle import running_script, worker_env

EXAMPLE = REPO_ROOT / "examples" / "django-app"
STACK = "BatchCelery"
_stacks = itertools.count()

# What the web tier does: POST an upload, then poll the encode's state, as a browser would; the
# Video row is printed as the database holds it right after the POST and at the end.
DRIVER = """
import json, sys, time
import django
django.setup()
from django.forms.models import model_to_dict
from django.test import Client
from videos.models import Video

client = Client()
response = client.post("/videos/encode", {"key": "uploads/cat.mov"})
posted = {"status": response.status_code, **response.json()}
print(json.dumps(posted), flush=True)
print(json.dumps(model_to_dict(Video.objects.get(pk=posted["video_id"]))), flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    state = client.get(f"/videos/encode/{response.json()['task_id']}").json()
    if state["state"] in ("SUCCESS", "FAILURE"):
        break
    time.sleep(0.5)
print(json.dumps(state), flush=True)
print(json.dumps(model_to_dict(Video.objects.get(pk=posted["video_id"]))), flush=True)
"""


def image_environment() -> dict[str, str]:
    """The ENV the example's Dockerfile sets (CELERY_APP among them), as its image would have it."""
    text = (EXAMPLE / "Dockerfile").read_text()
    env = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", text, re.MULTILINE):
        env.update(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))
    return env


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
def database(tmp_path) -> Path:
    """The project's database, migrated (SQLite: a file the web tier and the worker both reach)."""
    path = tmp_path / "videos.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings", "DJANGO_DATABASE_PATH": str(path),
           "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(CONTAINER_DIR)])}
    migrated = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=EXAMPLE, env=env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    return path


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


def django_env(moto_server, redis_url: str, outputs: Path, database: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto_server.client_env())  # credentials and endpoints; on AWS, the app's IAM role
    env.update(
        DJANGO_SETTINGS_MODULE="mysite.settings",
        DJANGO_DATABASE_PATH=str(database),
        REDIS_URL=redis_url,
        BATCH_CELERY_OUTPUTS=str(outputs),
        # The example's project, and routing.py as a project would have it (copied, or on the path).
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(CONTAINER_DIR)]),
    )
    return env


def test_the_example_image_runs_the_projects_own_app() -> None:
    env = image_environment()
    assert env[contract.APP] == "mysite" and env["DJANGO_SETTINGS_MODULE"] == "mysite.settings", env
    assert contract.TASK_MODULES not in env  # the tasks come with the app (autodiscover), not a list


def test_a_django_task_reads_and_updates_its_model_on_a_worker_running_the_projects_own_app(
        moto_server, sqs, redis_server, stack, database, tmp_path) -> None:
    pools, table, outputs = stack
    encode_pool = pools["encode"]
    # The encode pool's worker as the example's image runs it: the project on the path (its /app),
    # the image's ENV (CELERY_APP=mysite), the database's address from the job's environment.
    env = worker_env(moto_server, encode_pool, tmp_path, **{
        **image_environment(),
        contract.RESULT_TABLE: table, contract.POOL: "encode", contract.TASK_MODULES: "",
        contract.METRICS_NAMESPACE: "BatchCelery/Test",
        "DJANGO_DATABASE_PATH": str(database),
        "PYTHONPATH": str(EXAMPLE),
    })
    with running_script(env, tmp_path / "worker.out") as run:
        web = subprocess.run([sys.executable, "-c", DRIVER, "60"], cwd=EXAMPLE,
                             env=django_env(moto_server, redis_server, outputs, database),
                             capture_output=True, text=True, timeout=120)
        worker_output = run.output
    assert web.returncode == 0, web.stderr
    posted, before, state, after = map(json.loads, web.stdout.strip().splitlines())
    print(f"row before: {before}\nrow after:  {after}\nresult: {state}")
    assert posted["status"] == 202, posted
    # Read right after the post: a fast worker may have encoded it already (seen under load).
    assert before in ({"id": posted["video_id"], "key": "uploads/cat.mov", "status": "uploaded", "output": ""},
                      {"id": posted["video_id"], "key": "uploads/cat.mov", "status": "encoded",
                       "output": "uploads/cat.1080p.mp4"}), before
    assert state == {"task_id": posted["task_id"], "state": "SUCCESS", "result": {
        "video": posted["video_id"], "key": "uploads/cat.mov", "preset": "1080p",
        "output": "uploads/cat.1080p.mp4"}}, (state, worker_output)
    # The worker wrote the row through the ORM, into the database the web tier reads.
    assert after == {**before, "status": "encoded", "output": "uploads/cat.1080p.mp4"}, worker_output
    assert after["id"] == posted["video_id"] and after["key"] == "uploads/cat.mov"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT status FROM videos_video").fetchall() == [("encoded",)]
    # The worker ran the project's app (its preflight line names it), on the pool's queue.
    assert "app mysite (mysite), pool encode" in worker_output, worker_output
    assert f"Task video.encode[{posted['task_id']}] succeeded" in worker_output

    # The light task went to the project's Redis broker (kombu's list named after the queue),
    # and nothing but the encode reached batch-celery: the default pool's queue stayed empty.
    [message] = redis.Redis.from_url(redis_server).lrange("celery", 0, -1)
    assert json.loads(message)["headers"]["task"] == "videos.notify_uploaded"
    counts = sqs.get_queue_attributes(QueueUrl=pools["default"].url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == counts["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_failing_django_tasks_reason_is_on_the_demos_screen_and_in_status(
        moto_server, database, tmp_path) -> None:
    """The demo's own machinery with the example's image as its encode pool; the producer is the
    Django project, pointed at the running demo as docs/sending-tasks.md says (its run file as the
    outputs file, the endpoint and dummy credentials in the environment)."""
    queue = QueueSpec(visibility_timeout=30, retention_seconds=3600, max_receive_count=3,
                      dlq_retention_seconds=3600, managed_sse=True)
    pool_env = {**image_environment(), "DJANGO_DATABASE_PATH": str(database),
                contract.METRICS_NAMESPACE: "BatchCelery/Test", contract.POOL: "encode",
                contract.TASK_TIME_LIMIT_SECONDS: "20"}
    spec = StackSpec(pools={
        "default": PoolSpec("default", queue, {contract.POOL: "default"}, messages_per_worker=10, max_workers=1),
        "encode": PoolSpec("encode", queue, pool_env, messages_per_worker=10, max_workers=1,
                           tasks=("video.*",), image="examples/django-app"),
    }, results=True)
    events: list[str] = []
    run = LocalRun(server=moto_server, spec=spec, work_dir=tmp_path / "run", max_workers={"encode": 1},
                   idle_seconds=30, poll_seconds=1, run_file=tmp_path / "run.json")
    run.on_event = events.append
    try:
        run.write_run_file()
        producer = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        producer.update({
            "AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": moto_server.region,
            "BATCH_CELERY_OUTPUTS": str(run.run_file), "DJANGO_SETTINGS_MODULE": "mysite.settings",
            "DJANGO_DATABASE_PATH": str(database), "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(CONTAINER_DIR)]),
        })
        # Video 999 does not exist: the worker's ORM query raises Video.DoesNotExist.
        sent = subprocess.run(
            [sys.executable, "-c", "import django; django.setup(); from mysite.batch import batch_app; "
             "print(batch_app().send_task('video.encode', kwargs={'video_id': 999, 'preset': '1080p'}).id)"],
            cwd=EXAMPLE, env=producer, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        task_id = sent.stdout.strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("failed on worker" in e for e in events):
            run.scale_once()
            run.report_exits()
            time.sleep(0.5)
        run.write_run_file()
        screen = "\n".join(events)
        shown = status.render(status.local_status(run.run_file))
    finally:
        run.stop(grace=10)
    print(screen, shown, sep="\n")
    reason = "videos.models.Video.DoesNotExist: Video matching query does not exist."
    assert f"task video.encode[{task_id[:8]}] failed on worker encode-1: {reason}" in screen, screen
    assert re.search(rf"last failure at \S+ UTC \(1 failed run\): video\.encode\[{task_id[:8]}\]: "
                     rf"{re.escape(reason)}", shown), shown


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

"""Your own Celery app on the workers (CELERY_APP): the runtime layers its settings onto the app
instead of replacing it, the bundled app is built through the same code, and a wrong app is one
line before any worker starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batch_celery import CONTAINER_DIR
from batch_celery_container import contract

BASE_ENV = {contract.QUEUE_NAME: "pool-q", contract.QUEUE_URL: "http://127.0.0.1:9/000000000000/pool-q",
            contract.REGION: "us-east-1"}

# What the worker's -A module (celery_app) ends up with, as JSON.
INSPECT = textwrap.dedent("""
    import json, celery_app
    app = celery_app.app
    app.loader.import_default_modules()
    conf = app.conf
    print(json.dumps({
        "main": app.main, "broker_url": conf.broker_url, "transport": conf.broker_transport,
        "queues": sorted(conf.broker_transport_options["predefined_queues"]),
        "default_queue": conf.task_default_queue, "task_queues": conf.task_queues,
        "acks_late": conf.task_acks_late, "acks_on_failure": conf.task_acks_on_failure,
        "prefetch": conf.worker_prefetch_multiplier, "consumer": conf.worker_consumer,
        "time_limit": conf.task_time_limit, "routes": conf.task_routes,
        "serializer": conf.task_serializer, "accept": list(conf.accept_content),
        "include": list(conf.include), "result_backend": conf.result_backend,
        "tasks": sorted(t for t in app.tasks if not t.startswith("celery.")),
    }))
""")

PROJECT = {
    "proj/__init__.py": "from .celery import app as celery_app\n",
    "proj/celery.py": textwrap.dedent("""
        from celery import Celery
        app = Celery("proj", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
        app.conf.update(task_routes={"proj.*": {"queue": "pool-q"}}, task_serializer="msgpack",
                        accept_content=["json", "msgpack"], task_time_limit=5, task_acks_late=False,
                        worker_prefetch_multiplier=8, include=["proj.tasks"],
                        task_queues=None)
    """),
    "proj/tasks.py": textwrap.dedent("""
        from celery import shared_task

        @shared_task(name="proj.hello")
        def hello():
            return "hello"
    """),
    "extra_tasks.py": textwrap.dedent("""
        from celery_app import app

        @app.task(name="extra.one")
        def one():
            return 1
    """),
}


@pytest.fixture
def project(tmp_path) -> Path:
    for name, text in PROJECT.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def run(code_or_script: list[str], project: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CELERY_"))}
    environ.update(BASE_ENV, PYTHONPATH=os.pathsep.join([str(project), str(CONTAINER_DIR)]), **env)
    return subprocess.run([sys.executable, *code_or_script], cwd=CONTAINER_DIR, env=environ,
                          capture_output=True, text=True, timeout=60)


def inspect(project: Path, **env: str) -> dict:
    result = run(["-c", INSPECT], project, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_your_app_gets_the_runtimes_transport_acks_and_limits_and_keeps_its_routes_serializers_and_tasks(project):
    app = inspect(project, **{contract.APP: "proj", contract.TASK_MODULES: "extra_tasks",
                              contract.TASK_TIME_LIMIT_SECONDS: "600"})
    # Overridden: what the transport, the lifecycle and the stack depend on.
    assert app["main"] == "proj"
    assert (app["broker_url"], app["transport"], app["queues"]) == ("sqs://", "sqs_transport:Transport", ["pool-q"])
    assert (app["default_queue"], app["task_queues"]) == ("pool-q", None)
    assert (app["acks_late"], app["acks_on_failure"], app["prefetch"]) == (True, False, 1)
    assert (app["consumer"], app["time_limit"]) == ("dead_letter_consumer:Consumer", 600)
    # No result table in this job: the app's own backend is kept.
    assert app["result_backend"] == "redis://localhost:6379/1"
    # Kept: the app's routes, serializers and task modules; CELERY_TASK_MODULES added to them.
    assert app["routes"] == {"proj.*": {"queue": "pool-q"}}
    assert (app["serializer"], app["accept"]) == ("msgpack", ["json", "msgpack"])
    assert app["include"] == ["proj.tasks", "extra_tasks"]
    # Its tasks, the module's, and the doctor's probe; none of the bundled app's examples.
    assert app["tasks"] == sorted([contract.PROBE_TASK, "extra.one", "proj.hello"])


def test_a_result_table_replaces_your_apps_result_backend(project):
    app = inspect(project, **{contract.APP: "proj.celery:app", contract.RESULT_TABLE: "results-table"})
    assert app["main"] == "proj"
    assert app["result_backend"].startswith("dynamodb://@us-east-1/results-table?"), app


def test_without_an_app_the_bundled_one_is_built_the_same_way(project):
    app = inspect(project, **{contract.TASK_MODULES: "extra_tasks"})
    assert app["main"] == "batch_celery_worker"
    assert (app["broker_url"], app["transport"], app["default_queue"]) == ("sqs://", "sqs_transport:Transport", "pool-q")
    assert app["routes"] == {"batch.*": {"queue": "pool-q"}}
    assert (app["serializer"], app["accept"], app["include"]) == ("json", ["json"], ["extra_tasks"])
    assert app["tasks"] == sorted(["batch.calculate_pi", "batch.parallel_digest", "batch.word_count",
                                   contract.PROBE_TASK, "extra.one"])


@pytest.mark.parametrize("spec, message", [
    ("nosuchproject", "configuration error: CELERY_APP='nosuchproject' cannot be loaded: "
                      "ModuleNotFoundError: No module named 'nosuchproject'"),
    ("proj.celery:nothing", "configuration error: CELERY_APP='proj.celery:nothing' cannot be loaded: "),
    ("proj/celery", "configuration error: CELERY_APP='proj/celery' is not an app; allowed: a module (proj) or "
                    "module:attribute (proj.celery:app), as `celery -A` takes it"),
])
def test_rejects_an_app_that_cannot_be_loaded_with_one_line_before_the_worker_starts(project, spec, message):
    result = run([str(CONTAINER_DIR / "worker_settings.py")], project, **{contract.APP: spec})
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message), line


def test_the_preflight_line_names_your_app(project):
    result = run([str(CONTAINER_DIR / "worker_settings.py")], project, **{contract.APP: "proj"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("app proj (proj), queue pool-q in us-east-1"), result.stdout

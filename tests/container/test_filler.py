"""fill-batch-queue.py: sends exactly N real Celery messages; bad input gets one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batch_celery import CONTAINER_DIR as CONTAINER
from batch_celery_local.motoserver import free_port
from batch_celery_local.queues import message_counts
from harness.lifecycle import environment, load_filler, worker_env


@pytest.fixture(scope="module")
def filler():
    return load_filler()


def test_sends_exactly_n(moto_server, sqs, make_queues, tmp_path, filler, capsys):
    queues = make_queues()
    with environment(worker_env(moto_server, queues, tmp_path)):
        assert filler.main(["-n", "25", "--kwargs", '{"terms": 1000}']) == 0
    assert capsys.readouterr().out.strip() == f"sent 25 batch.calculate_pi tasks to {queues.name}"
    assert message_counts(sqs, queues.url) == (25, 0, 0)
    message = sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=1)["Messages"][0]
    # A real Celery message: kombu's base64 envelope around the task protocol v2 headers.
    import base64

    envelope = json.loads(base64.b64decode(message["Body"]))
    assert envelope["headers"]["task"] == "batch.calculate_pi"
    assert envelope["properties"]["delivery_info"]["routing_key"] == queues.name


def test_shows_progress_for_large_n(moto_server, make_queues, tmp_path, filler, capsys):
    queues = make_queues()
    with environment(worker_env(moto_server, queues, tmp_path)):
        assert filler.main(["--num-messages", "100", "--task", "probe.record"]) == 0
    err = capsys.readouterr().err
    assert "sent 10/100" in err and "sent 90/100" in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "the following arguments are required: -n/--num-messages"),
        (["-n", "0"], "0 is out of range; allowed: 1..1000000"),
        (["-n", "ten"], "'ten' is not a whole number"),
        (["-n", "5", "--args", "[1,"], "is not JSON"),
        (["-n", "5", "--kwargs", "[1]"], "is not a JSON object"),
        (["-n", "5", "--task", " "], "--task must name a task"),
        (["-n", "1", "--args", json.dumps(["x" * 200_000])], "allowed: at most 184320"),
    ],
)
def test_rejects_bad_arguments(filler, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        filler.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


def test_rejects_missing_queue_settings(moto_server, make_queues, tmp_path, filler, capsys):
    env = worker_env(moto_server, make_queues(), tmp_path)
    del env["CELERY_QUEUE_URL"]
    with environment(env):
        assert filler.main(["-n", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fill-batch-queue: configuration error: CELERY_QUEUE_URL is not set; the worker job's environment must provide it"
    )


def test_rejects_unknown_queue(moto_server, make_queues, tmp_path, filler, capsys):
    queues = make_queues()
    env = worker_env(moto_server, queues, tmp_path)
    env["CELERY_QUEUE_URL"] = queues.url.replace(queues.name, "no-such-queue")
    env["CELERY_QUEUE_NAME"] = "no-such-queue"
    with environment(env):
        assert filler.main(["-n", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fill-batch-queue: queue ") and "cannot be used" in err
    assert len(err.strip().splitlines()) == 1


def test_rejects_unreachable_endpoint(moto_server, make_queues, tmp_path):
    queues = make_queues()
    closed = f"http://127.0.0.1:{free_port()}"
    env = worker_env(moto_server, queues, tmp_path, endpoint=closed)
    # As a user runs it: a separate process, nothing but one line on stderr.
    result = subprocess.run(
        [sys.executable, "fill-batch-queue.py", "-n", "3"], cwd=CONTAINER, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "is unreachable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _routes(moto_server, default, gpu) -> str:
    """The stack's routes JSON for a default pool and a "gpu" pool that takes gpu.*."""
    return json.dumps({
        "default_pool": "default",
        "region": moto_server.region,
        "pools": {
            "default": {"queue_name": default.name, "queue_url": default.url, "tasks": []},
            "gpu": {"queue_name": gpu.name, "queue_url": gpu.url, "tasks": ["gpu.*"]},
        },
    })


def test_routes_each_task_to_its_pools_queue(moto_server, sqs, make_queues, tmp_path, filler, capsys):
    default, gpu = make_queues(), make_queues()
    # As the stack sets up the filler job: the default pool's queue, and the routes to every pool.
    env = worker_env(moto_server, default, tmp_path, CELERY_ROUTES=_routes(moto_server, default, gpu))
    with environment(env):
        assert filler.main(["-n", "4", "--task", "gpu.matmul"]) == 0
        assert filler.main(["-n", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"sent 4 gpu.matmul tasks to {gpu.name} (pool gpu)",
        f"sent 2 batch.calculate_pi tasks to {default.name} (pool default)",
    ]
    assert (message_counts(sqs, gpu.url), message_counts(sqs, default.url)) == ((4, 0, 0), (2, 0, 0))


def test_checks_the_routed_queue_before_sending(moto_server, sqs, make_queues, tmp_path, filler, capsys):
    default, gpu = make_queues(), make_queues()
    sqs.delete_queue(QueueUrl=gpu.url)
    env = worker_env(moto_server, default, tmp_path, CELERY_ROUTES=_routes(moto_server, default, gpu))
    with environment(env):
        assert filler.main(["-n", "1", "--task", "gpu.matmul"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fill-batch-queue: queue {gpu.url} cannot be used") and len(err.strip().splitlines()) == 1
    assert message_counts(sqs, default.url) == (0, 0, 0)


@pytest.mark.parametrize(
    "routes, expected",
    [
        ("{not json", "CELERY_ROUTES: the routes are not JSON (Expecting property name"),
        ('{"default_pool": "cpu", "region": "r", "pools": {}}', "CELERY_ROUTES: the routes' 'pools' is empty"),
    ],
)
def test_rejects_bad_routes(moto_server, make_queues, tmp_path, filler, capsys, routes, expected):
    with environment(worker_env(moto_server, make_queues(), tmp_path, CELERY_ROUTES=routes)):
        assert filler.main(["-n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fill-batch-queue: configuration error: {expected}")
    assert len(err.strip().splitlines()) == 1, err


def test_ids_file_gets_the_id_of_every_task_sent(moto_server, sqs, make_queues, tmp_path, filler, capsys):
    import base64

    queues = make_queues()
    ids_file = tmp_path / "ids.txt"
    with environment(worker_env(moto_server, queues, tmp_path)):
        assert filler.main(["-n", "3", "--ids-file", str(ids_file)]) == 0
        assert filler.main(["-n", "2", "--ids-file", str(ids_file)]) == 0  # appends
    ids = ids_file.read_text().split()
    sent = set()
    while messages := sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10).get("Messages"):
        sent |= {json.loads(base64.b64decode(m["Body"]))["headers"]["id"] for m in messages}
    assert len(ids) == 5 and set(ids) == sent

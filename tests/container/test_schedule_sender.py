"""The schedule sender (batch_celery_container/schedule_sender.py) against moto server and a real
worker: its message is the one a Celery producer sends, byte for byte but for the ids, and a
worker runs the two alike."""

from __future__ import annotations

import base64
import itertools
import json
import random
import string
import sys

import pytest
from celery import Celery
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr as celery_saferepr

from batch_celery import CONTAINER_DIR
from batch_celery_container import contract, schedule_sender
from batch_celery_local.queues import create_result_table
from harness.lifecycle import environment, running_script, worker_env
from tests.emf_spec import problems

NAMESPACE = "BatchCelery/Test"
_tables = itertools.count()
# What Scheduler writes into a fire's input (context attributes), and one fire's input.
SCHEDULED_TIME = "2026-12-06T02:00:00Z"
ARGS = [7, "it's", {"deep": [[["x"]]]}, None, 2.5, True]
KWARGS = {"day": "yesterday", "limits": {"rows": 1000}, "é": "ß"}


def fire_event(queues, **overrides) -> dict:
    return {"schedule": "nightly-report", "task": "probe.echo", "args": ARGS, "kwargs": KWARGS,
            "queue": queues.name, "queue_url": queues.url, "scheduled_time": SCHEDULED_TIME,
            "execution_id": "d32c5kddcf5bb8c3", **overrides}


def producer(env: dict[str, str], table: str | None = None) -> Celery:
    """A Celery producer configured as the workers are (the same broker, queue and serializer)."""
    sys.path.insert(0, str(CONTAINER_DIR))  # the worker's modules import each other by name
    from worker_settings import WorkerSettings

    settings = WorkerSettings.from_env(env)
    app = Celery("application", set_as_current=False)
    app.conf.update(settings.celery_config())
    if table:
        app.conf.update(result_backend=f"dynamodb://@{settings.region}/{table}")
    return app


def fire_headers() -> dict:
    return {schedule_sender.SCHEDULE_HEADER: "nightly-report", schedule_sender.SCHEDULED_TIME_HEADER: SCHEDULED_TIME}


def receive_body(sqs, queue_url: str) -> str:
    [message] = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5)["Messages"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return message["Body"]


def decoded(body: str) -> dict:
    return json.loads(base64.b64decode(body))


def test_a_scheduled_message_is_a_producers_byte_for_byte_but_for_its_ids(moto_server, make_queues, sqs,
                                                                          tmp_path) -> None:
    queues = make_queues()
    env = worker_env(moto_server, queues, tmp_path)
    with environment(env):
        producer(env).send_task("probe.echo", args=ARGS, kwargs=KWARGS, headers=fire_headers())
    sent = receive_body(sqs, queues.url)
    theirs = decoded(sent)

    schedule_sender.fire(sqs, fire_event(queues))
    ours = decoded(receive_body(sqs, queues.url))

    # What identifies a process or a message differs; everything else is the same, key for key.
    assert ours["headers"]["id"] != theirs["headers"]["id"]
    assert ours["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]
    assert list(ours) == list(theirs)
    assert list(ours["headers"]) == list(theirs["headers"])
    assert list(ours["properties"]) == list(theirs["properties"])
    assert ours["body"] == theirs["body"]
    assert (ours["content-type"], ours["content-encoding"]) == ("application/json", "utf-8")
    # With the producer's ids, the sender's SQS body is the producer's, byte for byte.
    h, p = theirs["headers"], theirs["properties"]
    _, _, message = schedule_sender.message_for(fire_event(queues))
    same = schedule_sender.envelope(
        "probe.echo", ARGS, KWARGS, task_id=h["id"], queue=queues.name, headers=fire_headers(),
        origin=h["origin"], reply_to=p["reply_to"], delivery_tag=p["delivery_tag"])
    assert schedule_sender.sqs_body(same) == sent
    assert message["headers"]["argsrepr"] == h["argsrepr"] and message["headers"]["kwargsrepr"] == h["kwargsrepr"]


@pytest.fixture
def results_env(moto_server, make_queues, tmp_path):
    dynamodb = moto_server.client("dynamodb")
    table = create_result_table(dynamodb, f"schedule-results-{next(_tables)}")
    queues = make_queues(visibility_timeout=30)
    env = worker_env(moto_server, queues, tmp_path, **{
        contract.RESULT_TABLE: table, contract.METRICS_NAMESPACE: NAMESPACE, contract.POOL: "default"})
    return env, queues, table


def test_a_worker_runs_a_scheduled_message_as_it_runs_a_producers(results_env, sqs, tmp_path) -> None:
    env, queues, table = results_env
    app = producer(env, table)
    with environment(env):
        theirs = app.send_task("probe.echo", args=ARGS, kwargs=KWARGS, headers=fire_headers())
        record = schedule_sender.fire(sqs, fire_event(queues))
        plain = app.send_task("probe.echo", args=ARGS, kwargs=KWARGS)
        with running_script(env, tmp_path / "out.log") as run:
            ours = AsyncResult(record["task_id"], app=app)
            values = [result.get(timeout=60) for result in (theirs, ours, plain)]
            states = [result.state for result in (theirs, ours, plain)]
            output = run.output

    assert states == ["SUCCESS"] * 3, output[-3000:]
    assert record["task_id"] != theirs.id
    expected = {"args": json.loads(json.dumps(ARGS)), "kwargs": KWARGS,
                "schedule": "nightly-report", "scheduled_time": SCHEDULED_TIME}
    # The same value from both: the worker saw the same arguments and the same fire headers.
    assert values[0] == values[1] == expected
    # A producer that sends no schedule headers: the task sees none (a task can tell them apart).
    assert values[2] == {**expected, "schedule": None, "scheduled_time": None}
    assert record["queue"] == queues.name and record["schedule"] == "nightly-report"


def test_every_delivery_of_one_fire_carries_one_task_id_and_the_next_fire_another(make_queues, sqs) -> None:
    queues = make_queues()
    first = schedule_sender.fire(sqs, fire_event(queues))
    # Lambda's retry of the run, or Scheduler's of the invocation: the same input again.
    again = schedule_sender.fire(sqs, fire_event(queues, execution_id="a-retry"))
    later = schedule_sender.fire(sqs, fire_event(queues, scheduled_time="2026-12-07T02:00:00Z"))
    other = schedule_sender.fire(sqs, fire_event(queues, schedule="another"))
    assert first["task_id"] == again["task_id"]
    assert len({first["task_id"], later["task_id"], other["task_id"]}) == 3
    assert first["message_id"] != again["message_id"]  # two messages: at least once, not exactly once
    bodies = [decoded(receive_body(sqs, queues.url)) for _ in range(4)]
    assert sorted(b["headers"]["id"] for b in bodies) == sorted(r["task_id"] for r in (first, again, later, other))


def test_the_handler_prints_one_emf_line_per_fire(moto_server, make_queues, sqs, capsys, monkeypatch) -> None:
    queues = make_queues()
    env = {**moto_server.client_env(), contract.METRICS_NAMESPACE: NAMESPACE}
    monkeypatch.setattr(schedule_sender, "_client", None)
    with environment({**dict(__import__("os").environ), **env}):
        record = schedule_sender.handler(fire_event(queues, scheduled_time="2000-01-01T00:00:00Z"))
    [line] = capsys.readouterr().out.splitlines()
    assert problems(line) == []
    document = json.loads(line)
    assert document["sender"] == schedule_sender.RECORD_MARKER
    assert document[schedule_sender.SENT] == 1 and document["task_id"] == record["task_id"]
    assert document[schedule_sender.LAG_SECONDS] > 86400  # sent long after its scheduled time
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE and directive["Dimensions"] == [[schedule_sender.SCHEDULE]]
    assert decoded(receive_body(sqs, queues.url))["headers"]["id"] == record["task_id"]


@pytest.mark.parametrize("event, line", [
    ({"task": "probe.echo"}, "the event lacks schedule, queue, queue_url, scheduled_time; "
                             "it must come from a batch-celery schedule"),
    ([], "the event is not a JSON object: []"),
])
def test_rejects_an_event_that_is_not_a_schedules_in_one_line(event, line) -> None:
    with pytest.raises(schedule_sender.ScheduleError) as error:
        schedule_sender.message_for(event)
    assert str(error.value) == line


def _json_value(rnd: random.Random, depth: int = 0):
    kind = rnd.random()
    if depth > 4 or kind < 0.4:
        return rnd.choice([rnd.randint(-10**6, 10**6), rnd.random(), True, False, None,
                           "".join(rnd.choice(string.printable + "éß'") for _ in range(rnd.randint(0, 60)))])
    if kind < 0.7:
        return [_json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 8))]
    return {"".join(rnd.choice(string.ascii_letters + " '") for _ in range(rnd.randint(1, 10))): _json_value(rnd, depth + 1)
            for _ in range(rnd.randint(0, 8))}


def test_argsrepr_is_celerys_saferepr_for_json_values() -> None:
    # The headers a producer writes for logs and monitors: nesting cut at three levels, text at 1024.
    rnd = random.Random(23)
    cases = [[], {}, [[[[1]]]], ["x" * 2000], ["word " * 300], {"k" * 1100: 1}, [["a" * 1020, "b"], "c"],
             ["a'b", 'q"', "new\nline", "back\\slash"], [1.5, True, None, -3, 10**30]]
    cases += [[_json_value(rnd) for _ in range(rnd.randint(0, 40))] for _ in range(300)]
    cases += [{key: _json_value(rnd) for key in "abcdefghij"} for _ in range(100)]
    truncated = 0
    for value in cases:
        expected = celery_saferepr(value, 1024, maxlevels=3)
        assert schedule_sender.saferepr(value) == expected, value
        truncated += len(expected) > 1024
    assert truncated > 50  # the cut is exercised, not only short values

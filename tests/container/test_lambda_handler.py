"""A Lambda pool's handler (lambda_handler.py), run in this process on real messages: a real Celery
producer sends them over the project's SQS transport to moto server, a stand-in of the event source
mapping (batch_celery_local/lambda_standin.py) receives them and deletes what the handler does not
report as a batch item failure, and SQS's own redrive policy moves what keeps failing to the DLQ.

One queue for the module (the function's environment is read once, like a function instance's):
every kind of message is sent at once and the queue is drained; each test then asserts one outcome.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from batch_celery import CONTAINER_DIR
from batch_celery_container import contract
from batch_celery_local.lambda_standin import EventSourceMapping
from batch_celery_local.queues import create_queue_pair, create_result_table, total_messages
from harness.lifecycle import environment, worker_env
from harness.probe_tasks import read_events
from tests.emf_spec import emf_lines

# The queue is drained through redeliveries (a visibility window per failed receive): tens of
# seconds of waiting, so make test-fast leaves it out.
pytestmark = pytest.mark.slow

NAMESPACE = "BatchCelery/LambdaTest"
# The shortest visibility timeout the worker accepts: a failed message is back within it.
VISIBILITY = 6
# A Lambda pool's minimum (props.py): a countdown waits out one receive.
MAX_RECEIVE_COUNT = 2
_names = itertools.count()


@pytest.fixture(scope="module")
def function(moto_server, tmp_path_factory):
    """The handler's worker as a function instance builds it from its environment, the producer
    app of an application, and the queues."""
    sqs, dynamodb = moto_server.client("sqs"), moto_server.client("dynamodb")
    name = f"lambda-{os.getpid()}-{next(_names)}"
    queues = create_queue_pair(sqs, name, visibility_timeout=VISIBILITY, max_receive_count=MAX_RECEIVE_COUNT)
    table = create_result_table(dynamodb, f"{name}-results")
    run_dir = tmp_path_factory.mktemp("lambda")
    env = worker_env(moto_server, queues, run_dir, **{
        contract.RESULT_TABLE: table, contract.METRICS_NAMESPACE: NAMESPACE, contract.POOL: "light",
        contract.DEAD_LETTER_QUEUE_URL: queues.dlq_url, contract.TASK_TIME_LIMIT_SECONDS: "4",
    })
    sys.path.insert(0, str(CONTAINER_DIR))  # the worker's modules import each other by name
    saved = {name: sys.modules.pop(name) for name in ("celery_app", "lambda_handler") if name in sys.modules}
    try:
        with environment(env):
            import lambda_handler
            from worker_settings import WorkerSettings

            worker = lambda_handler.worker_from_env()
            # The function writes its EMF lines to stdout; here to a file, to read them back.
            import task_metrics

            metrics = run_dir / "metrics.log"
            task_metrics.attach(str(metrics))
            settings = WorkerSettings.from_env(env)
            producer = Celery("application", set_as_current=False)
            producer.conf.update(settings.celery_config())
            producer.conf.update(result_backend=settings.result_backend)
            yield {"worker": worker, "producer": producer, "queues": queues, "sqs": sqs, "env": env,
                   "metrics": metrics}
    finally:
        for module in ("celery_app", "lambda_handler"):
            sys.modules.pop(module, None)
        sys.modules.update(saved)
        sys.path.remove(str(CONTAINER_DIR))


def _task_id_of(body: str) -> str | None:
    import lambda_handler

    try:
        return lambda_handler.unwrap(body)["headers"]["id"]
    except Exception:  # noqa: BLE001 - the malformed one
        return None


@pytest.fixture(scope="module")
def drained(function):
    """Every kind of message sent at once, then the queue drained by the stand-in mapping."""
    producer, sqs, queues = function["producer"], function["sqs"], function["queues"]
    sent = {}
    with environment(function["env"]):
        sent["ok"] = producer.send_task("probe.record", args=["ok"]).id
        sent["fail"] = producer.send_task("probe.fail", args=["bad"]).id
        sent["unknown"] = producer.send_task("no.such.task", args=[]).id
        sent["countdown"] = producer.send_task("probe.record", args=["later"], countdown=3).id
        sent["retry"] = producer.send_task("probe.retry", args=["again"]).id
        sent["far"] = producer.send_task("probe.record", args=["far"],
                                         eta=datetime.now(timezone.utc) + timedelta(hours=13)).id
        sent["slow"] = producer.send_task("probe.record", args=["slow", 10]).id
    malformed = sqs.send_message(QueueUrl=queues.url, MessageBody="this is no kombu message")["MessageId"]
    started = time.monotonic()
    mapping = EventSourceMapping(sqs, queues.url, function["worker"].handle)
    while total_messages(sqs, queues.url) and time.monotonic() - started < 120:
        mapping.poll(wait_seconds=1)
    assert total_messages(sqs, queues.url) == 0, "the queue did not drain in 120 s"
    dead = []
    while True:
        batch = sqs.receive_message(QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                    MessageAttributeNames=["All"]).get("Messages", [])
        if not batch:
            break
        dead += batch
    dead_by_task = {_task_id_of(m["Body"]): m for m in dead}
    out = function["metrics"].read_text()
    return {"sent": sent, "malformed": malformed, "mapping": mapping, "dead": dead_by_task,
            "events": read_events(function["env"]["PROBE_RECORD_FILE"]), "emf": emf_lines(out),
            "elapsed": time.monotonic() - started}


def _result(function, task_id: str):
    """The task's result as an application reads it (Celery's DynamoDB backend)."""
    with environment(function["env"]):
        return function["producer"].AsyncResult(task_id)


def test_success_stores_the_result_deletes_the_message_and_writes_one_metrics_line(function, drained) -> None:
    task_id = drained["sent"]["ok"]
    result = _result(function, task_id)
    assert (result.state, result.result) == ("SUCCESS", "ok")
    assert task_id not in drained["dead"]
    assert drained["events"]["done"][task_id] == 1
    lines = [line for line in drained["emf"] if line.get("task_id") == task_id]
    assert len(lines) == 1, drained["emf"]
    assert (lines[0]["pool"], lines[0]["task"], lines[0]["outcome"]) == ("light", "probe.record", "succeeded")


def test_a_failing_task_is_redelivered_then_dead_lettered(function, drained) -> None:
    task_id = drained["sent"]["fail"]
    assert drained["events"]["fail"][task_id] == MAX_RECEIVE_COUNT  # run on every receive
    assert task_id in drained["dead"]
    assert _result(function, task_id).state == "FAILURE"
    failed_lines = [line for line in drained["emf"] if line.get("task_id") == task_id]
    assert [line["outcome"] for line in failed_lines] == ["failed"] * MAX_RECEIVE_COUNT


def test_a_malformed_body_is_a_batch_item_failure_until_the_dead_letter_queue_holds_it(drained) -> None:
    assert drained["mapping"].outcomes[drained["malformed"]] == ["failed"] * MAX_RECEIVE_COUNT
    assert drained["dead"][None]["Body"] == "this is no kombu message"


def test_an_unknown_task_is_kept_for_the_dead_letter_queue(function, drained) -> None:
    task_id = drained["sent"]["unknown"]
    assert task_id in drained["dead"]
    assert _result(function, task_id).state == "PENDING"  # never run, no result


def test_a_countdown_waits_in_sqs_and_runs_once_when_due(drained) -> None:
    task_id = drained["sent"]["countdown"]
    assert drained["events"]["done"][task_id] == 1
    assert task_id not in drained["dead"]


def test_celery_retries_run_with_their_countdown_then_the_last_failure_is_dead_lettered(drained) -> None:
    task_id = drained["sent"]["retry"]
    assert drained["events"]["fail"][task_id] == 3  # the first run and max_retries 2 retries
    reason = drained["dead"][task_id]["MessageAttributes"]["batch_celery_reason"]["StringValue"]
    assert reason == "failed after 2 Celery retries (max_retries 2)"


def test_an_eta_beyond_the_sqs_hold_is_dead_lettered_at_once_with_its_reason(drained) -> None:
    task_id = drained["sent"]["far"]
    assert drained["events"].get("start", {}).get(task_id, 0) == 0
    reason = drained["dead"][task_id]["MessageAttributes"]["batch_celery_reason"]["StringValue"]
    assert reason.startswith("eta ") and "s ahead; at most" in reason


def test_a_task_past_its_time_limit_fails_with_the_time_limit(function, drained) -> None:
    task_id = drained["sent"]["slow"]
    assert drained["events"]["start"][task_id] == MAX_RECEIVE_COUNT
    assert drained["events"].get("done", {}).get(task_id, 0) == 0
    result = _result(function, task_id)
    assert result.state == "FAILURE"
    assert "TimeLimitExceeded" in type(result.result).__name__
    assert task_id in drained["dead"]

"""A task the worker dead-letters itself is in the dead-letter queue once and never runs again, with
its message attributes (sqs_transport/dead_lettering.py).

The worker copies the message to the dead-letter queue and deletes the original. Real worker
processes against moto server; the failed delete is played by an ApiProxy in front of it.
"""

from __future__ import annotations

import pytest

from batch_celery_local.queues import message_counts, total_messages
from harness.faults import ApiProxy, FailDeleteAfterSend
from harness.lifecycle import fill, running_script, worker_env

pytestmark = pytest.mark.slow

REASON, FROM = "batch_celery_reason", "batch_celery_dead_lettered_from"


def _letters(sqs, queues) -> list[dict]:
    """Every message in the dead-letter queue (received and left there)."""
    letters, seen = [], set()
    for _ in range(5):
        answer = sqs.receive_message(QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                     VisibilityTimeout=30, WaitTimeSeconds=1)
        for letter in answer.get("Messages", []):
            if letter["MessageId"] not in seen:
                seen.add(letter["MessageId"])
                letters.append(letter)
        if not answer.get("Messages"):
            break
    return letters


def test_failed_delete_after_dead_lettering_neither_runs_again_nor_copies_twice(moto_server, sqs, make_queues, tmp_path):
    # probe.retry uses its max_retries=2 and is dead-lettered by the worker after its third run.
    # The delete of the original then fails, SDK retries included, for 12 s: twice the visibility
    # timeout, so an original that is only held by the heartbeat would be received and run again.
    queues = make_queues(visibility_timeout=6, max_receive_count=3)
    fault = FailDeleteAfterSend(queues.dlq_name, seconds=12)
    with ApiProxy(moto_server.endpoint, decide_call=fault) as proxy:
        env = worker_env(moto_server, queues, tmp_path, endpoint=proxy.endpoint, HEARTBEAT_SECONDS=2,
                         TASK_TIME_LIMIT_SECONDS=5)
        fill(env, 1, "probe.retry", args=["dead-letter"])
        with running_script(env, tmp_path / "out.log") as run:
            status = run.wait(timeout=150)
        output = run.output

    runs = sum(run.events().get("fail", {}).values())
    letters = _letters(sqs, queues)
    print(f"failed delete: {fault.failed} failed DeleteMessage attempts; runs {runs}; dead-letter copies "
          f"{len(letters)}; left in the queue {total_messages(sqs, queues.url)}")
    assert fault.failed >= 2, "the fault never hit the delete of the dead-lettered original"
    assert status == 0, output[-3000:]
    assert runs == 3, output[-3000:]  # max_retries + 1, none after the dead-lettering
    assert len(letters) == 1, [letter["MessageAttributes"] for letter in letters]
    assert fault.deleted_at is not None, "the original's delete was never retried"
    assert total_messages(sqs, queues.url) == 0
    assert "the delete is retried" in output


@pytest.mark.parametrize("own_attributes", [3, 10])
def test_dead_letter_copy_keeps_the_original_message_attributes(moto_server, sqs, make_queues, tmp_path, own_attributes):
    queues = make_queues(visibility_timeout=30)
    env = worker_env(moto_server, queues, tmp_path)
    # A real task message whose countdown lies beyond SQS's 12 h hold (the worker dead-letters it at
    # once), sent again with the producer's message attributes.
    scratch = make_queues(visibility_timeout=30)
    fill(worker_env(moto_server, scratch, tmp_path), 1, "probe.record", args=["too-far"], countdown=13 * 3600)
    [prepared] = sqs.receive_message(QueueUrl=scratch.url)["Messages"]
    attributes = {"tenant": {"DataType": "String", "StringValue": "acme"},
                  "priority": {"DataType": "Number", "StringValue": "7"},
                  "signature": {"DataType": "Binary", "BinaryValue": b"\x00\xffsig"}}
    for index in range(len(attributes), own_attributes):
        attributes[f"extra{index}"] = {"DataType": "String.custom", "StringValue": f"value {index}"}
    sent = sqs.send_message(QueueUrl=queues.url, MessageBody=prepared["Body"], MessageAttributes=attributes)

    with running_script(env, tmp_path / "out.log") as run:
        assert run.wait(timeout=60) == 0, run.output[-3000:]

    assert "start" not in run.events()
    [letter] = _letters(sqs, queues)
    copied = letter["MessageAttributes"]
    assert letter["Body"] == prepared["Body"]
    for name, value in attributes.items():
        assert {k: v for k, v in copied[name].items() if k in value} == value, name
    if own_attributes <= 8:
        assert "ahead; at most" in copied[REASON]["StringValue"]
        assert copied[FROM]["StringValue"] == sent["MessageId"]
    else:
        # SQS takes 10 at most: the producer's stay, the reason is in the worker's log.
        assert set(copied) == set(attributes)
        assert f"goes without {REASON}, {FROM}" in run.output
    assert total_messages(sqs, queues.url) == 0
    assert message_counts(sqs, queues.dlq_url)[1] == 1  # the one this test received

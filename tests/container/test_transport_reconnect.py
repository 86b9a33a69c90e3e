"""A consumer restart (a connection error after connect) while a task runs: the task keeps its message.

Celery answers a connection error in its event loop by closing the channel and consuming on a new
one. kombu's ``Channel.close`` gives back every unacked message, running ones included; here only
the messages no task has started go back (sqs_transport/reconnect.py). The error is real: the worker
takes its credentials from a container credential endpoint (as a Batch job does) that fails for a
few seconds while the credentials are within botocore's mandatory refresh window, so signing the
next ReceiveMessage raises a BotoCoreError inside the event loop.
"""

from __future__ import annotations

import time

import pytest

from batch_celery_local.queues import message_counts, total_messages
from harness.faults import CredentialServer
from harness.lifecycle import fill, running_script, wait_until, worker_env

pytestmark = pytest.mark.slow

RESTARTED = "Connection to broker lost"


def _restart_consumer_during(run, credentials: CredentialServer) -> None:
    """Fail the credential endpoint until the worker's consumer has restarted, then heal it."""
    with credentials.outage():
        wait_until(lambda: RESTARTED in run.output, timeout=30, interval=0.2, what="the consumer to restart")


def test_reconnect_keeps_running_task_held_and_acks_it(moto_server, sqs, make_queues, tmp_path):
    # A 12 s window: a message given back at the restart is visible at once and runs again at
    # once (in this worker, after the first run), long before its visibility would run out.
    queues = make_queues(visibility_timeout=12)
    with CredentialServer() as credentials:
        env = credentials.env(worker_env(moto_server, queues, tmp_path, TASK_TIME_LIMIT_SECONDS=60,
                                         HEARTBEAT_SECONDS=2, MAX_FAILED_READINGS=100, IDLE_SECONDS=4, WORKER_CONCURRENCY=2))
        fill(env, 1, "probe.record", args=["reconnect", 25])
        with running_script(env, tmp_path / "out.log") as run:
            wait_until(lambda: run.events().get("start"), timeout=60, what="the task to start")
            _restart_consumer_during(run, credentials)
            restarted_at = time.monotonic()
            # The running task's message stays in flight: held by this worker's heartbeat.
            time.sleep(3)
            visible, in_flight, _ = message_counts(sqs, queues.url)
            status = run.wait(timeout=50)
        output = run.output

    events = run.events()
    runs = sorted(events.get("start", {}).values())
    print(f"reconnect: restart {time.monotonic() - restarted_at:.0f} s before the end; runs per task {runs}; "
          f"queue after the restart visible={visible} in flight={in_flight}; left at the end "
          f"{total_messages(sqs, queues.url)}")
    assert RESTARTED in output
    assert (visible, in_flight) == (0, 1), output[-3000:]
    assert status == 0, output[-3000:]
    assert runs == [1], events
    assert list(events["done"].values()) == [1], events
    assert total_messages(sqs, queues.url) == 0, "the running task's ack did not delete its message"

"""The short form of ``make reliability``: a few fault scenarios with small counts, real workers on moto.

Each asserts that no task was lost and where the bad ones ended (the dead-letter queue). The
figures of the full suite come from ``python -m bench.reliability``, not from here.
"""

from __future__ import annotations

import random

import pytest

from batch_celery_local import motoserver
from bench import reliability

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(moto_server, tmp_path, monkeypatch):
    # The in-process task sender takes its credentials from boto3's chain, as a client app would.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", motoserver.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", motoserver.SECRET_KEY)
    lab = reliability.Lab(moto_server, tmp_path, random.Random(6), log=print)
    try:
        yield lab
    finally:
        lab.stop_all()


def test_sigkilled_workers_lose_no_task(lab):
    outcome = reliability.sigkill_workers(lab, tasks=20, workers=2, kills=2)

    assert (outcome.submitted, outcome.done, outcome.lost) == (20, 20, 0), outcome
    assert not outcome.failures, outcome


def test_poison_tasks_end_in_dead_letter_queue_and_others_finish(lab):
    outcome = reliability.poison_tasks(lab, tasks=4, workers=1)

    assert (outcome.submitted, outcome.done, outcome.in_dlq, outcome.lost) == (6, 4, 2, 0), outcome
    assert not outcome.failures, outcome


def test_malformed_messages_end_in_dead_letter_queue_and_worker_keeps_serving(lab):
    kinds = len(reliability.malformed_bodies("q"))

    outcome = reliability.malformed_messages(lab, tasks=kinds + 2)

    # Every kind is rejected, none deleted: before the worker's fixes, undecodable bodies were
    # deleted (Celery acks them) and a body of the wrong shape stopped the worker.
    assert (outcome.done, outcome.in_dlq, outcome.lost) == (kinds + 2, kinds, 0), outcome
    assert not outcome.failures, outcome


def test_scaler_never_submits_beyond_cap_under_batch_faults(lab):
    outcome = reliability.scaler_under_faults(lab, runs=10, cap=5, backlog=100)

    assert not outcome.failures, outcome.note


# --- a worker holds a message only while it works on it (targets asserted) --------------------


# The container kill (8) and TERM past the grace (9) are tested on their own in
# tests/container/test_lifecycle.py; their full forms with figures run in make reliability.


def test_message_arriving_while_a_worker_stops_is_never_stranded(lab):
    # Sent 0, 2.5 and 5 s after the stop decision (three queues side by side), 60 s window: a
    # message taken by the stopping worker's last long poll would sit in flight for the window.
    outcome = reliability.stop_race(lab, runs=3, lanes=3)
    print(outcome.note)

    assert outcome.figures["stranded"] == 0, outcome.failures
    assert (outcome.submitted, outcome.done, outcome.lost) == (3, 3, 0), outcome
    assert not outcome.failures, outcome

"""The pure scaling policy, table-driven."""

from __future__ import annotations

import pytest

from batch_celery.scaler.policy import (MIN_TASK_SECONDS, submission_plan, workers_for_target, workers_needed,
                                        workers_to_submit,
                                        workers_wanted)


@pytest.mark.parametrize(
    ("backlog", "messages_per_worker", "max_workers", "expected"),
    [
        pytest.param(0, 10, 48, 0, id="zero backlog wants no worker"),
        pytest.param(1, 10, 48, 1, id="one message wants one worker"),
        pytest.param(10, 10, 48, 1, id="exactly one worker's share"),
        pytest.param(11, 10, 48, 2, id="rounds up"),
        pytest.param(470, 10, 48, 47, id="below the cap"),
        pytest.param(1000, 10, 48, 48, id="above the cap is clamped"),
        pytest.param(5, 1, 3, 3, id="one message per worker, capped"),
        pytest.param(5, 10, 0, 0, id="cap of zero switches scaling off"),
        # KEDA aws-sqs-queue docs: "if one pod can handle 10 messages, set the queue length target
        # to 10. If the actual messages in the SQS Queue is 30, the scaler scales to 3 pods."
        # https://keda.sh/docs/2.11/scalers/aws-sqs
        pytest.param(30, 10, 100, 3, id="KEDA docs: queueLength 10, 30 messages -> 3"),
        # AWS EC2 Auto Scaling "Scaling policy based on Amazon SQS": acceptable backlog per
        # instance = 10 s latency / 0.1 s per message = 100; a backlog of 1500 -> 15 instances.
        # https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-using-sqs-queue.html
        pytest.param(1500, 100, 1000, 15, id="AWS docs: 1500 messages at 100 per instance -> 15"),
    ],
)
def test_workers_wanted(backlog, messages_per_worker, max_workers, expected):
    assert workers_wanted(backlog, messages_per_worker, max_workers) == expected


@pytest.mark.parametrize(
    ("visible", "in_flight", "delayed", "active", "mpw", "max_workers", "expected"),
    [
        pytest.param(0, 0, 0, 0, 10, 48, 0, id="empty queue submits nothing"),
        pytest.param(4, 0, 0, 0, 10, 48, 1, id="a trickle below the seed alarm still gets a worker"),
        pytest.param(35, 0, 0, 0, 10, 48, 4, id="submits the whole deficit"),
        pytest.param(1000, 0, 0, 0, 10, 48, 48, id="never beyond the cap"),
        pytest.param(1000, 0, 0, 11, 10, 48, 37, id="cap counts workers already active"),
        pytest.param(1000, 0, 0, 48, 10, 48, 0, id="at the cap submits nothing"),
        pytest.param(1000, 0, 0, 60, 10, 48, 0, id="above the cap never negative"),
        pytest.param(35, 0, 0, 4, 10, 48, 0, id="enough idle or starting workers already active"),
        pytest.param(35, 0, 0, 2, 10, 48, 2, id="only the missing workers"),
        pytest.param(0, 0, 3, 0, 10, 48, 1, id="delayed messages count as waiting"),
        # Each in-flight message holds a worker until it is acked, however long its task runs:
        # 20 workers busy on 900 s tasks cannot take the 180 waiting ones. KEDA's
        # ceil((180 + 20) / 10) = 20 would submit nothing; this rule wants 20 + 18.
        pytest.param(180, 20, 0, 20, 10, 48, 18, id="busy workers do not count as free: long tasks"),
        pytest.param(1, 4, 0, 4, 10, 48, 1, id="one waiting message, every worker busy: one more"),
        pytest.param(1, 4, 0, 5, 10, 48, 0, id="one waiting message, one worker free: none"),
        pytest.param(10, 10, 10, 10, 10, 48, 2, id="all three counts add up: 10 busy + 20 waiting"),
        # In flight with no active worker to hold it: a crashed job's message waiting out the
        # visibility window. A worker started now would find nothing visible and idle out; the
        # message is counted once it is visible again.
        pytest.param(0, 5, 0, 0, 10, 48, 0, id="orphaned in-flight messages start no worker"),
        pytest.param(3, 5, 0, 0, 10, 48, 1, id="orphans do not hide the visible backlog"),
        # One worker holding 100 countdown (ETA) messages is one busy worker, not 100 (nor 10):
        # companions would find nothing visible, leave and be submitted again every decision.
        pytest.param(0, 100, 0, 1, 10, 48, 0, id="ETA messages held by one worker start nobody"),
        pytest.param(0, 5, 0, 1, 10, 48, 0, id="in flight with its worker alive"),
        # KEDA ScaledJob default strategy: new jobs = maxScale - runningJobCount
        # (https://keda.sh/docs/latest/reference/scaledjob-spec, "scalingStrategy"), maxScale here
        # being what the waiting messages need beside the busy workers.
        pytest.param(20, 0, 0, 1, 10, 100, 1, id="KEDA ScaledJob default: 2 wanted - 1 running"),
    ],
)
def test_workers_to_submit(visible, in_flight, delayed, active, mpw, max_workers, expected):
    assert workers_to_submit(visible, in_flight, delayed, active, mpw, max_workers) == expected


@pytest.mark.parametrize(
    ("in_flight", "active", "tasks_per_worker", "expected"),
    [
        pytest.param(8, 4, 1, 4, id="concurrency 1: at most one message per active worker is busy"),
        pytest.param(8, 4, 4, 2, id="concurrency 4: 8 messages fill 2 workers"),
        pytest.param(9, 4, 4, 3, id="a partly filled worker is busy"),
        pytest.param(0, 4, 4, 0, id="nothing in flight: nobody busy"),
    ],
)
def test_busy_workers_follow_the_worker_concurrency(in_flight, active, tasks_per_worker, expected):
    # With nothing waiting, the wanted count is the busy count.
    assert workers_needed(0, in_flight, 0, active, 10, 48, tasks_per_worker=tasks_per_worker) == expected


def test_workers_needed_is_capped_and_matches_what_is_submitted():
    assert workers_needed(500, 40, 0, 40, 10, 48) == 48
    assert workers_needed(15, 3, 0, 3, 10, 48) == 5
    assert workers_to_submit(15, 3, 0, 3, 10, 48) == workers_needed(15, 3, 0, 3, 10, 48) - 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(visible=-1), "visible must be a whole number >= 0, got -1"),
        (dict(in_flight=-2), "in_flight must be a whole number >= 0, got -2"),
        (dict(delayed=-3), "delayed must be a whole number >= 0, got -3"),
        (dict(active_workers=-1), "active_workers must be a whole number >= 0, got -1"),
        (dict(messages_per_worker=0), "messages_per_worker must be a whole number >= 1, got 0"),
        (dict(max_workers=-1), "max_workers must be a whole number >= 0, got -1"),
        (dict(visible=1.5), "visible must be a whole number >= 0, got 1.5"),
        (dict(max_workers=True), "max_workers must be a whole number >= 0, got True"),
        (dict(tasks_per_worker=0), "tasks_per_worker must be a whole number >= 1, got 0"),
        (dict(tasks_per_worker=2.0), "tasks_per_worker must be a whole number >= 1, got 2.0"),
    ],
)
def test_rejects_invalid_arguments(kwargs, message):
    arguments = dict(visible=1, in_flight=0, delayed=0, active_workers=0, messages_per_worker=10, max_workers=48)
    arguments.update(kwargs)
    with pytest.raises(ValueError) as error:
        workers_to_submit(**arguments)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("workers", "plan"),
    [
        (0, []),
        (1, [1]),
        (2, [2]),
        (48, [48]),
        (10_000, [10_000]),
        (10_001, [10_000, 1]),
        (25_000, [10_000, 10_000, 5_000]),
    ],
)
def test_submission_plan_respects_array_limits(workers, plan):
    assert submission_plan(workers) == plan


def test_rejects_negative_submission():
    with pytest.raises(ValueError, match="workers must be a whole number >= 0, got -1"):
        submission_plan(-1)


# --- Target sizing (workers_for_target): start every waiting message within the target wait.

@pytest.mark.parametrize(
    ("visible", "in_flight", "active", "starting", "task_seconds", "expected_wanted"),
    [
        pytest.param(20, 0, 0, 0, None, 20, id="unknown run time: a worker per waiting message"),
        pytest.param(20, 0, 0, 0, 7200.0, 20, id="2 h tasks: a worker each"),
        # A new worker polls at 60 s and starts 20 s tasks at 60 and 80 s, within 90 s.
        pytest.param(20, 0, 0, 0, 20.0, 10, id="20 s tasks: two per new worker"),
        # 45 s tasks, one busy worker: it frees up within a task (45 s) and starts the waiting one
        # at 45 s, before a new worker (60 s) could: no new worker.
        pytest.param(1, 1, 1, 0, 45.0, 1, id="a busy worker that frees up first is waited for"),
        pytest.param(3, 1, 1, 0, 45.0, 2, id="what the busy worker cannot start gets a new one"),
        # A busy worker on a 2 h task frees up too late for the target: the waiting one gets its own.
        pytest.param(1, 1, 1, 0, 7200.0, 2, id="a long task's worker does not free up in time"),
        # Workers still starting take what they can within the target too.
        pytest.param(4, 0, 2, 2, 20.0, 2, id="starting workers already cover the backlog"),
        # A RUNNING worker that holds nothing while messages wait is leaving (or its job's status
        # is read late): it covers nothing.
        pytest.param(2, 0, 2, 0, 20.0, 3, id="a listed idle worker with messages waiting covers nothing"),
        pytest.param(1000, 0, 0, 0, 20.0, 48, id="capped"),
        pytest.param(0, 5, 5, 0, 20.0, 5, id="nothing waiting wants no new worker"),
    ],
)
def test_workers_for_target(visible, in_flight, active, starting, task_seconds, expected_wanted):
    sizing = workers_for_target(visible, in_flight, 0, active, 48, target_wait_seconds=90, start_seconds=60,
                                task_seconds=task_seconds, starting_workers=starting)

    assert sizing.wanted == expected_wanted
    assert sizing.basis == ("unknown" if task_seconds is None else "learned")


def test_a_target_shorter_than_a_start_is_met_as_closely_as_a_start_allows():
    sizing = workers_for_target(5, 0, 0, 0, 48, target_wait_seconds=10, start_seconds=60, task_seconds=1.0)

    assert (sizing.per_new_worker, sizing.wanted) == (1, 5)


def test_concurrency_counts_slots_not_workers():
    # Workers of concurrency 4, 20 s tasks: each slot starts 2 within 90 s, a worker 8.
    sizing = workers_for_target(16, 0, 0, 0, 48, target_wait_seconds=90, start_seconds=60, task_seconds=20.0,
                                tasks_per_worker=4)

    assert (sizing.per_new_worker, sizing.wanted) == (8, 2)


def test_no_task_is_taken_as_shorter_than_a_message_takes():
    # Millisecond tasks: each message still costs its receive, ack and result write.
    sizing = workers_for_target(100_000, 0, 0, 0, 48, target_wait_seconds=90, start_seconds=60,
                                task_seconds=0.001)

    assert sizing.task_seconds == MIN_TASK_SECONDS
    assert sizing.per_new_worker == int(30 / MIN_TASK_SECONDS) + 1

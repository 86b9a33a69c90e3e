"""The pure scaling policy, table-driven."""

from __future__ import annotations

import pytest

from batch_celery.scaler.policy import submission_plan, workers_to_submit, workers_wanted


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
        pytest.param(35, 0, 0, 4, 10, 48, 0, id="enough workers already active"),
        pytest.param(35, 0, 0, 2, 10, 48, 2, id="only the missing workers"),
        pytest.param(0, 5, 0, 0, 10, 48, 1, id="in-flight messages count: a lost worker is replaced"),
        pytest.param(0, 5, 0, 1, 10, 48, 0, id="in flight with its worker alive"),
        pytest.param(0, 0, 3, 0, 10, 48, 1, id="delayed messages count"),
        pytest.param(10, 10, 10, 0, 10, 48, 3, id="all three counts add up"),
        # KEDA ScaledJob default strategy: new jobs = maxScale - runningJobCount, where maxScale is
        # ceil(messages / queueLength) capped by maxReplicaCount
        # (https://keda.sh/docs/latest/reference/scaledjob-spec, "scalingStrategy"):
        # 30 messages, queueLength 10, 1 job running -> 2 new jobs.
        pytest.param(20, 10, 0, 1, 10, 100, 2, id="KEDA ScaledJob default: 3 wanted - 1 running"),
    ],
)
def test_workers_to_submit(visible, in_flight, delayed, active, mpw, max_workers, expected):
    assert workers_to_submit(visible, in_flight, delayed, active, mpw, max_workers) == expected


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

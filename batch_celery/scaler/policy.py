"""How many worker jobs to submit: pure arithmetic, no I/O, shared by the Lambda, the local run
and the scaling simulator.

The rule is the one the best queue-driven autoscalers use:

* KEDA's ``aws-sqs-queue`` scaler counts "actual messages" as ApproximateNumberOfMessages plus
  ApproximateNumberOfMessagesNotVisible (in flight: received, not yet deleted), and runs
  ``ceil(actual / queueLength)`` replicas; its docs' example: one pod handles 10 messages, 30
  messages in the queue -> 3 pods (https://keda.sh/docs/2.11/scalers/aws-sqs). For jobs (ScaledJob)
  its default strategy creates ``maxScale - runningJobCount`` new jobs, where ``maxScale`` is that
  replica count capped by ``maxReplicaCount``
  (https://keda.sh/docs/latest/reference/scaledjob-spec, "scalingStrategy").
* AWS sizes an SQS worker fleet by "acceptable backlog per instance = longest acceptable latency /
  average processing time per message" (e.g. 10 s / 0.1 s = 100 messages; a backlog of 1500 then
  wants 15 instances), https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-using-sqs-queue.html.

``messages_per_worker`` is exactly that "acceptable backlog per worker": with 30 s tasks and a
5-minute latency target, 300 s / 30 s = 10. Unlike KEDA's default, delayed messages are counted
too: they become visible on their own and a worker that exits before they do would strand them.
Workers scale in by themselves (each exits after the queue has been empty for a while), so the
policy only ever adds workers; it never asks to stop one.
"""

from __future__ import annotations

import math

# AWS Batch array jobs have between 2 and 10,000 children
# (https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html).
ARRAY_MIN_SIZE = 2
ARRAY_MAX_SIZE = 10_000


def _require_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")


def workers_wanted(backlog: int, messages_per_worker: int, max_workers: int) -> int:
    """Workers that should exist for ``backlog`` messages: ``clamp(ceil(backlog / mpw), 0, max)``.

    ``messages_per_worker`` is the acceptable backlog per worker (see the module docstring);
    ``max_workers`` is what the compute environment can run at once.
    """
    _require_count("backlog", backlog)
    _require_count("max_workers", max_workers)
    if isinstance(messages_per_worker, bool) or not isinstance(messages_per_worker, int) or messages_per_worker < 1:
        raise ValueError(f"messages_per_worker must be a whole number >= 1, got {messages_per_worker!r}")
    return min(math.ceil(backlog / messages_per_worker), max_workers)


def workers_to_submit(
    visible: int,
    in_flight: int,
    delayed: int,
    active_workers: int,
    messages_per_worker: int,
    max_workers: int,
) -> int:
    """New worker jobs to submit now: the wanted count minus the workers already active or coming.

    ``active_workers`` counts every worker job that is SUBMITTED, PENDING, RUNNABLE, STARTING or
    RUNNING, so workers already on their way are never duplicated. The result never takes the
    total beyond ``max_workers`` and is never negative (extra workers drain away by idling out).
    """
    for name, value in (("visible", visible), ("in_flight", in_flight), ("delayed", delayed),
                        ("active_workers", active_workers)):
        _require_count(name, value)
    # wanted <= max_workers, so wanted - active can never take the total beyond the cap.
    wanted = workers_wanted(visible + in_flight + delayed, messages_per_worker, max_workers)
    return max(0, wanted - active_workers)


def submission_plan(workers: int) -> list[int]:
    """Job sizes that start ``workers`` workers: ``[]``, ``[1]`` (a single job), ``[n]`` (one
    array job of n, 2 <= n <= 10,000), or several array jobs when n is above the array limit.

    A size of 1 means "submit a plain job": Batch rejects an array of size 1.
    """
    _require_count("workers", workers)
    plan = []
    remaining = workers
    while remaining > 0:
        size = min(remaining, ARRAY_MAX_SIZE)
        plan.append(size)
        remaining -= size
    return plan

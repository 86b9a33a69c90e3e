"""How many worker jobs to submit: pure arithmetic, no I/O, shared by the Lambda, the local run
and the scaling simulator.

**The default: a target wait** (``workers_for_target``, below): start the workers that start every
waiting message within the pool's ``target_wait_seconds``, from the run time its tasks reported
and the start its jobs took (docs/scaling.md). What follows is the rule ``messages_per_worker``
selects instead, and why it counts in-flight messages as it does (the target rule does too).

**The override rule.** ``wanted = min(busy + ceil((visible + delayed) / messages_per_worker), max_workers)``
with ``busy = min(ceil(in_flight / tasks_per_worker), active_workers)``; submit ``wanted - active``.
In words: every in-flight message holds a worker until it is acked, and every
``messages_per_worker`` messages that nobody holds yet get a worker that holds nothing (idle, or
on its way). Delayed messages count as waiting: they become visible on their own and a worker
that exits before they do would strand them. Workers scale in by themselves (each exits after it
has held nothing, with nothing waiting, for a while), so the policy only ever adds workers.

**Where it comes from.** AWS sizes an SQS worker fleet by "acceptable backlog per instance =
longest acceptable latency / average processing time per message" (e.g. 10 s / 0.1 s = 100; a
backlog of 1500 then wants 15 instances,
https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-using-sqs-queue.html); ``messages_per_worker``
is that figure (300 s / 30 s = 10). KEDA's ``aws-sqs-queue`` scaler applies it to visible plus
in-flight messages, ``ceil((visible + in_flight) / queueLength)`` replicas
(https://keda.sh/docs/2.11/scalers/aws-sqs), and its ScaledJob default strategy submits
``maxScale - runningJobCount`` (https://keda.sh/docs/latest/reference/scaledjob-spec).

**Why not KEDA's count of in-flight messages** (compared with ``python -m bench.scaling --in-flight-count keda``).
KEDA's rule assumes a busy worker also clears ``messages_per_worker - 1`` waiting messages within
the latency budget, true only if its tasks are as short as ``messages_per_worker`` assumes. With
900 s tasks and the default 10, 200 tasks got 20 workers: drain 9048 s (2.0x the oracle), p95 wait
8145 s; with this rule 48 workers: drain 4548 s (1.01x), p95 2850 s, for 1.7% more worker-seconds
(185,184 vs 182,160). With ``messages_per_worker`` 50, KEDA's rule left 104 of those tasks unstarted
after 6 h. On the ramp (30 s tasks, the case KEDA's rule is built for) this rule gives p95 wait 41 s
instead of 258 s for 11% more worker-seconds (33,820 vs 30,438); on 4 tasks, 3 workers instead of 1
(p95 110 s vs 140 s, +216 worker-seconds). The extra cost is bounded: a worker that finds nothing
to do costs its start and one idle window (about 110 s) and leaves; an undercount costs hours of
waiting. So a queue with tasks of mixed or unknown length is served without tuning, and
``max_workers`` is the cost cap.

**In-flight messages no active worker can run** (``busy`` is capped by ``active_workers``): the
message of a crashed job waits out the visibility window (the worker's heartbeat stopped) and
countdown/ETA messages sit in a worker's memory. Counting a worker for each would start workers
that find nothing visible, idle out and are submitted again every decision; they are counted
once they are visible again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# AWS Batch array jobs have between 2 and 10,000 children
# (https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html); a plan never asks for an
# array of 1 (submission_plan submits a plain job instead).
ARRAY_MAX_SIZE = 10_000


# What the scaler expects from SubmitJob to a worker that polls, by compute kind. Fargate: the
# Batch scheduler (seconds to tens of seconds) plus a task's start, "about 30 s" by AWS and 53-62 s
# measured by a third party for a 413 MB image (docs/scaling.md); EC2: an instance launch and its
# ECS agent join before that, a few minutes when no instance is up. A guess only shifts how
# much a busy worker that frees up first is worth against a new one.
START_SECONDS = {"fargate": 60, "fargate_spot": 60, "ec2": 180, "ec2_spot": 180}


# A busy slot's task is taken to have this share of a mean run time left. Its age is unknown: half
# a task for run times that are all alike, a whole one for run times as spread as an exponential
# (whose remaining time does not shrink with age), more for a long tail. A whole one: on the
# simulator's mixed workload (log-normal, 10 s .. 30 min) half a task gave p95 255 s for a 90 s
# target, a whole one 79 s, for 1.32x busy time instead of 1.19x (python -m bench.scaling).
BUSY_REMAINING = 1.0
# A task's run time as the workers report it leaves out its message's receive, ack and result
# write: about 0.1 s a task for one worker process on moto here (8.6 trivial tasks a second,
# FACTS), so no task is taken as shorter than this (else a millisecond task would give one worker
# tens of thousands of messages).
MIN_TASK_SECONDS = 0.2


def expected_start_seconds(compute: str) -> int:
    return START_SECONDS.get(compute, max(START_SECONDS.values()))


def _require_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")


def workers_wanted(backlog: int, messages_per_worker: int, max_workers: int) -> int:
    """Workers for ``backlog`` messages that nobody holds: ``clamp(ceil(backlog / mpw), 0, max)``.

    ``messages_per_worker`` is the acceptable backlog per worker (see the module docstring);
    ``max_workers`` is what the compute environment can run at once. (Applied to visible plus
    in-flight messages this is KEDA's rule, which the simulator keeps for comparison.)
    """
    _require_count("backlog", backlog)
    _require_count("max_workers", max_workers)
    if isinstance(messages_per_worker, bool) or not isinstance(messages_per_worker, int) or messages_per_worker < 1:
        raise ValueError(f"messages_per_worker must be a whole number >= 1, got {messages_per_worker!r}")
    return min(math.ceil(backlog / messages_per_worker), max_workers)


def workers_needed(
    visible: int,
    in_flight: int,
    delayed: int,
    active_workers: int,
    messages_per_worker: int,
    max_workers: int,
    *,
    tasks_per_worker: int = 1,
) -> int:
    """Workers that should exist: the busy ones plus one free worker per ``messages_per_worker``
    messages nobody holds yet, capped at ``max_workers``.

    ``busy = min(ceil(in_flight / tasks_per_worker), active_workers)``: every in-flight message
    occupies a worker slot until it is acked, however long its task runs; in-flight messages
    beyond what the active workers can run (a crashed job's message waiting out the visibility
    window, countdown/ETA messages a worker keeps in memory) never ask for a worker of their own.
    ``tasks_per_worker`` is the worker's concurrency (``worker_concurrency``).
    """
    for name, value in (("visible", visible), ("in_flight", in_flight), ("delayed", delayed),
                        ("active_workers", active_workers)):
        _require_count(name, value)
    if isinstance(tasks_per_worker, bool) or not isinstance(tasks_per_worker, int) or tasks_per_worker < 1:
        raise ValueError(f"tasks_per_worker must be a whole number >= 1, got {tasks_per_worker!r}")
    busy = min(math.ceil(in_flight / tasks_per_worker), active_workers)
    waiting = workers_wanted(visible + delayed, messages_per_worker, max_workers)
    return min(busy + waiting, max_workers)


def workers_to_submit(
    visible: int,
    in_flight: int,
    delayed: int,
    active_workers: int,
    messages_per_worker: int,
    max_workers: int,
    *,
    tasks_per_worker: int = 1,
) -> int:
    """New worker jobs to submit now: ``workers_needed`` minus the workers already active or coming.

    ``active_workers`` counts every worker job that is SUBMITTED, PENDING, RUNNABLE, STARTING or
    RUNNING, so workers already on their way are never duplicated. Equivalently: submit until
    every ``messages_per_worker`` waiting messages have a worker that holds nothing (idle or
    starting). The result never takes the total beyond ``max_workers`` and is never negative
    (extra workers leave by their own idle exit).
    """
    wanted = workers_needed(visible, in_flight, delayed, active_workers, messages_per_worker, max_workers,
                            tasks_per_worker=tasks_per_worker)
    # wanted <= max_workers, so wanted - active can never take the total beyond the cap.
    return max(0, wanted - active_workers)


@dataclass(frozen=True)
class Sizing:
    """A target-wait decision: how many workers should exist, and the figures it came from (the
    decision record's ``sizing``, so a reader sees why)."""

    wanted: int
    task_seconds: float | None      # the estimate used; None: unknown (one worker per message)
    basis: str                      # "learned" (the pool's reported run times) or "unknown"
    per_new_worker: int             # waiting messages one new worker starts within the target
    free_up: int                    # waiting messages that busy or coming workers start within it
    uncovered: int                  # waiting messages left for new workers

    def reasons(self) -> dict:
        return {"task_seconds": None if self.task_seconds is None else round(self.task_seconds, 1),
                "task_seconds_basis": self.basis, "per_new_worker": self.per_new_worker,
                "free_up": self.free_up, "uncovered": self.uncovered}


def tasks_within(target_wait: float, ready_in: float, task_seconds: float) -> int:
    """Tasks one worker slot starts within ``target_wait`` seconds when it is free in ``ready_in``
    seconds and each task takes ``task_seconds``: at ready_in, ready_in + t, ready_in + 2t, ..."""
    if ready_in > target_wait:
        return 0
    if task_seconds <= 0:
        return 10 ** 9
    return math.floor((target_wait - ready_in) / task_seconds) + 1


def workers_for_target(
    visible: int,
    in_flight: int,
    delayed: int,
    active_workers: int,
    max_workers: int,
    *,
    target_wait_seconds: float,
    start_seconds: float,
    task_seconds: float | None,
    tasks_per_worker: int = 1,
    starting_workers: int | None = None,
) -> Sizing:
    """Workers that should exist so that every waiting message starts within the target wait.

    Waiting messages (visible + delayed) are started, in order, by the slots that will be free
    soonest: a busy slot frees up after BUSY_REMAINING of a task (its task's age is unknown); a
    slot of a worker still starting (``starting_workers``: jobs not yet RUNNING) is free after
    ``start_seconds``, and so is a new worker's. A RUNNING worker that holds nothing while a
    message waits counts for nothing: an idle worker takes a visible message within its long poll,
    so it is leaving, or gone and still listed (a job's status is read late). Without
    ``starting_workers`` every active worker that holds nothing counts as starting. Each
    slot then starts a task every ``task_seconds``. New workers cover what the others do not start
    within ``target_wait_seconds``, ``tasks_within(target, start, task)`` messages per slot, at
    least one: a target shorter than a start is met as closely as a start allows.

    ``task_seconds`` None (the pool has never reported a task): each waiting message gets a worker
    of its own, since a task of unknown length may be long; busy slots count as never freeing up.
    Capped at ``max_workers``; ``tasks_per_worker`` is the worker's concurrency.
    """
    for name, value in (("visible", visible), ("in_flight", in_flight), ("delayed", delayed),
                        ("active_workers", active_workers), ("max_workers", max_workers)):
        _require_count(name, value)
    if isinstance(tasks_per_worker, bool) or not isinstance(tasks_per_worker, int) or tasks_per_worker < 1:
        raise ValueError(f"tasks_per_worker must be a whole number >= 1, got {tasks_per_worker!r}")
    waiting = visible + delayed
    slots = active_workers * tasks_per_worker
    busy_slots = min(in_flight, slots)
    coming_slots = slots - busy_slots
    if starting_workers is not None:
        coming_slots = min(coming_slots, starting_workers * tasks_per_worker)
    if task_seconds is None:
        per_slot_new, free_up, basis = 1, coming_slots, "unknown"
    else:
        basis = "learned"
        task_seconds = max(task_seconds, MIN_TASK_SECONDS)
        per_slot_new = max(1, tasks_within(target_wait_seconds, start_seconds, task_seconds))
        free_up = (busy_slots * tasks_within(target_wait_seconds, task_seconds * BUSY_REMAINING, task_seconds)
                   + coming_slots * per_slot_new)
    uncovered = max(0, waiting - free_up)
    per_new_worker = per_slot_new * tasks_per_worker
    new = math.ceil(uncovered / per_new_worker)
    wanted = min(active_workers + new, max_workers)
    return Sizing(wanted=wanted, task_seconds=task_seconds, basis=basis, per_new_worker=per_new_worker,
                  free_up=min(free_up, waiting), uncovered=uncovered)


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

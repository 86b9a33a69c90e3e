"""Scaling simulator: a discrete-event model of the AWS timing that decides how fast a backlog of
Celery tasks is drained by Batch workers and what the workers cost, run for five scaling policies
on the same workloads.

    python -m bench.scaling                 # readable table, start-latency sweep, targets
    python -m bench.scaling --json          # JSON rows
    python -m bench.scaling --markdown      # the tables as markdown (docs/scaling.md's)
    python -m bench.scaling --plot docs/scaling-burst.png
    python -m bench.scaling --cost          # and the idle stack's monthly cost (synthesizes it)

Policies (the stack's ``scaling_mode`` values, plus two references)
    scaler  the default mode: the scaler Lambda, invoked once a minute by an EventBridge schedule,
            decides every ``scaler_poll_seconds`` (10) inside that invocation (no decision after
            55 s), calling the real ``batch_celery.scaler.policy.workers_for_target`` (the
            target wait, from the run times the pool reported METRICS_LAG_SECONDS after each task
            and the start its first job took) or, with ``messages_per_worker``, the override
            ``workers_to_submit``; warm workers for ``min_workers``. With
            ``scaler_idle_check`` "minute" (the default) an invocation whose decision finds no
            work (no message visible or in flight, no active job) ends there, unless a decision
            found work within the last ``scaler_cooldown_seconds`` (SCALER_COOLDOWN_SECONDS, 300);
            so the first message after a quiet spell waits for the next invocation (up to 60 s)
            instead of the next decision (up to 10 s). The stack is idle before t = 0 and the
            container warm (a cold start forgets the cool-down; not modelled). "loop": every
            invocation decides for its whole minute. The alarm rules only invoke it: while a run
            loops that run is throttled (reserved concurrency 1); while the scaler is idle a depth
            or SLA alarm enters ALARM only after a one-minute sample and its evaluation, later than
            the next invocation, which then already loops. So they add no decision; nothing else
            submits workers (one scaling brain).
    alarms  ``scaling_mode: "alarms"``, no Lambda: the original sample's rules (visible >= 5
            submits 1 job, visible >= 50 an array of 10) plus an SLA rule (visible >= 1 for
            ceil(SLA / 60) consecutive minutes submits 1 job). Each rule fires once per transition
            into ALARM.
    seed    the original sample as-is: the two depth rules only.
    lambda  a ``compute: "lambda"`` pool (``simulate_lambda``): no worker lifecycle; each message
            runs in a function instance within LAMBDA_POLL_SECONDS, after a cold start when no
            instance is warm, billed per millisecond. Only for workloads whose tasks fit.
    oracle  a lower bound: knows every arrival and starts a worker the moment a task would
            otherwise wait (capped by max_workers), with NO start latency and no metric delay.
            Tasks are served first come first served by the earliest free worker; with the equal
            task durations of these workloads that is the earliest any schedule can start each
            task, so its drain time and waits are true lower bounds for the same cap. Its workers
            leave by the same per-worker idle rule, so its worker-seconds are the cost of the
            fastest drain with this worker; ``busy_seconds`` (the tasks' own run time) is the floor.

Every Batch policy runs the same worker (the lifecycle script,
batch_celery_container/run_celery_worker.sh), so they differ only in when workers are submitted.

The worker, as the lifecycle script behaves
    Per-worker idle exit   every POLL_SECONDS (10) from its start (the first poll at a random point
                           of the first interval: polls are not in step with the tasks) the script asks whether its own
                           worker holds a message (running, reserved or waiting for an ETA) and, if
                           not, whether the queue shows a visible or delayed one. After IDLE_SECONDS
                           (60) of "no" without a break it drains: it stops the worker's long
                           polling and waits for the open long poll to return (a 2 s wait,
                           LONG_POLL_SECONDS; polls follow each other back to back, so it returns at
                           the next 2 s boundary after the worker went idle), then, if nothing
                           arrived meanwhile, stops the worker warm (SHUTDOWN_SECONDS = 3). Both are
                           billed. Messages other workers hold never keep it alive.
    Visibility heartbeat   the worker extends every held message every visibility_timeout / 3
                           (HEARTBEAT, batch_celery_container/limits.py) back to the queue's
                           visibility timeout (300 s), so a message is invisible exactly while a
                           live worker holds it. A job killed outright (SIGKILL, OOM kill of the
                           container, host loss) stops the extensions: its message becomes visible
                           at its last extension + the visibility timeout (<= 300 s after the kill).
    Stop / Spot reclaim    Batch sends SIGTERM (Fargate Spot: with its two-minute warning); the
                           running task gets stop_grace_seconds (20) to finish; if it cannot, it is
                           stopped and its message made visible at once. An idle worker drains and
                           stops. Batch's retry strategy retries a Spot-interrupted job
                           (batch_celery/workers.py): the same job becomes RUNNABLE again and starts
                           a new worker with the full start latency; it counts as active throughout.
    Job timeout            Batch stops a job job_timeout_seconds after it started RUNNING, whatever it
                           runs (SIGTERM, the grace, then the task is cut: given back and run again,
                           a rerun); Batch does not retry a timed-out job. The worker's deadline rule
                           (the lifecycle script, exit 7): it takes no task after its take window
                           (limits.take_window_seconds: job timeout - task time limit - stop grace -
                           40 s, from its start), finishes what it runs and leaves; the scaler
                           replaces it if work remains. ``deadline_rule=False`` (--no-deadline-rule)
                           models a worker without it (cut by the timeout), for comparison.
    Task time limit        every workload's tasks fit the pool's task_time_limit_seconds (checked:
                           a workload that needs another setting names it, and its row shows it).

Model parameters (each with its source)
    METRIC_PERIOD_SECONDS = 60   SQS pushes its CloudWatch metrics at one-minute intervals
                                 (Amazon SQS Developer Guide, "Available CloudWatch metrics for
                                 Amazon SQS"); the model samples the queue at every minute tick.
    METRIC_LAG_SECONDS = 60      an alarm evaluated at tick t sees the sample of the last complete
                                 period, taken at t - 60 s (alarms with a 60 s period are evaluated
                                 every minute: CloudWatch User Guide, "Evaluating an alarm"). One
                                 datapoint per period, so the depth alarms' Maximum and the SLA
                                 alarm's Minimum statistic are that sample.
    Edge-triggered rules         an EventBridge rule on "CloudWatch Alarm State Change" fires once per
                                 transition into ALARM, never while the alarm stays there.
    SCALER_PERIOD_SECONDS = 60   EventBridge schedule rate(1 minute), the finest rate it offers
                                 (EventBridge User Guide, "Schedule expressions"); the faster loop
                                 lives inside the invocation (scaler_poll_seconds), which starts
                                 no decision after SCALER_LOOP_SECONDS = 55 (batch_celery/scaling.py).
    Phase                        neither the metric minute nor the schedule is aligned with the
                                 arrivals. Every policy but the oracle runs once per phase in PHASES
                                 (one at a random point of each 5 s of the minute: the time from t = 0
                                 to the first metric tick and scaler invocation); a row reports the MEAN of drain, worker-seconds
                                 and jobs over the 12 runs, the MAX of peak workers and stranded
                                 tasks, and p50/p95 waits as percentiles of the POOLED waits of all
                                 12 runs (every task once per phase).
    BATCH_SCHEDULE_SECONDS = 10  SUBMITTED -> RUNNABLE in the Batch scheduler (assumption: a few
                                 seconds to tens of seconds are typical; AWS Batch User Guide, "Job
                                 states").
    FARGATE_START_SECONDS = 35   placement -> worker polling: Fargate task provisioning, image pull
                                 and Celery start. The pull time grows with the image ("directly
                                 correlated", Amazon ECS Developer Guide, "Linux containers on
                                 Fargate container image pull behavior"); one user measured 55 s from
                                 RunTask to a ready container for a 2.7 GB image
                                 (https://drorspei.com/2026/01/23/my-fargate-startup-is-slow-an-investigation-into-docker-layer-optimization),
                                 so the sweep also runs 90 and 150 s in total. Billed: Fargate bills
                                 from the start of the image download until the task ends, per
                                 second with a one-minute minimum (https://aws.amazon.com/fargate/pricing/);
                                 the model bills the whole placement-to-exit time, which overstates
                                 it by the provisioning before the pull (ENI attachment).
    LONG_POLL_SECONDS = 2        the worker's SQS long poll (``wait_time_seconds``,
                                 batch_celery_container/limits.py; kombu's default is 10 s); the
                                 worker sets polling_interval 0.05 s, so an idle worker's polls are
                                 back to back.
    SHUTDOWN_SECONDS = 3         Celery warm shutdown of a worker that holds nothing (the lifecycle
                                 script).
    TASK_SECONDS = 30            task duration of most workloads below.
    max_workers = 48             compute environment max vCPUs 48 / 1 vCPU per worker (stack
                                 defaults); also the number of workers Fargate can run at once here,
                                 so extra jobs wait RUNNABLE until a worker exits.
    prefetch 1, concurrency 1    one task at a time per worker (worker_prefetch_multiplier=1), picked
                                 up as soon as it is visible (SQS long polling).
    SLA_SECONDS = 300            default SLA (age_alarm_seconds): the alarms mode's SLA rule.
    HORIZON_SECONDS = 6 h        a task not started within it (after the last arrival) counts as stranded.

Cost (bench/prices.py, list prices of --region, no free tier)
    $ Fargate, $ Spot            the row's worker-seconds (each worker billed at least a minute)
                                 at the pool's default size (STACK: 1 vCPU, 2048 MiB, linux/amd64),
                                 Fargate on-demand and Fargate Spot (whose price varies).
    --cost                       also the idle stack's monthly fixed cost per network option,
                                 itemised, counted from the stack synthesized from cdk.json.

    Job status lag               the scaler reads job statuses LISTJOBS_LAG_SECONDS late (an ended worker
                                 still listed; assumption, no documented figure), counting its own
                                 fresh submissions at once (it remembers them, handler.REMEMBER_SECONDS).
    Run times                    reach GetMetricData METRICS_LAG_SECONDS after a task ends (assumption).
    API calls                    per decision: ListJobs pages, DescribeJobs, SubmitJob and array sizes,
                                 checked against Batch's 50 calls a second (api_check; the huge workload).

What the model leaves out: metric gaps after a queue has been inactive (SQS can take up to 15 min
to resume metrics, which only hurts the alarm-driven policies), Lambda and SubmitJob latency
(< 1 s), Fargate capacity shortages, task failures and retries, SQS's approximate counts, a
scaler's cold start (it forgets its memory: run times are read again, submissions listed late).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from batch_celery.scaler import handler as scaler_handler
from batch_celery.scaler.policy import (expected_start_seconds, submission_plan, workers_for_target,
                                        workers_to_submit, workers_wanted)
from bench import prices
from batch_celery.props import (LAMBDA_MAX_TIMEOUT_SECONDS, LAMBDA_TIMEOUT_MARGIN_SECONDS, CeleryBatchWorkersProps,
                                PoolProps)
from batch_celery_container import limits

METRIC_PERIOD_SECONDS = 60
METRIC_LAG_SECONDS = 60
SCALER_PERIOD_SECONDS = 60
SCALER_LOOP_SECONDS = 55   # no decision starts later in a run (batch_celery/scaling.py)
SCALER_COOLDOWN_SECONDS = 300   # runs keep looping this long after work was last seen (scaling.py)
# Twelve phases, one in each 5 s of the minute at a random point of it (seeded): decision delays
# over the whole period, not only multiples of 5 s.
PHASES = tuple(round(5 * i + random.Random(f"phase-{i}").uniform(0, 5), 2) for i in range(12))
BATCH_SCHEDULE_SECONDS = 10
FARGATE_START_SECONDS = 35
BILLING_MINIMUM_SECONDS = 60
LONG_POLL_SECONDS = limits.LONG_POLL_SECONDS
SHUTDOWN_SECONDS = 3
TASK_SECONDS = 30
HORIZON_SECONDS = 6 * 3600
# Target sizing: the workers' run_seconds reach GetMetricData this long after a task ends (EMF is
# extracted as the log events are ingested; assumption, CloudWatch documents no figure), read by
# the scaler at most every RUN_TIMES_REFRESH_SECONDS (handler.py).
METRICS_LAG_SECONDS = 120
# ListJobs may show a job's status late. AWS documents no figure; this default is an assumption
# (the independent model of issue 22 used 45 s; --listjobs-lag sweeps it). Jobs the scaler submitted
# within REMEMBER_SECONDS it counts through DescribeJobs, which the model takes as current.
LISTJOBS_LAG_SECONDS = 45
# Lambda pools (policy "lambda"): a cold start, assumed 2 s for a container image that imports
# Celery (AWS: "from under 100 ms to over 1 second" for the runtime itself; Lambda Developer Guide,
# "Understanding the Lambda execution environment lifecycle"), billed since the INIT phase is billed;
# an execution environment kept warm LAMBDA_KEEP_WARM_SECONDS after its last invocation (AWS
# documents no figure; assumption); the event source mapping's long poll hands a message over
# within LAMBDA_POLL_SECONDS.
LAMBDA_COLD_START_SECONDS = 2.0
LAMBDA_KEEP_WARM_SECONDS = 300
LAMBDA_POLL_SECONDS = 1.0
# The longest task a Lambda pool takes: the function's 900 s less the margin it keeps to record
# the result (props.py).
LAMBDA_MAX_TASK_SECONDS = LAMBDA_MAX_TIMEOUT_SECONDS - LAMBDA_TIMEOUT_MARGIN_SECONDS
# Batch API quota: 50 transactions per second per account for SubmitJob ("AWS Batch service
# quotas", Batch User Guide) and, per AWS re:Post ("aws-batch-requests-error"), for Batch's API
# calls in general (DescribeJobs, ListJobs); ListJobs returns up to 100 jobs a page by default and
# DescribeJobs takes 100 ids.
BATCH_TPS_QUOTA = 50
LISTJOBS_PAGE = 100
# A Batch API call's latency, for a decision's run time (assumption).
CALL_SECONDS = 0.05

POLICIES = ("seed", "alarms", "scaler", "lambda", "oracle")
START_SWEEP = (45, 90, 150)      # Batch + Fargate start, submission to a polling worker
SWEEP = (1, 2, 5, 10, 20, 50)    # messages_per_worker values shown by --sweep
IN_FLIGHT_COUNTS = ("busy", "keda")


# The construct's own defaults (batch_celery/props.py), so the model cannot drift from what deploys.
STACK = PoolProps()
DEPLOYMENT = CeleryBatchWorkersProps()


@dataclass(frozen=True)
class Params:
    max_workers: int = STACK.max_workers
    # None: size to target_wait_seconds from the learned run times (the default); a number: the
    # fixed backlog per worker (the override, and the rule before target sizing).
    messages_per_worker: int | None = STACK.messages_per_worker
    target_wait_seconds: int = STACK.target_wait_seconds
    # What the scaler assumes a start takes (policy.START_SECONDS), whatever the model's start is.
    scaler_start_seconds: int = expected_start_seconds(STACK.compute)
    # A mean run time the pool already reported before t = 0 (the -warm workloads); 0: none.
    learned_task_seconds: int = 0
    metrics_lag_seconds: int = METRICS_LAG_SECONDS
    listjobs_lag_seconds: int = LISTJOBS_LAG_SECONDS
    # Each worker's lifecycle polls start at a random point of its first poll interval.
    poll_offsets: bool = True
    # Warm capacity (a pool's min_workers, all the time): workers up with nothing to do, started
    # before t = 0, billed until the work is done.
    min_workers: int = STACK.min_workers
    tasks_per_worker: int = STACK.concurrency
    sla_seconds: int = STACK.age_alarm_seconds
    idle_seconds: int = STACK.idle_seconds
    poll_seconds: int = STACK.poll_seconds
    scaler_poll_seconds: int = DEPLOYMENT.scaler_poll_seconds
    # "minute": an invocation with no work to watch ends after one decision; "loop": never.
    scaler_idle_check: str = DEPLOYMENT.scaler_idle_check
    scaler_cooldown_seconds: int = SCALER_COOLDOWN_SECONDS
    visibility_timeout_seconds: int = STACK.visibility_timeout_seconds   # the crash-recovery window
    stop_grace_seconds: int = STACK.stop_grace_seconds
    job_attempts: int = STACK.job_attempts
    task_time_limit_seconds: int = STACK.task_time_limit_seconds
    job_timeout_seconds: int = STACK.job_timeout_seconds
    # The lifecycle script's take window (exit 7); False: a worker without it, cut by the timeout.
    deadline_rule: bool = True
    batch_schedule_seconds: int = BATCH_SCHEDULE_SECONDS
    fargate_start_seconds: int = FARGATE_START_SECONDS
    low_threshold: int = STACK.low_threshold  # the sample's alarms and array size
    high_threshold: int = STACK.high_threshold
    high_array_size: int = STACK.high_array_size
    # How the scaler counts in-flight messages: "busy" (the policy: each holds a worker) or
    # "keda" (KEDA's ceil((visible + in flight + delayed) / messages_per_worker)), for comparison.
    in_flight_count: str = "busy"
    # "worker" (the lifecycle script) or "queue" (a queue-wide rule: visible + in flight + delayed,
    # i.e. other workers' messages keep every worker alive), for comparison.
    idle_rule: str = "worker"
    phases: tuple[int, ...] = PHASES
    seed: int = 7

    @property
    def start_seconds(self) -> int:
        return self.batch_schedule_seconds + self.fargate_start_seconds

    @property
    def heartbeat_seconds(self) -> int:
        return limits.default_heartbeat_seconds(self.visibility_timeout_seconds)

    @property
    def take_window_seconds(self) -> int:
        return limits.take_window_seconds(self.job_timeout_seconds, self.task_time_limit_seconds,
                                          self.stop_grace_seconds)


# ---------------------------------------------------------------- workloads

Arrivals = list[tuple[float, float]]


@dataclass(frozen=True)
class Fault:
    """Something done to running workers once ``at_done`` of the tasks have finished, ``delay``
    seconds later (mid-task for 30 s tasks): ``kill`` ends the job outright (SIGKILL, no
    give-back, not retried); ``term`` is a Batch stop / Spot reclaim (SIGTERM, grace, retry)."""
    kind: str
    workers: float          # a count (>= 1) or a share of the running workers (< 1)
    at_done: float = 0.5
    delay: float = TASK_SECONDS / 2


@dataclass(frozen=True)
class Workload:
    description: str
    arrivals: Callable[[random.Random], Arrivals]
    faults: tuple[Fault, ...] = ()
    baseline: str | None = None   # the same arrivals without the fault
    # Settings (Params fields) this workload changes from the shipped defaults; its row names them.
    settings: tuple[tuple[str, int], ...] = ()
    # Random arrivals: the row pools this many seeds (each over every phase).
    seeds: int = 1
    # Policies this workload is run for (None: all); the largest ones skip the slow references.
    policies: tuple[str, ...] | None = None

    def settings_text(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.settings) or "defaults"


def _burst(count: int, seconds: float = TASK_SECONDS) -> Callable[[random.Random], Arrivals]:
    return lambda rng: [(0.0, seconds)] * count


def _trickle(rng: random.Random) -> Arrivals:
    # One 30 s task every 2 minutes for an hour: never 5 visible at once.
    return [(float(t), TASK_SECONDS) for t in range(0, 3600, 120)]


def _burst_background(rng: random.Random) -> Arrivals:
    # The burst, then one 30 s task a minute for 4 hours: a worker that counted other workers'
    # messages (or the queue's in-flight count) would never leave.
    return [(0.0, TASK_SECONDS)] * 1000 + [(float(t), TASK_SECONDS) for t in range(60, 60 + 4 * 3600, 60)]


def _ramp(rng: random.Random) -> Arrivals:
    # Poisson arrivals whose rate climbs linearly from 0 to 60 tasks/min over 30 minutes
    # (~900 tasks). 48 workers serve 96 tasks/min, so a policy that keeps pace shows short waits
    # and one that does not add workers as the rate grows falls behind.
    # Rate lambda(t) = t / 1800 per second, so the expected count up to t is t^2 / 3600;
    # arrival times follow by inverting it on a unit-rate Poisson process.
    arrivals, cumulative = [], 0.0
    while True:
        cumulative += rng.expovariate(1.0)
        t = math.sqrt(3600.0 * cumulative)
        if t > 1800:
            return arrivals
        arrivals.append((t, TASK_SECONDS))


def _stream(every: float, seconds: float, until: float, count: int = 1) -> Callable[[random.Random], Arrivals]:
    """``count`` tasks of ``seconds`` every ``every`` seconds from t = 0 until ``until``."""
    return lambda rng: [(float(t), seconds) for t in range(0, int(until), int(every)) for _ in range(count)]


# Longer than the job timeout: a worker that lived through it would be cut with a task in hand.
TWICE_THE_JOB_TIMEOUT = 2 * STACK.job_timeout_seconds
LONG_TASK_SECONDS = 2 * 3600   # the product's long task: it must run on the shipped defaults


def _long_stream(rng: random.Random) -> Arrivals:
    every = 100 * 60
    return [(float(t), float(d)) for t in range(0, TWICE_THE_JOB_TIMEOUT, every)
            for d in (every,) * 4 + (LONG_TASK_SECONDS,) * 4]


def _diurnal(rng: random.Random) -> Arrivals:
    # A working day: Poisson arrivals, 2 a minute for 8 h, 45 s tasks; then 16 h with nothing.
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(2 / 60)
        if t > 8 * 3600:
            return arrivals
        arrivals.append((t, 45.0))


MIXED_RANGE = (10.0, 1800.0)


def _mixed(rng: random.Random) -> Arrivals:
    # Poisson arrivals, 1 a minute for 2 h; log-normal run times (median 2 min, sigma 1.2),
    # clipped to 10 s .. 30 min: mostly short tasks with a long tail.
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(1 / 60)
        if t > 2 * 3600:
            return arrivals
        arrivals.append((t, min(max(rng.lognormvariate(math.log(120), 1.2), MIXED_RANGE[0]), MIXED_RANGE[1])))


HUGE_TASKS = 1_000_000
HUGE_MAX_WORKERS = 2_000


WORKLOADS: dict[str, Workload] = {
    "burst-1000x30s": Workload("1000 tasks of 30 s at t=0", _burst(1000)),
    "burst-4": Workload("4 tasks of 30 s at t=0 (below the seed's 5-message alarm)", _burst(4)),
    "trickle": Workload("one 30 s task every 2 min for 1 h", _trickle),
    "ramp": Workload("Poisson arrivals rising 0 -> 60/min over 30 min, 30 s tasks", _ramp),
    "burst+background": Workload("1000 x 30 s at t=0, then one 30 s task every 60 s for 4 h", _burst_background),
    "long-200x900s": Workload("200 tasks of 900 s at t=0", _burst(200, 900)),
    "crash": Workload("burst-1000x30s; one busy worker's job SIGKILLed once half the tasks are done",
                      _burst(1000), (Fault("kill", 1),), baseline="burst-1000x30s"),
    # TERMed 5 s into their tasks: 25 s are left, more than the 20 s grace, so each reclaimed task
    # is stopped, given back and run again from the start (the costly case; 15 s in, all finish).
    "spot-reclaim": Workload("burst-1000x30s; a quarter of the workers TERMed (Spot) at half-way, 5 s into their tasks",
                             _burst(1000), (Fault("term", 0.25, delay=5.0),), baseline="burst-1000x30s"),
    # One worker always has work (a task every 40 s; idle 10 s at a time, never its idle window):
    # it lives until its job's end, twice over.
    "stream-2x-timeout": Workload(f"one 30 s task every 40 s for {TWICE_THE_JOB_TIMEOUT // 3600} h (2x the job timeout)",
                                  _stream(40, TASK_SECONDS, TWICE_THE_JOB_TIMEOUT)),
    # Long tasks that do not divide the job timeout (a 100 min task taken at 400 min would run past
    # 480 min), and 2-hour tasks, the product's long ones, on the shipped task time limit.
    "long-stream": Workload(f"every 100 min 4 tasks of 100 min and 4 of 2 h, for {TWICE_THE_JOB_TIMEOUT // 3600} h "
                            "(2x the job timeout)", _long_stream),
    # A pool that has never run its task: the scaler knows no run time.
    "few-long": Workload("20 tasks of 2 h at t=0, a pool that has never run them", _burst(20, LONG_TASK_SECONDS)),
    # The same pool a day later: its workers reported 2 h run times.
    "few-long-warm": Workload("20 tasks of 2 h at t=0, run times already learned", _burst(20, LONG_TASK_SECONDS),
                              settings=(("learned_task_seconds", LONG_TASK_SECONDS),)),
    "diurnal": Workload("8 h of Poisson arrivals, 2 a minute, 45 s tasks, then 16 h idle (3 seeds pooled)",
                        _diurnal, seeds=3),
    # Warm capacity for tasks that need seconds: one worker kept up all the time.
    "trickle-warm": Workload("trickle, one warm worker (min_workers 1)", _trickle, settings=(("min_workers", 1),)),
    "mixed": Workload("2 h of Poisson arrivals, 1 a minute, log-normal run times 10 s .. 30 min", _mixed),
    # Past this machine: the simulator's figures and the scaler's API calls at a million tasks.
    "huge": Workload(f"{HUGE_TASKS:,} tasks of 30 s at t=0, max_workers {HUGE_MAX_WORKERS:,} (one phase)",
                     _burst(HUGE_TASKS), settings=(("max_workers", HUGE_MAX_WORKERS),),
                     policies=("scaler", "oracle")),
}


# ---------------------------------------------------------------- the model

STARTING, IDLE, BUSY, DRAINING, STOPPING = "starting", "idle", "busy", "draining", "stopping"


@dataclass(eq=False)
class Task:
    arrival: float
    duration: float
    started: bool = False


@dataclass(eq=False)
class Job:
    """A submitted job or array job: its children still active (RUNNABLE to RUNNING, retries too)."""
    submitted_at: float
    size: int
    active: int
    warm: bool = False


@dataclass(eq=False)
class Worker:
    placed_at: float
    running_at: float
    attempt: int = 1
    state: str = STARTING
    epoch: int = 0                   # bumped on every change that voids pending events
    task: Task | None = None
    received_at: float = 0.0         # when it received the message it holds
    idle_since: float = 0.0          # start of its back-to-back long polls
    empty_since: float | None = None
    stop_requested: bool = False     # SIGTERM: finish (within the grace), take nothing new
    taking: bool = True              # False past its take window (the deadline rule): finish, leave
    timed_out: bool = False          # Batch's job timeout stopped it (not retried)
    exited_at: float | None = None
    since: float = 0.0               # when it entered its current state (for the breakdown)
    job: Job | None = None           # None: the oracle's worker


@dataclass
class Result:
    scenario: str
    policy: str
    tasks: int
    drain_seconds: float | None
    p50_wait_seconds: float | None
    p95_wait_seconds: float | None
    worker_seconds: float
    busy_seconds: float
    peak_workers: int
    jobs_submitted: float
    stranded: int
    reruns: float = 0
    timeout_cuts: float = 0                  # tasks cut by Batch's job timeout (each also a rerun)
    deadline_exits: float = 0                # workers that left at their take window (exit 7)
    settings: str = "defaults"               # what the workload changes from the shipped defaults
    recovery_seconds: float | None = None   # fault -> every task it interrupted running again
    start_seconds: int = 0
    phases: int = 1
    billed_by_state: dict[str, float] = field(default_factory=dict)  # starting, busy, idle, draining, ...
    # The scaler's AWS calls (busiest decision) and the sizing it saw; see api_check().
    api: dict[str, float] = field(default_factory=dict)
    compute: str = "fargate"
    timeline: list[tuple[float, int, int]] = field(repr=False, default_factory=list)
    waits: list[float] = field(repr=False, default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("timeline", "waits")}


# Event kinds, in the order they are handled when they share a timestamp: the queue changes
# first, then the observers (lifecycle polls, metric samples, scaler) see the new state.
(ARRIVAL, VISIBLE, COMPLETE, FAULT, RUNNABLE, RUNNING, DRAINED, GRACE_END, EXITED,
 TAKE_END, JOB_TIMEOUT, POLL, MINUTE, SCALER) = range(14)
PERIODIC = (MINUTE, SCALER)


class Simulation:
    def __init__(self, policy: str, workload: Workload, params: Params, phase: float = 0.0,
                 timeline: bool = True):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        params = replace(params, **dict(workload.settings))
        self.params = params
        self.phase = phase
        self.settings = workload.settings_text()
        self.tasks = [Task(a, d) for a, d in sorted(workload.arrivals(random.Random(params.seed)))]
        longest = max((task.duration for task in self.tasks), default=0)
        soft = limits.soft_time_limit(params.task_time_limit_seconds)
        if longest >= soft:
            raise ValueError(f"{workload.description}: a {longest:.0f} s task is stopped at its soft time limit "
                             f"({soft} s, task_time_limit_seconds {params.task_time_limit_seconds}); name the "
                             "setting it needs in the workload's settings")
        self.horizon = (self.tasks[-1].arrival if self.tasks else 0.0) + HORIZON_SECONDS
        self.timeout_cuts = 0
        self.deadline_exits = 0
        self.faults = list(workload.faults)
        self.events: list[tuple[float, int, int, object]] = []
        self.sequence = 0
        self.now = 0.0
        self.waiting: deque[Task] = deque()   # visible messages, oldest first
        self.orphans = 0                      # in flight with no live worker (killed job)
        self.held = 0                         # in flight, held by a live worker
        self.waits: list[float] = []
        self.reruns = 0
        self.last_done = 0.0
        self.done = 0
        self.busy_seconds = 0.0
        self.idle: deque[Worker] = deque()    # free to take a message, earliest free first
        self.workers: list[Worker] = []       # placed, not exited
        self.runnable: deque[int] = deque()   # attempts waiting for a free slot (FIFO job queue)
        self.jobs_pending = 0                 # submitted or retried, not yet placed
        self.jobs_submitted = 0
        self.billed = 0.0
        self.peak = 0
        self.samples: dict[int, int] = {}     # minute tick -> visible
        self.alarm_state = {"low": False, "high": False, "sla": False}
        self.timeline: list[tuple[float, int, int]] = []
        self.keep_timeline = timeline
        self.arrived = 0
        self.state_seconds: dict[str, float] = {}  # billed worker time by state (the breakdown)
        self.interrupted: dict[int, float] = {}   # id(task) -> time of the fault that hit it
        self.recovery: list[float] = []
        self.last_work: float | None = None      # the scaler's last decision that found work
        self.rng = random.Random(f"{params.seed}:{phase}")   # the workers' poll offsets
        self.active_parents = 0
        self.warm_active = 0      # active children of warm jobs (handler: jobs named <job name>-warm)
        self.started = False      # a job reached RUNNING: the scaler knows the pool's start (handler.learned_start)
        self.ended: deque[tuple[float, Job]] = deque()    # children's ends, for the ListJobs lag
        self.reported: deque[tuple[float, float]] = deque()  # (end, run time), not yet in metrics
        self.window: deque[tuple[float, float]] = deque()    # in metrics, within RECENT_SECONDS
        self.window_sum = 0.0
        self.learned_mean: float | None = None
        self.learned_at: float | None = None
        self.api: dict[str, float] = {"decisions": 0, "batch_calls_max": 0, "submit_calls_max": 0,
                                      "listjobs_pages_max": 0, "array_max": 0, "batch_calls": 0}

    # -- event plumbing
    def schedule(self, at: float, kind: int, payload: object = None) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, kind, self.sequence, payload))

    def in_flight(self) -> int:
        return self.held + self.orphans

    def active_jobs(self) -> int:
        return self.jobs_pending + len(self.workers)

    @staticmethod
    def warm_event(payload: object) -> bool:
        """An event of a warm worker (its polls, its job's end): it does not keep the run going."""
        worker = payload[0] if isinstance(payload, tuple) and payload and isinstance(payload[0], Worker) else payload
        return isinstance(worker, Worker) and worker.job is not None and worker.job.warm

    def quiet(self) -> bool:
        # Warm workers with nothing to do stay up; the run ends when the work is done.
        if self.arrived < len(self.tasks) or self.waiting or self.in_flight() or self.faults:
            return False
        warm_idle = 0 if not self.params.min_workers else sum(
            1 for w in self.workers if w.job is not None and w.job.warm and w.state == IDLE)
        return self.active_jobs() == warm_idle

    def record(self) -> None:
        if not self.keep_timeline:
            return
        point = (self.now, len(self.waiting) + self.in_flight(), len(self.workers))
        if self.timeline and self.timeline[-1][0] == self.now:
            self.timeline[-1] = point
        else:
            self.timeline.append(point)

    # -- Batch: submit -> RUNNABLE -> placed (slot) -> RUNNING
    def submit(self, workers: int, warm: bool = False) -> None:
        for size in submission_plan(workers):
            job = Job(self.now, size, size, warm)
            self.active_parents += 1
            self.warm_active += size if warm else 0
            for _ in range(size):
                self.jobs_submitted += 1
                self.jobs_pending += 1
                self.schedule(self.now + self.params.batch_schedule_seconds, RUNNABLE, (job, 1))

    def place(self) -> None:
        while self.runnable and len(self.workers) < self.params.max_workers:
            job, attempt = self.runnable.popleft()
            self.jobs_pending -= 1
            worker = Worker(placed_at=self.now, running_at=self.now + self.params.fargate_start_seconds,
                            attempt=attempt, since=self.now, job=job)
            self.workers.append(worker)
            self.schedule(worker.running_at, RUNNING, (worker, worker.epoch))
        self.peak = max(self.peak, len(self.workers))

    def start_worker_now(self) -> None:
        # The oracle's worker: no scheduler, no Fargate start, polling at once.
        worker = Worker(placed_at=self.now, running_at=self.now, since=self.now)
        self.workers.append(worker)
        self.peak = max(self.peak, len(self.workers))
        self.become_idle(worker)
        self.schedule_job_end(worker)
        self.schedule(self.now, POLL, worker)

    def schedule_job_end(self, worker: Worker) -> None:
        """Batch's timeout, counted from RUNNING, and (deadline rule) the end of the take window."""
        self.schedule(worker.running_at + self.params.job_timeout_seconds, JOB_TIMEOUT, (worker, None))
        if self.params.deadline_rule:
            self.schedule(worker.running_at + self.params.take_window_seconds, TAKE_END, (worker, None))

    def end_take_window(self, worker: Worker) -> None:
        """The lifecycle script's deadline: no new task; an idle worker drains and leaves at once,
        a busy one when its task is done (exit 7, not retried)."""
        worker.taking = False
        if worker.state == IDLE:
            self.deadline_exits += 1
            self.drain(worker)
        elif worker.state == BUSY:
            self.deadline_exits += 1

    # -- workers and messages
    def set_state(self, worker: Worker, state: str) -> None:
        self.state_seconds[worker.state] = self.state_seconds.get(worker.state, 0.0) + self.now - worker.since
        worker.state, worker.since = state, self.now

    def become_idle(self, worker: Worker) -> None:
        self.set_state(worker, IDLE)
        worker.task = None
        worker.idle_since = self.now
        self.idle.append(worker)

    def dispatch(self) -> None:
        if self.policy == "oracle":
            while len(self.waiting) > len(self.idle) and len(self.workers) < self.params.max_workers:
                self.start_worker_now()
        while self.waiting and self.idle:
            worker = self.idle.popleft()
            task = self.waiting.popleft()
            if task.started:
                self.reruns += 1
            else:
                task.started = True
                self.waits.append(self.now - task.arrival)
            hit = self.interrupted.pop(id(task), None)
            if hit is not None:
                self.recovery.append(self.now - hit)
            self.set_state(worker, BUSY)
            worker.empty_since = None
            worker.task = task
            self.held += 1
            worker.received_at = self.now
            worker.epoch += 1
            self.schedule(self.now + task.duration, COMPLETE, (worker, worker.epoch))

    def release(self, task: Task) -> None:
        """A message visible again: first in line (it is the oldest)."""
        self.waiting.appendleft(task)

    def poll(self, worker: Worker) -> None:
        """One pass of the lifecycle script's loop."""
        if worker.state == BUSY:
            worker.empty_since = None
        elif worker.state == IDLE and worker.job is not None and worker.job.warm:
            worker.empty_since = None                         # kept warm (WARM_UNTIL): no idle exit
        elif worker.state == IDLE:
            if self.params.idle_rule == "worker":
                empty = not self.waiting                      # visible + delayed (none delayed here)
            else:
                empty = not self.waiting and self.in_flight() == 0
            if not empty:
                worker.empty_since = None
            elif worker.empty_since is None:
                worker.empty_since = self.now
            elif self.now - worker.empty_since >= self.params.idle_seconds:
                self.drain(worker)
                return
        else:
            return
        self.schedule(self.now + self.params.poll_seconds, POLL, worker)

    def open_poll_end(self, worker: Worker) -> float:
        # An idle worker long-polls back to back from the moment it went idle.
        polls = math.floor((self.now - worker.idle_since) / LONG_POLL_SECONDS) + 1
        return worker.idle_since + polls * LONG_POLL_SECONDS

    def drain(self, worker: Worker) -> None:
        self.idle.remove(worker)
        self.set_state(worker, DRAINING)
        worker.epoch += 1
        self.schedule(self.open_poll_end(worker), DRAINED, (worker, worker.epoch))

    def drained(self, worker: Worker) -> None:
        if self.waiting and not worker.stop_requested and worker.taking:
            # Work arrived while draining (or the last poll brought some and gave it back): serve.
            worker.empty_since = None
            self.become_idle(worker)
            self.schedule(self.now + self.params.poll_seconds, POLL, worker)
            return
        self.stop(worker, self.now + SHUTDOWN_SECONDS)

    def stop(self, worker: Worker, at: float) -> None:
        self.set_state(worker, STOPPING)
        worker.epoch += 1
        self.schedule(at, EXITED, (worker, worker.epoch))

    def exit(self, worker: Worker, retry: bool = False) -> None:
        worker.exited_at = self.now
        self.workers.remove(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        worker.epoch += 1
        self.bill(worker, self.now)
        if retry and self.policy != "oracle" and worker.attempt < self.params.job_attempts:
            # Batch's retry strategy: the same job is RUNNABLE again (and counts as active).
            self.jobs_pending += 1
            self.schedule(self.now + self.params.batch_schedule_seconds, RUNNABLE, (worker.job, worker.attempt + 1))
        elif worker.job is not None:
            worker.job.active -= 1
            self.warm_active -= worker.job.warm
            self.active_parents -= worker.job.active == 0
            self.ended.append((self.now, worker.job))
        self.place()

    # -- faults
    def maybe_fault(self) -> None:
        while self.faults and self.done >= self.faults[0].at_done * len(self.tasks):
            fault = self.faults.pop(0)
            self.schedule(self.now + fault.delay, FAULT, fault)

    def fault(self, fault: Fault) -> None:
        running = [w for w in self.workers if w.state in (BUSY, IDLE)]
        count = int(fault.workers) if fault.workers >= 1 else max(1, round(fault.workers * len(running)))
        targets = ([w for w in running if w.state == BUSY] + [w for w in running if w.state == IDLE])[:count]
        for worker in targets:
            if fault.kind == "kill":
                self.kill(worker)
            else:
                self.terminate(worker)

    def kill(self, worker: Worker) -> None:
        """The job dies outright: nothing is given back, the heartbeat stops, Batch does not retry."""
        task = worker.task
        if task is not None:
            self.held -= 1
            heartbeat = self.params.heartbeat_seconds
            last_extension = worker.received_at + heartbeat * math.floor((self.now - worker.received_at) / heartbeat)
            self.orphans += 1
            self.interrupted[id(task)] = self.now
            self.schedule(last_extension + self.params.visibility_timeout_seconds, VISIBLE, task)
        worker.task = None
        self.exit(worker)

    def terminate(self, worker: Worker) -> None:
        """SIGTERM (Batch stop, Spot reclaim): take nothing new; the running task gets the grace."""
        grace_end = self.now + self.params.stop_grace_seconds
        worker.stop_requested = True
        if worker.state == IDLE:
            self.idle.remove(worker)
            self.set_state(worker, DRAINING)
            worker.epoch += 1
            self.schedule(min(self.open_poll_end(worker) + SHUTDOWN_SECONDS, grace_end), EXITED,
                          (worker, worker.epoch))
        elif worker.state == BUSY:
            self.schedule(grace_end, GRACE_END, (worker, worker.epoch))

    # -- CloudWatch alarms, EventBridge rules, the scaler
    def minute(self, tick: int) -> None:
        self.samples[tick] = len(self.waiting)
        if self.policy == "oracle":
            return
        last = tick - METRIC_LAG_SECONDS // METRIC_PERIOD_SECONDS
        if last not in self.samples:
            return
        visible = self.samples[last]
        sla_minutes = math.ceil(self.params.sla_seconds / METRIC_PERIOD_SECONDS)
        sla_window = [self.samples.get(last - i) for i in range(sla_minutes)]
        for name, breaching, workers in (
            ("low", visible >= self.params.low_threshold, 1),
            ("high", visible >= self.params.high_threshold, self.params.high_array_size),
            ("sla", self.policy != "seed" and all(v is not None and v >= 1 for v in sla_window), 1),
        ):
            if breaching and not self.alarm_state[name]:
                if self.policy in ("seed", "alarms"):
                    self.submit(workers)   # the rule's own Batch target
            self.alarm_state[name] = breaching
        # In the scaler mode a rule only invokes the scaler; that run is throttled while the
        # schedule's run loops (reserved concurrency 1, batch_celery/scaling.py), which decides
        # every scaler_poll_seconds anyway, so it adds no decision here.

    def learned_task_seconds(self) -> float | None:
        """The mean run time GetMetricData would return (handler.read_run_times): tasks that ended
        at least metrics_lag_seconds ago, over the last RECENT_SECONDS, else the pool's earlier
        runs (learned_task_seconds); read at most every RUN_TIMES_REFRESH_SECONDS."""
        p = self.params
        if self.learned_at is not None and self.now - self.learned_at < scaler_handler.RUN_TIMES_REFRESH_SECONDS:
            return self.learned_mean
        while self.reported and self.reported[0][0] <= self.now - p.metrics_lag_seconds:
            item = self.reported.popleft()
            self.window.append(item)
            self.window_sum += item[1]
        while self.window and self.window[0][0] < self.now - scaler_handler.RECENT_SECONDS:
            self.window_sum -= self.window.popleft()[1]
        if self.window:
            self.learned_mean = self.window_sum / len(self.window)
        elif self.learned_mean is None and p.learned_task_seconds:
            self.learned_mean = float(p.learned_task_seconds)
        # else: nothing in the recent window; the last mean stands for the longer one (LEARNED_SECONDS).
        self.learned_at = self.now
        return self.learned_mean

    def seen_active(self) -> tuple[int, int]:
        """Active workers as the scaler counts them, and the job parents ListJobs lists. A job's
        status (ListJobs, DescribeJobs) is read listjobs_lag_seconds late: its children are still
        shown active that long after they ended. A fresh submission is counted at once: the
        scaler remembers what it submitted (REMEMBER_SECONDS) instead of waiting for a listing."""
        lag = self.params.listjobs_lag_seconds
        while self.ended and self.ended[0][0] <= self.now - lag:
            self.ended.popleft()
        stale = len(self.ended)
        return self.active_jobs() + stale, self.active_parents

    def run_scaler(self) -> bool:
        """One decision; True if the invocation goes on deciding (handler.run's idle check)."""
        # The real policy function, fed what GetQueueAttributes and ListJobs would return.
        visible, in_flight = len(self.waiting), self.in_flight()
        active, parents = self.seen_active()
        p = self.params
        if p.in_flight_count == "keda":
            deficit = max(0, workers_wanted(visible + in_flight, p.messages_per_worker or 10, p.max_workers) - active)
        elif p.messages_per_worker:
            deficit = workers_to_submit(visible, in_flight, 0, active, p.messages_per_worker, p.max_workers,
                                        tasks_per_worker=p.tasks_per_worker)
        else:
            sizing = workers_for_target(visible, in_flight, 0, active, p.max_workers,
                                        target_wait_seconds=p.target_wait_seconds,
                                        start_seconds=p.start_seconds if self.started else p.scaler_start_seconds,
                                        task_seconds=self.learned_task_seconds() if visible else None,
                                        tasks_per_worker=p.tasks_per_worker,
                                        starting_workers=self.jobs_pending + sum(
                                            1 for w in self.workers if w.state == STARTING))
            deficit = max(0, sizing.wanted - active)
        warm_new = 0
        if p.min_workers:
            # handler.scale: at least min_workers; the ones started for that alone are warm.
            # handler.scale tells its warm jobs by name: a worker started for the backlog is not one.
            target = min(p.min_workers, p.max_workers)
            warm_new = max(0, min(target - self.warm_active, p.max_workers - active - deficit))
            deficit += warm_new
        self.count_calls(parents, deficit)
        self.submit(deficit - warm_new)
        self.submit(warm_new, warm=True)
        if visible or in_flight or active > self.warm_active or deficit:
            self.last_work = self.now
            return True
        return p.scaler_idle_check == "loop" or (
            self.last_work is not None and self.now - self.last_work < p.scaler_cooldown_seconds)

    def count_calls(self, parents: int, deficit: int) -> None:
        """The Batch calls of one decision (handler.scale): ListJobs per active status (one page
        each at least, parents spread over them at worst all in one), DescribeJobs per 100 ids,
        SubmitJob per job of the plan."""
        pages = len(scaler_handler.ACTIVE_STATUSES) - 1 + max(1, math.ceil(parents / LISTJOBS_PAGE))
        describe = math.ceil(parents / scaler_handler.DESCRIBE_BATCH)
        plan = submission_plan(deficit)
        calls = pages + describe + len(plan)
        api = self.api
        api["decisions"] += 1
        api["batch_calls"] += calls
        api["batch_calls_max"] = max(api["batch_calls_max"], calls)
        api["submit_calls_max"] = max(api["submit_calls_max"], len(plan))
        api["listjobs_pages_max"] = max(api["listjobs_pages_max"], pages)
        api["array_max"] = max(api["array_max"], max(plan, default=0))

    def scaler_decisions(self) -> int:
        """Decisions in one invocation: at 0, poll, 2 x poll, ... before SCALER_LOOP_SECONDS."""
        return math.ceil(SCALER_LOOP_SECONDS / self.params.scaler_poll_seconds)

    # -- main loop
    def run(self) -> Result:
        for task in self.tasks:
            self.schedule(task.arrival, ARRIVAL, task)
        if self.policy != "oracle":
            self.schedule(self.phase, MINUTE, 0)
        if self.policy == "scaler" and self.params.min_workers:
            # Warm capacity kept while the stack was idle: up and polling at t = 0.
            job = Job(0.0, self.params.min_workers, self.params.min_workers, warm=True)
            self.active_parents += 1
            self.warm_active += min(self.params.min_workers, self.params.max_workers)
            for _ in range(min(self.params.min_workers, self.params.max_workers)):
                worker = Worker(placed_at=0.0, running_at=0.0, job=job)
                self.workers.append(worker)
                self.become_idle(worker)
                self.schedule_job_end(worker)
                self.schedule(self.rng.uniform(0, self.params.poll_seconds), POLL, worker)
            self.started = True
            self.peak = max(self.peak, len(self.workers))
        if self.policy == "scaler":
            # The invocation before t = 0 may still be deciding after it, if every run loops; with
            # the idle check it found nothing (the stack was idle) and ended at its first decision.
            start, step = self.phase - SCALER_PERIOD_SECONDS, self.params.scaler_poll_seconds
            first = next(j for j in range(self.scaler_decisions() + 1) if j == self.scaler_decisions()
                         or start + j * step >= 0)
            if first == self.scaler_decisions() or self.params.scaler_idle_check == "minute":
                start, first = self.phase, 0
            self.schedule(start + first * step, SCALER, (start, first))
        while self.events:
            at, kind, _, payload = heapq.heappop(self.events)
            if at > self.horizon:
                break
            self.now = at
            self.handle(kind, payload)
            self.record()
            if self.quiet() and all(k in PERIODIC or self.warm_event(p) for _, k, _, p in self.events):
                break
        for worker in self.workers:  # still alive at the horizon: billed up to it
            self.now = min(self.now, self.horizon)
            self.bill(worker, self.now)
        return self.result()

    def bill(self, worker: Worker, until: float) -> None:
        life = until - worker.placed_at
        self.billed += max(BILLING_MINIMUM_SECONDS, life)
        self.set_state(worker, worker.state)
        if life < BILLING_MINIMUM_SECONDS:
            self.state_seconds["minimum"] = self.state_seconds.get("minimum", 0.0) + BILLING_MINIMUM_SECONDS - life

    def handle(self, kind: int, payload: object) -> None:
        if kind in (COMPLETE, RUNNING, DRAINED, GRACE_END, EXITED, TAKE_END, JOB_TIMEOUT):
            worker, epoch = payload
            # The job's end applies whatever the worker did since (epoch None); the rest are stale
            # once the worker moved on.
            if worker.exited_at is not None or (epoch is not None and epoch != worker.epoch):
                return
        elif kind == POLL:
            worker = payload
            if worker.exited_at is not None:
                return
        if kind == ARRIVAL:
            self.arrived += 1
            self.waiting.append(payload)
            self.dispatch()
        elif kind == VISIBLE:
            self.orphans -= 1
            self.release(payload)
            self.dispatch()
        elif kind == COMPLETE:
            self.done += 1
            self.held -= 1
            self.busy_seconds += worker.task.duration
            self.reported.append((self.now, worker.task.duration))
            self.last_done = self.now
            worker.epoch += 1
            if worker.stop_requested or not worker.taking:
                worker.task = None
                # Past its take window: the drain (one long poll) and the warm shutdown.
                self.stop(worker, self.now + SHUTDOWN_SECONDS + (0 if worker.stop_requested else LONG_POLL_SECONDS))
            else:
                self.become_idle(worker)
            self.maybe_fault()
            self.dispatch()
        elif kind == FAULT:
            self.fault(payload)
        elif kind == RUNNABLE:
            self.runnable.append(payload)
            self.place()
        elif kind == RUNNING:
            self.started = True
            self.become_idle(worker)
            self.schedule_job_end(worker)
            self.dispatch()
            # The lifecycle script polls every poll_seconds from its own start, not in step with
            # the tasks: its first poll falls anywhere in the first interval.
            offset = self.rng.uniform(0, self.params.poll_seconds) if self.params.poll_offsets else 0.0
            self.schedule(self.now + offset, POLL, worker)
        elif kind == TAKE_END:
            if worker.state in (IDLE, BUSY) and worker.taking and not worker.stop_requested:
                self.end_take_window(worker)
                self.dispatch()
        elif kind == JOB_TIMEOUT:
            if worker.state in (IDLE, BUSY, DRAINING) and not worker.stop_requested:
                worker.timed_out = True
                if worker.state == DRAINING:
                    worker.stop_requested = True   # its drain ends in the exit it was heading for
                else:
                    self.terminate(worker)
        elif kind == DRAINED:
            self.drained(worker)
            self.dispatch()
        elif kind == GRACE_END:
            # The task did not finish within the grace: stopped, its message visible at once.
            task, worker.task = worker.task, None
            self.held -= 1
            self.interrupted[id(task)] = self.now - self.params.stop_grace_seconds
            self.timeout_cuts += worker.timed_out
            self.release(task)
            # Batch retries a Spot reclaim, never a timeout.
            self.exit(worker, retry=not worker.timed_out)
            self.dispatch()
        elif kind == EXITED:
            self.exit(worker, retry=worker.stop_requested and not worker.timed_out)
            self.dispatch()
        elif kind == POLL:
            self.poll(worker)
        elif kind == MINUTE:
            self.minute(payload)
            self.schedule(self.now + METRIC_PERIOD_SECONDS, MINUTE, payload + 1)
        elif kind == SCALER:
            goes_on = self.run_scaler()
            start, j = payload
            if goes_on and j + 1 < self.scaler_decisions():
                self.schedule(start + (j + 1) * self.params.scaler_poll_seconds, SCALER, (start, j + 1))
            else:
                self.schedule(start + SCALER_PERIOD_SECONDS, SCALER, (start + SCALER_PERIOD_SECONDS, 0))

    def result(self) -> Result:
        total = len(self.tasks)
        return Result(
            scenario="", policy=self.policy, tasks=total,
            drain_seconds=None if self.done < total else round(self.last_done, 1),
            p50_wait_seconds=_percentile(self.waits, total, 50),
            p95_wait_seconds=_percentile(self.waits, total, 95),
            worker_seconds=round(self.billed, 1),
            busy_seconds=round(self.busy_seconds, 1),
            peak_workers=self.peak,
            jobs_submitted=self.jobs_submitted,
            stranded=total - len(self.waits),
            reruns=self.reruns,
            timeout_cuts=self.timeout_cuts,
            deadline_exits=self.deadline_exits,
            settings=self.settings,
            recovery_seconds=round(max(self.recovery), 1) if self.recovery else None,
            start_seconds=self.params.start_seconds if self.policy != "oracle" else 0,
            billed_by_state={k: round(v, 1) for k, v in sorted(self.state_seconds.items())},
            api=dict(self.api) if self.policy == "scaler" else {},
            timeline=self.timeline,
            waits=self.waits,
        )


def _percentile(waits: list[float], total: int, q: int) -> float | None:
    """Nearest-rank percentile over every task; a task never started waits forever (-> None)."""
    if total == 0:
        return 0.0
    rank = math.ceil(q / 100 * total)
    ordered = sorted(waits)
    return round(ordered[rank - 1], 1) if rank <= len(ordered) else None


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else round(sum(values) / len(values), 1)


def pool(runs: list[Result]) -> Result:
    """One row for the runs of several phases: see "Phase" in the module docstring."""
    first = runs[0]
    if len(runs) == 1:
        return first
    waits = [w for r in runs for w in r.waits]
    total = sum(r.tasks for r in runs)
    recoveries = [r.recovery_seconds for r in runs if r.recovery_seconds is not None]
    return Result(
        scenario=first.scenario, policy=first.policy, tasks=round(total / len(runs)),
        drain_seconds=_mean([r.drain_seconds for r in runs]),
        p50_wait_seconds=_percentile(waits, total, 50),
        p95_wait_seconds=_percentile(waits, total, 95),
        worker_seconds=_mean([r.worker_seconds for r in runs]),
        busy_seconds=_mean([r.busy_seconds for r in runs]),
        peak_workers=max(r.peak_workers for r in runs),
        jobs_submitted=_mean([r.jobs_submitted for r in runs]),
        stranded=max(r.stranded for r in runs),
        reruns=_mean([r.reruns for r in runs]),
        timeout_cuts=_mean([r.timeout_cuts for r in runs]),
        deadline_exits=_mean([r.deadline_exits for r in runs]),
        settings=first.settings,
        recovery_seconds=max(recoveries) if recoveries else None,
        start_seconds=first.start_seconds,
        phases=len(runs),
        billed_by_state={k: round(sum(r.billed_by_state.get(k, 0.0) for r in runs) / len(runs), 1)
                         for k in sorted({k for r in runs for k in r.billed_by_state})},
        api={k: max(r.api.get(k, 0) for r in runs) for k in first.api},
        compute=first.compute,
        timeline=first.timeline,
        waits=waits,
    )


def simulate_lambda(workload: Workload, params: Params) -> Result:
    """A ``compute: "lambda"`` pool: the event source mapping hands each message to a function
    instance within LAMBDA_POLL_SECONDS; a warm instance (free, used within
    LAMBDA_KEEP_WARM_SECONDS) runs it at once, else a new one after a cold start, up to the
    mapping's maximum concurrency (max_workers, 2..1000), else the message waits for the first
    instance to free up. Billed per millisecond: each run, plus each cold start (INIT)."""
    params = replace(params, **dict(workload.settings))
    tasks = sorted(workload.arrivals(random.Random(params.seed)))
    concurrency = max(2, min(params.max_workers, 1000))
    free_at: list[float] = []   # each instance: when it is free again
    waits, billed, busy, drain, peak, colds = [], 0.0, 0.0, 0.0, 0, 0
    for arrival, duration in tasks:
        ready = arrival + LAMBDA_POLL_SECONDS
        free_at = [t for t in free_at if t > ready or ready - t <= LAMBDA_KEEP_WARM_SECONDS]
        idle = [t for t in free_at if t <= ready]
        if idle:
            free_at.remove(max(idle))
            start, init = ready, 0.0
        elif len(free_at) < concurrency:
            start, init = ready + LAMBDA_COLD_START_SECONDS, LAMBDA_COLD_START_SECONDS
            colds += 1
        else:
            first = min(free_at)
            free_at.remove(first)
            start, init = first, 0.0
        free_at.append(start + duration)
        peak = max(peak, len(free_at))
        waits.append(start - arrival)
        billed += duration + init
        busy += duration
        drain = max(drain, start + duration)
    total = len(tasks)
    return Result(scenario="", policy="lambda", tasks=total, drain_seconds=round(drain, 1),
                  p50_wait_seconds=_percentile(waits, total, 50), p95_wait_seconds=_percentile(waits, total, 95),
                  worker_seconds=round(billed, 1), busy_seconds=round(busy, 1), peak_workers=peak,
                  jobs_submitted=colds, stranded=0, settings=workload.settings_text(),
                  start_seconds=int(LAMBDA_COLD_START_SECONDS), compute="lambda", waits=waits)


def runs_for(scenario: str, policy: str) -> bool:
    """Whether the workload is run for the policy: its own list, and Lambda only for tasks that
    fit a function's 900 s."""
    workload = WORKLOADS[scenario]
    if workload.policies is not None and policy not in workload.policies:
        return False
    if policy == "lambda":
        longest = max((d for _, d in workload.arrivals(random.Random(0))), default=0)
        return longest <= LAMBDA_MAX_TASK_SECONDS and not workload.faults
    return True


_RUNS: dict[tuple, Result] = {}


def simulate(scenario: str, policy: str, params: Params = Params(), phase: float | None = None) -> Result:
    """One row: a single run at ``phase``, or (None) the runs of every phase in params.phases
    pooled, for each of the workload's seeds. The model is deterministic, so a row is computed
    once per process (the million-task one takes half a minute) and handed out as a copy."""
    key = (scenario, policy, params, phase)
    if key not in _RUNS:
        _RUNS[key] = _simulate(scenario, policy, params, phase)
    return replace(_RUNS[key])


def _simulate(scenario: str, policy: str, params: Params, phase: float | None) -> Result:
    if scenario not in WORKLOADS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(WORKLOADS)}")
    workload = WORKLOADS[scenario]
    seeds = [params.seed + k for k in range(workload.seeds)]
    if policy == "lambda":
        runs = [simulate_lambda(workload, replace(params, seed=seed)) for seed in seeds]
    else:
        phases = [0] if policy == "oracle" else ([phase] if phase is not None else list(params.phases))
        if workload.policies is not None and phase is None:
            phases = phases[:1]   # the largest workloads: one phase
        runs = []
        for seed in seeds:
            for index, each in enumerate(phases):
                runs.append(Simulation(policy, workload, replace(params, seed=seed), each,
                                       timeline=index == 0 and seed == seeds[0]).run())
    for result in runs:
        result.scenario = scenario
    return pool(runs)


def run_all(scenarios: Iterable[str], policies: Iterable[str], params: Params) -> list[Result]:
    return [simulate(s, p, params) for s in scenarios for p in policies if runs_for(s, p)]


def start_sweep(params: Params, scenario: str = "burst-1000x30s", starts: Iterable[int] = START_SWEEP,
                policies: Iterable[str] = ("alarms", "scaler")) -> list[Result]:
    rows = []
    for start in starts:
        swept = replace(params, fargate_start_seconds=start - params.batch_schedule_seconds)
        rows += [simulate(scenario, policy, swept) for policy in policies]
    return rows + [simulate(scenario, "oracle", params)]


# ---------------------------------------------------------------- output

COLUMNS = (("scenario", "scenario"), ("policy", "policy"), ("start_seconds", "start s"),
           ("drain_seconds", "drain s"), ("p50_wait_seconds", "p50 wait s"), ("p95_wait_seconds", "p95 wait s"),
           ("worker_seconds", "worker-s billed"), ("busy_seconds", "busy s"), ("cost_ratio", "worker-s / busy"),
           ("peak_workers", "peak workers"), ("jobs_submitted", "jobs"), ("reruns", "reruns"),
           ("timeout_cuts", "cut by timeout"), ("stranded", "stranded"), ("cost_fargate", "$ Fargate"),
           ("cost_fargate_spot", "$ Spot"), ("cost_lambda", "$ Lambda"), ("settings", "settings"))

# The worker every row pays for: the pool's defaults.
WORKER_VCPUS = STACK.vcpus
WORKER_MEMORY_GIB = STACK.memory_mib / 1024
WORKER_ARM = STACK.platform == "linux/arm64"


def costs(result: Result, region: str = prices.DEFAULT_REGION) -> dict[str, float]:
    """Dollars for a row's workers: Fargate on-demand, Fargate Spot, and the public IPv4 addresses
    they hold in network "public"."""
    def cost(spot: bool) -> float:
        return prices.worker_cost(result.worker_seconds, WORKER_VCPUS, WORKER_MEMORY_GIB, spot, region, arm=WORKER_ARM)

    if result.compute == "lambda":
        # A function of the pool's memory, billed per millisecond of its runs and cold starts, plus
        # a request per task (the workload's tasks: one invocation each, batch size 1).
        listed = prices.prices(region)
        gb_second = listed.lambda_arm_gb_second if WORKER_ARM else listed.lambda_x86_gb_second
        dollars = result.worker_seconds * WORKER_MEMORY_GIB * gb_second + result.tasks * listed.lambda_request
        return {"region": region, "cost_fargate": None, "cost_fargate_spot": None, "cost_public_ipv4": 0.0,
                "cost_lambda": round(dollars, 4)}
    return {
        "region": region,
        "cost_fargate": round(cost(False), 4),
        "cost_fargate_spot": None if WORKER_ARM else round(cost(True), 4),
        "cost_public_ipv4": round(prices.public_ipv4_cost(result.worker_seconds, region), 4),
        "cost_lambda": None,
    }


def _cell(result: Result, key: str, region: str = prices.DEFAULT_REGION) -> str:
    if key == "cost_ratio":
        return f"{result.worker_seconds / result.busy_seconds:.2f}" if result.busy_seconds else "-"
    if key.startswith("cost_"):
        dollars = costs(result, region)[key]
        return "-" if dollars is None else f"{dollars:.3f}"
    value = result.row()[key]
    if value is None:
        return "never"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def table(results: list[Result], markdown: bool = False, region: str = prices.DEFAULT_REGION) -> str:
    rows = [[_cell(r, key, region) for key, _ in COLUMNS] for r in results]
    headers = [title for _, title in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def targets(results: list[Result], swept: list[Result], params: Params) -> list[tuple[str, bool, str]]:
    """The scaling targets (docs/scaling.md), checked on these results: (target, met, figures)."""
    by = {(r.scenario, r.policy): r for r in results}
    checks = []

    def cost(scenario: str, limit: float) -> None:
        if (scenario, "scaler") in by:
            r = by[scenario, "scaler"]
            ratio = r.worker_seconds / r.busy_seconds
            checks.append((f"{scenario}: worker-s <= {limit}x busy", ratio <= limit,
                           f"{ratio:.2f}x ({r.worker_seconds:.0f} / {r.busy_seconds:.0f})"))

    cost("burst+background", 1.5)
    cost("long-200x900s", 1.10)
    cost("burst-1000x30s", 1.16)
    burst = "burst-1000x30s"
    if (burst, "scaler") in by and (burst, "oracle") in by:
        ratio = by[burst, "scaler"].drain_seconds / by[burst, "oracle"].drain_seconds
        checks.append((f"{burst}: drain <= 1.2x oracle", ratio <= 1.2, f"{ratio:.2f}x"))
    if ("crash", "scaler") in by and (burst, "scaler") in by:
        crash, calm = by["crash", "scaler"], by[burst, "scaler"]
        ratio = crash.worker_seconds / calm.worker_seconds
        checks.append(("crash: worker-s <= 1.05x no crash", ratio <= 1.05, f"{ratio:.3f}x"))
        ratio = crash.drain_seconds / calm.drain_seconds
        checks.append(("crash: drain <= 1.3x no crash", ratio <= 1.3,
                       f"{ratio:.3f}x; the killed task ran again {_fmt(crash.recovery_seconds)} s after the kill "
                       f"(window {params.visibility_timeout_seconds} s)"))
    for scenario, limit in (("burst-4", 145), ("trickle", 60)):
        if (scenario, "scaler") in by:
            r = by[scenario, "scaler"]
            ok = r.stranded == 0 and r.p95_wait_seconds is not None and r.p95_wait_seconds <= limit
            checks.append((f"{scenario}: p95 wait <= {limit} s (phase pooled, {params.start_seconds} s start)", ok,
                           f"p95 {_fmt(r.p95_wait_seconds)} s, stranded {r.stranded}"))
    slow = [r for r in swept if r.policy == "scaler" and r.start_seconds == 150]
    oracle = [r for r in swept if r.policy == "oracle"]
    if slow and oracle:
        r, o = slow[0], oracle[0]
        ratio = r.drain_seconds / o.drain_seconds
        bound = (150 + o.drain_seconds) / o.drain_seconds
        checks.append(("150 s start: drain <= 1.2x oracle", ratio <= 1.2,
                       f"{ratio:.2f}x, worker-s {r.worker_seconds / r.busy_seconds:.2f}x busy; no reactive policy "
                       f"beats (150 + {o.drain_seconds:.0f}) / {o.drain_seconds:.0f} = {bound:.2f}x: the oracle "
                       f"starts workers with no latency"))
    for scenario, wait, ratio in (("few-long", 150, 1.05), ("few-long-warm", 75, None), ("diurnal", 90, 1.4)):
        if (scenario, "scaler") in by:
            r = by[scenario, "scaler"]
            ok = r.p95_wait_seconds is not None and r.p95_wait_seconds <= wait
            figures = f"p95 {_fmt(r.p95_wait_seconds)} s"
            name = f"{scenario}: p95 wait <= {wait} s"
            if ratio is not None:
                share = r.worker_seconds / r.busy_seconds
                ok = ok and share <= ratio
                figures += f", worker-s {share:.3f}x busy"
                name += f", worker-s <= {ratio}x busy"
            checks.append((name, ok, figures))
    if ("huge", "scaler") in by and ("huge", "oracle") in by:
        r, o = by["huge", "scaler"], by["huge", "oracle"]
        ratio = r.drain_seconds / o.drain_seconds
        within, figures = api_check(r, params)
        checks.append(("huge: drain <= 1.15x oracle, its calls within the poll and the quota", ratio <= 1.15 and within,
                       f"{ratio:.3f}x; {figures}"))
    for scenario in ("burst-4", "trickle"):
        if (scenario, "lambda") in by:
            r = by[scenario, "lambda"]
            share = r.worker_seconds / r.busy_seconds
            checks.append((f"{scenario} on a Lambda pool: p95 wait <= 5 s, billed <= 1.2x busy",
                           r.p95_wait_seconds is not None and r.p95_wait_seconds <= 5 and share <= 1.2,
                           f"p95 {r.p95_wait_seconds:g} s, {share:.2f}x (cold start {LAMBDA_COLD_START_SECONDS:g} s)"))
    long_ones = [s for s in ("stream-2x-timeout", "long-stream") if (s, "scaler") in by]
    if long_ones:
        cut = {s: by[s, "scaler"].reruns for s in long_ones}
        checks.append((f"longer than the job timeout ({params.job_timeout_seconds} s): no task cut, 0 reruns",
                       not any(cut.values()), ", ".join(f"{s} {n:g}" for s, n in cut.items())))
    stranding = [s for (s, p), r in by.items() if p == "scaler" and r.stranded]
    if any(p == "scaler" for _, p in by):
        checks.append(("scaler: no task stranded in any workload", not stranding,
                       ", ".join(stranding) or "none"))
    return checks


def api_check(result: Result, params: Params) -> tuple[bool, str]:
    """The scaler's Batch calls in its busiest decision. One scaler makes its calls one after
    another, so at CALL_SECONDS a call it cannot exceed 1 / CALL_SECONDS (20) a second, under the
    account's 50 (a quota it shares with everything else in the account). What can fail: a
    decision that does not fit its poll interval, or an array above 10,000."""
    api = result.api
    if not api:
        return True, "no decisions"
    calls = api["batch_calls_max"]
    seconds = calls * CALL_SECONDS
    within = seconds < params.scaler_poll_seconds and api["array_max"] <= 10_000
    return within, (f"busiest decision {calls:g} Batch calls ({api['listjobs_pages_max']:g} ListJobs pages, "
                    f"{api['submit_calls_max']:g} SubmitJob, largest array {api['array_max']:g} of 10,000), "
                    f"about {seconds:.1f} s of the {params.scaler_poll_seconds} s poll, one call at a time: at "
                    f"most {1 / CALL_SECONDS:.0f} a second of the account's {BATCH_TPS_QUOTA}")


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def plot(results: list[Result], path: str, params: Params, scenario: str = "burst-1000x30s") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in results if r.scenario == scenario]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for result in chosen:
        times = [t / 60 for t, _, _ in result.timeline]
        top.step(times, [b for _, b, _ in result.timeline], where="post", label=result.policy)
        bottom.step(times, [w for _, _, w in result.timeline], where="post", label=result.policy)
    top.set_ylabel("backlog (visible + in flight)")
    bottom.set_ylabel("workers (starting or running)")
    bottom.set_xlabel("minutes since the burst (phase 0)")
    sizing = (f"messages_per_worker {params.messages_per_worker}" if params.messages_per_worker
              else f"target wait {params.target_wait_seconds} s")
    top.set_title(f"{scenario}: {WORKLOADS[scenario].description}; max_workers {params.max_workers}, {sizing}",
                  fontsize=10)
    # Up to the slowest drain and its workers' exits, not the horizon the quiet scaler runs on to.
    drained = [r.drain_seconds for r in chosen if r.drain_seconds is not None]
    if drained:
        bottom.set_xlim(0, (max(drained) + 300) / 60)
    top.legend()
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _sweep(scenarios: list[str], params: Params) -> list[Result]:
    swept = []
    for messages_per_worker in SWEEP:
        for result in run_all(scenarios, ["scaler"], replace(params, messages_per_worker=messages_per_worker)):
            result.policy = f"scaler mpw={messages_per_worker}"
            swept.append(result)
    return sorted(swept, key=lambda r: scenarios.index(r.scenario))


def _positive(name: str, minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= {minimum}, got {raw!r}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of backlog and workers on burst-1000x30s")
    parser.add_argument("--scenario", action="append", choices=list(WORKLOADS), help="repeatable; default all")
    parser.add_argument("--policy", action="append", choices=list(POLICIES), help="repeatable; default all")
    defaults = Params()
    parser.add_argument("--messages-per-worker", type=_positive("--messages-per-worker", 1),
                        default=defaults.messages_per_worker,
                        help="the override: a fixed backlog per worker instead of the target wait (default: none)")
    parser.add_argument("--target-wait", type=_positive("--target-wait", 10), default=defaults.target_wait_seconds,
                        help="target_wait_seconds: every waiting task started within it (default %(default)s)")
    parser.add_argument("--min-workers", type=_positive("--min-workers", 0), default=defaults.min_workers,
                        help="warm workers kept all the time (default %(default)s)")
    parser.add_argument("--listjobs-lag", type=_positive("--listjobs-lag", 0), default=defaults.listjobs_lag_seconds,
                        help="seconds job statuses are read late (an assumption; default %(default)s)")
    parser.add_argument("--max-workers", type=_positive("--max-workers", 1), default=defaults.max_workers,
                        help="cap = compute environment max vCPUs / vCPUs per worker (default %(default)s)")
    parser.add_argument("--sla-seconds", type=_positive("--sla-seconds", 60), default=defaults.sla_seconds)
    parser.add_argument("--idle-seconds", type=_positive("--idle-seconds", 1), default=defaults.idle_seconds)
    parser.add_argument("--poll-seconds", type=_positive("--poll-seconds", 1), default=defaults.poll_seconds)
    parser.add_argument("--scaler-poll-seconds", type=_positive("--scaler-poll-seconds", 1),
                        default=defaults.scaler_poll_seconds, help="scaler decisions inside its minute (default %(default)s)")
    parser.add_argument("--scaler-idle-check", choices=("minute", "loop"), default=defaults.scaler_idle_check,
                        help="'minute': an invocation with no work ends after one decision; 'loop': "
                             "every invocation decides its whole minute (default %(default)s)")
    parser.add_argument("--scaler-cooldown", type=_positive("--scaler-cooldown", 0),
                        default=defaults.scaler_cooldown_seconds,
                        help="seconds the scaler keeps looping after it last saw work (default %(default)s)")
    parser.add_argument("--visibility-timeout", type=_positive("--visibility-timeout", 1),
                        default=defaults.visibility_timeout_seconds,
                        help="queue visibility timeout = crash-recovery window (default %(default)s)")
    parser.add_argument("--start-seconds", type=_positive("--start-seconds", BATCH_SCHEDULE_SECONDS),
                        default=defaults.start_seconds,
                        help="SubmitJob to a polling worker: Batch scheduling + Fargate start (default %(default)s)")
    parser.add_argument("--phase", type=int, choices=range(60), metavar="0..59",
                        help="run one scaler/metric phase instead of pooling %s" % (PHASES,))
    parser.add_argument("--in-flight-count", choices=IN_FLIGHT_COUNTS, default=defaults.in_flight_count,
                        help="scaler: 'busy' (the policy) or 'keda' (ceil((visible + in flight) / mpw)), to compare")
    parser.add_argument("--idle-rule", choices=("worker", "queue"), default=defaults.idle_rule,
                        help="'worker' (the lifecycle script) or 'queue' (any in-flight message keeps every worker)")
    parser.add_argument("--job-timeout", type=_positive("--job-timeout", 60), default=defaults.job_timeout_seconds,
                        help="Batch's job timeout (default %(default)s)")
    parser.add_argument("--task-time-limit", type=_positive("--task-time-limit", 1),
                        default=defaults.task_time_limit_seconds, help="task hard time limit (default %(default)s)")
    parser.add_argument("--no-deadline-rule", action="store_true",
                        help="model the lifecycle script before its take window: the job timeout cuts tasks")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the ramp workload")
    parser.add_argument("--sweep", action="store_true",
                        help="also run the scaler for messages_per_worker in %s" % (SWEEP,))
    parser.add_argument("--region", choices=list(prices.REGIONS), default=prices.DEFAULT_REGION,
                        help="list prices of the $ columns (default %(default)s)")
    parser.add_argument("--cost", action="store_true",
                        help="also print the idle stack's monthly cost per network option (synthesizes "
                             "the stack from cdk.json); with --json the output is {rows, idle_monthly}")
    args = parser.parse_args(argv)

    params = replace(defaults, messages_per_worker=args.messages_per_worker, max_workers=args.max_workers,
                     target_wait_seconds=args.target_wait, min_workers=args.min_workers,
                     listjobs_lag_seconds=args.listjobs_lag,
                     sla_seconds=args.sla_seconds, idle_seconds=args.idle_seconds, poll_seconds=args.poll_seconds,
                     scaler_poll_seconds=args.scaler_poll_seconds, scaler_idle_check=args.scaler_idle_check,
                     scaler_cooldown_seconds=args.scaler_cooldown,
                     visibility_timeout_seconds=args.visibility_timeout,
                     fargate_start_seconds=args.start_seconds - BATCH_SCHEDULE_SECONDS, seed=args.seed,
                     in_flight_count=args.in_flight_count, idle_rule=args.idle_rule,
                     job_timeout_seconds=args.job_timeout, task_time_limit_seconds=args.task_time_limit,
                     deadline_rule=not args.no_deadline_rule,
                     phases=(args.phase,) if args.phase is not None else PHASES)
    scenarios = args.scenario or list(WORKLOADS)
    policies = args.policy or list(POLICIES)
    results = run_all(scenarios, policies, params)
    # The start-latency sweep (and its target) belongs to the default run only.
    latency = start_sweep(params) if args.scenario is None and args.policy is None else []

    swept = _sweep(scenarios, params) if args.sweep else []
    idle = prices.idle_costs(args.region, counts=prices.synth_counts()) if args.cost else []
    if args.json:
        rows = [{**r.row(), **costs(r, args.region)} for r in results + latency + swept]
        if idle:
            print(json.dumps({"rows": rows, "idle_monthly": [
                {"network_option": c.network_option, "region": c.region, "total": round(c.total, 4),
                 "lines": [line.__dict__ for line in c.lines]} for c in idle]}, indent=1))
        else:
            print(json.dumps(rows, indent=1))
    else:
        print(f"$ = the workers' Fargate bill, {args.region} list prices, {WORKER_VCPUS:g} vCPU / "
              f"{STACK.memory_mib} MiB per worker (Spot prices vary):")
        print()
        print(table(results, markdown=args.markdown, region=args.region))
        if latency:
            print()
            print("Start-latency sweep, burst-1000x30s (start = SubmitJob to a polling worker):")
            print()
            print(table(latency, markdown=args.markdown, region=args.region))
        checks = targets(results, latency, params)
        if checks:
            print()
            for name, met, figures in checks:
                print(f"{'met    ' if met else 'NOT MET'}  {name}: {figures}")
        if swept:
            print()
            print(table(swept, markdown=args.markdown, region=args.region))
        if idle:
            print()
            print(f"Idle stack, dollars a month, {args.region} list prices, no free tier (bench/prices.py):")
            print()
            print(prices.idle_table(idle, markdown=args.markdown))
    if args.plot:
        # The Lambda policy has no worker fleet to draw.
        plot_results = [simulate("burst-1000x30s", p, params, phase=0) for p in policies if p != "lambda"]
        plot(plot_results, args.plot, params)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

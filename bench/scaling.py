"""Scaling simulator: a discrete-event model of the AWS timing that decides how fast a backlog of
Celery tasks is drained by Batch workers, run for three scaling policies on the same workloads.

    python -m bench.scaling                 # readable table
    python -m bench.scaling --json          # JSON rows
    python -m bench.scaling --plot docs/scaling-burst.png

Policies
    seed          the sample's design: two depth alarms on ApproximateNumberOfMessagesVisible (>= 5 and
                  >= 50) whose EventBridge rules submit 1 worker and an array of 10 workers.
    proportional  this project: the scaler Lambda every minute (calling the real
                  ``batch_celery.scaler.policy``), plus the same two depth alarms and an age alarm
                  (ApproximateAgeOfOldestMessage >= SLA submits 1 worker); every alarm rule also
                  invokes the scaler.
    oracle        a lower bound: knows every arrival, starts a worker the moment a task would
                  otherwise wait (capped by max_workers), with NO start latency and no metric delay.
                  Tasks are served first come first served by the earliest free worker; with the
                  equal task durations of these workloads that is the earliest any schedule can
                  start each task, so the oracle's drain time and waits are true lower bounds for
                  the same cap. Its workers leave by the same idle rule as the real ones, so its
                  worker-seconds are the cost of the fastest possible drain with this worker, not an
                  absolute floor; ``busy_seconds`` (pure task time) is that floor.

Model parameters (each with its source; all overridable by flags where it makes sense)
    METRIC_PERIOD_SECONDS = 60   SQS pushes its CloudWatch metrics at one-minute intervals
                                 (Amazon SQS Developer Guide, "Available CloudWatch metrics for
                                 Amazon SQS"); the model samples the queue at every whole minute.
    METRIC_LAG_SECONDS = 60      an alarm evaluated at minute t sees the sample of the last complete
                                 period, taken at t - 60 s (alarms with a 60 s period are evaluated
                                 every minute: CloudWatch User Guide, "Evaluating an alarm").
    Edge-triggered rules         an EventBridge rule on "CloudWatch Alarm State Change" fires once per
                                 transition into ALARM, never while the alarm stays there
                                 (FACTS.md; EventBridge event patterns on state changes).
    SCALER_PERIOD_SECONDS = 60   EventBridge schedule rate(1 minute), the finest rate it offers.
    SCALER_PHASE_SECONDS = 30    the schedule is not aligned with arrivals: a burst lands on average
                                 half a period before the next run.
    BATCH_SCHEDULE_SECONDS = 10  SUBMITTED -> RUNNABLE in the Batch scheduler (assumption: a few
                                 seconds to tens of seconds are typical; AWS Batch User Guide, "Job
                                 states").
    FARGATE_START_SECONDS = 35   placement -> worker polling: Fargate task provisioning, image pull
                                 and Celery start ("Fargate jobs start in about 30 s or more",
                                 FACTS.md; image pull happens in STARTING, AWS Batch "Job states").
                                 Billed: Fargate bills from the start of the image download until the
                                 task ends, per second with a one-minute minimum
                                 (https://aws.amazon.com/fargate/pricing/).
    IDLE_SECONDS = 60, POLL_SECONDS = 10
                                 the worker's lifecycle script (issue 3 / the container contract)
                                 reads visible + in-flight + delayed every POLL_SECONDS and stops the
                                 worker once the total has been 0 for IDLE_SECONDS without
                                 interruption.
    TASK_SECONDS = 30            task duration of the workloads below (issue 4).
    max_workers = 48             compute environment max vCPUs 48 / 1 vCPU per worker (stack
                                 defaults); also the number of workers Fargate can run at once here,
                                 so extra jobs wait RUNNABLE until a worker exits.
    prefetch 1, concurrency 1    one task at a time per worker (worker_prefetch_multiplier=1,
                                 FACTS.md), picked up as soon as it is visible (SQS long polling).
    SLA_SECONDS = 300            default age-alarm threshold (issue 4).
    HORIZON_SECONDS = 6 h        a task not started within it counts as stranded.

What the model leaves out (on purpose, and it favours ``seed`` rather than ``proportional``):
metric gaps after a queue has been inactive (SQS can take up to 15 min to resume metrics; the
scaler reads GetQueueAttributes and does not depend on them), Lambda and SubmitJob latency (< 1 s),
Fargate capacity shortages, task failures and retries.
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

from batch_celery.scaler.policy import submission_plan, workers_to_submit
from batch_celery.settings import Settings

METRIC_PERIOD_SECONDS = 60
METRIC_LAG_SECONDS = 60
SCALER_PERIOD_SECONDS = 60
SCALER_PHASE_SECONDS = 30
BATCH_SCHEDULE_SECONDS = 10
FARGATE_START_SECONDS = 35
BILLING_MINIMUM_SECONDS = 60
TASK_SECONDS = 30
HORIZON_SECONDS = 6 * 3600

POLICIES = ("seed", "proportional", "oracle")
SWEEP = (1, 2, 5, 10, 20, 50)  # messages_per_worker values shown by --sweep


# The stack's own defaults (batch_celery/settings.py), so the model cannot drift from what deploys.
STACK = Settings()


@dataclass(frozen=True)
class Params:
    max_workers: int = STACK.max_workers
    messages_per_worker: int = STACK.messages_per_worker
    sla_seconds: int = STACK.age_alarm_seconds
    idle_seconds: int = STACK.idle_seconds
    poll_seconds: int = STACK.poll_seconds
    batch_schedule_seconds: int = BATCH_SCHEDULE_SECONDS
    fargate_start_seconds: int = FARGATE_START_SECONDS
    low_threshold: int = STACK.low_threshold  # the sample's alarms and array size
    high_threshold: int = STACK.high_threshold
    high_array_size: int = STACK.high_array_size
    # True: the depth/age rules submit their own Batch jobs AND invoke the scaler (issue 4's design).
    # False: with the scaler on, the rules only invoke it (see --rules-invoke-scaler-only).
    rules_submit_jobs: bool = True
    seed: int = 7


# ---------------------------------------------------------------- workloads

def _burst(count: int) -> Callable[[random.Random], list[tuple[float, float]]]:
    return lambda rng: [(0.0, TASK_SECONDS)] * count


def _trickle(rng: random.Random) -> list[tuple[float, float]]:
    # One 30 s task every 2 minutes for an hour: never 5 visible at once.
    return [(float(t), TASK_SECONDS) for t in range(0, 3600, 120)]


def _ramp(rng: random.Random) -> list[tuple[float, float]]:
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


WORKLOADS: dict[str, tuple[str, Callable[[random.Random], list[tuple[float, float]]]]] = {
    "burst-1000x30s": ("1000 tasks of 30 s at t=0", _burst(1000)),
    "burst-4": ("4 tasks of 30 s at t=0 (below the seed's 5-message alarm)", _burst(4)),
    "trickle": ("one 30 s task every 2 min for 1 h", _trickle),
    "ramp": ("Poisson arrivals rising 0 -> 60/min over 30 min, 30 s tasks", _ramp),
}


# ---------------------------------------------------------------- the model

@dataclass
class Worker:
    placed_at: float
    running_at: float
    busy: bool = False
    task_arrival: float | None = None  # when the message it is working on was sent
    empty_since: float | None = None
    exited_at: float | None = None


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
    jobs_submitted: int
    stranded: int
    timeline: list[tuple[float, int, int]] = field(repr=False, default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "timeline"}


# Event kinds, in the order they are handled when they share a timestamp: the queue changes
# first, then the observers (workers' polls, metric samples, scaler) see the new state.
ARRIVAL, COMPLETE, RUNNABLE, RUNNING, POLL, MINUTE, SCALER = range(7)


class Simulation:
    def __init__(self, policy: str, arrivals: list[tuple[float, float]], params: Params):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.params = params
        self.arrivals = sorted(arrivals)
        self.events: list[tuple[float, int, int, object]] = []
        self.sequence = 0
        self.now = 0.0
        self.waiting: deque[tuple[float, float]] = deque()     # (arrival, duration), FIFO
        self.in_flight = 0
        self.waits: list[float] = []
        self.last_done = 0.0
        self.done = 0
        self.busy_seconds = 0.0
        self.idle: deque[Worker] = deque()
        self.workers: list[Worker] = []      # placed (STARTING or RUNNING), not exited
        self.runnable: deque[None] = deque()  # jobs waiting for a free slot (FIFO job queue)
        self.jobs_pending = 0                # submitted, not yet placed
        self.jobs_submitted = 0
        self.billed = 0.0
        self.peak = 0
        self.samples: dict[int, tuple[int, float]] = {}  # minute -> (visible, age of oldest)
        self.alarm_state = {"low": False, "high": False, "age": False}
        self.timeline: list[tuple[float, int, int]] = []
        self.arrived = 0

    # -- event plumbing
    def schedule(self, at: float, kind: int, payload: object = None) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, kind, self.sequence, payload))

    def backlog(self) -> int:
        return len(self.waiting) + self.in_flight

    def active_jobs(self) -> int:
        return self.jobs_pending + len(self.workers)

    def quiet(self) -> bool:
        return self.arrived == len(self.arrivals) and not self.waiting and self.in_flight == 0 \
            and self.active_jobs() == 0

    def record(self) -> None:
        point = (self.now, self.backlog(), len(self.workers))
        if self.timeline and self.timeline[-1][0] == self.now:
            self.timeline[-1] = point
        else:
            self.timeline.append(point)

    # -- Batch: submit -> RUNNABLE -> placed (slot) -> RUNNING
    def submit(self, workers: int) -> None:
        for size in submission_plan(workers):
            for _ in range(size):
                self.jobs_submitted += 1
                self.jobs_pending += 1
                self.schedule(self.now + self.params.batch_schedule_seconds, RUNNABLE)

    def place(self) -> None:
        while self.runnable and len(self.workers) < self.params.max_workers:
            self.runnable.popleft()
            self.jobs_pending -= 1
            worker = Worker(placed_at=self.now, running_at=self.now + self.params.fargate_start_seconds)
            self.workers.append(worker)
            self.schedule(worker.running_at, RUNNING, worker)
        self.peak = max(self.peak, len(self.workers))

    def start_worker_now(self) -> Worker:
        # The oracle's worker: no scheduler, no Fargate start, polling at once.
        worker = Worker(placed_at=self.now, running_at=self.now)
        self.workers.append(worker)
        self.peak = max(self.peak, len(self.workers))
        self.idle.append(worker)
        self.schedule(self.now + self.params.poll_seconds, POLL, worker)
        return worker

    # -- workers and messages
    def dispatch(self) -> None:
        while self.waiting and self.idle:
            worker = self.idle.popleft()
            arrival, duration = self.waiting.popleft()
            self.waits.append(self.now - arrival)
            self.in_flight += 1
            worker.busy = True
            worker.task_arrival = arrival
            self.busy_seconds += duration
            self.schedule(self.now + duration, COMPLETE, worker)

    def oracle_top_up(self) -> None:
        while len(self.waiting) > len(self.idle) and len(self.workers) < self.params.max_workers:
            self.start_worker_now()

    def poll(self, worker: Worker) -> None:
        if worker.exited_at is not None:
            return
        if self.backlog() > 0:
            worker.empty_since = None
        elif worker.empty_since is None:
            worker.empty_since = self.now
        elif self.now - worker.empty_since >= self.params.idle_seconds:
            self.exit(worker)
            return
        self.schedule(self.now + self.params.poll_seconds, POLL, worker)

    def exit(self, worker: Worker) -> None:
        worker.exited_at = self.now
        self.workers.remove(worker)
        self.idle.remove(worker)
        self.billed += max(BILLING_MINIMUM_SECONDS, self.now - worker.placed_at)
        self.place()

    # -- CloudWatch alarms, EventBridge rules, the scaler
    def minute(self) -> None:
        minute = int(self.now // METRIC_PERIOD_SECONDS)
        # ApproximateAgeOfOldestMessage: the oldest message not yet deleted, in flight included.
        in_flight = [w.task_arrival for w in self.workers if w.task_arrival is not None]
        oldest = min([a for a, _ in list(self.waiting)[:1]] + in_flight, default=None)
        self.samples[minute] = (len(self.waiting), 0.0 if oldest is None else self.now - oldest)
        if self.policy == "oracle":
            return
        seen = self.samples.get(minute - METRIC_LAG_SECONDS // METRIC_PERIOD_SECONDS)
        if seen is None:
            return
        visible, age = seen
        fired = []
        for name, breaching, workers in (
            ("low", visible >= self.params.low_threshold, 1),
            ("high", visible >= self.params.high_threshold, self.params.high_array_size),
            ("age", self.policy == "proportional" and age >= self.params.sla_seconds, 1),
        ):
            if breaching and not self.alarm_state[name]:
                fired.append(name)
                if self.policy == "seed" or self.params.rules_submit_jobs:
                    self.submit(workers)   # the rule's own Batch target
            self.alarm_state[name] = breaching
        if fired and self.policy == "proportional":
            self.run_scaler()              # every rule also invokes the scaler

    def run_scaler(self) -> None:
        # The real policy function, fed what GetQueueAttributes and ListJobs would return.
        deficit = workers_to_submit(len(self.waiting), self.in_flight, 0, self.active_jobs(),
                                    self.params.messages_per_worker, self.params.max_workers)
        self.submit(deficit)

    # -- main loop
    def run(self) -> Result:
        for arrival in self.arrivals:
            self.schedule(arrival[0], ARRIVAL, arrival)
        if self.policy != "oracle":
            self.schedule(0.0, MINUTE)
        if self.policy == "proportional":
            self.schedule(float(SCALER_PHASE_SECONDS), SCALER)
        while self.events:
            at, kind, _, payload = heapq.heappop(self.events)
            if at > HORIZON_SECONDS:
                break
            self.now = at
            if kind == ARRIVAL:
                self.arrived += 1
                self.waiting.append(payload)
                if self.policy == "oracle":
                    self.oracle_top_up()
                self.dispatch()
            elif kind == COMPLETE:
                worker = payload
                self.in_flight -= 1
                self.done += 1
                self.last_done = self.now
                worker.busy = False
                worker.task_arrival = None
                self.idle.append(worker)
                self.dispatch()
            elif kind == RUNNABLE:
                self.runnable.append(None)
                self.place()
            elif kind == RUNNING:
                worker = payload
                self.idle.append(worker)
                self.dispatch()
                self.schedule(self.now + self.params.poll_seconds, POLL, worker)
            elif kind == POLL:
                self.poll(payload)
            elif kind == MINUTE:
                self.minute()
                if not self.quiet() or self.events:
                    self.schedule(self.now + METRIC_PERIOD_SECONDS, MINUTE)
            elif kind == SCALER:
                self.run_scaler()
                if not self.quiet() or any(k not in (MINUTE, SCALER) for _, k, _, _ in self.events):
                    self.schedule(self.now + SCALER_PERIOD_SECONDS, SCALER)
            self.record()
            if self.quiet() and all(k in (MINUTE, SCALER) for _, k, _, _ in self.events):
                break
        for worker in self.workers:  # still alive at the horizon: billed up to it
            self.billed += max(BILLING_MINIMUM_SECONDS, HORIZON_SECONDS - worker.placed_at)
        return self.result()

    def result(self) -> Result:
        total = len(self.arrivals)
        stranded = total - len(self.waits)
        return Result(
            scenario="", policy=self.policy, tasks=total,
            drain_seconds=None if self.done < total else round(self.last_done, 1),
            p50_wait_seconds=_percentile(self.waits, total, 50),
            p95_wait_seconds=_percentile(self.waits, total, 95),
            worker_seconds=round(self.billed, 1),
            busy_seconds=round(self.busy_seconds, 1),
            peak_workers=self.peak,
            jobs_submitted=self.jobs_submitted,
            stranded=stranded,
            timeline=self.timeline,
        )


def _percentile(waits: list[float], total: int, q: int) -> float | None:
    """Nearest-rank percentile over every task; a task never started waits forever (-> None)."""
    if total == 0:
        return 0.0
    rank = math.ceil(q / 100 * total)
    ordered = sorted(waits)
    return round(ordered[rank - 1], 1) if rank <= len(ordered) else None


def simulate(scenario: str, policy: str, params: Params = Params()) -> Result:
    if scenario not in WORKLOADS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(WORKLOADS)}")
    arrivals = WORKLOADS[scenario][1](random.Random(params.seed))
    result = Simulation(policy, arrivals, params).run()
    result.scenario = scenario
    return result


def run_all(scenarios: Iterable[str], policies: Iterable[str], params: Params) -> list[Result]:
    return [simulate(s, p, params) for s in scenarios for p in policies]


# ---------------------------------------------------------------- output

COLUMNS = (("scenario", "scenario"), ("policy", "policy"), ("drain_seconds", "drain s"),
           ("p50_wait_seconds", "p50 wait s"), ("p95_wait_seconds", "p95 wait s"),
           ("worker_seconds", "worker-s billed"), ("busy_seconds", "busy s"),
           ("peak_workers", "peak workers"), ("jobs_submitted", "jobs"), ("stranded", "stranded"))


def _cell(value: object) -> str:
    if value is None:
        return "never"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def table(results: list[Result], markdown: bool = False) -> str:
    rows = [[_cell(r.row()[key]) for key, _ in COLUMNS] for r in results]
    headers = [title for _, title in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def targets(results: list[Result], params: Params) -> list[tuple[str, bool, str]]:
    """Issue 4's targets, checked on these results: (target, met, figures)."""
    by = {(r.scenario, r.policy): r for r in results}
    checks = []
    burst = "burst-1000x30s"
    if all((burst, p) in by for p in POLICIES):
        prop, oracle, seed = by[burst, "proportional"], by[burst, "oracle"], by[burst, "seed"]
        ratio = prop.drain_seconds / oracle.drain_seconds
        checks.append(("burst drain <= 1.25x oracle", ratio <= 1.25, f"{ratio:.2f}x"))
        speedup = seed.drain_seconds / prop.drain_seconds if seed.drain_seconds else math.inf
        checks.append(("burst drain >= 3x faster than seed", speedup >= 3, f"{speedup:.1f}x"))
        cost = prop.worker_seconds / oracle.worker_seconds
        checks.append(("burst worker-seconds <= 1.15x oracle", cost <= 1.15, f"{cost:.2f}x"))
    limit = params.sla_seconds + 120
    for scenario in ("trickle", "burst-4"):
        if (scenario, "proportional") in by:
            r = by[scenario, "proportional"]
            ok = r.stranded == 0 and r.p95_wait_seconds is not None and r.p95_wait_seconds < limit
            checks.append((f"{scenario}: nothing stranded, p95 wait < {limit} s", ok,
                           f"stranded {r.stranded}, p95 {_cell(r.p95_wait_seconds)} s"))
    return checks


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
    bottom.set_xlabel("minutes since the burst")
    top.set_title(f"{scenario}: {WORKLOADS[scenario][0]}; max_workers {params.max_workers}, "
                  f"messages_per_worker {params.messages_per_worker}")
    top.legend()
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _sweep(scenarios: list[str], params: Params) -> list[Result]:
    swept = []
    for messages_per_worker in SWEEP:
        for result in run_all(scenarios, ["proportional"], replace(params, messages_per_worker=messages_per_worker)):
            result.policy = f"proportional mpw={messages_per_worker}"
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
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of backlog and workers on burst-1000x30s")
    parser.add_argument("--scenario", action="append", choices=list(WORKLOADS), help="repeatable; default all")
    parser.add_argument("--policy", action="append", choices=list(POLICIES), help="repeatable; default all")
    defaults = Params()
    parser.add_argument("--messages-per-worker", type=_positive("--messages-per-worker", 1),
                        default=defaults.messages_per_worker, help="acceptable backlog per worker (default %(default)s)")
    parser.add_argument("--max-workers", type=_positive("--max-workers", 1), default=defaults.max_workers,
                        help="cap = compute environment max vCPUs / vCPUs per worker (default %(default)s)")
    parser.add_argument("--sla-seconds", type=_positive("--sla-seconds", 60), default=defaults.sla_seconds)
    parser.add_argument("--idle-seconds", type=_positive("--idle-seconds", 1), default=defaults.idle_seconds)
    parser.add_argument("--poll-seconds", type=_positive("--poll-seconds", 1), default=defaults.poll_seconds)
    parser.add_argument("--start-seconds", type=_positive("--start-seconds", 0), default=defaults.fargate_start_seconds,
                        help="Fargate start: placement to worker polling (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the ramp workload")
    parser.add_argument("--rules-invoke-scaler-only", action="store_true",
                        help="proportional: alarm rules only invoke the scaler instead of also submitting jobs")
    parser.add_argument("--sweep", action="store_true",
                        help="also run proportional for messages_per_worker in %s" % (SWEEP,))
    args = parser.parse_args(argv)

    params = replace(defaults, messages_per_worker=args.messages_per_worker, max_workers=args.max_workers,
                     sla_seconds=args.sla_seconds, idle_seconds=args.idle_seconds, poll_seconds=args.poll_seconds,
                     fargate_start_seconds=args.start_seconds, seed=args.seed,
                     rules_submit_jobs=not args.rules_invoke_scaler_only)
    scenarios = args.scenario or list(WORKLOADS)
    policies = args.policy or list(POLICIES)
    results = run_all(scenarios, policies, params)

    swept = _sweep(scenarios, params) if args.sweep else []
    if args.json:
        print(json.dumps([r.row() for r in results + swept], indent=1))
    else:
        print(table(results, markdown=args.markdown))
        checks = targets(results, params)
        if checks:
            print()
            for name, met, figures in checks:
                print(f"{'met    ' if met else 'NOT MET'}  {name}: {figures}")
        if swept:
            print()
            print(table(swept, markdown=args.markdown))
    if args.plot:
        plot_results = results
        if "burst-1000x30s" not in scenarios:
            plot_results = run_all(["burst-1000x30s"], policies, params)
        plot(plot_results, args.plot, params)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault scenarios against moto server with real workers: does every submitted task run?

    .venv/bin/python -m bench.reliability [--seed N] [--only 1,3] [--small]     (make reliability)

Each scenario fills a fresh queue (with its dead-letter queue), runs real lifecycle scripts
(``run_celery_worker.sh`` + Celery worker) on moto server on 127.0.0.1 with short IDLE/POLL and
visibility timeouts, injects its fault, and accounts for every task from the probe tasks' record
file and the dead-letter queue:

    done       tasks that finished (a "done" record)
    run >1     tasks that started more than once (at-least-once delivery at work; see the notes)
    in DLQ     messages the dead-letter queue holds at the end, where a user finds them
    lost       submitted, not done and not in the dead-letter queue

Scenarios 7-12 test what a worker does with the messages it holds (visibility heartbeat, recovery
after a container kill or a stop past STOP_GRACE_SECONDS, the per-worker idle exit and its drain,
a message arriving during shutdown, countdowns and Celery retries); each note gives the seconds
measured against its target, and a missed target fails the scenario (scenario 10 reports the strict
IDLE + POLL + 5 s target and fails only beyond it plus one long poll, which the drain waits out).

The last line reads ``reliability: S scenarios, T tasks, L lost``; the exit status is 1 if a task
was lost or a scenario's own check failed (e.g. a worker exited early, the scaler passed its cap).
Every process it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from batch_celery import CONTAINER_DIR
from batch_celery_local import motoserver
from batch_celery_local.queues import QueuePair, create_queue_pair, message_counts, total_messages
from batch_celery_container import limits
from harness.faults import LOST_RESPONSE, SERVER_ERROR, THROTTLE, ApiProxy, FaultProxy
from harness.lifecycle import ScriptRun, poll_until, start_script, worker_env
from harness.probe_tasks import read_events, read_records
from harness.processes import live_pids

IDLE, POLL = 3, 1


@dataclass
class Outcome:
    scenario: str
    submitted: int
    done: int
    run_twice: int
    in_dlq: int
    lost: int
    failures: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    counts_tasks: bool = True
    # Measured figures of the scenarios that have targets (seconds, counts), for tests and reports.
    figures: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and not self.failures


# ---------------------------------------------------------------------------------------------
# The lab: one moto server, queues, tasks sent with the worker's own Celery settings, and worker
# runs that are always stopped.


class Lab:
    def __init__(self, moto: motoserver.MotoServer, folder: Path, rng: random.Random, log: Callable[[str], None]):
        self.moto = moto
        self.folder = folder
        self.rng = rng
        self.log = log
        self.sqs = moto.client("sqs")
        self.runs: list[ScriptRun] = []
        self._names = 0
        self._apps: dict[str, object] = {}

    def queues(self, label: str, *, visibility_timeout: int, max_receive_count: int) -> QueuePair:
        self._names += 1
        name = f"rel-{label}-{os.getpid()}-{self._names}"
        return create_queue_pair(self.sqs, name, visibility_timeout=visibility_timeout, max_receive_count=max_receive_count)

    def env(self, queues: QueuePair, label: str, *, endpoint: str | None = None, **overrides) -> dict[str, str]:
        run_dir = self.folder / label
        run_dir.mkdir(parents=True, exist_ok=True)
        return worker_env(self.moto, queues, run_dir, endpoint=endpoint, IDLE_SECONDS=IDLE, POLL_SECONDS=POLL, **overrides)

    def start_worker(self, env: dict[str, str], index: int | str) -> ScriptRun:
        env = dict(env, WORKER_RUN_DIR=f"{env['WORKER_RUN_DIR']}-{index}")
        run = start_script(env, Path(env["WORKER_RUN_DIR"] + ".log"))
        self.runs.append(run)
        return run

    def send(self, env: dict[str, str], task: str, args_list: list[list], countdown: float | None = None) -> list[str]:
        """Send tasks with the worker's own Celery settings (as the filler does); return their ids."""
        app = self._apps.get(env["CELERY_QUEUE_URL"])
        if app is None:
            if str(CONTAINER_DIR) not in sys.path:
                sys.path.insert(0, str(CONTAINER_DIR))
            from celery import Celery
            from worker_settings import WorkerSettings

            app = Celery("reliability-client", set_as_current=False)
            app.conf.update(WorkerSettings.from_env(env).celery_config())
            self._apps[env["CELERY_QUEUE_URL"]] = app
        ids = []
        with app.producer_or_acquire() as producer:
            for args in args_list:
                ids.append(app.send_task(task, args=args, producer=producer, countdown=countdown).id)
        return ids

    def stop_all(self) -> None:
        # Finished scripts too: pool processes a fault orphaned may still run.
        for run in self.runs:
            run.kill_everything()


def dead_letters(sqs, queues: QueuePair) -> list[dict]:
    """Every message in the dead-letter queue (received once, with a long visibility, and kept)."""
    found: dict[str, dict] = {}
    quiet = 0
    while quiet < 2:
        messages = sqs.receive_message(
            QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=300, WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        new = [m for m in messages if m["MessageId"] not in found]
        found.update((m["MessageId"], m) for m in new)
        quiet = 0 if new else quiet + 1
    return list(found.values())


def task_id_of(message: dict) -> str | None:
    try:
        return json.loads(base64.b64decode(message["Body"]))["headers"]["id"]
    except Exception:  # noqa: BLE001 - malformed on purpose
        return None


def dead_letter_reason(message: dict) -> str:
    """The ``batch_celery_reason`` the worker gave a message it moved to the dead-letter queue ("" if none)."""
    return (message.get("MessageAttributes") or {}).get("batch_celery_reason", {}).get("StringValue", "")


def account(lab: Lab, queues: QueuePair, env: dict[str, str], *, name: str, healthy: list[str],
            poison: list[str] = (), raw: list[str] = (), note: str = "", letters: list[dict] | None = None) -> Outcome:
    """Where did every task go? ``healthy`` must be done; ``poison`` task ids and ``raw`` SQS
    message ids (malformed messages) must be in the dead-letter queue. ``letters``: the
    dead-letter queue's messages if the caller already received them (they are hidden 300 s)."""
    events = read_events(env["PROBE_RECORD_FILE"])
    done = set(events.get("done", {}))
    runs = Counter()
    for event in ("start", "fail", "crash"):
        runs.update(events.get(event, Counter()))
    letters = dead_letters(lab.sqs, queues) if letters is None else letters
    dlq_tasks = {task_id_of(m) for m in letters} - {None}
    dlq_messages = {m["MessageId"] for m in letters}
    submitted = [*healthy, *poison]
    lost = [t for t in submitted if t not in done and t not in dlq_tasks] + [m for m in raw if m not in dlq_messages]
    outcome = Outcome(
        scenario=name,
        submitted=len(submitted) + len(raw),
        done=len(done & set(submitted)),
        run_twice=sum(1 for t in submitted if runs[t] > 1),
        in_dlq=len(letters),
        lost=len(lost),
        note=note,
    )
    left = total_messages(lab.sqs, queues.url)
    if left:
        outcome.failures.append(f"{left} message(s) still in the task queue")
    stray = [t for t in poison if t not in dlq_tasks]
    if stray:
        outcome.failures.append(f"{len(stray)} poison task(s) not in the dead-letter queue")
    return outcome


# ---------------------------------------------------------------------------------------------
# A crew of workers that a Batch job queue would keep replacing while there is work.


class Crew:
    """``size`` worker slots; a slot whose script has ended gets a new one while the queue has work."""

    def __init__(self, lab: Lab, env: dict[str, str], queues: QueuePair, size: int):
        self.lab, self.env, self.queues, self.size = lab, env, queues, size
        self.slots: list[ScriptRun | None] = [None] * size
        self.exits: list[int] = []
        self.started = 0

    def _start(self, slot: int) -> None:
        self.started += 1
        self.slots[slot] = self.lab.start_worker(self.env, self.started)

    def start(self) -> "Crew":
        for slot in range(self.size):
            self._start(slot)
        return self

    def alive(self) -> list[ScriptRun]:
        return [run for run in self.slots if run is not None and run.process.poll() is None]

    def tend(self) -> bool:
        """Record ended scripts, replace them while work is left; False once all ended and the queue is empty."""
        work_left = None
        for slot, run in enumerate(self.slots):
            if run is None or run.process.poll() is None:
                continue
            self.exits.append(run.process.returncode)
            self.slots[slot] = None
            if work_left is None:
                work_left = total_messages(self.lab.sqs, self.queues.url) > 0
            if work_left:
                self._start(slot)
        return any(run is not None for run in self.slots)

    def run_until_done(self, timeout: float, during: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while self.tend():
            if during:
                during()
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers still running after {timeout:.0f} s")
            time.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# The scenarios. Each returns one Outcome.


def sigkill_workers(lab: Lab, tasks: int = 100, workers: int = 3, kills: int = 6) -> Outcome:
    queues = lab.queues("kill", visibility_timeout=6, max_receive_count=5)
    env = lab.env(queues, "1-sigkill")
    ids = lab.send(env, "probe.record", [[f"k{i}", 0.3] for i in range(tasks)])
    crew = Crew(lab, env, queues, workers).start()
    kinds = Counter()
    next_kill = [time.monotonic() + lab.rng.uniform(1.5, 3.0)]

    def killer() -> None:
        if sum(kinds.values()) >= kills or time.monotonic() < next_kill[0]:
            return
        candidates = [(run, pid) for run in crew.alive() if (pid := run.current_worker_pid())]
        if not candidates:
            return
        run, pid = lab.rng.choice(candidates)
        pool = live_pids(parent=pid)
        # Half the time the whole worker (an OOM kill of the container's main process), half the
        # time one pool process (a task that segfaults): Celery then rejects with requeue.
        try:
            if pool and lab.rng.random() < 0.5:
                os.kill(lab.rng.choice(pool), signal.SIGKILL)
                kinds["pool process"] += 1
            else:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
                kinds["whole worker"] += 1
        except ProcessLookupError:
            return
        next_kill[0] = time.monotonic() + lab.rng.uniform(1.0, 3.0)

    crew.run_until_done(300, during=killer)
    note = f"{workers} workers, SIGKILL x{sum(kinds.values())} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"
    return account(lab, queues, env, name="1 SIGKILL workers mid-run", healthy=ids, note=note)


def term_scripts(lab: Lab, tasks: int = 40, workers: int = 2, terms: int = 3) -> Outcome:
    queues = lab.queues("term", visibility_timeout=10, max_receive_count=5)
    env = lab.env(queues, "2-term")
    ids = lab.send(env, "probe.record", [[f"t{i}", 0.5] for i in range(tasks)])
    crew = Crew(lab, env, queues, workers).start()
    sent = [0]
    next_term = [time.monotonic() + lab.rng.uniform(3.0, 5.0)]

    def terminator() -> None:
        if sent[0] >= terms or time.monotonic() < next_term[0]:
            return
        candidates = [run for run in crew.alive() if run.current_worker_pid()]
        if candidates:
            lab.rng.choice(candidates).signal(signal.SIGTERM)
            sent[0] += 1
            next_term[0] = time.monotonic() + lab.rng.uniform(2.0, 4.0)

    crew.run_until_done(300, during=terminator)
    outcome = account(lab, queues, env, name="2 TERM lifecycle scripts", healthy=ids,
                      note=f"{workers} workers, TERM x{sent[0]}; exits {dict(sorted(Counter(crew.exits).items()))}")
    unexpected = [code for code in crew.exits if code not in (0, 143)]
    if unexpected:
        outcome.failures.append(f"unexpected exit statuses {unexpected}")
    return outcome


def poison_tasks(lab: Lab, tasks: int = 20, workers: int = 2) -> Outcome:
    queues = lab.queues("poison", visibility_timeout=6, max_receive_count=3)
    env = lab.env(queues, "3-poison")
    healthy = lab.send(env, "probe.record", [[f"p{i}", 0.2] for i in range(tasks)])
    poison = lab.send(env, "probe.fail", [["always-fails"]]) + lab.send(env, "probe.crash", [["kills-its-process"]])
    crew = Crew(lab, env, queues, workers).start()
    crew.run_until_done(300)
    events = read_events(env["PROBE_RECORD_FILE"])
    fails, crashes = sum(events.get("fail", {}).values()), sum(events.get("crash", {}).values())
    outcome = account(lab, queues, env, name="3 poison: fails / kills its process", healthy=healthy, poison=poison,
                      note=f"maxReceiveCount {queues.max_receive_count}: failing task ran {fails}x, crashing task {crashes}x")
    if crew.exits.count(0) != len(crew.exits):
        outcome.failures.append(f"a worker ended with {crew.exits}")
    return outcome


def _kombu_envelope(task: str, body: bytes, queue: str, *, content_type="application/json", encoding="utf-8") -> str:
    """A Celery protocol-2 message as kombu puts it on SQS, with the parts given."""
    task_id = str(uuid.uuid4())
    envelope = {
        "body": base64.b64encode(body).decode(), "content-encoding": encoding, "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None]},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2, "priority": 0,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }
    return base64.b64encode(json.dumps(envelope).encode()).decode()


def malformed_bodies(queue: str) -> dict[str, str]:
    """SQS message bodies a worker cannot run, by kind (each must end in the dead-letter queue)."""
    args = json.dumps([["x"], {}, {}]).encode()
    return {
        "not JSON": "this is not JSON",
        "JSON, not a Celery message": json.dumps({"hello": "world"}),
        "envelope of the wrong shape": json.dumps({"properties": "x", "body": "y"}),
        "base64 of binary garbage": base64.b64encode(b"\xff\xfe\x00\x80garbage").decode(),
        "unknown task name": _kombu_envelope("no.such.task", args, queue),
        "task name not a string": _kombu_envelope(["probe.record"], args, queue),
        "pickle content type": _kombu_envelope("probe.record", args, queue,
                                               content_type="application/x-python-serialize", encoding="binary"),
        "body is not JSON": _kombu_envelope("probe.record", b"{not json", queue),
        "body not UTF-8": _kombu_envelope("probe.record", '[["\u00e9"], {}, {}]'.encode("latin-1"), queue),
        "body of the wrong shape": _kombu_envelope("probe.record", b'"just a string"', queue),
    }


def malformed_messages(lab: Lab, tasks: int = 10, kinds: int | None = None) -> Outcome:
    # The worker accepts no visibility timeout under 6 s (limits.MIN_VISIBILITY_TIMEOUT_SECONDS).
    queues = lab.queues("malformed", visibility_timeout=6, max_receive_count=2)
    env = lab.env(queues, "4-malformed")
    bodies = list(malformed_bodies(queues.name).items())[:kinds]
    # Interleaved with healthy tasks, so the worker has to keep serving after each bad one.
    healthy: list[str] = []
    raw: list[str] = []
    for index, (_, body) in enumerate(bodies):
        raw.append(lab.sqs.send_message(QueueUrl=queues.url, MessageBody=body)["MessageId"])
        healthy += lab.send(env, "probe.record", [[f"m{index}", 0.1]])
    healthy += lab.send(env, "probe.record", [[f"m{i}", 0.1] for i in range(len(bodies), tasks)])
    crew = Crew(lab, env, queues, 1).start()
    crew.run_until_done(300)
    outcome = account(lab, queues, env, name="4 malformed messages", healthy=healthy, raw=raw,
                      note=f"{len(bodies)} kinds: {', '.join(kind for kind, _ in bodies)}; worker exits {crew.exits}")
    # A worker may leave (idle, 0) while rejected messages wait out their retry delay: they are in
    # flight but held by nobody, and the crew starts a new worker when they return. Any other exit
    # means a bad message stopped the worker.
    if any(code != 0 for code in crew.exits):
        outcome.failures.append(f"the worker did not keep serving: exits {crew.exits}")
    return outcome


def endpoint_outage(lab: Lab, tasks: int = 30, workers: int = 2, outage: float = 30.0) -> Outcome:
    queues = lab.queues("outage", visibility_timeout=10, max_receive_count=5)
    with FaultProxy(lab.moto.port) as proxy:
        # More failed readings allowed than the outage lasts: the script must not give up.
        env = lab.env(queues, "5-outage", endpoint=proxy.endpoint, MAX_FAILED_READINGS=int(outage / POLL) + 30)
        ids = lab.send(lab.env(queues, "5-outage"), "probe.record", [[f"o{i}", 1.0] for i in range(tasks)])
        crew = Crew(lab, env, queues, workers).start()
        record = Path(env["PROBE_RECORD_FILE"])
        deadline = time.monotonic() + 60
        while len(read_events(record).get("done", {})) < min(3, tasks) and time.monotonic() < deadline:
            time.sleep(0.2)
        proxy.go_down()
        down_until = time.monotonic() + outage
        early: list[int] = []
        while time.monotonic() < down_until:
            early += [run.process.returncode for run in crew.slots if run is not None and run.process.poll() is not None]
            time.sleep(0.3)
        proxy.come_back()
        crew.run_until_done(300)
    outcome = account(lab, queues, env, name=f"5 SQS unreachable {outage:.0f} s", healthy=ids,
                      note=f"{workers} workers; acks that fell into the outage run again")
    if early or any(code != 0 for code in crew.exits):
        outcome.failures.append(f"worker exits during the outage {early}, all exits {crew.exits}")
    return outcome


# ---------------------------------------------------------------------------------------------
# Scenario 6: the scaler's handler against moto Batch behind a faulty API proxy.


def scaler_under_faults(lab: Lab, runs: int = 40, cap: int = 10, backlog: int = 500) -> Outcome:
    from batch_celery.scaler import handler as scaler

    moto = lab.moto
    ec2, iam, batch = (moto.client(n) for n in ("ec2", "iam", "batch"))
    # Jobs stay SUBMITTED (moto's regular Batch backend, a state transition that never comes), so
    # every worker submitted stays "active" and the cap is put to the test on every run.
    previous = json.loads(moto.api("config"))
    moto.configure({"batch": {"use_docker": True}})
    moto.api("state-manager/set-transition",
              {"model_name": "batch::job", "transition": {"progression": "manual", "times": 10**9}})
    try:
        suffix = uuid.uuid4().hex[:8]
        vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.0.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"rel-{suffix}", Description="reliability", VpcId=vpc)["GroupId"]
        role = iam.create_role(RoleName=f"rel-{suffix}", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
        environment = batch.create_compute_environment(
            computeEnvironmentName=f"rel-{suffix}", type="MANAGED", state="ENABLED", serviceRole=role["Role"]["Arn"],
            computeResources={"type": "FARGATE", "maxvCpus": 16, "subnets": [subnet], "securityGroupIds": [group]},
        )["computeEnvironmentArn"]
        job_queue = batch.create_job_queue(jobQueueName=f"rel-{suffix}", state="ENABLED", priority=1,
                                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])["jobQueueArn"]
        definition = batch.register_job_definition(
            jobDefinitionName=f"rel-{suffix}", type="container", platformCapabilities=["FARGATE"],
            containerProperties={"image": "worker", "command": ["./run_celery_worker.sh"],
                                 "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]},
        )["jobDefinitionArn"]
        queue_url = lab.sqs.create_queue(QueueName=f"rel-scaler-{suffix}")["QueueUrl"]
        for start in range(0, backlog, 10):
            lab.sqs.send_message_batch(QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": "task"} for i in range(10)])
        config = scaler.PoolConfig(pool="default", queue_url=queue_url, job_queue=job_queue, job_definition=definition,
                                   job_name=f"rel-{suffix}", messages_per_worker=10, max_workers=cap)

        submits = Counter()

        def decide(action: str):
            # Batch's REST calls; SQS reads stay healthy so that each run gets as far as Batch.
            if not action.startswith("/v1/"):
                return None
            if action == "/v1/submitjob":
                submits["calls"] += 1
                if submits["calls"] == 1:
                    return LOST_RESPONSE  # at least once: the hardest case for a cap
            roll = lab.rng.random()
            if roll < 0.15:
                return THROTTLE
            if roll < 0.22:
                return SERVER_ERROR
            # SubmitJob took effect but its answer was lost (a timeout, a 5xx from the front end).
            if action == "/v1/submitjob" and roll < 0.60:
                return LOST_RESPONSE
            return None

        outcomes = Counter()
        reported = 0
        peak = 0
        with ApiProxy(moto.endpoint, decide) as proxy:
            # The clients the Lambda builds (handler._clients), pointed at the faulty proxy.
            faulty_batch = moto.client("batch", proxy.endpoint, config=scaler._BOTO_CONFIG)
            faulty_submit = moto.client("batch", proxy.endpoint, config=scaler.SUBMIT_CONFIG)
            for _ in range(runs):
                record = scaler.scale(config, lab.sqs, faulty_batch, submit_batch=faulty_submit)
                outcomes[record["outcome"]] += 1
                reported += record.get("submitted", 0)
                # Every job stays SUBMITTED, so all workers ever submitted are active at once.
                peak = max(peak, _submitted_workers(batch, job_queue))
            faults = Counter(fault for (_, fault) in proxy.faults.elements())
    finally:
        moto.api("state-manager/unset-transition", {"model_name": "batch::job"})
        moto.configure({"batch": previous.get("batch", {"use_docker": False})})
    submitted = _submitted_workers(batch, job_queue)
    outcome = Outcome(
        scenario="6 scaler: Batch errors/throttling", submitted=runs, done=outcomes["ok"], run_twice=0, in_dlq=0, lost=0,
        counts_tasks=False,
        note=(f"{runs} runs ({', '.join(f'{n} {k}' for k, n in sorted(outcomes.items()))}); injected "
              f"{', '.join(f'{n} {k}' for k, n in sorted(faults.items()))}; workers submitted {submitted} "
              f"(scaler reported {reported}); most active at once {peak}, cap {cap}"),
    )
    if peak > cap:
        outcome.failures.append(f"{peak} workers active at once, more than the cap of {cap}")
    return outcome


def _parent_jobs(batch, job_queue: str, statuses=("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING",
                                                  "SUCCEEDED", "FAILED")) -> list[dict]:
    ids: dict[str, None] = {}
    for status in statuses:
        for page in batch.get_paginator("list_jobs").paginate(jobQueue=job_queue, jobStatus=status):
            ids.update((job["jobId"], None) for job in page["jobSummaryList"] if ":" not in job["jobId"])
    listed = list(ids)
    return [job for start in range(0, len(listed), 100) for job in batch.describe_jobs(jobs=listed[start:start + 100])["jobs"]]


def _submitted_workers(batch, job_queue: str) -> int:
    """Workers ever submitted to the job queue: array sizes of parents, 1 per plain job."""
    return sum((job.get("arrayProperties") or {}).get("size") or 1 for job in _parent_jobs(batch, job_queue))


# ---------------------------------------------------------------------------------------------
# Scenarios 7-12: a worker holds a message only while it works on it: the visibility
# heartbeat, recovery after a crash or a stop, the per-worker idle exit and its drain, countdowns
# and Celery retries. Seconds are measured here with time.monotonic(), and with time.time() where
# they are compared with the worker's own clock (the receive times in its held.json).

# Set explicitly: worker_env derives a time limit from the visibility timeout, which does not bound a task.
TASK_TIME_LIMIT = 120


# The worker's SQS long poll: the longest a drain waits for its open poll.
LONG_POLL = limits.LONG_POLL_SECONDS


class Stuck(Exception):
    """Something a scenario waits for did not happen in time; it fails with this text."""


def _need(value, what: str, run: ScriptRun | None = None):
    if not value:
        tail = f"; its log ends:\n{_tail(run)}" if run is not None else ""
        raise Stuck(f"timed out waiting for {what}{tail}")
    return value


def _tail(run: ScriptRun, lines: int = 12) -> str:
    return "\n".join(run.output.splitlines()[-lines:])


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _count(env: dict[str, str], event: str, task_id: str) -> int:
    return read_events(env["PROBE_RECORD_FILE"]).get(event, Counter())[task_id]


def _start_pids(env: dict[str, str]) -> dict[str, list[str]]:
    """{task id: pids of the processes that started it} from the record file."""
    pids: dict[str, list[str]] = {}
    for event, task_id, pid in read_records(env["PROBE_RECORD_FILE"]):
        if event == "start":
            pids.setdefault(task_id, []).append(pid)
    return pids


def _held_state(run: ScriptRun) -> dict | None:
    """The worker's held.json (what it holds, with receive times), None before it wrote one."""
    try:
        return json.loads((Path(run.env["WORKER_RUN_DIR"]) / "held.json").read_text())
    except (OSError, ValueError):
        return None


def _exit_status(run: ScriptRun, timeout: float) -> int | None:
    try:
        return run.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _term(run: ScriptRun, timeout: float = 30) -> int | None:
    if run.process.poll() is None:
        run.signal(signal.SIGTERM)
    return _exit_status(run, timeout)


def _watch(run: ScriptRun, texts: dict[str, str], timeout: float, interval: float = 0.1) -> dict[str, float]:
    """Monotonic time at which each text first appeared in the script's output ("ready": its
    worker's first held.json; "exit": the script ended), watched until it ends or ``timeout``."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = run.process.poll() is not None
        now = time.monotonic()
        if "ready" not in seen and _held_state(run) is not None:
            seen["ready"] = now
        output = run.output
        for name, text in texts.items():
            if name not in seen and text in output:
                seen[name] = now
        if ended:
            seen["exit"] = now
            break
        time.sleep(interval)
    return seen


def _figures(values: list[float]) -> str:
    values = sorted(v for v in values if v is not None)
    if not values:
        return "none"
    if len(values) == 1:
        return f"{values[0]:.1f} s"
    return f"{values[0]:.1f}-{values[-1]:.1f} s (median {values[len(values) // 2]:.1f})"


def long_task_single(lab: Lab, visibility: int = 10, factor: int = 3, short_tasks: int = 6) -> Outcome:
    """7: a task ``factor`` x the visibility timeout runs once while a second worker polls the queue."""
    queues = lab.queues("long", visibility_timeout=visibility, max_receive_count=3)
    env = lab.env(queues, "7-long", TASK_TIME_LIMIT_SECONDS=TASK_TIME_LIMIT)
    seconds = factor * visibility
    [long_id] = lab.send(env, "probe.record", [["long", seconds]])
    first = lab.start_worker(env, 1)
    _need(poll_until(lambda: _count(env, "start", long_id), 90), "the long task to start", first)
    started = time.monotonic()
    # The other worker must still be polling when each window of the long task's message passes.
    poller = lab.start_worker(dict(env, IDLE_SECONDS=str(seconds + 30)), 2)
    shorts: list[str] = []
    for index in range(short_tasks):
        _sleep_until(started + (index + 1) * seconds / (short_tasks + 1))
        shorts += lab.send(env, "probe.record", [[f"short{index}", 0.2]])
    _need(poll_until(lambda: _count(env, "done", long_id), seconds + 60), "the long task to finish", first)
    took = time.monotonic() - started
    poller_polled = poller.process.poll() is None
    poll_until(lambda: all(_count(env, "done", t) for t in shorts), 60)
    first_status = _exit_status(first, IDLE + POLL + LONG_POLL + 30)
    poller_status = _term(poller)
    pids = _start_pids(env)
    long_pid = (pids.get(long_id) or ["?"])[0]
    served = sum(1 for t in shorts if pids.get(t) and pids[t][0] != long_pid)
    outcome = account(lab, queues, env, name=f"7 task {factor}x visibility, 2 workers", healthy=[long_id, *shorts],
                      note=(f"window {visibility} s, heartbeat {visibility // 3} s: a {seconds} s task ran "
                            f"{_count(env, 'start', long_id)}x (done after {took:.0f} s) while the other worker "
                            f"polled and ran {served} of {len(shorts)} short tasks; exits {first_status}, {poller_status} (TERM)"))
    if _count(env, "start", long_id) != 1:
        outcome.failures.append(f"the long task started {_count(env, 'start', long_id)} times")
    if not poller_polled:
        outcome.failures.append(f"the polling worker left before the long task ended (exit {poller.process.returncode})")
    if first_status != 0 or poller_status != 143:
        outcome.failures.append(f"exit statuses {first_status} (expected 0), {poller_status} (expected 143)")
    return outcome


def container_killed(lab: Lab, visibility: int = 10, rounds: int = 2) -> Outcome:
    """8: script and worker SIGKILLed at once mid-task (the whole container): nobody gives the message
    back, so it returns when its last extension runs out, and the other worker runs it again."""
    queues = lab.queues("container", visibility_timeout=visibility, max_receive_count=5)
    env = lab.env(queues, "8-container", TASK_TIME_LIMIT_SECONDS=TASK_TIME_LIMIT)
    task_seconds = visibility + 5
    target = visibility + POLL + 5
    ids: list[str] = []
    visible_after: list[float] = []
    restarted_after: list[float] = []
    failures: list[str] = []
    for round_ in range(rounds):
        [task] = lab.send(env, "probe.record", [[f"container{round_}", task_seconds]])
        ids.append(task)
        victim = lab.start_worker(env, f"{round_}-victim")
        _need(poll_until(lambda: _count(env, "start", task), 90), "the task to start", victim)
        started = time.monotonic()
        poller = lab.start_worker(dict(env, IDLE_SECONDS=str(3 * visibility + 30)), f"{round_}-other")
        _need(poll_until(lambda: _held_state(poller) is not None, 60), "the other worker to consume", poller)
        _sleep_until(started + visibility + 1)  # past one window: only the heartbeat hides it now
        visible, in_flight, _ = message_counts(lab.sqs, queues.url)
        if (visible, in_flight) != (0, 1) or _count(env, "start", task) != 1:
            failures.append(f"round {round_}: before the kill, {visible} visible, {in_flight} in flight, "
                            f"{_count(env, 'start', task)} start(s)")
        victim.kill_everything()
        killed, killed_wall = time.monotonic(), time.time()

        def received_by_other():
            for message in (_held_state(poller) or {}).get("held", []):
                if message.get("task_id") == task:
                    return message.get("received")
            return None

        received = poll_until(received_by_other, visibility + 30)
        restarted = poll_until(lambda: _count(env, "start", task) >= 2, visibility + 30)
        restarted_at = time.monotonic()
        if not restarted:
            failures.append(f"round {round_}: not run again within {visibility + 30} s of the kill")
            continue
        restarted_after.append(restarted_at - killed)
        if received:
            visible_after.append(received - killed_wall)
        if restarted_at - killed > target:
            failures.append(f"round {round_}: ran again {restarted_at - killed:.1f} s after the kill, "
                            f"target window + POLL + 5 = {target} s")
        _need(poll_until(lambda: _count(env, "done", task), task_seconds + 60), "the rerun to finish", poller)
        status = _term(poller)
        if status != 143:
            failures.append(f"round {round_}: the other worker ended with {status} after TERM (expected 143)")
    outcome = account(lab, queues, env, name="8 container SIGKILLed mid-task", healthy=ids,
                      note=(f"window {visibility} s, {rounds} kill(s) > {visibility + 1} s into a {task_seconds} s task: "
                            f"kill -> received by the other worker {_figures(visible_after)}, "
                            f"kill -> running again {_figures(restarted_after)} (target <= {target} s)"))
    outcome.failures += failures
    outcome.figures = {"visible_after": visible_after, "restarted_after": restarted_after, "target": target}
    return outcome


def term_past_grace(lab: Lab, rounds: int = 3, grace: int = 3, task_seconds: int = 8) -> Outcome:
    """9: a script TERMed while its task cannot finish within STOP_GRACE_SECONDS gives the message
    back: visible within 5 s of its exit (the queue's 60 s timeout would show), then run once more.
    A chain: the worker that reruns task i is TERMed during task i+1."""
    queues = lab.queues("grace", visibility_timeout=60, max_receive_count=5)
    env = lab.env(queues, "9-grace", STOP_GRACE_SECONDS=grace, TASK_TIME_LIMIT_SECONDS=TASK_TIME_LIMIT)
    ids = lab.send(env, "probe.record", [["grace0", task_seconds]])
    worker = lab.start_worker(env, 0)
    visible_after: list[float] = []
    failures: list[str] = []
    statuses: list[int | None] = []
    for round_ in range(rounds):
        task = ids[round_]
        _need(poll_until(lambda: _count(env, "start", task), 90), f"task {round_} to start", worker)
        time.sleep(lab.rng.uniform(0.3, 1.0))
        worker.signal(signal.SIGTERM)
        status = _exit_status(worker, grace + 30)
        exited = time.monotonic()
        statuses.append(status)
        if status != 143 or "did not finish within" not in worker.output:
            failures.append(f"round {round_}: exit {status}, grace expiry not logged:\n{_tail(worker)}")
        visible = poll_until(lambda: message_counts(lab.sqs, queues.url)[0] >= 1, 15, interval=0.05)
        if not visible:
            failures.append(f"round {round_}: not visible within 15 s of the script's exit (counts "
                            f"{message_counts(lab.sqs, queues.url)})")
        else:
            visible_after.append(time.monotonic() - exited)
            if visible_after[-1] > 5:
                failures.append(f"round {round_}: visible {visible_after[-1]:.1f} s after the exit (target 5 s)")
        worker = lab.start_worker(env, round_ + 1)
        _need(poll_until(lambda: _count(env, "start", task) >= 2, 90), f"task {round_} to run again", worker)
        if round_ + 1 < rounds:
            # Picked up by this worker after its rerun (it holds one message at a time).
            ids += lab.send(env, "probe.record", [[f"grace{round_ + 1}", task_seconds]])
    last_status = _exit_status(worker, task_seconds + IDLE + POLL + LONG_POLL + 30)
    outcome = account(lab, queues, env, name="9 TERM past STOP_GRACE_SECONDS", healthy=ids,
                      note=(f"grace {grace} s, {task_seconds} s tasks, window 60 s, TERM x{rounds} (exits {statuses}): "
                            f"visible {_figures(visible_after)} after the script's exit (target <= 5 s); "
                            f"each ran once more to completion; last worker exit {last_status}"))
    outcome.failures += failures
    runs = [_count(env, "start", t) for t in ids]
    if runs != [2] * len(ids) or any(_count(env, "done", t) != 1 for t in ids):
        outcome.failures.append(f"starts per task {runs} (expected 2 each: the cut run and the rerun), "
                                f"done {[_count(env, 'done', t) for t in ids]}")
    if last_status != 0:
        outcome.failures.append(f"the last worker ended with {last_status}")
    outcome.figures = {"visible_after": visible_after}
    return outcome


def idle_exit_beside_busy(lab: Lab, task_seconds: int = 75, visibility: int = 10) -> Outcome:
    """10: idle workers exit while another runs a long task (messages others hold never keep a
    worker). Measured from the idle worker's first state file (before it the script cannot know it
    is idle) to its exit, split into the idle wait, the drain (the open long poll) and the stop."""
    queues = lab.queues("idle", visibility_timeout=visibility, max_receive_count=3)
    env = lab.env(queues, "10-idle", TASK_TIME_LIMIT_SECONDS=TASK_TIME_LIMIT)
    [task] = lab.send(env, "probe.record", [["busy", task_seconds]])
    busy = lab.start_worker(env, "busy")
    _need(poll_until(lambda: _count(env, "start", task), 90), "the long task to start", busy)
    busy_started = time.monotonic()
    target = IDLE + POLL + 5
    samples: list[dict[str, float]] = []
    failures: list[str] = []
    while not samples or time.monotonic() - busy_started < task_seconds - 25:
        idle = lab.start_worker(env, f"idle{len(samples) + 1}")
        seen = _watch(idle, {"decision": "; draining", "stopping": "stopping the worker"}, timeout=60)
        if "exit" not in seen or "ready" not in seen:
            failures.append(f"idle worker {len(samples) + 1} did not exit within 60 s:\n{_tail(idle)}")
            break
        if idle.process.returncode != 0:
            failures.append(f"idle worker {len(samples) + 1} ended with {idle.process.returncode}")
        if _count(env, "done", task) or busy.process.poll() is not None:
            failures.append("the long task ended before the idle worker left: the scenario proves nothing")
        samples.append({k: v - seen["ready"] for k, v in seen.items()})
    _need(poll_until(lambda: _count(env, "done", task), task_seconds + 60), "the long task to finish", busy)
    busy_status = _exit_status(busy, IDLE + POLL + LONG_POLL + 30)
    exits = [s["exit"] for s in samples]
    drains = [s["stopping"] - s["decision"] for s in samples if "stopping" in s and "decision" in s]
    decisions = [s["decision"] for s in samples if "decision" in s]
    stops = [s["exit"] - s["stopping"] for s in samples if "stopping" in s]
    over = [e - target for e in exits if e > target]
    outcome = account(
        lab, queues, env, name="10 idle worker exits beside busy one", healthy=[task],
        note=(f"{len(samples)} idle worker(s) beside a {task_seconds} s task: idle -> exit {_figures(exits)} "
              f"[decision {_figures(decisions)}, drain {_figures(drains)}, stop {_figures(stops)}]; "
              f"target IDLE + POLL + 5 = {target} s " + (f"missed by up to {max(over):.1f} s in {len(over)} of {len(exits)} "
              f"(the drain waits for the open {LONG_POLL} s long poll)" if over else "met every time")),
    )
    outcome.failures += failures
    # The drain may cost up to one long poll: beyond that the worker kept itself alive for nothing.
    late = [e for e in exits if e > target + LONG_POLL]
    if late:
        outcome.failures.append(f"idle workers exited {_figures(late)} after becoming idle, beyond "
                                f"IDLE + POLL + 5 + one {LONG_POLL} s long poll = {target + LONG_POLL} s")
    if _count(env, "start", task) != 1 or busy_status != 0:
        outcome.failures.append(f"the long task started {_count(env, 'start', task)}x; its worker ended with {busy_status}")
    outcome.figures = {"exit_after": exits, "drain": drains, "decision": decisions, "stop": stops, "target": target}
    return outcome


def _race_lane(lab: Lab, lane: int, offsets: list[float], visibility: int, lock: threading.Lock) -> dict:
    """One queue, one worker after another; each run sends a message ``offset`` s after its stop decision."""
    queues = lab.queues(f"race{lane}", visibility_timeout=visibility, max_receive_count=5)
    env = lab.env(queues, f"11-race-{lane}", TASK_TIME_LIMIT_SECONDS=TASK_TIME_LIMIT)
    ids: list[str] = []
    runs: list[dict] = []
    for index, offset in enumerate(offsets):
        run = lab.start_worker(env, index)
        # A message the last run gave back is run first; the decision that counts is the next one.
        decided = poll_until(lambda: "; draining" in run.output or run.process.poll() is not None, 90, interval=0.05)
        decided_at = time.monotonic()
        if not decided or "; draining" not in run.output:
            raise Stuck(f"lane {lane} run {index}: no stop decision:\n{_tail(run)}")
        _sleep_until(decided_at + offset)
        exited_before = run.process.poll() is not None
        sent_after = time.monotonic() - decided_at
        with lock:
            [task] = lab.send(env, "probe.record", [[f"race{lane}-{index}", 0.2]])
        ids.append(task)
        status = _exit_status(run, 3 * LONG_POLL + IDLE + 60)
        exited = time.monotonic()
        record = {"lane": lane, "run": index, "offset": sent_after, "status": status,
                  "exit_after_decision": exited - decided_at, "resumed": "serving again" in run.output,
                  # The stopping worker's open long poll brought it and gave it back (the drain).
                  "by_drain": "that the last long poll brought" in run.output.split("; draining")[-1]}
        if status is None:
            raise Stuck(f"lane {lane} run {index}: the script did not exit:\n{_tail(run)}")
        if _count(env, "done", task):
            record["kind"] = "resumed"
        else:
            visible = poll_until(lambda: message_counts(lab.sqs, queues.url)[0] >= 1, 5, interval=0.05)
            if visible:
                record["kind"] = "sent after exit" if exited_before else "given back"
                record["visible_after"] = time.monotonic() - exited
            else:
                record["kind"] = "STRANDED"
                record["counts"] = message_counts(lab.sqs, queues.url)
                record["log"] = _tail(run, 20)
        runs.append(record)
    # What the last run left (and any stranded message, once its window ends) is run by one more worker.
    if any(r["kind"] == "STRANDED" for r in runs):
        poll_until(lambda: message_counts(lab.sqs, queues.url)[1] == 0, visibility + 15)
    if total_messages(lab.sqs, queues.url):
        final = lab.start_worker(env, "final")
        _need(_exit_status(final, 90) is not None, f"lane {lane}: the final worker to exit", final)
    return {"queues": queues, "env": env, "ids": ids, "runs": runs}


def stop_race(lab: Lab, runs: int = 15, lanes: int = 3, visibility: int = 60, spread: float = 5.0) -> Outcome:
    """11: a message sent 0-``spread`` s after a worker's stop decision ("idle for ... draining") is
    either run by that worker (it resumes) or visible within 5 s of its exit, never stranded for the
    window. ``lanes`` queues run side by side, each a chain of single workers. The spread covers the
    drain (up to the 2 s long poll) and the stop (~3 s): a message sent later finds the worker gone."""
    offsets = [spread * i / max(1, runs - 1) for i in range(runs)]
    offsets = [min(spread, max(0.0, o + lab.rng.uniform(-0.25, 0.25))) for o in offsets]
    lab.rng.shuffle(offsets)
    lock = threading.Lock()
    results: list[dict | BaseException] = [None] * lanes

    def lane_main(lane: int) -> None:
        try:
            results[lane] = _race_lane(lab, lane, offsets[lane::lanes], visibility, lock)
        except BaseException as error:  # noqa: BLE001 - re-raised below, in the main thread
            results[lane] = error

    threads = [threading.Thread(target=lane_main, args=(lane,), daemon=True) for lane in range(lanes)]
    for thread in threads:
        thread.start()
        time.sleep(1.0)  # stagger the workers' starts (2 cores)
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    records = [r for result in results for r in result["runs"]]
    kinds = Counter(r["kind"] for r in records)
    stranded = [r for r in records if r["kind"] == "STRANDED"]
    given_back = [r["visible_after"] for r in records if r["kind"] in ("given back", "sent after exit")]
    parts = [account(lab, result["queues"], result["env"], name="", healthy=result["ids"]) for result in results]
    outcome = Outcome(
        scenario="11 message arrives during shutdown", submitted=sum(p.submitted for p in parts),
        done=sum(p.done for p in parts), run_twice=sum(p.run_twice for p in parts), in_dlq=sum(p.in_dlq for p in parts),
        lost=sum(p.lost for p in parts), failures=[f for p in parts for f in p.failures],
        note=(f"{len(records)} runs, window {visibility} s, sent {min(r['offset'] for r in records):.1f}-"
              f"{max(r['offset'] for r in records):.1f} s after the stop decision: {kinds['resumed']} resumed and ran it, "
              f"{kinds['given back']} left it visible (visible within {_figures(given_back)} of the exit); "
              f"in {sum(1 for r in records if r['by_drain'])} runs the stopping worker's open long poll took it and "
              f"gave it back at once; {kinds['sent after exit']} sent after the exit; {len(stranded)} stranded; "
              f"exits {dict(sorted(Counter(r['status'] for r in records).items()))}"),
    )
    late = [r for r in records if r.get("visible_after", 0) > 5]
    if stranded:
        outcome.failures.append(f"{len(stranded)} of {len(records)} message(s) stranded in flight: " + "; ".join(
            f"lane {r['lane']} run {r['run']} sent {r['offset']:.1f} s after the decision, counts {r['counts']}"
            for r in stranded))
        for r in stranded:
            lab.log(f"stranded: lane {r['lane']} run {r['run']}, the script's log ends:\n{r['log']}")
    if late:
        outcome.failures.append(f"{len(late)} message(s) visible later than 5 s after the exit")
    bad = [r["status"] for r in records if r["status"] != 0]
    if bad:
        outcome.failures.append(f"exit statuses {bad} (expected 0)")
    outcome.figures = {"stranded": len(stranded), "kinds": dict(kinds), "records": records}
    return outcome


def countdowns_and_retries(lab: Lab, visibility: int = 10) -> Outcome:
    """12: countdowns shorter and 3x longer than the window run once each (two workers poll the
    whole time); one beyond SQS's 12 h ends in the DLQ with its reason, unrun; a task failing
    through Celery's retries (max_retries=2) runs 3 times, then sits in the DLQ with its reason."""
    queues = lab.queues("countdown", visibility_timeout=visibility, max_receive_count=3)
    env = lab.env(queues, "12-countdown", TASK_TIME_LIMIT_SECONDS=TASK_TIME_LIMIT)
    short_countdown, long_countdown = max(1, visibility // 2), 3 * visibility
    pollers = [lab.start_worker(dict(env, IDLE_SECONDS=str(long_countdown + 60)), n) for n in (1, 2)]
    for poller in pollers:
        _need(poll_until(lambda: _held_state(poller) is not None, 60), "the workers to consume", poller)
    sent = time.monotonic()
    [soon] = lab.send(env, "probe.record", [["soon", 0.5]], countdown=short_countdown)
    [later] = lab.send(env, "probe.record", [["later", 0.5]], countdown=long_countdown)
    [too_far] = lab.send(env, "probe.record", [["too-far", 0.5]], countdown=13 * 3600)
    [retried] = lab.send(env, "probe.retry", [["retried"]])
    started_after: dict[str, float] = {}

    def settled() -> bool:
        for task in (soon, later):
            if task not in started_after and _count(env, "start", task):
                started_after[task] = time.monotonic() - sent
        return (_count(env, "done", soon) and _count(env, "done", later)
                and message_counts(lab.sqs, queues.dlq_url)[0] >= 2)

    _need(poll_until(settled, long_countdown + 60), "the countdowns to run and two messages in the dead-letter queue")
    time.sleep(visibility + 1)  # one more window: a second copy of anything would show now
    statuses = [_term(poller) for poller in pollers]
    letters = dead_letters(lab.sqs, queues)
    reasons = {task_id_of(m): dead_letter_reason(m) for m in letters}
    retry_runs = _count(env, "fail", retried)
    outcome = account(
        lab, queues, env, name="12 countdowns, ETA limit, Celery retries", healthy=[soon, later],
        poison=[too_far, retried], letters=letters,
        note=(f"window {visibility} s, 2 workers: countdown {short_countdown} s ran {_count(env, 'start', soon)}x after "
              f"{started_after.get(soon, float('nan')):.1f} s, {long_countdown} s ran {_count(env, 'start', later)}x after "
              f"{started_after.get(later, float('nan')):.1f} s; 13 h ran {_count(env, 'start', too_far)}x, DLQ reason "
              f"\"{reasons.get(too_far, '')[:60]}...\"; probe.retry ran {retry_runs}x, DLQ reason \"{reasons.get(retried, '')}\""),
    )
    # The retried task runs 3 times by design: not a duplicate.
    outcome.run_twice = sum(1 for t in (soon, later) if _count(env, "start", t) > 1)
    for task, countdown in ((soon, short_countdown), (later, long_countdown)):
        if _count(env, "start", task) != 1 or _count(env, "done", task) != 1:
            outcome.failures.append(f"countdown {countdown} s: started {_count(env, 'start', task)}x, done {_count(env, 'done', task)}x")
        elif started_after.get(task, countdown) < countdown - 0.5:
            outcome.failures.append(f"countdown {countdown} s ran {started_after[task]:.1f} s after sending")
    if _count(env, "start", too_far) or "ahead; at most" not in reasons.get(too_far, ""):
        outcome.failures.append(f"13 h countdown: ran {_count(env, 'start', too_far)}x, DLQ reason {reasons.get(too_far)!r}")
    if retry_runs != 3 or reasons.get(retried) != "failed after 2 Celery retries (max_retries 2)":
        outcome.failures.append(f"probe.retry: ran {retry_runs}x (expected 3), DLQ reason {reasons.get(retried)!r}")
    if statuses != [143, 143]:
        outcome.failures.append(f"the workers ended with {statuses} after TERM (expected 143)")
    return outcome


# ---------------------------------------------------------------------------------------------

SCENARIOS = {
    1: (sigkill_workers, dict(tasks=100, workers=3, kills=6), dict(tasks=20, workers=2, kills=2)),
    2: (term_scripts, dict(tasks=40, workers=2, terms=3), dict(tasks=10, workers=1, terms=1)),
    3: (poison_tasks, dict(tasks=20, workers=2), dict(tasks=4, workers=1)),
    4: (malformed_messages, dict(tasks=10), dict(tasks=4)),
    5: (endpoint_outage, dict(tasks=30, workers=2, outage=30.0), dict(tasks=6, workers=1, outage=8.0)),
    6: (scaler_under_faults, dict(runs=40, cap=10), dict(runs=15, cap=5)),
    7: (long_task_single, dict(visibility=10, factor=3, short_tasks=6), dict(visibility=6, factor=3, short_tasks=2)),
    8: (container_killed, dict(visibility=10, rounds=2), dict(visibility=6, rounds=1)),
    9: (term_past_grace, dict(rounds=3, grace=3, task_seconds=8), dict(rounds=1, grace=2, task_seconds=6)),
    10: (idle_exit_beside_busy, dict(task_seconds=75), dict(task_seconds=25)),
    11: (stop_race, dict(runs=15, lanes=3), dict(runs=3, lanes=3)),
    12: (countdowns_and_retries, dict(visibility=10), dict(visibility=6)),
}


def run_scenarios(lab: Lab, numbers: list[int], small: bool) -> list[Outcome]:
    outcomes = []
    for number in numbers:
        function, full, short = SCENARIOS[number]
        started = time.monotonic()
        lab.log(f"scenario {number}: {function.__name__} ...")
        try:
            outcome = function(lab, **(short if small else full))
        except (Stuck, TimeoutError) as error:
            # A scenario that got stuck fails on its own; the others still run.
            outcome = Outcome(scenario=f"{number} {function.__name__}", submitted=0, done=0, run_twice=0, in_dlq=0,
                              lost=0, failures=[f"stuck: {str(error).splitlines()[0]}"], note=str(error)[:2000])
        finally:
            lab.stop_all()
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
        lab.log(f"scenario {number}: done in {outcome.seconds:.0f} s")
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    header = f"{'scenario':<40} {'submitted':>9} {'done':>5} {'run >1':>6} {'in DLQ':>6} {'lost':>4}  {'time':>5}  result"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        result = "ok" if o.ok else "FAILED: " + "; ".join(o.failures or [f"{o.lost} lost"])
        submitted = f"{o.submitted}{'' if o.counts_tasks else ' runs'}"
        dash = "-" if not o.counts_tasks else None
        lines.append(
            f"{o.scenario:<40} {submitted:>9} {o.done:>5} {dash or o.run_twice:>6} {dash or o.in_dlq:>6} {o.lost:>4}  {o.seconds:>4.0f}s  {result}"
        )
        lines.append(f"{'':<4}{o.note}")
    tasks = sum(o.submitted for o in outcomes if o.counts_tasks)
    lost = sum(o.lost for o in outcomes)
    lines.append(f"reliability: {len(outcomes)} scenarios, {tasks} tasks, {lost} lost")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault timings [random, printed]")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,4 [all]")
    parser.add_argument("--small", action="store_true", help="the short form run by make test")
    args = parser.parse_args(argv)
    try:
        numbers = [int(n) for n in args.only.split(",") if n.strip()] or sorted(SCENARIOS)
        if any(n not in SCENARIOS for n in numbers):
            raise ValueError
    except ValueError:
        parser.exit(2, f"bench.reliability: --only {args.only!r} is not allowed; expected numbers from 1..{len(SCENARIOS)}\n")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"seed {seed} (repeat with --seed {seed}); IDLE_SECONDS={IDLE} POLL_SECONDS={POLL}", flush=True)

    # A stop signal ends the run through the same cleanup as an error.
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    # Also SIGINT: a shell starts background jobs with it ignored, and Ctrl-C must still clean up.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    # Credentials for the in-process task sender (kombu takes them from boto3's chain).
    os.environ.update(AWS_ACCESS_KEY_ID=motoserver.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=motoserver.SECRET_KEY)
    started = time.monotonic()
    try:
        with motoserver.running() as moto, tempfile.TemporaryDirectory(prefix="reliability-") as folder:
            lab = Lab(moto, Path(folder), random.Random(seed), log=lambda line: print(line, file=sys.stderr, flush=True))
            try:
                outcomes = run_scenarios(lab, numbers, args.small)
            finally:
                lab.stop_all()
    except KeyboardInterrupt:
        print("bench.reliability: interrupted; every worker was stopped", file=sys.stderr)
        return 130
    print(table(outcomes))
    print(f"(wall time {time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

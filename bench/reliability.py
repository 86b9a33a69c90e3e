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
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import boto3

from batch_celery.local import motoserver
from batch_celery.local.faults import LOST_RESPONSE, SERVER_ERROR, THROTTLE, ApiProxy, FaultProxy
from batch_celery.local.probe_tasks import read_events
from batch_celery.local.queues import QueuePair, create_queue_pair, total_messages
from batch_celery.local.lifecycle import CONTAINER, ScriptRun, start_script, worker_env

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
        self.sqs = boto3.client(
            "sqs", region_name=moto.region, endpoint_url=moto.endpoint,
            aws_access_key_id=motoserver.ACCESS_KEY, aws_secret_access_key=motoserver.SECRET_KEY,
        )
        self.runs: list[ScriptRun] = []
        self._names = 0

    def queues(self, label: str, *, visibility_timeout: int, max_receive_count: int) -> QueuePair:
        self._names += 1
        name = f"rel-{label}-{os.getpid()}-{self._names}"
        return create_queue_pair(self.sqs, name, visibility_timeout=visibility_timeout, max_receive_count=max_receive_count)

    def env(self, queues: QueuePair, label: str, *, endpoint: str | None = None, **overrides) -> dict[str, str]:
        run_dir = self.folder / label
        run_dir.mkdir(parents=True, exist_ok=True)
        return worker_env(self.moto, queues, run_dir, endpoint=endpoint, IDLE_SECONDS=IDLE, POLL_SECONDS=POLL, **overrides)

    def start_worker(self, env: dict[str, str], index: int) -> ScriptRun:
        env = dict(env, WORKER_RUN_DIR=f"{env['WORKER_RUN_DIR']}-{index}")
        run = start_script(env, Path(env["WORKER_RUN_DIR"] + ".log"))
        self.runs.append(run)
        return run

    def send(self, env: dict[str, str], task: str, args_list: list[list]) -> list[str]:
        """Send tasks with the worker's own Celery settings (as the filler does); return their ids."""
        sys.path.insert(0, str(CONTAINER))
        from celery import Celery
        from worker_settings import WorkerSettings

        app = Celery("reliability-client", set_as_current=False)
        app.conf.update(WorkerSettings.from_env(env).celery_config())
        ids = []
        with app.producer_or_acquire() as producer:
            for args in args_list:
                ids.append(app.send_task(task, args=args, producer=producer).id)
        return ids

    def stop_all(self) -> None:
        for run in self.runs:
            if run.process.poll() is None:
                run.kill_everything()
            else:
                run.kill_everything()  # pool processes a fault may have orphaned


def dead_letters(sqs, queues: QueuePair) -> list[dict]:
    """Every message in the dead-letter queue (received once, with a long visibility, and kept)."""
    found: dict[str, dict] = {}
    quiet = 0
    while quiet < 2:
        messages = sqs.receive_message(
            QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=300, WaitTimeSeconds=0
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


def account(lab: Lab, queues: QueuePair, env: dict[str, str], *, name: str, healthy: list[str],
            poison: list[str] = (), raw: list[str] = (), note: str = "") -> Outcome:
    """Where did every task go? ``healthy`` must be done; ``poison`` task ids and ``raw`` SQS
    message ids (malformed messages) must be in the dead-letter queue."""
    events = read_events(env["PROBE_RECORD_FILE"])
    done = set(events.get("done", {}))
    runs = Counter()
    for event in ("start", "fail", "crash"):
        runs.update(events.get(event, Counter()))
    letters = dead_letters(lab.sqs, queues)
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


def _worker_pid(run: ScriptRun) -> int | None:
    return run._worker_pid_or_none()


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the worker's pool), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


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
        candidates = [(run, pid) for run in crew.alive() if (pid := _worker_pid(run))]
        if not candidates:
            return
        run, pid = lab.rng.choice(candidates)
        pool = _children(pid)
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
        candidates = [run for run in crew.alive() if _worker_pid(run)]
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
    queues = lab.queues("malformed", visibility_timeout=4, max_receive_count=2)
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
                      note=f"{len(bodies)} kinds: {', '.join(kind for kind, _ in bodies)}")
    if crew.exits != [0]:
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


def _moto_api(moto: motoserver.MotoServer, path: str, body: dict | None = None) -> bytes:
    import urllib.request

    request = urllib.request.Request(
        f"{moto.endpoint}/moto-api/{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def scaler_under_faults(lab: Lab, runs: int = 40, cap: int = 10, backlog: int = 500) -> Outcome:
    from batch_celery.scaler import handler as scaler

    moto = lab.moto
    session = boto3.Session(aws_access_key_id=motoserver.ACCESS_KEY, aws_secret_access_key=motoserver.SECRET_KEY,
                            region_name=moto.region)
    ec2, iam, batch = (session.client(n, endpoint_url=moto.endpoint) for n in ("ec2", "iam", "batch"))
    # Jobs stay SUBMITTED (moto's regular Batch backend, a state transition that never comes), so
    # every worker submitted stays "active" and the cap is put to the test on every run.
    previous = json.loads(_moto_api(moto, "config"))
    moto.configure({"batch": {"use_docker": True}})
    _moto_api(moto, "state-manager/set-transition",
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
        config = scaler.ScalerConfig(queue_url=queue_url, job_queue=job_queue, job_definition=definition,
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
            faulty_batch = session.client("batch", endpoint_url=proxy.endpoint, config=scaler._BOTO_CONFIG)
            faulty_submit = session.client("batch", endpoint_url=proxy.endpoint, config=scaler.SUBMIT_CONFIG)
            for _ in range(runs):
                record = scaler.scale(config, lab.sqs, faulty_batch, submit_batch=faulty_submit)
                outcomes[record["outcome"]] += 1
                reported += record.get("submitted", 0)
                # Every job stays SUBMITTED, so all workers ever submitted are active at once.
                peak = max(peak, _submitted_workers(batch, job_queue))
            faults = Counter(fault for (_, fault) in proxy.faults.elements())
    finally:
        _moto_api(moto, "state-manager/unset-transition", {"model_name": "batch::job"})
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

SCENARIOS = {
    1: (sigkill_workers, dict(tasks=100, workers=3, kills=6), dict(tasks=20, workers=2, kills=2)),
    2: (term_scripts, dict(tasks=40, workers=2, terms=3), dict(tasks=10, workers=1, terms=1)),
    3: (poison_tasks, dict(tasks=20, workers=2), dict(tasks=4, workers=1)),
    4: (malformed_messages, dict(tasks=10), dict(tasks=4)),
    5: (endpoint_outage, dict(tasks=30, workers=2, outage=30.0), dict(tasks=6, workers=1, outage=8.0)),
    6: (scaler_under_faults, dict(runs=40, cap=10), dict(runs=15, cap=5)),
}


def run_scenarios(lab: Lab, numbers: list[int], small: bool) -> list[Outcome]:
    outcomes = []
    for number in numbers:
        function, full, short = SCENARIOS[number]
        started = time.monotonic()
        lab.log(f"scenario {number}: {function.__name__} ...")
        try:
            outcome = function(lab, **(short if small else full))
        finally:
            lab.stop_all()
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
        lab.log(f"scenario {number}: done in {outcome.seconds:.0f} s")
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    header = f"{'scenario':<38} {'submitted':>9} {'done':>5} {'run >1':>6} {'in DLQ':>6} {'lost':>4}  {'time':>5}  result"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        result = "ok" if o.ok else "FAILED: " + "; ".join(o.failures or [f"{o.lost} lost"])
        submitted = f"{o.submitted}{'' if o.counts_tasks else ' runs'}"
        dash = "-" if not o.counts_tasks else None
        lines.append(
            f"{o.scenario:<38} {submitted:>9} {o.done:>5} {dash or o.run_twice:>6} {dash or o.in_dlq:>6} {o.lost:>4}  {o.seconds:>4.0f}s  {result}"
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

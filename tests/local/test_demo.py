"""The local run's machinery: a short two-pool run ends clean, each pool's tasks on its own
workers; an interrupted one leaves nothing behind.

These run the real demo as a subprocess (synth, moto server, filler, routing, lifecycle scripts,
workers), exactly as `make demo` does, with a few small tasks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from batch_celery_local import REPO_ROOT, template
from batch_celery_local.demo import (
    LAMBDA_POOL, LAMBDA_POOL_SETTINGS, SECOND_POOL, SECOND_POOL_SETTINGS, demo_overrides, parse_args,
)
from batch_celery.settings import Settings
from harness.processes import alive, live_pids

SUMMARY = re.compile(r"^demo: (\d+)/(\d+) done, (\d+) back in the queue, (\d+) in the DLQ, (\d+) lost; "
                     r"(\d+) workers, (\d+) s$")
POOL_LINE = re.compile(r"^pool ([a-z0-9-]+): (\d+)/(\d+) done by (\d+) workers?(?:; |$)", re.MULTILINE)
METRICS = re.compile(r"^pool ([a-z0-9-]+): .*; metrics: (\d+) task lines, wait p50 [\d.]+ s", re.MULTILINE)


# Each demo a test starts carries a variable of its own, which every process it starts inherits:
# a test sees its own leftovers only, so demo tests can run side by side (pytest -n).
TAG = f"BATCH_CELERY_TEST_{uuid.uuid4().hex[:12]}"


def demo_processes() -> list[int]:
    """Every live process started by this module's local runs (in this pytest process)."""
    return live_pids(environ_has=TAG)


def lines_as_they_come(demo: subprocess.Popen, timeout: float) -> list[tuple[float, str]]:
    """Every line the demo prints (it flushes each), with the moment it arrived; the demo is
    killed after ``timeout`` seconds."""
    killer = threading.Timer(timeout, demo.kill)
    killer.start()
    try:
        arrivals = [(time.monotonic(), line.rstrip("\n")) for line in demo.stdout]
    finally:
        killer.cancel()
    demo.wait(timeout=30)
    return arrivals


def run_demo(*args: str, tmpdir: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env[TAG] = "1"
    if tmpdir:
        env["TMPDIR"] = str(tmpdir)  # where the demo makes its run's folder
    return subprocess.Popen(
        [sys.executable, "-m", "batch_celery_local", "--plain", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_bursts_on_two_pools_scale_up_and_in_with_every_task_on_its_own_pools_workers(tmp_path):
    demo = run_demo("--tasks", "8,3", "--task", "trivial", "--second-pool-tasks", "3,0", "--lambda-pool-tasks", "0",
                    "--max-workers", "2",
                    "--idle-seconds", "2", "--messages-per-worker", "4", "--keep", str(tmp_path),
                    "--run-file", str(tmp_path / "run.json"))
    arrivals = lines_as_they_come(demo, timeout=240)
    lines = [line for _, line in arrivals if line.strip()]
    output = "\n".join(line for _, line in arrivals) + "\n"
    match = SUMMARY.match(lines[-1])
    assert match, output
    done, total, queued, dead, lost, workers, seconds = map(int, match.groups())
    assert (done, total, queued, dead, lost) == (14, 14, 0, 0, 0), output
    # Burst 1: 2 default workers (8 tasks, 4 per worker) and 1 gpu worker; burst 2: one default
    # worker for 3 tasks, started only after every worker of burst 1 had left, and a second one
    # if the first is busy while tasks still wait (the policy: busy workers + 1 per 4 waiting).
    assert workers in (4, 5), output
    pools = {name: (int(done), int(sent)) for name, done, sent, _ in POOL_LINE.findall(output)}
    assert pools == {"default": (11, 11), SECOND_POOL: (3, 3)}, output
    # Every line fits 80 columns, and the label says what ran.
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    assert "burst 1 of 2: sent 8 x trivial (batch.calculate_pi) to pool default" in output, output
    assert "burst 1 of 2: sent 3 x gpu.matmul to pool gpu" in output, output
    # The event log says why each worker started and why it left, in order.
    events = [line for line in lines if re.match(r"^\[\s*\d+s\] ", line)]
    text = "\n".join(events)
    assert re.search(r"scaler default: 8 waiting, 0 in flight, 0 running; wants 2, starts 2\n"
                     r".*worker default-1 started\n.*worker default-2 started", text), text
    assert re.search(r"scaler default: 3 waiting, 0 in flight, 0 running; wants 1, starts 1\n"
                     r".*worker default-3 started", text), text
    exits = re.findall(r"worker (default|gpu)-\d left after \d+ s, \d+ tasks?, exit 0:\s+idle\s+for\s+2\s+s", output)
    assert sorted(exits) == ["default"] * (workers - 1) + [SECOND_POOL], output
    order = [line for line in events if "left after" in line or "the pause is over" in line or "started" in line]
    pause = next(i for i, line in enumerate(order) if "the pause is over" in line)
    assert sum("left after" in line for line in order[:pause]) == 3, order
    assert [line for line in order[pause:] if "started" in line][0].endswith("worker default-3 started"), order
    # The summary's time is the run's clock, the one the event log counts in (the synth before the
    # run is not counted): later than the last event by the few seconds the stop takes, or by as
    # long as its line came after that event's line when the stop is slower (a loaded machine).
    # Both are rounded to whole seconds.
    last_event = int(re.match(r"^\[\s*(\d+)s\]", events[-1])[1])
    printed = {line: arrived for arrived, line in arrivals}
    gap = printed[lines[-1]] - printed[events[-1]]
    assert last_event <= seconds <= last_event + max(3, gap + 1), \
        (events[-1], lines[-1], f"printed {gap:.1f} s apart")
    # Every run wrote its metrics line, and every result is in the (moto) result table.
    assert dict(METRICS.findall(output)) == {"default": "11", SECOND_POOL: "3"}, output
    assert "results in DynamoDB (moto): 14 stored: 14 SUCCESS; e.g. " in output, output
    assert demo.returncode == 0, output
    assert re.search(rf"the run's folder \(worker logs, template\):\s+{re.escape(str(tmp_path))}\n", output), output
    assert demo_processes() == []
    # The routing is real: each pool's tasks ran only on that pool's workers.
    logs = {path.name: path.read_text() for path in tmp_path.glob("*-worker-*.log")}
    default_logs = [text for name, text in logs.items() if name.startswith("default-")]
    gpu_logs = [text for name, text in logs.items() if name.startswith(f"{SECOND_POOL}-")]
    assert default_logs and gpu_logs, sorted(logs)
    assert sum(text.count("Task batch.calculate_pi[") for text in default_logs) >= 11
    assert not any("gpu.matmul" in text for text in default_logs)
    assert sum(len(re.findall(r"Task gpu\.matmul\[\S+\] succeeded", text)) for text in gpu_logs) == 3
    assert not any("batch.calculate_pi" in text for text in gpu_logs)


@pytest.mark.slow
def test_interrupted_run_counts_every_finished_task_done_and_none_lost(tmp_path):
    # Long tasks so the interrupt lands while workers are busy, some tasks done, most still queued.
    demo = run_demo("--tasks", "40", "--task", "calculate_pi", "--max-workers", "2", "--idle-seconds", "30",
                    "--second-pool-tasks", "12", "--lambda-pool-tasks", "0", "--keep", str(tmp_path),
                    "--run-file", str(tmp_path / "run.json"))
    started_workers = False
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        lines.append(line)
        if re.search(r"\] default: .*done [1-9]\d*/40", line):
            started_workers = True
            break
    assert started_workers, "".join(lines)
    servers = live_pids(parent=demo.pid, cmdline_has="moto.server")
    assert servers, "the demo should be running its moto server"
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 1, output
    assert "interrupted" in output
    summary = SUMMARY.match(output.strip().splitlines()[-1])
    assert summary, output
    done, total, queued, dead, lost, _, _ = map(int, summary.groups())
    # Every task a worker finished is counted done: Celery's own log in each worker's run folder
    # (not the copy the lifecycle script prints) is the witness. The rest is back in the queue.
    finished = set()
    for log in tmp_path.glob("*-worker-*/worker.log"):
        finished |= set(re.findall(r"Task \S+\[([0-9a-f-]+)\] succeeded in", log.read_text()))
    assert 0 < done == len(finished) < total == 52, output
    assert (queued, dead, lost) == (total - done, 0, 0), output
    assert demo_processes() == []
    assert not any(alive(pid) for pid in servers)


@pytest.mark.slow  # a synth through app.py
def test_queue_attributes_come_from_the_synthesized_stack(tmp_path):
    spec = template.read_spec(template.synthesize(tmp_path))
    (pool,) = spec.pools.values()
    # The stack's defaults (batch_celery/props.py); the local queue is created with exactly these.
    # The visibility timeout is the crash window (300 s), shorter than a task may run (3 h): the
    # worker's heartbeat keeps what it holds invisible.
    assert pool.name == "default"
    assert (pool.queue.visibility_timeout, pool.worker_environment["TASK_TIME_LIMIT_SECONDS"]) == (300, "10800")
    assert pool.worker_environment["STOP_GRACE_SECONDS"] == "20"
    assert pool.worker_environment["WORKER_POOL"] == "default"
    assert pool.queue.max_receive_count >= 1
    assert pool.queue.dlq_retention_seconds > pool.queue.retention_seconds
    assert pool.worker_environment["VISIBILITY_TIMEOUT_SECONDS"] == str(pool.queue.visibility_timeout)
    assert {"IDLE_SECONDS", "POLL_SECONDS", "WORKER_CONCURRENCY"} <= set(pool.worker_environment)
    # 0: sized to the target wait (90 s) from the run times its workers report.
    assert (pool.messages_per_worker, pool.target_wait_seconds, pool.max_workers, pool.tasks_per_worker) == (0, 90, 48, 1)


@pytest.mark.slow  # a synth through app.py
def test_each_pool_of_a_two_pool_stack_is_read_with_its_own_settings(tmp_path):
    # What a user sets in cdk.json reaches each pool's local queue and workers as it reaches AWS.
    assert "@aws-cdk/aws-ec2:restrictDefaultSecurityGroup" in template.project_context()
    block = {"pools": {
        "main": {"max_receive_count": 7, "idle_seconds": 90, "messages_per_worker": 4},
        "gpu": {**SECOND_POOL_SETTINGS, "visibility_timeout_seconds": 600, "concurrency": 2, "max_workers": 3},
    }}
    spec = template.read_spec(template.synthesize(tmp_path, {"batch-celery": block}), Settings.from_context(block))
    assert list(spec.pools) == ["main", "gpu"]
    main, gpu = spec.pools["main"], spec.pools["gpu"]
    assert (main.queue.max_receive_count, main.worker_environment["IDLE_SECONDS"], main.messages_per_worker) == (7, "90", 4)
    assert (main.tasks, main.image) == ((), None)
    assert (gpu.queue.visibility_timeout, gpu.queue.max_receive_count) == (600, 3)
    assert (gpu.max_workers, gpu.tasks_per_worker, gpu.messages_per_worker) == (3, 2, 0)
    assert (gpu.tasks, gpu.image) == (("gpu.*",), "examples/gpu-pool")
    assert gpu.worker_environment["WORKER_POOL"] == "gpu"


def test_the_demo_adds_a_second_pool_only_to_a_one_pool_project():
    overrides, origin = demo_overrides({"batch-celery": {"max_azs": 1}}, second_pool=True)
    assert overrides == {"batch-celery": {"max_azs": 1, "pools": {"default": {}, SECOND_POOL: SECOND_POOL_SETTINGS}}}
    assert "added by the demo" in origin
    two = {"batch-celery": {"pools": {"a": {}, "b": {"tasks": ["b.*"]}}}}
    assert demo_overrides(two, second_pool=True) == ({}, "the pools of cdk.json")
    assert demo_overrides({}, second_pool=False) == ({}, "the pools of cdk.json")


def test_the_demo_adds_a_lambda_pool_beside_the_batch_pools():
    overrides, origin = demo_overrides({}, second_pool=True, lambda_pool=True)
    assert overrides == {"batch-celery": {"pools": {"default": {}, SECOND_POOL: SECOND_POOL_SETTINGS,
                                                    LAMBDA_POOL: LAMBDA_POOL_SETTINGS}}}
    assert origin.endswith(f'pool {LAMBDA_POOL} added by the demo (compute "lambda")')
    assert parse_args([]).lambda_pool_tasks == (6, 3)
    assert parse_args(["--task-module", "x.py"]).lambda_pool_tasks == (0,)


@pytest.mark.slow
def test_the_lambda_pool_runs_its_handler_in_process_beside_a_batch_pool_and_says_so(tmp_path):
    demo = run_demo("--tasks", "2", "--task", "trivial", "--second-pool-tasks", "0", "--lambda-pool-tasks", "3,1",
                    "--idle-seconds", "1", "--keep", str(tmp_path), "--run-file", str(tmp_path / "run.json"))
    output, _ = demo.communicate(timeout=300)
    assert demo.returncode == 0, output
    flat = " ".join(output.split())
    assert 'pool light added by the demo (compute "lambda")' in flat, output
    assert "Here a local stand-in plays the mapping and runs the function's handler in its own process" in flat
    assert "Lambda pool light: event source mapping stand-in light-1 started (the function's handler, in-process)" \
        in flat, output
    pools = {name: (int(done), int(sent)) for name, done, sent, _ in POOL_LINE.findall(output)}
    assert pools == {"default": (2, 2), LAMBDA_POOL: (4, 4)}, output
    summary = SUMMARY.match(output.strip().splitlines()[-1])
    assert summary and summary.groups()[2:5] == ("0", "0", "0"), output
    # The stand-in's log: Celery's own line for each task it ran, and no worker job's lifecycle script.
    logs = "".join(path.read_text() for path in tmp_path.glob(f"{LAMBDA_POOL}-worker-*.log"))
    assert len(re.findall(r"Task batch\.word_count\[\S+\] succeeded", logs)) == 4, logs
    assert "run_celery_worker" not in logs
    assert demo_processes() == []


@pytest.mark.slow
def test_the_scaler_sizes_the_second_burst_from_the_run_times_of_the_first(tmp_path):
    demo = run_demo("--tasks", "4,3", "--task", "trivial", "--second-pool-tasks", "0", "--lambda-pool-tasks", "0",
                    "--idle-seconds", "1", "--max-workers", "4", "--keep", str(tmp_path),
                    "--run-file", str(tmp_path / "run.json"))
    output, _ = demo.communicate(timeout=300)
    assert demo.returncode == 0, output
    flat = " ".join(output.split())
    assert "scaler: every task started within 90 s, sized from the run times its workers report" in flat, output
    # Burst 1: the pool never reported a run, so each waiting task gets a worker of its own.
    assert re.search(r"scaler default: 4 waiting, 0 in flight, 0 running; wants 4, starts 4; run time unknown: "
                     r"a worker per waiting task", flat), output
    # Burst 2: the 4 runs of burst 1 (well under a second each) let one new worker take all 3.
    assert re.search(r"scaler default: 3 waiting, 0 in flight, 0 running; wants 1, starts 1; run time [0-9.]+ s "
                     r"\(mean of 4\): \d+ per new worker within 90 s", flat), output
    assert demo_processes() == []


def test_queues_created_locally_match_the_spec(moto_server):
    spec = template.QueueSpec(visibility_timeout=123, retention_seconds=3600, max_receive_count=4,
                              dlq_retention_seconds=7200, managed_sse=True)
    sqs = moto_server.client("sqs")
    pair = template.create_queues(sqs, "spec-check", spec)
    attributes = sqs.get_queue_attributes(QueueUrl=pair.url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "123"
    assert attributes["MessageRetentionPeriod"] == "3600"
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert '"maxReceiveCount": "4"' in attributes["RedrivePolicy"] or '"maxReceiveCount": 4' in attributes["RedrivePolicy"]
    dlq = sqs.get_queue_attributes(QueueUrl=pair.dlq_url, AttributeNames=["MessageRetentionPeriod"])["Attributes"]
    assert dlq["MessageRetentionPeriod"] == "7200"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "0"], "--tasks: '0' sends nothing; allowed: at least one count above 0"),
        (["--tasks", "30,x"], "--tasks: '30,x' is not a list of task counts; allowed: up to 10 whole numbers"),
        (["--tasks", "1,2,3,4,5,6,7,8,9,10,11"], "is out of range; allowed: up to 10 whole numbers 0..10000"),
        (["--max-workers", "lots"], "--max-workers: 'lots' is not a whole number; allowed: 1..16"),
        (["--task", "sleep"], "--task: 'sleep' is not a demo task; allowed: calculate_pi, trivial, or a task of "
                              "your own with --task-module"),
        (["--kwargs", "[1]"], "--kwargs: '[1]' is not a JSON dict"),
    ],
)
def test_rejects_bad_arguments_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_demo_runs_your_own_task_module(tmp_path):
    module = tmp_path / "mytasks.py"
    module.write_text(
        "from celery_app import app\n\n\n"
        "@app.task(name=\"mine.double\")\n"
        "def double(x):\n"
        "    return 2 * x\n"
    )
    demo = run_demo("--task-module", str(module), "--args", "[21]", "--tasks", "3", "--idle-seconds", "1",
                    "--run-file", str(tmp_path / "run.json"), tmpdir=tmp_path)
    output, _ = demo.communicate(timeout=240)
    assert demo.returncode == 0, output
    # A run that went well removes its folder (unless --keep).
    assert "the run's folder" not in output and list(tmp_path.glob("batch-celery-demo-*")) == []
    assert "burst 1 of 1: sent 3 x mine.double to pool default" in output, output
    assert "results in DynamoDB (moto): 3 stored: 3 SUCCESS; e.g. 42" in output, output
    assert SUMMARY.match(output.strip().splitlines()[-1]).groups()[:5] == ("3", "3", "0", "0", "0"), output
    # Your tasks alone: the demo adds no GPU pool unless asked to.
    assert "pools: the pools of cdk.json" in output and f"pool {SECOND_POOL}:" not in output, output


def test_a_task_your_module_does_not_register_is_one_line(tmp_path):
    module = tmp_path / "mytasks.py"
    module.write_text("from celery_app import app\n\n\n@app.task(name='mine.a')\ndef a():\n    pass\n")
    demo = run_demo("--task-module", str(module), "--task", "mine.b", "--run-file", str(tmp_path / "run.json"))
    output, _ = demo.communicate(timeout=240)
    # Checked before the synth, in a second: one line, exit 2, nothing started, no folder left.
    assert demo.returncode == 2, output
    assert output.splitlines() == ["error: task 'mine.b' is not registered by mytasks; its tasks: mine.a"]
    assert demo_processes() == []

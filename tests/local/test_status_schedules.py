"""`python -m batch_celery status` with schedules: each schedule's task, pool and expression from the
stack's outputs, and its last fire from the lines the real sender writes (moto's CloudWatch Logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from batch_celery_container import routing, schedule_sender
from batch_celery_local import REPO_ROOT
from batch_celery_local.queues import create_queue_pair

NAMESPACE = "BatchCelery/Test"


def test_status_lists_each_schedule_with_its_last_fire(moto_server) -> None:
    tag = uuid.uuid4().hex[:6]
    sqs, logs = moto_server.client("sqs"), moto_server.client("logs")
    queues = create_queue_pair(sqs, f"status-sched-{tag}")
    routes = routing.routes_document(default_pool="default", region=moto_server.region,
                                     pools={"default": routing.PoolRoute(queues.name, queues.url, ())})
    schedules = {"nightly-report": {"task": "reports.nightly", "pool": "default", "expression": "cron(0 2 * * ? *)",
                                    "timezone": "Europe/Berlin"},
                 "never": {"task": "t.never", "pool": "default", "expression": "rate(1 day)", "timezone": "UTC"}}
    group = f"/sender/{tag}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="run")
    now = time.time()
    lines = ["START RequestId: 1 Version: $LATEST"]
    for scheduled in ("2026-12-05T01:00:00Z", "2026-12-06T01:00:00Z"):
        event = {"schedule": "nightly-report", "task": "reports.nightly", "args": [], "kwargs": {},
                 "queue": queues.name, "queue_url": queues.url, "scheduled_time": scheduled}
        lines.append(schedule_sender.record_line(schedule_sender.fire(sqs, event, now=now), NAMESPACE, now))
    logs.put_log_events(logGroupName=group, logStreamName="run", logEvents=[
        {"timestamp": int(now * 1000) - 1000 * (len(lines) - index), "message": line}
        for index, line in enumerate(lines)])
    moto_server.client("cloudformation").create_stack(StackName=f"Sched{tag}", TemplateBody=json.dumps({
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in {
            "Routes": json.dumps(routes), "Schedules": json.dumps(schedules), "ScheduleSenderLogGroupName": group,
            "PoolDefaultQueueUrl": queues.url, "PoolDefaultDeadLetterQueueUrl": queues.dlq_url}.items()}}))

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(moto_server.client_env())
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "batch_celery", "status", "--stack", f"Sched{tag}", *args], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60)
    text, as_json = run(), run("--json")

    assert text.returncode == 0, text.stderr
    out = text.stdout.splitlines()
    start = out.index("schedule nightly-report: reports.nightly to pool default, cron(0 2 * * ? *) Europe/Berlin")
    last = schedule_sender.task_id_for(queues.name, "nightly-report", "2026-12-06T01:00:00Z")
    assert out[start + 1].startswith("  last fire sent at ")
    assert f"for 2026-12-06T01:00:00Z (task id {last[:8]}, " in out[start + 1]
    assert out[start + 1].endswith("; 2 fires in the last 25 hours")
    assert out[start + 2:start + 4] == ["schedule never: t.never to pool default, rate(1 day)",
                                        "  no fire in the last 25 hours"]
    [nightly, never] = json.loads(as_json.stdout)["schedules"]
    assert (nightly["fires"], nightly["last_fire"]["task_id"], never["last_fire"]) == (2, last, None)

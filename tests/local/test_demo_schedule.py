"""The demo's `--schedule`: the schedule sender's real message builder, standing in for EventBridge
Scheduler, sends one scheduled task to moto's SQS; a real worker of the routed pool runs it, and
`status --local` shows the fire while the run lasts."""

from __future__ import annotations

import re

import pytest

from batch_celery import status

from .test_demo import POOL_LINE, SUMMARY, demo_processes, lines_as_they_come, run_demo

FIRED = re.compile(r"schedule demo-every-5-minutes fired \(EventBridge Scheduler's stand-in\):\s+"
                   r"batch\.calculate_pi\[(?P<id>[0-9a-f]{8})\] to pool default")


@pytest.mark.slow
def test_the_demo_fires_a_schedule_and_a_worker_runs_its_task(tmp_path) -> None:
    run_file = tmp_path / "run.json"
    demo = run_demo("--schedule", "--tasks", "2", "--task", "trivial", "--second-pool-tasks", "0",
                    "--idle-seconds", "3", "--keep", str(tmp_path / "keep"), "--run-file", str(run_file))
    seen: dict[str, object] = {}
    arrivals = []
    for arrival in iter(demo.stdout.readline, ""):
        arrivals.append(arrival.rstrip("\n"))
        # While the run lasts, its file tells `status --local` about the fire.
        if "status" not in seen and run_file.exists():
            seen["status"] = status.render(status.local_status(run_file))
    arrivals += [line for _, line in lines_as_they_come(demo, timeout=180)]
    output = "\n".join(arrivals) + "\n"

    fired = FIRED.search(output)
    assert fired, output
    match = SUMMARY.match([line for line in arrivals if line.strip()][-1])
    assert match, output
    done, total, queued, dead, lost = map(int, match.groups()[:5])
    assert (done, queued, dead, lost) == (total, 0, 0, 0), output
    # The default pool's tasks: 2 sent by the filler, 1 by the schedule (other pools the demo may
    # add run their own).
    pools = {name: (int(done), int(sent)) for name, done, sent, _ in POOL_LINE.findall(output)}
    assert pools["default"] == (3, 3), output
    assert "never sent" not in output
    logs = "".join(path.read_text() for path in (tmp_path / "keep").glob("default-worker-*.log"))
    assert re.search(rf"Task batch\.calculate_pi\[{fired['id']}[0-9a-f-]+\] succeeded", logs), logs[-2000:]
    assert "schedule demo-every-5-minutes: batch.calculate_pi to pool default, rate(5 minutes)" in seen["status"]
    assert f"(task id {fired['id']}, " in seen["status"] and "1 fire in this run" in seen["status"]
    assert demo.returncode == 0, output
    assert demo_processes() == []

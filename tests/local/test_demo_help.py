"""The demo's --help says what its options do, and its closing lines fit the width it promises.

Quick: no demo runs here (tests/local/test_demo.py runs it); the help is read from the parser and
held to the code and the lifecycle script it describes.
"""

from __future__ import annotations

import inspect
import re

import pytest

from batch_celery_container import routing
from batch_celery_local import REPO_ROOT, demo

from .test_demo import SUMMARY


def _help(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Each option's help, on one line: option -> text."""
    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    text = capsys.readouterr().out
    options = {}
    for match in re.finditer(r"^  (--[a-z-]+)[^\n]*?(?:  +|\n +)(.*?)(?=^  -|\Z)", text, re.S | re.M):
        options[match[1]] = " ".join(match[2].split())
    return options


def test_idle_seconds_help_is_the_lifecycle_scripts_per_worker_rule(capsys) -> None:
    text = _help(capsys)["--idle-seconds"]
    # Per worker: it held nothing and its queue shows nothing waiting or delayed; another worker's
    # task never keeps it, so "after the queue was empty" would be wrong.
    assert "held no message" in text and "nothing waiting or delayed" in text, text
    assert "queue was empty" not in text
    script = (REPO_ROOT / "batch_celery_container" / "run_celery_worker.sh").read_text()
    assert "held no message, nothing waiting in the queue" in script


def test_max_workers_help_says_it_caps_the_first_pool_only(capsys) -> None:
    text = _help(capsys)["--max-workers"]
    assert "first pool" in text and "every other pool runs at most 1" in text, text
    # What main() does with it: the option for the first pool, 1 for every other.
    assert "max_workers={name: args.max_workers if name == names[0] else 1 for name in names}" in (
        inspect.getsource(demo.main))


def test_tasks_help_says_the_demos_tasks_go_to_the_first_pool(capsys) -> None:
    text = _help(capsys)["--tasks"]
    assert "routed to its pool by name" in text and "the first pool" in text, text
    assert "default pool" not in text
    # The demo's tasks are batch.calculate_pi; no pool lists them, so routing sends them to the
    # first pool whatever its name.
    routes = routing.Routes(default_pool="media", region="us-east-1", pools={
        "media": routing.PoolRoute("media-q", "https://sqs/media-q"),
        "gpu": routing.PoolRoute("gpu-q", "https://sqs/gpu-q", ("gpu.*",)),
    })
    assert {routing.pool_for(routes, task) for task, _ in demo.TASK_CHOICES.values()} == {"media"}


@pytest.mark.parametrize("unsent", [0, 40, 1234])
def test_an_interrupted_runs_closing_lines_fit_80_columns(unsent: int) -> None:
    outcome = demo.Outcome(tasks=52, done=12, dead_lettered=10, remaining=30, workers=16,
                           worker_exit_codes=[143] * 16, seconds=600, interrupted=True, unsent=unsent)
    lines = [line for line in (outcome.unsent_line(), outcome.summary_line()) if line]
    assert all(len(line) <= demo.WIDTH for line in lines), lines
    # The summary stays one line of the shape scripts read, and the unsent count is still said.
    assert SUMMARY.match(outcome.summary_line()), outcome.summary_line()
    assert (outcome.unsent_line() or "").startswith(f"{unsent} task(s)" if unsent else "")

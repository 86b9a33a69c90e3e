"""The worker's console entry point (batch_celery_container/entrypoint.py) prepares the job's
environment for the installed layout and nothing more; the lifecycle is the script's."""

from __future__ import annotations

import os
import sys

from batch_celery_container import entrypoint


def test_scripts_run_on_the_interpreter_the_worker_is_installed_in() -> None:
    assert entrypoint.job_environment({}, cwd="/app")["PYTHON"] == sys.executable


def test_keeps_a_python_the_job_names() -> None:
    assert entrypoint.job_environment({"PYTHON": "/opt/venv/bin/python3"}, cwd="/app")["PYTHON"] == "/opt/venv/bin/python3"


def test_task_modules_are_found_in_the_folder_the_worker_starts_in() -> None:
    env = entrypoint.job_environment({"PYTHONPATH": "/opt/lib"}, cwd="/app")
    assert env["PYTHONPATH"].split(os.pathsep) == ["/app", "/opt/lib"]


def test_the_start_folder_is_on_the_path_once() -> None:
    env = entrypoint.job_environment({"PYTHONPATH": "/opt/lib" + os.pathsep + "/app"}, cwd="/app")
    assert env["PYTHONPATH"].split(os.pathsep) == ["/opt/lib", "/app"]


def test_rejects_arguments_with_exit_2(capsys) -> None:
    assert entrypoint.worker(["--queue", "x"]) == 2
    assert "takes no arguments" in capsys.readouterr().err


def test_help_names_the_lifecycle_script(capsys) -> None:
    assert entrypoint.worker(["--help"]) == 0
    assert str(entrypoint.LIFECYCLE_SCRIPT) in capsys.readouterr().out
    assert entrypoint.LIFECYCLE_SCRIPT.is_file() and entrypoint.FILLER_SCRIPT.is_file()

"""Console entry points of the batch-celery-worker distribution: ``batch-celery-worker`` (the
worker job's lifecycle) and ``batch-celery-fill`` (the filler job).

An own image gets the worker with one line, ``pip install batch-celery-worker``, and runs
``batch-celery-worker``: it execs run_celery_worker.sh from the folder pip installed it in, beside
the modules the script runs (celery_app, worker_settings, held_messages, ...), which import one
another by bare name there as they do in the bundled image. The lifecycle, its exit statuses and
the environment it reads are the script's (its header); nothing is decided here.

This module also holds the one version number of batch-celery and batch-celery-worker: both
pyproject.toml files read it, and the two are released together (CHANGELOG.md).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__version__ = "0.1.0"

HERE = Path(__file__).resolve().parent
LIFECYCLE_SCRIPT = HERE / "run_celery_worker.sh"
FILLER_SCRIPT = HERE / "fill-batch-queue.py"

WORKER_USAGE = f"""\
usage: batch-celery-worker

Runs one AWS Batch worker job of batch-celery {__version__}: a Celery worker on the pool's SQS queue,
stopped once it has held no message for IDLE_SECONDS (exit 0), or at the job's deadline (exit 7).
It takes no arguments: the job definition's environment configures it (CELERY_QUEUE_NAME and the
rest; without them it exits 2 with one line). Your task modules (CELERY_TASK_MODULES) are
imported from the folder it starts in, the image's WORKDIR. The lifecycle script it runs:
{LIFECYCLE_SCRIPT}"""


def job_environment(environ: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, str]:
    """The environment the scripts run with: the job's, plus two things the installed layout needs."""
    env = dict(os.environ if environ is None else environ)
    # The script's helpers and the Celery worker run on this interpreter (the one the package was
    # installed into), not on whatever python3 comes first on PATH.
    env.setdefault("PYTHON", sys.executable)
    # The script runs from its own folder; task modules are found where the worker was started,
    # as `celery -A` finds them.
    start = os.getcwd() if cwd is None else cwd
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if start not in paths:
        env["PYTHONPATH"] = os.pathsep.join([start, *paths])
    return env


def _help_or_version(command: str, usage: str, argv: list[str]) -> int | None:
    """``--help`` and ``--version`` of an entry point (their exit status), or None for the rest."""
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv and argv[0] == "--version":
        print(f"{command} {__version__}")
        return 0
    return None


def worker(argv: list[str] | None = None) -> int:
    """``batch-celery-worker``: exec the lifecycle script (it becomes the job's main process)."""
    argv = sys.argv[1:] if argv is None else argv
    answered = _help_or_version("batch-celery-worker", WORKER_USAGE, argv)
    if answered is not None:
        return answered
    if argv:
        print(f"batch-celery-worker: takes no arguments (got {argv[0]!r}); the job's environment "
              "configures it (batch-celery-worker --help)", file=sys.stderr)
        return 2
    bash = shutil.which("bash")
    if bash is None:
        print("batch-celery-worker: bash is not installed; the lifecycle script needs it", file=sys.stderr)
        return 2
    os.execve(bash, [bash, str(LIFECYCLE_SCRIPT)], job_environment())
    return 2  # not reached: execve replaces this process


# A Lambda pool's function (compute "lambda"): the image's entry point there, with the handler as
# its command (batch_celery/lambda_pool.py sets both).
LAMBDA_HANDLER = "lambda_handler.handler"
LAMBDA_USAGE = f"""\
usage: batch-celery-lambda [HANDLER]

Runs the function of a Lambda pool of batch-celery {__version__}: the Lambda runtime interface client
(awslambdaric) serving HANDLER (default {LAMBDA_HANDLER}), which runs each SQS record of the pool's
queue through the worker's Celery app. Lambda starts it; the function's environment configures it
as a worker job's configures the worker. The handler's folder: {HERE}"""


def lambda_(argv: list[str] | None = None) -> int:
    """``batch-celery-lambda``: exec the Lambda runtime interface client on the handler, with this
    folder (the worker's modules) and the start folder (your task modules) importable."""
    argv = sys.argv[1:] if argv is None else argv
    answered = _help_or_version("batch-celery-lambda", LAMBDA_USAGE, argv)
    if answered is not None:
        return answered
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(f"batch-celery-lambda: takes one handler at most (got {' '.join(argv)!r}); "
              "see batch-celery-lambda --help", file=sys.stderr)
        return 2
    import importlib.util

    if importlib.util.find_spec("awslambdaric") is None:
        print("batch-celery-lambda: awslambdaric is not installed; install batch-celery-worker with its "
              "requirements (requirements.txt pins it)", file=sys.stderr)
        return 2
    env = job_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *env["PYTHONPATH"].split(os.pathsep)])
    handler = argv[0] if argv else LAMBDA_HANDLER
    os.execve(sys.executable, [sys.executable, "-m", "awslambdaric", handler], env)
    return 2  # not reached


def fill(argv: list[str] | None = None) -> int:
    """``batch-celery-fill``: the filler job (fill-batch-queue.py; its arguments are passed on)."""
    argv = sys.argv[1:] if argv is None else argv
    os.execve(sys.executable, [sys.executable, str(FILLER_SCRIPT), *argv], job_environment())
    return 2  # not reached


if __name__ == "__main__":
    sys.exit(worker())

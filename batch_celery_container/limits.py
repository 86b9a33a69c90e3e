"""Rules that both synth (batch_celery/settings.py) and the worker (worker_settings.py) check.

Written once, here, with no dependencies: the worker imports it as ``limits`` from its own folder,
the CDK app as ``batch_celery_container.limits``. Each check returns None when the value is
allowed, or the text of what is allowed; the caller names the key in its own words
(``batch-celery.task_time_limit_seconds`` at synth, ``TASK_TIME_LIMIT_SECONDS`` in the worker).

The worker extends the visibility of every message it holds (the heartbeat), so the queue's
visibility timeout is the crash-recovery window, not a bound on a task's length. What bounds a
task is SQS: a received message can stay invisible for at most 12 hours from its receive
(ChangeMessageVisibility, Amazon SQS API Reference), after which SQS hands it out again.
"""

from __future__ import annotations

import sys

# A message stays invisible at most this long after it was received, however often it is extended.
SQS_MAX_HOLD_SECONDS = 12 * 60 * 60
# The crash-recovery window: a message whose worker died returns to the queue within this long.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 300
# Below this a single slow SQS answer could let a held message expire between two heartbeats.
MIN_VISIBILITY_TIMEOUT_SECONDS = 6
# Batch sends SIGKILL 30 s after SIGTERM (job stop, timeout, Spot reclaim). The running task gets
# the grace; the rest of the 30 s is for releasing its message and exiting.
BATCH_KILL_AFTER_TERM_SECONDS = 30
STOP_RELEASE_SECONDS = 5
# SQS long poll of the worker (kombu's default is 10 s). A worker that stops waits for its open poll
# to return (the drain, held_messages.py), so this bounds that wait; an idle worker pays for it
# with one ReceiveMessage every 2 s instead of every 10 s (USD 0.40 per million requests).
LONG_POLL_SECONDS = 2
DEFAULT_STOP_GRACE_SECONDS = 20
MAX_STOP_GRACE_SECONDS = BATCH_KILL_AFTER_TERM_SECONDS - STOP_RELEASE_SECONDS


# A task's hard time limit by default: tasks of minutes to hours, a 2-hour task with an hour to
# spare. The cost: a runaway task holds its worker (and a message) this long before it is killed.
DEFAULT_TASK_TIME_LIMIT_SECONDS = 3 * 3600
# Batch stops a worker job this long after its start (attemptDurationSeconds). The worker takes
# tasks until one more could not finish before then (see take_window_seconds), so with the default
# task limit a worker takes tasks for about 5 h, leaves by itself and is replaced if work remains.
DEFAULT_JOB_TIMEOUT_SECONDS = 8 * 3600
# Batch counts the job timeout from the attempt's startedAt (the container started); the lifecycle
# script counts from its own first line, a few seconds later. Kept in hand for that difference.
JOB_START_MARGIN_SECONDS = 30
# After the last task it took has ended: the drain (one 2 s long poll), Celery's warm shutdown
# (about 3 s) and giving back what it held, all before Batch's timeout.
JOB_STOP_MARGIN_SECONDS = 10


def soft_time_limit(time_limit: int) -> int:
    """Celery's soft time limit: a little below the hard limit, so a task can clean up before it
    is killed (worker_settings.py's ``task_soft_time_limit_seconds``)."""
    return max(1, time_limit - max(1, min(60, time_limit // 10)))


def take_window_seconds(job_timeout: int, time_limit: int, stop_grace: int,
                        start_margin: int = JOB_START_MARGIN_SECONDS,
                        stop_margin: int = JOB_STOP_MARGIN_SECONDS) -> int:
    """Seconds from the lifecycle script's start during which its worker may take a task.

    A task taken at the end of the window ends (its hard time limit) and the worker is stopped
    before Batch's job timeout would cut it: ``job timeout - start margin - task time limit -
    stop grace - stop margin``. The stop grace stays in hand too, so even a TERM that comes at
    the timeout finds no task to cut."""
    return job_timeout - start_margin - time_limit - stop_grace - stop_margin


def min_job_timeout(time_limit: int, stop_grace: int, idle_seconds: int) -> int:
    """The shortest job timeout whose worker may take tasks for at least its idle window."""
    return time_limit + stop_grace + JOB_START_MARGIN_SECONDS + JOB_STOP_MARGIN_SECONDS + idle_seconds


def job_timeout_problem(job_timeout: int, time_limit: int, stop_grace: int, idle_seconds: int,
                        start_margin: int = JOB_START_MARGIN_SECONDS,
                        stop_margin: int = JOB_STOP_MARGIN_SECONDS) -> str | None:
    """A job must be able to take tasks for at least its idle window, or it would start, take at
    most a task or two and leave (a start latency and a replacement for each)."""
    window = take_window_seconds(job_timeout, time_limit, stop_grace, start_margin, stop_margin)
    if window < idle_seconds:
        needed = job_timeout - window + idle_seconds
        return (
            f"must be >= {needed}: the task time limit ({time_limit} s) + the stop grace ({stop_grace} s) + "
            f"{start_margin + stop_margin} s to start and stop + the idle window ({idle_seconds} s), so that a "
            f"worker can take tasks for at least its idle window and finish each before the job timeout"
        )
    return None


# Celery processes in one worker job: beyond this a job should be split into more jobs.
MAX_CONCURRENCY = 64

# How long a task's result stays in the result table (DynamoDB's TTL deletes it after that).
DEFAULT_RESULT_EXPIRES_DAYS = 7
MAX_RESULT_EXPIRES_DAYS = 365


def result_expires_days_problem(days: int) -> str | None:
    if not 1 <= days <= MAX_RESULT_EXPIRES_DAYS:
        return (f"allowed: 1..{MAX_RESULT_EXPIRES_DAYS} days (results are deleted that long after the task "
                f"ended; default {DEFAULT_RESULT_EXPIRES_DAYS})")
    return None


def default_heartbeat_seconds(visibility_timeout: int) -> int:
    """Extend held messages three times per window: two extensions may fail before one expires."""
    return max(1, visibility_timeout // 3)


def visibility_timeout_problem(visibility_timeout: int) -> str | None:
    if not MIN_VISIBILITY_TIMEOUT_SECONDS <= visibility_timeout <= SQS_MAX_HOLD_SECONDS:
        return (
            f"allowed: {MIN_VISIBILITY_TIMEOUT_SECONDS}..{SQS_MAX_HOLD_SECONDS} seconds (it is the window in "
            f"which a crashed worker's task returns to the queue; default {DEFAULT_VISIBILITY_TIMEOUT_SECONDS})"
        )
    return None


def max_task_time_limit(visibility_timeout: int) -> int:
    """A task must end, and be acked, before SQS's 12 hours from the receive run out; one window
    of that is kept for the time a message waits in the worker before its task starts."""
    return SQS_MAX_HOLD_SECONDS - visibility_timeout


def task_time_limit_problem(time_limit: int, visibility_timeout: int) -> str | None:
    high = max_task_time_limit(visibility_timeout)
    if high < 1:
        return (f"no task fits: the visibility timeout of {visibility_timeout} s takes all of SQS's 12 h "
                f"({SQS_MAX_HOLD_SECONDS} s) hold; lower the visibility timeout (default "
                f"{DEFAULT_VISIBILITY_TIMEOUT_SECONDS})")
    if not 1 <= time_limit <= high:
        return (
            f"allowed: 1..{high} seconds (SQS keeps a received message for at most 12 h = "
            f"{SQS_MAX_HOLD_SECONDS} s, minus one visibility timeout of {visibility_timeout} s)"
        )
    return None


def heartbeat_problem(heartbeat: int, visibility_timeout: int) -> str | None:
    high = max(1, visibility_timeout // 2)
    if not 1 <= heartbeat <= high:
        return (
            f"allowed: 1..{high} seconds (at most half the visibility timeout of {visibility_timeout} s, "
            f"so one failed extension never lets a held message expire; default a third)"
        )
    return None


def stop_grace_problem(grace: int) -> str | None:
    if not 1 <= grace <= MAX_STOP_GRACE_SECONDS:
        return (
            f"allowed: 1..{MAX_STOP_GRACE_SECONDS} seconds (Batch kills a job {BATCH_KILL_AFTER_TERM_SECONDS} s "
            f"after SIGTERM; {STOP_RELEASE_SECONDS} s are kept to release the task's message)"
        )
    return None


def max_eta_delay_seconds(time_limit: int, visibility_timeout: int) -> int:
    """How far in the future a countdown/eta may lie when the worker receives it: the task must
    still run and be acked within SQS's 12 hours from that receive."""
    return max(0, SQS_MAX_HOLD_SECONDS - time_limit - visibility_timeout)


def _main(argv: list[str]) -> int:
    """``python limits.py take-window JOB_TIMEOUT TIME_LIMIT STOP_GRACE IDLE [START_MARGIN STOP_MARGIN]``:
    print the worker's take window in seconds (the lifecycle script's deadline), or one line on
    stderr saying what is wrong and exit 2."""
    if len(argv) not in (5, 7) or argv[0] != "take-window" or not all(a.isdigit() for a in argv[1:]):
        print("usage: limits.py take-window JOB_TIMEOUT TIME_LIMIT STOP_GRACE IDLE [START_MARGIN STOP_MARGIN]",
              file=sys.stderr)
        return 2
    job_timeout, time_limit, grace, idle, *margins = (int(a) for a in argv[1:])
    problem = job_timeout_problem(job_timeout, time_limit, grace, idle, *margins)
    if problem:
        print(f"configuration error: JOB_TIMEOUT_SECONDS={job_timeout} is not allowed; {problem}", file=sys.stderr)
        return 2
    print(take_window_seconds(job_timeout, time_limit, grace, *margins))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

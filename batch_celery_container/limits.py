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

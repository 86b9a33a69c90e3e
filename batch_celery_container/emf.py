"""CloudWatch Embedded Metric Format (EMF): metrics as log lines, so they cost no API call.

A worker writes one line per task it ran, the scaler one line per pool per decision; CloudWatch
Logs turns the lines into metrics as it ingests them (Batch's awslogs driver, Lambda's log group).
The names below are the contract between those writers and the stack's dashboard (dashboard.py
imports them), so they are written once, here. No dependencies: the worker image imports this as
``emf``, the CDK app and the scaler's Lambda asset as ``batch_celery_container.emf``.

Namespace: ``BatchCelery/<stack name>`` (the stack sets ``METRICS_NAMESPACE`` on the worker jobs
and the scaler). Without it nothing is written: a worker outside a stack has no metrics.

Task metrics (one line per task run, written by the worker process that ran it):

    tasks         Count    1 per run           dimensions [pool, outcome], [pool, task, outcome]
    run_seconds   Seconds  start to end        dimensions [pool], [pool, task]
    wait_seconds  Seconds  due to start        dimensions [pool], [pool, task]

``outcome`` is one of OUTCOMES. ``wait_seconds`` runs from when the task was due (SQS's
SentTimestamp, or its ETA/countdown if later) to when a worker process started it, so it holds
the queueing and the worker's start-up, never the task's own run time. ``task`` is a registered
task name, so the number of metrics is bounded by the tasks the image defines.

Scaler metrics (one line per pool per decision, the scaler's decision record itself):

    visible, in_flight, delayed, active, wanted, submitted    Count    dimensions [pool]

Cost: each (metric, dimension values) pair is one custom metric. A pool with T task names has
3 + 3T task-count metrics and 2 + 2T timing metrics, and 6 scaler metrics.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

NAMESPACE_PREFIX = "BatchCelery"

# Dimension names.
POOL = "pool"
TASK = "task"
OUTCOME = "outcome"

# Task metrics and the outcomes a run can have.
TASKS = "tasks"
RUN_SECONDS = "run_seconds"
WAIT_SECONDS = "wait_seconds"
SUCCEEDED, FAILED, RETRIED = "succeeded", "failed", "retried"
OUTCOMES = (SUCCEEDED, FAILED, RETRIED)

# Scaler metrics: keys of the scaler's decision record (batch_celery/scaler/handler.py).
VISIBLE, IN_FLIGHT, DELAYED = "visible", "in_flight", "delayed"
ACTIVE, WANTED, SUBMITTED = "active", "wanted", "submitted"
SCALER_METRICS = (VISIBLE, IN_FLIGHT, DELAYED, ACTIVE, WANTED, SUBMITTED)

COUNT = "Count"
SECONDS = "Seconds"
# The units EMF (and PutMetricData) accepts.
UNITS = frozenset({
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second",
    "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second",
    "Count/Second", "None",
})


def namespace_for(stack_name: str) -> str:
    """The metrics namespace of one stack's workers and scaler."""
    return f"{NAMESPACE_PREFIX}/{stack_name}"


def document(
    namespace: str,
    timestamp_ms: int,
    directives: list[tuple[Mapping[str, str], list[list[str]]]],
    members: Mapping[str, Any],
) -> dict[str, Any]:
    """An EMF document: ``members`` (dimension values, metric values, and any other fields, which
    stay searchable in Logs Insights) with one metric directive per (metric -> unit, dimension
    sets) pair. Every dimension and metric a directive names must be among ``members``."""
    for metrics, dimension_sets in directives:
        for name in [*metrics, *(d for dims in dimension_sets for d in dims)]:
            if name not in members:
                raise ValueError(f"EMF member {name!r} is named by a directive but has no value")
    return {
        **members,
        "_aws": {
            "Timestamp": int(timestamp_ms),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dims) for dims in dimension_sets],
                    "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics.items()],
                }
                for metrics, dimension_sets in directives
            ],
        },
    }


def task_document(
    namespace: str,
    *,
    pool: str,
    task: str,
    outcome: str,
    run_seconds: float,
    wait_seconds: float | None,
    timestamp_ms: int,
    task_id: str = "",
) -> dict[str, Any]:
    """One task run's line. ``wait_seconds`` None (the due time is unknown) leaves it out."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    members: dict[str, Any] = {
        POOL: pool, TASK: task, OUTCOME: outcome, TASKS: 1, RUN_SECONDS: _seconds(run_seconds),
    }
    timings = {RUN_SECONDS: SECONDS}
    if wait_seconds is not None:
        members[WAIT_SECONDS] = _seconds(wait_seconds)
        timings[WAIT_SECONDS] = SECONDS
    if task_id:
        members["task_id"] = task_id  # searchable in Logs Insights, not a dimension
    return document(namespace, timestamp_ms, [
        ({TASKS: COUNT}, [[POOL, OUTCOME], [POOL, TASK, OUTCOME]]),
        (timings, [[POOL], [POOL, TASK]]),
    ], members)


def scaler_document(namespace: str, record: Mapping[str, Any], timestamp_ms: int) -> dict[str, Any]:
    """The scaler's decision record with its counts as metrics of its pool; a record without
    counts (a failed reading) is returned as it is: no metrics for a decision that saw nothing."""
    metrics = {name: COUNT for name in SCALER_METRICS if isinstance(record.get(name), (int, float))}
    if POOL not in record or set(metrics) != set(SCALER_METRICS):
        return dict(record)
    return document(namespace, timestamp_ms, [(metrics, [[POOL]])], record)


def line(doc: Mapping[str, Any]) -> str:
    """One log line: compact JSON, no newline inside (CloudWatch Logs parses one event per line)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _seconds(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        return 0.0
    return round(value, 3)

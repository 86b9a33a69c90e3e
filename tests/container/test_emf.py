"""emf.py's documents obey the EMF specification, and the checker catches documents that do not."""

from __future__ import annotations

import json

import pytest

from batch_celery_container import emf
from tests.emf_spec import dimension_sets, metric_units, problems

NS = "BatchCelery/Test"


def test_a_task_line_is_valid_emf_with_the_documented_metrics_units_and_dimensions() -> None:
    doc = emf.task_document(NS, pool="gpu", task="gpu.matmul", outcome="succeeded", run_seconds=12.3456,
                            wait_seconds=4.5, timestamp_ms=1_795_000_000_000, task_id="abc")
    line = emf.line(doc)
    assert problems(line) == [] and "\n" not in line
    assert metric_units(doc) == {"tasks": "Count", "run_seconds": "Seconds", "wait_seconds": "Seconds"}
    assert dimension_sets(doc, "tasks") == [["pool", "outcome"], ["pool", "task", "outcome"]]
    assert dimension_sets(doc, "wait_seconds") == [["pool"], ["pool", "task"]]
    assert (doc["pool"], doc["task"], doc["outcome"], doc["tasks"], doc["run_seconds"]) == (
        "gpu", "gpu.matmul", "succeeded", 1, 12.346)
    assert {d["Namespace"] for d in doc["_aws"]["CloudWatchMetrics"]} == {NS}


def test_a_task_whose_due_time_is_unknown_has_no_wait_metric() -> None:
    doc = emf.task_document(NS, pool="p", task="t", outcome="failed", run_seconds=1, wait_seconds=None,
                            timestamp_ms=1_795_000_000_000)
    assert problems(emf.line(doc)) == []
    assert "wait_seconds" not in doc and "wait_seconds" not in metric_units(doc)


def test_outcomes_are_bounded() -> None:
    with pytest.raises(ValueError, match="outcome 'lost' is not one of succeeded, failed, retried"):
        emf.task_document(NS, pool="p", task="t", outcome="lost", run_seconds=1, wait_seconds=1, timestamp_ms=1)


def test_a_scaler_record_becomes_metrics_of_its_pool_and_a_failed_reading_does_not() -> None:
    record = {"scaler": "batch-celery", "pool": "default", "outcome": "ok", "visible": 25, "in_flight": 2,
              "delayed": 0, "active": 1, "wanted": 4, "submitted": 3, "job_ids": ["j1"]}
    doc = emf.scaler_document(NS, record, 1_795_000_000_000)
    assert problems(emf.line(doc)) == []
    assert metric_units(doc) == {name: "Count" for name in emf.SCALER_METRICS}
    assert dimension_sets(doc, "wanted") == [["pool"]]
    assert {k: doc[k] for k in record} == record  # the record itself, still searchable as before
    failed = {"scaler": "batch-celery", "pool": "default", "outcome": "read_failed", "submitted": 0}
    assert "_aws" not in emf.scaler_document(NS, failed, 1_795_000_000_000)


def test_a_directive_naming_a_missing_member_is_refused() -> None:
    with pytest.raises(ValueError, match="EMF member 'pool' is named by a directive but has no value"):
        emf.document(NS, 1, [({"tasks": "Count"}, [["pool"]])], {"tasks": 1})


@pytest.mark.parametrize("broken, expected", [
    (lambda d: d["_aws"].pop("Timestamp"), "Timestamp None"),
    (lambda d: d.update(pool=3), "dimension 'pool' is not a root member with a string value"),
    (lambda d: d.pop("run_seconds"), "metric {'Name': 'run_seconds', 'Unit': 'Seconds'} does not name a root member"),
    (lambda d: d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0].update(Unit="Tasks"), "not a CloudWatch unit"),
    (lambda d: d.update(tasks="1"), "metric 'tasks' = '1' is not a number"),
    (lambda d: d["_aws"]["CloudWatchMetrics"][1]["Dimensions"].append([f"d{i}" for i in range(31)]),
     "is not an array of at most 30 keys"),
])
def test_the_checker_catches_what_the_specification_forbids(broken, expected) -> None:
    doc = emf.task_document(NS, pool="p", task="t", outcome="succeeded", run_seconds=1, wait_seconds=1,
                            timestamp_ms=1_795_000_000_000)
    broken(doc)
    assert any(expected in problem for problem in problems(json.dumps(doc))), problems(json.dumps(doc))

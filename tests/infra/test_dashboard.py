"""The dashboard: a row for the stack, a row per pool, each widget reading its own pool's queues
and the task and scaler metrics under the names emf.py writes them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batch_celery.props import pascal
from batch_celery_container import emf

from .conftest import THREE_POOLS, Synth, strip_hash

NAMESPACE = "BatchCelery/BatchCelery"


def _placeholder(part: Any) -> str:
    if "Ref" in part:
        return f"<{strip_hash(part['Ref']) if part['Ref'] != 'AWS::Region' else 'region'}>"
    if "Fn::GetAtt" in part:
        logical_id, attribute = part["Fn::GetAtt"]
        return f"<{strip_hash(logical_id)}.{attribute}>"
    raise AssertionError(f"unexpected part of the dashboard body: {part}")


def body(s: Synth) -> dict[str, Any]:
    """The dashboard body as JSON, each reference replaced by <LogicalIdWithoutHash[.Attribute]>."""
    [(_, dashboard)] = s.of_type("AWS::CloudWatch::Dashboard").items()
    separator, parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"]
    return json.loads(separator.join(p if isinstance(p, str) else _placeholder(p) for p in parts))


def rows(s: Synth) -> list[list[dict[str, Any]]]:
    by_y: dict[int, list[dict[str, Any]]] = {}
    for widget in body(s)["widgets"]:
        by_y.setdefault(widget["y"], []).append(widget)
    return [sorted(by_y[y], key=lambda w: w["x"]) for y in sorted(by_y)]


def metrics(widget: dict[str, Any]) -> list[tuple[str, str, dict[str, str], str]]:
    """(namespace, name, dimensions, stat) of each metric of a graph widget."""
    out = []
    for entry in widget["properties"]["metrics"]:
        *names, options = entry
        namespace, name, *pairs = names
        out.append((namespace, name, dict(zip(pairs[::2], pairs[1::2])), options.get("stat", "")))
    return out


@pytest.mark.parametrize("fixture, pools", [("default", ["default"]), ("three_pools", list(THREE_POOLS))])
def test_a_row_for_the_stack_then_a_row_per_pool_in_order_each_24_wide(request, fixture: str, pools: list) -> None:
    s: Synth = request.getfixturevalue(fixture)
    layout = rows(s)
    # The stack, each pool, then the scaler's decisions.
    assert len(layout) == 1 + len(pools) + 1
    assert all(sum(w["width"] for w in row) == 24 for row in layout)
    for pool, row in zip(pools, layout[1:]):
        assert all(w["properties"]["title"].startswith(f"{pool}: ") for w in row), row


def test_the_last_row_lists_the_decisions_that_started_workers_with_their_reasons(default: Synth) -> None:
    [widget] = rows(default)[-1]
    properties = widget["properties"]
    assert (widget["type"], properties["view"]) == ("log", "table")
    assert properties["query"].startswith("SOURCE '<WorkersScalingScalerLogs>' | fields @timestamp, pool, ")
    # The fields the scaler's decision record carries (handler.scale, policy.Sizing.reasons).
    from batch_celery.scaler.policy import Sizing
    reasons = Sizing(1, 20.0, "learned", 2, 0, 1).reasons()
    for field in ("task_seconds", "task_seconds_basis", "per_new_worker", "free_up"):
        assert field in reasons and f"sizing.{field}" in properties["query"]
    assert "filter submitted > 0" in properties["query"]


def test_each_pool_row_reads_its_own_queues_and_its_own_metrics(three_pools: Synth) -> None:
    for pool, row in zip(THREE_POOLS, rows(three_pools)[1:]):
        p = f"Workers{pascal(pool)}Pool"
        backlog, workers, tasks, timings, dlq = row
        assert {(n, d["QueueName"]) for _, n, d, _ in metrics(backlog)} == {
            (name, f"<{p}TaskQueue.QueueName>") for name in (
                "ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed", "ApproximateAgeOfOldestMessage")}
        assert backlog["properties"]["stacked"] is True
        assert metrics(workers) == [(NAMESPACE, emf.WANTED, {"pool": pool}, "Maximum"),
                                    (NAMESPACE, emf.ACTIVE, {"pool": pool}, "Maximum"),
                                    (NAMESPACE, emf.SUBMITTED, {"pool": pool}, "Sum")]
        assert metrics(tasks) == [(NAMESPACE, emf.TASKS, {"pool": pool, "outcome": outcome}, "Sum")
                                  for outcome in emf.OUTCOMES]
        assert metrics(timings) == [(NAMESPACE, name, {"pool": pool}, stat)
                                    for name in (emf.WAIT_SECONDS, emf.RUN_SECONDS) for stat in ("p50", "p95")]
        assert metrics(dlq) == [("AWS/SQS", "ApproximateNumberOfMessagesVisible",
                                 {"QueueName": f"<{p}TaskQueueDeadLetterQueue.QueueName>"}, "Maximum")]
        for widget in (workers, tasks, timings):
            assert all(entry[-1]["period"] == 60 for entry in widget["properties"]["metrics"])


def test_the_stack_row_shows_every_alarm_that_notifies_the_topic_scaler_errors_and_failed_jobs(
        three_pools: Synth) -> None:
    alarms, scaler, failed_jobs, events_dlq = rows(three_pools)[0]
    notifying = {f"<{strip_hash(k)}.Arn>" for k, a in three_pools.of_type("AWS::CloudWatch::Alarm").items()
                 if a["Properties"].get("AlarmActions")
                 and any("AlarmTopic" in json.dumps(action) for action in a["Properties"]["AlarmActions"])}
    assert set(alarms["properties"]["alarms"]) == notifying and len(notifying) == 3 + 1 + 3 + 1
    assert metrics(scaler) == [("AWS/Lambda", "Errors", {"FunctionName": "<WorkersScalingScaler>"}, "Sum"),
                               ("AWS/Lambda", "Throttles", {"FunctionName": "<WorkersScalingScaler>"}, "Sum")]
    assert metrics(failed_jobs) == [("AWS/Events", "TriggeredRules",
                                     {"RuleName": "<WorkersMonitoringWorkerJobFailedRule>"}, "Sum")]
    assert metrics(events_dlq) == [("AWS/SQS", "ApproximateNumberOfMessagesVisible",
                                    {"QueueName": "<WorkersEventsDeadLetterQueue.QueueName>"}, "Maximum")]


def test_in_alarms_mode_no_widget_reads_a_scaler(alarms_mode: Synth) -> None:
    text = json.dumps(body(alarms_mode))
    assert "AWS/Lambda" not in text and f'"{emf.WANTED}"' not in text
    stack_row = rows(alarms_mode)[0]
    assert stack_row[1]["type"] == "text" and "alarms" in stack_row[1]["properties"]["markdown"]
    for pool, row in zip(THREE_POOLS, rows(alarms_mode)[1:]):
        assert row[1]["properties"]["title"] == f"{pool}: tasks in flight (no scaler in alarms mode)"


def test_outputs_name_and_link_the_dashboard(default: Synth) -> None:
    [dashboard_id] = default.of_type("AWS::CloudWatch::Dashboard")
    assert default.outputs["DashboardName"]["Value"] == {"Ref": dashboard_id}
    url = json.dumps(default.outputs["DashboardUrl"]["Value"])
    assert "console.aws.amazon.com/cloudwatch/home?region=" in url and dashboard_id in url and "AWS::Region" in url

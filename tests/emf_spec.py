"""The rules of CloudWatch's Embedded Metric Format specification, as a checker for tests.

From "Specification: Embedded metric format" (Amazon CloudWatch User Guide): a log event is one
JSON object with nothing before or after it; its root holds ``_aws`` with ``Timestamp`` (a number,
milliseconds since the epoch) and ``CloudWatchMetrics`` (an array of MetricDirective objects).
A MetricDirective has ``Namespace`` (a string), ``Dimensions`` (an array of DimensionSets: arrays
of at most 30 strings, each naming a root member whose value is a string) and ``Metrics`` (at most
100 MetricDefinitions: ``Name`` naming a root member that is a number or an array of at most 100
numbers, an optional ``Unit`` from CloudWatch's units, an optional ``StorageResolution`` of 1 or
60). Every name a directive references MUST be a member of the root.
"""

from __future__ import annotations

import json
from typing import Any

from batch_celery_container.emf import UNITS

MAX_DIMENSIONS_PER_SET = 30
MAX_METRICS_PER_DIRECTIVE = 100
MAX_VALUES_PER_METRIC = 100
MAX_EVENT_BYTES = 1024 * 1024
MAX_DIMENSION_VALUE = 1024


def problems(line: str) -> list[str]:
    """Everything in ``line`` that breaks the specification; empty when it is a valid EMF event."""
    found: list[str] = []
    if len(line.encode()) > MAX_EVENT_BYTES:
        found.append("the event is larger than 1 MB")
    try:
        root = json.loads(line)
    except ValueError as error:
        return [f"not one JSON value: {error}"]
    if not isinstance(root, dict):
        return ["the root is not a JSON object"]
    aws = root.get("_aws")
    if not isinstance(aws, dict):
        return ["no _aws metadata object"]
    timestamp = aws.get("Timestamp")
    if not _number(timestamp) or timestamp < 10**12:
        found.append(f"_aws.Timestamp {timestamp!r} is not milliseconds since the epoch")
    directives = aws.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return found + ["_aws.CloudWatchMetrics is not a non-empty array"]
    for index, directive in enumerate(directives):
        where = f"CloudWatchMetrics[{index}]"
        if not isinstance(directive, dict):
            found.append(f"{where} is not an object")
            continue
        namespace = directive.get("Namespace")
        if not isinstance(namespace, str) or not 1 <= len(namespace) <= 1024:
            found.append(f"{where}.Namespace {namespace!r} is not a string of 1-1024 characters")
        dimension_sets = directive.get("Dimensions")
        if not isinstance(dimension_sets, list):
            found.append(f"{where}.Dimensions is not an array")
            dimension_sets = []
        for dimension_set in dimension_sets:
            if not isinstance(dimension_set, list) or len(dimension_set) > MAX_DIMENSIONS_PER_SET:
                found.append(f"{where}: dimension set {dimension_set!r} is not an array of at most 30 keys")
                continue
            for key in dimension_set:
                value = root.get(key) if isinstance(key, str) else None
                if not isinstance(value, str) or not 1 <= len(value) <= MAX_DIMENSION_VALUE:
                    found.append(f"{where}: dimension {key!r} is not a root member with a string value")
        metrics = directive.get("Metrics")
        if not isinstance(metrics, list) or not 1 <= len(metrics) <= MAX_METRICS_PER_DIRECTIVE:
            found.append(f"{where}.Metrics is not an array of 1-100 metric definitions")
            metrics = []
        for metric in metrics:
            name = metric.get("Name") if isinstance(metric, dict) else None
            if not isinstance(name, str) or name not in root:
                found.append(f"{where}: metric {metric!r} does not name a root member")
                continue
            value = root[name]
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > MAX_VALUES_PER_METRIC or not all(map(_number, values)):
                found.append(f"{where}: metric {name!r} = {value!r} is not a number or an array of up to 100")
            if "Unit" in metric and metric["Unit"] not in UNITS:
                found.append(f"{where}: metric {name!r} has unit {metric['Unit']!r}, not a CloudWatch unit")
            if "StorageResolution" in metric and metric["StorageResolution"] not in (1, 60):
                found.append(f"{where}: metric {name!r} has StorageResolution {metric['StorageResolution']!r}")
    return found


def emf_lines(text: str) -> list[dict[str, Any]]:
    """The EMF events among a log's lines (the JSON lines with ``_aws``), each checked valid."""
    events = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            assert problems(line) == [], (line, problems(line))
            events.append(json.loads(line))
    return events


def metric_units(event: dict[str, Any]) -> dict[str, str]:
    return {m["Name"]: m.get("Unit", "None") for d in event["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def dimension_sets(event: dict[str, Any], metric: str) -> list[list[str]]:
    return [dims for d in event["_aws"]["CloudWatchMetrics"] if any(m["Name"] == metric for m in d["Metrics"])
            for dims in d["Dimensions"]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

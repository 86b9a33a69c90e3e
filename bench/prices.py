"""Unit prices per region, and what the workers and the idle stack cost in dollars.

    python -m bench.prices                      # the idle stack's monthly cost, us-east-1
    python -m bench.prices --region eu-west-1 --markdown

Every figure is a public list price (no free tier, no Savings Plan, no negotiated discount); its
source is in SOURCES. A month is 730 hours, the month the AWS pricing pages use.

Worker cost: Fargate bills vCPU and memory per second from the start of the image pull until the
task ends, with a one-minute minimum per task (AWS Fargate pricing page). Fargate Spot's price
moves with supply and demand (the page shows "current" prices); the figures here are a snapshot.

The idle stack: what the deployed stack costs with no task and no worker, itemised, per network
option. The counts (alarms and the metrics they watch, dashboards, KMS keys, pools, the scaler's
memory) come from the synthesized template (``synth_counts``) or are passed in (``StackCounts``).
Free tiers are NOT counted (an account's free tier is shared by everything in it); the one
exception is the first 1,000 SNS e-mail notifications, which an idle stack never reaches.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from batch_celery.network import interface_endpoints

HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
BILLING_MINIMUM_SECONDS = 60      # Fargate: per second, one-minute minimum per task
GIB = 1024 ** 3
TAKEN = "2026-11-22"


@dataclass(frozen=True)
class Prices:
    """One region's list prices in US dollars."""

    region: str
    # AWS Fargate, Linux, per task: vCPU-hour and GB-hour of memory.
    fargate_vcpu_hour: float
    fargate_gb_hour: float
    fargate_arm_vcpu_hour: float
    fargate_arm_gb_hour: float
    fargate_spot_vcpu_hour: float     # Linux/x86 only: Fargate Spot runs no arm64 tasks
    fargate_spot_gb_hour: float
    # Amazon VPC.
    nat_gateway_hour: float
    nat_gateway_gb: float
    public_ipv4_hour: float           # every public IPv4 address, in use or idle
    interface_endpoint_az_hour: float
    interface_endpoint_gb: float
    # Amazon CloudWatch.
    alarm_metric_month: float         # standard resolution, per metric the alarm watches
    custom_metric_month: float        # first 10,000 metrics (EMF metrics are custom metrics)
    dashboard_month: float
    logs_ingest_gb: float
    logs_store_gb_month: float
    # AWS Lambda (the scaler runs on arm64), Amazon SQS, AWS KMS, DynamoDB.
    lambda_arm_gb_second: float
    lambda_x86_gb_second: float
    lambda_request: float
    sqs_request: float                # standard queue, per request (64 KB chunk)
    kms_key_month: float
    dynamodb_storage_gb_month: float

    def fargate(self, *, spot: bool = False, arm: bool = False) -> tuple[float, float]:
        """(per vCPU-hour, per GB-hour) for this kind of Fargate capacity."""
        if spot and arm:
            raise ValueError("Fargate Spot runs no linux/arm64 tasks")
        if spot:
            return self.fargate_spot_vcpu_hour, self.fargate_spot_gb_hour
        if arm:
            return self.fargate_arm_vcpu_hour, self.fargate_arm_gb_hour
        return self.fargate_vcpu_hour, self.fargate_gb_hour


REGIONS: dict[str, Prices] = {
    "us-east-1": Prices(
        region="us-east-1",
        fargate_vcpu_hour=0.04048, fargate_gb_hour=0.004445,
        fargate_arm_vcpu_hour=0.03238, fargate_arm_gb_hour=0.00356,
        fargate_spot_vcpu_hour=0.01334053, fargate_spot_gb_hour=0.00146489,
        nat_gateway_hour=0.045, nat_gateway_gb=0.045, public_ipv4_hour=0.005,
        interface_endpoint_az_hour=0.01, interface_endpoint_gb=0.01,
        alarm_metric_month=0.10, custom_metric_month=0.30, dashboard_month=3.00,
        logs_ingest_gb=0.50, logs_store_gb_month=0.03,
        lambda_arm_gb_second=0.0000133334, lambda_x86_gb_second=0.0000166667, lambda_request=0.20 / 1e6,
        sqs_request=0.40 / 1e6, kms_key_month=1.00, dynamodb_storage_gb_month=0.25,
    ),
    "eu-west-1": Prices(
        region="eu-west-1",
        fargate_vcpu_hour=0.04456, fargate_gb_hour=0.004865,
        # Derived, not read: the us-east-1 arm64 discount (0.8x) and Spot ratio applied to Ireland.
        fargate_arm_vcpu_hour=round(0.04456 * 0.03238 / 0.04048, 6),
        fargate_arm_gb_hour=round(0.004865 * 0.00356 / 0.004445, 7),
        fargate_spot_vcpu_hour=round(0.04456 * 0.01334053 / 0.04048, 8),
        fargate_spot_gb_hour=round(0.004865 * 0.00146489 / 0.004445, 8),
        nat_gateway_hour=0.048, nat_gateway_gb=0.048, public_ipv4_hour=0.005,
        interface_endpoint_az_hour=0.011, interface_endpoint_gb=0.01,
        alarm_metric_month=0.10, custom_metric_month=0.30, dashboard_month=3.00,
        logs_ingest_gb=0.57, logs_store_gb_month=0.03,
        lambda_arm_gb_second=0.0000133334, lambda_x86_gb_second=0.0000166667, lambda_request=0.20 / 1e6,
        sqs_request=0.40 / 1e6, kms_key_month=1.00, dynamodb_storage_gb_month=0.25,
    ),
}
DEFAULT_REGION = "us-east-1"

# Where each figure comes from: the AWS pricing page it is on, as of TAKEN, and how it was checked.
# Not read on the AWS page itself (no network here): "copies" are third-party pages that quote it
# (vantage.sh/blog/fargate-pricing, cloudburn.io 2026-03/04, wring.co 2026-03, factualminds.com
# 2026-06, basavytix.com, cloudonaut.io, aws.amazon.com/privatelink/pricing and
# aws.amazon.com/cloudwatch/pricing excerpts); "given" figures come from the issue and were not
# found in a copy; "derived" figures are computed as REGIONS says; "assumed" ones are guesses.
_FARGATE = "AWS Fargate pricing (aws.amazon.com/fargate/pricing)"
_VPC = "Amazon VPC pricing (aws.amazon.com/vpc/pricing)"
_PRIVATELINK = "AWS PrivateLink pricing (aws.amazon.com/privatelink/pricing)"
_CLOUDWATCH = "Amazon CloudWatch pricing (aws.amazon.com/cloudwatch/pricing)"
_LAMBDA = "AWS Lambda pricing (aws.amazon.com/lambda/pricing)"
_SQS = "Amazon SQS pricing (aws.amazon.com/sqs/pricing)"
_KMS = "AWS KMS pricing (aws.amazon.com/kms/pricing)"
_DYNAMODB = "Amazon DynamoDB on-demand pricing (aws.amazon.com/dynamodb/pricing/on-demand)"


def _src(page: str, how: str) -> str:
    return f"{page}, as of {TAKEN}: {how}"


SOURCES: dict[str, dict[str, str]] = {
    "us-east-1": {
        "fargate_vcpu_hour": _src(_FARGATE, "Linux/x86; checked in 4 copies (2021 to 2026-06)"),
        "fargate_gb_hour": _src(_FARGATE, "Linux/x86; checked in 4 copies"),
        "fargate_arm_vcpu_hour": _src(_FARGATE, "Linux/ARM; checked in 2 copies"),
        "fargate_arm_gb_hour": _src(_FARGATE, "Linux/ARM; checked in 2 copies"),
        "fargate_spot_vcpu_hour": _src(_FARGATE, "current Spot price, VARIES; one copy quotes it (tomgregory.com)"),
        "fargate_spot_gb_hour": _src(_FARGATE, "current Spot price, VARIES; given"),
        "nat_gateway_hour": _src(_VPC, "checked in 3 copies"),
        "nat_gateway_gb": _src(_VPC, "checked in 3 copies"),
        "public_ipv4_hour": _src(_VPC, "every public IPv4 address since 2024-02-01, all regions; checked in 3 copies"),
        "interface_endpoint_az_hour": _src(_PRIVATELINK, "per endpoint per AZ; checked in 2 copies"),
        "interface_endpoint_gb": _src(_PRIVATELINK, "first 1 PB a month; checked on the page"),
        "alarm_metric_month": _src(_CLOUDWATCH, "standard resolution, per metric; checked in 1 copy"),
        "custom_metric_month": _src(_CLOUDWATCH, "first 10,000 metrics; checked in 1 copy (cloudonaut.io)"),
        "dashboard_month": _src(_CLOUDWATCH, "first 3 per account free (checked on the page), not counted; price given"),
        "logs_ingest_gb": _src(_CLOUDWATCH, "standard log class; checked in 1 copy (cloudonaut.io)"),
        "logs_store_gb_month": _src(_CLOUDWATCH, "archived (compressed) data; given"),
        "lambda_arm_gb_second": _src(_LAMBDA, "Arm, first 7.5 billion GB-s; checked in 2 copies"),
        "lambda_x86_gb_second": _src(_LAMBDA, "x86, first 6 billion GB-s; checked in 2 copies"),
        "lambda_request": _src(_LAMBDA, "checked in 2 copies"),
        "sqs_request": _src(_SQS, "standard queue; given"),
        "kms_key_month": _src(_KMS, "customer managed key; given"),
        "dynamodb_storage_gb_month": _src(_DYNAMODB, "standard table class; assumed (recollection)"),
    },
    "eu-west-1": {
        "fargate_vcpu_hour": _src(_FARGATE, "Europe (Ireland), Linux/x86; given, not found in a copy"),
        "fargate_gb_hour": _src(_FARGATE, "Europe (Ireland), Linux/x86; given, not found in a copy"),
        "fargate_arm_vcpu_hour": "derived: Ireland's x86 price x (us-east-1 ARM / x86)",
        "fargate_arm_gb_hour": "derived: Ireland's x86 price x (us-east-1 ARM / x86)",
        "fargate_spot_vcpu_hour": "derived: Ireland's x86 price x (us-east-1 Spot / on-demand); Spot VARIES",
        "fargate_spot_gb_hour": "derived: Ireland's x86 price x (us-east-1 Spot / on-demand); Spot VARIES",
        "nat_gateway_hour": _src(_VPC, "given; one copy gives $0.048-0.052 for Ireland, Frankfurt, London"),
        "nat_gateway_gb": _src(_VPC, "given"),
        "public_ipv4_hour": _src(_VPC, "the same in every region; checked in 1 copy"),
        "interface_endpoint_az_hour": _src(_PRIVATELINK, "ASSUMED (recollection), not checked"),
        "interface_endpoint_gb": _src(_PRIVATELINK, "assumed as us-east-1"),
        "alarm_metric_month": _src(_CLOUDWATCH, "given"),
        "custom_metric_month": _src(_CLOUDWATCH, "assumed as us-east-1"),
        "dashboard_month": _src(_CLOUDWATCH, "assumed as us-east-1"),
        "logs_ingest_gb": _src(_CLOUDWATCH, "given"),
        "logs_store_gb_month": _src(_CLOUDWATCH, "assumed as us-east-1"),
        "lambda_arm_gb_second": _src(_LAMBDA, "given (as us-east-1)"),
        "lambda_x86_gb_second": _src(_LAMBDA, "given (as us-east-1)"),
        "lambda_request": _src(_LAMBDA, "given (as us-east-1)"),
        "sqs_request": _src(_SQS, "given (as us-east-1)"),
        "kms_key_month": _src(_KMS, "assumed as us-east-1"),
        "dynamodb_storage_gb_month": _src(_DYNAMODB, "assumed as us-east-1"),
    },
}


def prices(region: str = DEFAULT_REGION) -> Prices:
    try:
        return REGIONS[region]
    except KeyError:
        raise ValueError(f"unknown region {region!r}; allowed: {', '.join(REGIONS)}") from None


# ---------------------------------------------------------------- workers

def billed_seconds(task_seconds: float) -> float:
    """One Fargate task's billed time: per second, at least a minute; a task that never ran, none."""
    return 0.0 if task_seconds <= 0 else max(float(BILLING_MINIMUM_SECONDS), float(task_seconds))


def worker_cost(worker_seconds: float | Iterable[float], vcpus: float, memory_gib: float, spot: bool = False,
                region: str = DEFAULT_REGION, *, arm: bool = False) -> float:
    """Dollars for Fargate workers: ``worker_seconds`` is one task's run time, or each task's.

    Each task bills at least a minute. The simulator's worker-seconds already bill each worker
    that minimum (bench/scaling.py, Simulation.bill), so its total can be passed as one figure.
    """
    runs = [worker_seconds] if isinstance(worker_seconds, (int, float)) else list(worker_seconds)
    seconds = sum(billed_seconds(s) for s in runs)
    vcpu_hour, gb_hour = prices(region).fargate(spot=spot, arm=arm)
    return seconds / 3600 * (vcpus * vcpu_hour + memory_gib * gb_hour)


def public_ipv4_cost(worker_seconds: float, region: str = DEFAULT_REGION) -> float:
    """Dollars for the public IPv4 address each worker holds while it runs (network option "public")."""
    return worker_seconds / 3600 * prices(region).public_ipv4_hour


# ---------------------------------------------------------------- the idle stack

NETWORK_OPTIONS = ("nat-1", "nat-2", "private-endpoints", "public")
NETWORK_TITLES = {
    "nat-1": "private, nat_gateways=1",
    "nat-2": "private, nat_gateways=2",
    "private-endpoints": "private-endpoints",
    "public": "public",
}
# The interface endpoints network "private-endpoints" builds for the default pool (Fargate, no
# kms_key): the list lives in batch_celery/network.py, which the stack builds from. S3 (image
# layers) and DynamoDB (results) have free gateway endpoints. Not needed: sts (Fargate hands the
# task role's credentials out through the task metadata endpoint), batch (only the scaler calls
# Batch, and it runs outside the VPC), monitoring (the workers' metrics are EMF log lines).
INTERFACE_ENDPOINTS = tuple(service.short_name for service in interface_endpoints(ec2_pools=False, kms_key=False).values())
GATEWAY_ENDPOINTS = ("s3", "dynamodb")

# The scaler (batch_celery/scaling.py, scaler/handler.py): one run a minute. While there is work
# it decides every scaler_poll_seconds and starts no decision after SCALER_LOOP_SECONDS; idle, with
# idle_check "minute" (the default), a run makes one decision, writes plain lines (no metric) and
# ends. A decision (one GetQueueAttributes, ListJobs per active status, per pool) "takes about a
# second" (scaling.py). CloudWatch bills a custom metric by the hour, only for the hours in which
# it is published, so an idle month with no EMF line has no metric charge.
SCALER_RUNS_PER_MONTH = HOURS_PER_MONTH * 60
DECISION_SECONDS = 1.0
# Lambda's own lines per run in the scaler's log group: START, END and REPORT (about 90 + 60 + 230
# bytes in the text log format). An estimate; the decision lines are measured (scaler_line_bytes).
LAMBDA_PLATFORM_BYTES = 380


@dataclass(frozen=True)
class StackCounts:
    """What the idle cost depends on, as the template has it."""

    pools: int = 1
    alarm_metrics: int = 6           # metrics watched by standard-resolution alarms
    alarms: int = 6
    dashboards: int = 1
    kms_keys: int = 1
    scaler: bool = True
    scaler_memory_mib: int = 256
    scaler_arm: bool = True
    nat_gateways: int = 1
    max_azs: int = 2
    scaler_poll_seconds: int = 10
    scaler_loop_seconds: int = 55
    scaler_idle_check: str = "minute"
    scaler_log_retention_days: int = 30
    dynamodb_tables: int = 1
    sns_topics: int = 1
    flow_logs: int = 1


@dataclass(frozen=True)
class Line:
    item: str
    quantity: str
    dollars: float


@dataclass(frozen=True)
class IdleCost:
    network_option: str
    region: str
    lines: tuple[Line, ...] = field(default_factory=tuple)

    @property
    def total(self) -> float:
        return sum(line.dollars for line in self.lines)

    def by_item(self) -> dict[str, float]:
        return {line.item: line.dollars for line in self.lines}


def scaler_decisions_per_run(scaler_poll_seconds: int, loop_seconds: int, idle_check: str = "loop") -> int:
    """An idle run's decisions: one ("minute"), or at 0, poll, 2 x poll, ... while before the
    loop's end ("loop"; handler.run)."""
    return 1 if idle_check == "minute" else math.ceil(loop_seconds / scaler_poll_seconds)


def scaler_run_seconds(scaler_poll_seconds: int, loop_seconds: int, idle_check: str = "loop") -> float:
    """An idle run's billed duration: it sleeps until its last decision starts, then decides once more."""
    decisions = scaler_decisions_per_run(scaler_poll_seconds, loop_seconds, idle_check)
    return (decisions - 1) * scaler_poll_seconds + DECISION_SECONDS


def scaler_line_bytes(stack_name: str = "BatchCelery", pool: str = "default", idle_check: str = "loop") -> int:
    """Bytes of one idle decision line as the real handler's run prints it, plus its newline: an
    EMF document ("loop": the stack sets METRICS_NAMESPACE), or the plain JSON line of the
    decision that ends an idle run ("minute")."""
    import contextlib
    import io

    from batch_celery.scaler import handler
    from batch_celery_container import emf

    class Sqs:
        def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
            return {"Attributes": {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0",
                                   "ApproximateNumberOfMessagesDelayed": "0"}}

    class Pages:
        def paginate(self, **_: Any) -> list[dict[str, Any]]:
            return [{"jobSummaryList": []}]

    class Batch:
        def get_paginator(self, _: str) -> Pages:
            return Pages()

    account = "123456789012"
    config = handler.PoolConfig(
        pool=pool, queue_url=f"https://sqs.us-east-1.amazonaws.com/{account}/{stack_name}-WorkersDefaultPoolTaskQueue",
        job_queue=f"arn:aws:batch:us-east-1:{account}:job-queue/WorkersDefaultPoolJobQueue-AbCdEfGhIjKl",
        job_definition=f"arn:aws:batch:us-east-1:{account}:job-definition/WorkersDefaultPoolJobDefinition-AbCdEf:1",
        job_name=f"{stack_name}-{pool}-worker", messages_per_worker=10, max_workers=48, tasks_per_worker=1,
    )
    scaler = handler.ScalerConfig(pools=(config,), poll_seconds=10, loop_seconds=0, idle_check=idle_check,
                                  metrics_namespace=emf.namespace_for(stack_name))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        handler.run(scaler, Sqs(), Batch(), submit_batch=None, watch=handler.Watch())
    [line] = printed.getvalue().splitlines()
    return len(line.encode()) + 1


def idle_stack_monthly(network_option: str, pools: int | None = None, region: str = DEFAULT_REGION, *,
                       counts: StackCounts | None = None, line_bytes: int | None = None) -> IdleCost:
    """The deployed stack's monthly cost with no task and no worker, itemised.

    ``counts`` come from the template (``synth_counts``); ``pools`` overrides its pool count.
    Free tiers are not counted.
    """
    if network_option not in NETWORK_OPTIONS:
        raise ValueError(f"unknown network option {network_option!r}; allowed: {', '.join(NETWORK_OPTIONS)}")
    p = prices(region)
    c = counts or StackCounts()
    pools = c.pools if pools is None else pools
    lines: list[Line] = []

    def add(item: str, quantity: str, dollars: float) -> None:
        lines.append(Line(item, quantity, dollars))

    # The network.
    nat = {"nat-1": 1, "nat-2": 2}.get(network_option, 0)
    add("NAT gateway hours", f"{nat} x {HOURS_PER_MONTH} h", nat * HOURS_PER_MONTH * p.nat_gateway_hour)
    add("NAT public IPv4 address", f"{nat} x {HOURS_PER_MONTH} h", nat * HOURS_PER_MONTH * p.public_ipv4_hour)
    add("NAT data processed", "0 GB (no worker)", 0.0)
    endpoints = len(INTERFACE_ENDPOINTS) if network_option == "private-endpoints" else 0
    add("interface endpoints", f"{endpoints} x {c.max_azs} AZ x {HOURS_PER_MONTH} h"
        + (f" ({', '.join(INTERFACE_ENDPOINTS)})" if endpoints else ""),
        endpoints * c.max_azs * HOURS_PER_MONTH * p.interface_endpoint_az_hour)
    add("gateway endpoints", f"{', '.join(GATEWAY_ENDPOINTS)}: free" if endpoints else "none", 0.0)
    add("worker public IPv4", "0 (no worker running)" if network_option == "public" else "none", 0.0)
    add("VPC flow logs", "~0 (no worker traffic)", 0.0)

    # Monitoring.
    add("CloudWatch alarms", f"{c.alarms} alarms, {c.alarm_metrics} metrics", c.alarm_metrics * p.alarm_metric_month)
    add("CloudWatch dashboard", f"{c.dashboards} (free 3 per account not counted)", c.dashboards * p.dashboard_month)

    # The scaler: one run a minute; each decision reads every pool's queue and logs one line per
    # pool. Idle, with idle_check "minute" the run is that one decision, its lines plain JSON; with
    # "loop" it loops, each line an EMF document whose six counts are custom metrics of the pool.
    if c.scaler:
        minute = c.scaler_idle_check == "minute"
        decisions = scaler_decisions_per_run(c.scaler_poll_seconds, c.scaler_loop_seconds, c.scaler_idle_check)
        run_seconds = scaler_run_seconds(c.scaler_poll_seconds, c.scaler_loop_seconds, c.scaler_idle_check)
        gb_seconds = SCALER_RUNS_PER_MONTH * run_seconds * c.scaler_memory_mib / 1024
        gb_second = p.lambda_arm_gb_second if c.scaler_arm else p.lambda_x86_gb_second
        add("scaler Lambda duration", f"{SCALER_RUNS_PER_MONTH:,} runs x {run_seconds:g} s x "
            f"{c.scaler_memory_mib} MB = {gb_seconds:,.0f} GB-s", gb_seconds * gb_second)
        add("scaler Lambda requests", f"{SCALER_RUNS_PER_MONTH:,}", SCALER_RUNS_PER_MONTH * p.lambda_request)
        calls = SCALER_RUNS_PER_MONTH * decisions * pools
        add("SQS GetQueueAttributes", f"{calls:,} ({decisions} a minute x {pools} pool)", calls * p.sqs_request)
        per_line = line_bytes if line_bytes is not None else scaler_line_bytes(idle_check=c.scaler_idle_check)
        ingested = (calls * per_line + SCALER_RUNS_PER_MONTH * LAMBDA_PLATFORM_BYTES) / GIB
        add("scaler logs ingested", f"{ingested:.3f} GB ({per_line} B a decision line)", ingested * p.logs_ingest_gb)
        # Stored uncompressed for the retention (an upper bound: storage is billed compressed).
        stored = ingested * c.scaler_log_retention_days / (HOURS_PER_MONTH / 24)
        add("scaler logs stored", f"<= {stored:.3f} GB ({c.scaler_log_retention_days} d)", stored * p.logs_store_gb_month)
        if minute:
            add("scaler EMF metrics", "0 (an idle run writes no metric line)", 0.0)
        else:
            metrics = 6 * pools
            add("scaler EMF metrics", f"{metrics} custom metrics", metrics * p.custom_metric_month)
    else:
        add("scaler", "none (scaling_mode alarms)", 0.0)

    add("KMS keys", f"{c.kms_keys}", c.kms_keys * p.kms_key_month)
    add("DynamoDB result table", f"{c.dynamodb_tables} on-demand, empty", 0.0)
    add("SNS alarm topic", f"{c.sns_topics}, no notification", 0.0)
    add("EventBridge rules", "schedule and AWS events: free", 0.0)
    add("AWS Batch", "no charge of its own", 0.0)
    return IdleCost(network_option=network_option, region=region, lines=tuple(lines))


def idle_costs(region: str = DEFAULT_REGION, *, counts: StackCounts | None = None) -> list[IdleCost]:
    """The idle stack per network option; the decision line is measured once."""
    c = counts or StackCounts()
    line_bytes = scaler_line_bytes(idle_check=c.scaler_idle_check) if c.scaler else 0
    return [idle_stack_monthly(option, region=region, counts=counts, line_bytes=line_bytes)
            for option in NETWORK_OPTIONS]


# ---------------------------------------------------------------- the template

def alarm_metric_count(alarm: Mapping[str, Any]) -> int:
    """Metrics an AWS::CloudWatch::Alarm bills for: one, or each metric of its math expression."""
    properties = alarm["Properties"]
    if "Metrics" not in properties:
        return 1
    return sum(1 for query in properties["Metrics"] if "MetricStat" in query)


def counts_from_template(template: Mapping[str, Any]) -> StackCounts:
    """StackCounts read from a synthesized template (its JSON)."""
    resources = template["Resources"]

    def of(kind: str) -> list[Mapping[str, Any]]:
        return [r for r in resources.values() if r["Type"] == kind]

    alarms = of("AWS::CloudWatch::Alarm")
    for alarm in alarms:
        if int(alarm["Properties"].get("Period", 60)) < 60:
            raise ValueError("a high-resolution alarm: priced as standard here; add its price first")
    scalers = [r["Properties"] for r in of("AWS::Lambda::Function")
               if "POOLS" in r["Properties"].get("Environment", {}).get("Variables", {})]
    scaler = scalers[0] if scalers else {}
    env = scaler.get("Environment", {}).get("Variables", {})
    log_group = scaler.get("LoggingConfig", {}).get("LogGroup", {}).get("Ref")
    retention = resources[log_group]["Properties"].get("RetentionInDays", 30) if log_group else 30
    private_subnets = [r for r in of("AWS::EC2::Subnet")
                       if {"Key": "aws-cdk:subnet-type", "Value": "Private"} in r["Properties"].get("Tags", [])]
    return StackCounts(
        pools=len(of("AWS::Batch::JobQueue")),
        alarm_metrics=sum(alarm_metric_count(a) for a in alarms),
        alarms=len(alarms),
        dashboards=len(of("AWS::CloudWatch::Dashboard")),
        kms_keys=len(of("AWS::KMS::Key")),
        scaler=bool(scalers),
        scaler_memory_mib=int(scaler.get("MemorySize", 128)),
        scaler_arm=scaler.get("Architectures", ["x86_64"]) == ["arm64"],
        nat_gateways=len(of("AWS::EC2::NatGateway")),
        max_azs=len(private_subnets) or 2,
        scaler_poll_seconds=int(env.get("POLL_SECONDS", 10)),
        scaler_loop_seconds=int(env.get("LOOP_SECONDS", 55)),
        # A template from before the idle check: every run loops.
        scaler_idle_check=env.get("IDLE_CHECK", "loop"),
        scaler_log_retention_days=int(retention),
        dynamodb_tables=len(of("AWS::DynamoDB::GlobalTable")) + len(of("AWS::DynamoDB::Table")),
        sns_topics=len(of("AWS::SNS::Topic")),
        flow_logs=len(of("AWS::EC2::FlowLog")),
    )


def synth_template(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The stack's template from cdk.json's context (feature flags included), with ``settings`` as
    its ``batch-celery`` block (None: cdk.json's own). The real stack, without the cdk-nag plugins."""
    import contextlib
    import os
    import tempfile
    from pathlib import Path

    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
    import aws_cdk as cdk

    from batch_celery.settings import CONTEXT_KEY, Settings
    from batch_celery.stack import BatchCeleryStack

    repo = Path(__file__).resolve().parents[1]
    context = dict(json.loads((repo / "cdk.json").read_text())["context"])
    if settings is not None:
        context[CONTEXT_KEY] = dict(settings)
    with tempfile.TemporaryDirectory() as outdir, contextlib.chdir(repo):
        app = cdk.App(context=context, outdir=outdir)
        stack_settings = Settings.from_context(app.node.try_get_context(CONTEXT_KEY))
        stack = BatchCeleryStack(app, stack_settings.stack_name, settings=stack_settings)
        return app.synth().get_stack_by_name(stack.stack_name).template


def synth_counts(settings: Mapping[str, Any] | None = None) -> StackCounts:
    """StackCounts of the stack synthesized from cdk.json (or these ``batch-celery`` settings)."""
    return counts_from_template(synth_template(settings))


# ---------------------------------------------------------------- output

def idle_table(costs: list[IdleCost], markdown: bool = False) -> str:
    """Items as rows, network options as columns, dollars a month."""
    headers = ["item"] + [NETWORK_TITLES[c.network_option] for c in costs]
    items = list(dict.fromkeys(line.item for c in costs for line in c.lines))
    rows = [[item] + [f"{c.by_item().get(item, 0.0):.2f}" for c in costs] for item in items]
    rows.append(["total a month"] + [f"{c.total:.2f}" for c in costs])
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "|".join("---:" for _ in costs) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    separator = ["-" * w for w in widths]
    return "\n".join([line(headers), line(separator)] + [line(r) for r in rows[:-1]] + [line(separator), line(rows[-1])])


def quantities(cost: IdleCost) -> str:
    """One option's items with their quantities (what each dollar figure counts)."""
    width = max(len(line.item) for line in cost.lines)
    return "\n".join(f"{line.item.ljust(width)}  {line.quantity}" for line in cost.lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prices", description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", choices=list(REGIONS), default=DEFAULT_REGION)
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", action="store_true", help="print the itemised costs as JSON")
    parser.add_argument("--sources", action="store_true", help="also print each price with its source")
    args = parser.parse_args(argv)

    counts = synth_counts()
    costs = idle_costs(args.region, counts=counts)
    if args.json:
        print(json.dumps([{"network_option": c.network_option, "region": c.region, "total": round(c.total, 4),
                           "lines": [line.__dict__ for line in c.lines]} for c in costs], indent=1))
        return 0
    print(f"Idle stack, dollars a month, {args.region}, list prices, no free tier; counts from the "
          f"synthesized template: {counts.pools} pool, {counts.alarms} alarms ({counts.alarm_metrics} metrics), "
          f"{counts.dashboards} dashboard, {counts.kms_keys} KMS key, scaler idle check {counts.scaler_idle_check!r}")
    print()
    print(idle_table(costs, markdown=args.markdown))
    print()
    print(f"What the {NETWORK_TITLES[costs[0].network_option]} column counts:")
    print(quantities(costs[0]))
    if args.sources:
        print()
        for name, source in SOURCES[args.region].items():
            print(f"{name} = {getattr(prices(args.region), name):g}: {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

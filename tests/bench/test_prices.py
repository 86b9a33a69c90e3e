"""Prices and costs: the workers' Fargate bill, the idle stack itemised, and the simulator's $ columns."""

from __future__ import annotations

import dataclasses

import pytest

from bench import prices, scaling

# Synthesizes stacks of its own (several seconds of CPU each): make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def template():
    """The real stack, synthesized once from cdk.json."""
    return prices.synth_template()


@pytest.fixture(scope="module")
def counts(template):
    return prices.counts_from_template(template)


US = prices.REGIONS["us-east-1"]


# --- workers

def test_an_hour_of_one_vcpu_and_2_gib_costs_the_hourly_prices():
    assert prices.worker_cost(3600, 1, 2, spot=False, region="us-east-1") == pytest.approx(0.04048 + 2 * 0.004445)


def test_a_task_bills_at_least_a_minute():
    one_minute = prices.worker_cost(60, 1, 2)

    assert prices.worker_cost(10, 1, 2) == pytest.approx(one_minute)
    # Each task separately: three 10 s tasks are three minutes, not 30 s.
    assert prices.worker_cost([10, 10, 10], 1, 2) == pytest.approx(3 * one_minute)
    assert prices.worker_cost(61, 1, 2) > one_minute
    assert prices.worker_cost(0, 1, 2) == 0


@pytest.mark.parametrize("region", list(prices.REGIONS))
def test_spot_costs_less_than_on_demand(region):
    assert prices.worker_cost(3600, 1, 2, spot=True, region=region) < prices.worker_cost(3600, 1, 2, region=region)


def test_rejects_spot_on_arm64():
    with pytest.raises(ValueError, match="Fargate Spot runs no linux/arm64 tasks"):
        prices.worker_cost(3600, 1, 2, spot=True, arm=True)


def test_rejects_an_unknown_region():
    with pytest.raises(ValueError) as error:
        prices.worker_cost(3600, 1, 2, region="mars-north-1")

    assert str(error.value) == "unknown region 'mars-north-1'; allowed: us-east-1, eu-west-1"


def test_every_price_has_a_source():
    fields = set(prices.Prices.__dataclass_fields__) - {"region"}
    for region in prices.REGIONS:
        assert set(prices.SOURCES[region]) == fields, region


# --- the idle stack

def test_the_counts_are_those_of_the_synthesized_template(template, counts):
    alarms = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]

    assert counts.alarms == len(alarms) > 0
    # No alarm of this stack watches a math expression: one billed metric each.
    assert counts.alarm_metrics == sum(1 if "MetricName" in a["Properties"] else 0 for a in alarms) == len(alarms)
    assert counts.nat_gateways == 1          # the nat_gateways default
    assert counts.pools == 1 and counts.dashboards == 1 and counts.scaler
    assert (counts.scaler_memory_mib, counts.scaler_arm) == (256, True)
    assert (counts.scaler_poll_seconds, counts.scaler_loop_seconds) == (10, 55)
    assert counts.scaler_idle_check == "minute"


def test_alarms_are_priced_per_metric_they_watch(counts):
    cost = prices.idle_stack_monthly("nat-1", counts=counts, line_bytes=500)

    assert cost.by_item()["CloudWatch alarms"] == pytest.approx(counts.alarm_metrics * US.alarm_metric_month)
    math_alarm = {"Properties": {"Metrics": [{"Id": "m1", "MetricStat": {}}, {"Id": "m2", "MetricStat": {}},
                                             {"Id": "e", "Expression": "m1 + m2"}]}}
    assert prices.alarm_metric_count(math_alarm) == 2


def test_a_second_nat_gateway_costs_one_gateway_month_and_one_address_month(counts):
    one = prices.idle_stack_monthly("nat-1", counts=counts, line_bytes=500)
    two = prices.idle_stack_monthly("nat-2", counts=counts, line_bytes=500)

    assert two.total - one.total == pytest.approx(730 * (US.nat_gateway_hour + US.public_ipv4_hour))


def test_private_endpoints_pay_each_interface_endpoint_in_each_az(counts):
    cost = prices.idle_stack_monthly("private-endpoints", counts=counts, line_bytes=500)

    assert cost.by_item()["NAT gateway hours"] == 0
    assert cost.by_item()["interface endpoints"] == pytest.approx(
        len(prices.INTERFACE_ENDPOINTS) * counts.max_azs * 730 * US.interface_endpoint_az_hour)


SCALER_ITEMS = ("scaler Lambda duration", "scaler Lambda requests", "SQS GetQueueAttributes", "scaler logs ingested",
                "scaler logs stored", "scaler EMF metrics")


def test_with_idle_check_loop_the_scaler_runs_loop_most_of_every_minute():
    # Decisions at 0, 10, ..., 50 s; the run ends after the last one.
    assert prices.scaler_decisions_per_run(10, 55, "loop") == 6
    assert prices.scaler_run_seconds(10, 55, "loop") == 50 + prices.DECISION_SECONDS
    cost = prices.idle_stack_monthly("public", counts=prices.StackCounts(scaler_idle_check="loop"), line_bytes=500)
    gb_seconds = 730 * 60 * 51 * 256 / 1024
    assert cost.by_item()["scaler Lambda duration"] == pytest.approx(gb_seconds * US.lambda_arm_gb_second)
    assert cost.by_item()["SQS GetQueueAttributes"] == pytest.approx(730 * 60 * 6 * US.sqs_request)
    assert cost.by_item()["scaler EMF metrics"] == pytest.approx(6 * US.custom_metric_month)


def test_an_idle_scaler_run_is_one_decision_and_publishes_no_metric():
    assert prices.scaler_decisions_per_run(10, 55, "minute") == 1
    assert prices.scaler_run_seconds(10, 55, "minute") == prices.DECISION_SECONDS
    cost = prices.idle_stack_monthly("public", counts=prices.StackCounts(), line_bytes=300)
    gb_seconds = 730 * 60 * 1 * 256 / 1024
    assert cost.by_item()["scaler Lambda duration"] == pytest.approx(gb_seconds * US.lambda_arm_gb_second)
    assert cost.by_item()["SQS GetQueueAttributes"] == pytest.approx(730 * 60 * US.sqs_request)
    # CloudWatch bills a custom metric only for the hours it is published in.
    assert cost.by_item()["scaler EMF metrics"] == 0


def test_the_idle_scaler_and_the_idle_public_stack_meet_their_targets(counts):
    # The targets, on the stack synthesized from cdk.json: the scaler (Lambda, its
    # requests and SQS calls, its logs and metrics) <= $0.50 a month, the public stack <= $6.
    minute = {c.network_option: c for c in prices.idle_costs(counts=counts)}["public"]
    loop = {c.network_option: c for c in prices.idle_costs(
        counts=dataclasses.replace(counts, scaler_idle_check="loop"))}["public"]

    scaler = sum(minute.by_item()[item] for item in SCALER_ITEMS)
    assert scaler <= 0.50
    assert minute.total <= 6
    # What it saves: the loop's minute of decisions and its metrics.
    assert sum(loop.by_item()[item] for item in SCALER_ITEMS) - scaler > 9


def test_the_decision_line_is_measured_from_the_real_handler():
    # An EMF document with the six counts: a few hundred bytes, not a guess of 100.
    assert 300 < prices.scaler_line_bytes(idle_check="loop") < 1000
    # The idle check's line: the same record in plain JSON, marked idle, without the EMF block.
    assert 150 < prices.scaler_line_bytes(idle_check="minute") < prices.scaler_line_bytes(idle_check="loop")


def test_rejects_an_unknown_network_option():
    with pytest.raises(ValueError, match="allowed: nat-1, nat-2, private-endpoints, public"):
        prices.idle_stack_monthly("vpn")


# --- the simulator's command line

def test_the_simulator_prints_dollars_for_the_region(capsys):
    assert scaling.main(["--region", "eu-west-1", "--scenario", "burst-4", "--policy", "scaler"]) == 0

    out = capsys.readouterr().out
    assert "eu-west-1" in out and "$ Fargate" in out and "$ Spot" in out
    result = scaling.simulate("burst-4", "scaler")
    dollars = prices.worker_cost(result.worker_seconds, 1, 2, region="eu-west-1")
    assert f"{dollars:.3f}" in out


def test_json_rows_carry_the_costs(capsys):
    assert scaling.main(["--json", "--scenario", "burst-4", "--policy", "scaler"]) == 0

    import json
    row = json.loads(capsys.readouterr().out)[0]
    assert row["cost_fargate"] == pytest.approx(prices.worker_cost(row["worker_seconds"], 1, 2), abs=1e-4)
    assert row["cost_fargate_spot"] < row["cost_fargate"]


def test_rejects_an_unknown_region_naming_the_allowed_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--region", "mars-north-1"])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --region: invalid choice: 'mars-north-1'" in error
    assert "us-east-1" in error and "eu-west-1" in error

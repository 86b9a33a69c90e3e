"""Alarms, their rules, and the scaler: scaler mode (the default) and alarms mode (three pools)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batch_celery.props import pascal
from batch_celery.scaler import handler as scaler_handler
from batch_celery.scaling import SCALER_COOLDOWN_SECONDS, SCALER_LOOP_SECONDS

from .conftest import ARM_ALARMS, THREE_POOLS, Synth, grants, strip_hash

SCALER_HANDLER = "batch_celery.scaler.handler.handler"
ALARMS = ("LowDepthAlarm", "HighDepthAlarm", "SlaAlarm")
RULES = ("LowDepthRule", "HighDepthRule", "SlaRule")
EVENTS_DLQ = "WorkersEventsDeadLetterQueue"
POOLS = tuple(THREE_POOLS)


def _alarm(synth: Synth, pool: str, name: str) -> dict:
    return synth.one("AWS::CloudWatch::Alarm", f"Workers{pascal(pool)}Alarms{name}")[1]["Properties"]


def _rule(synth: Synth, pool: str, name: str) -> dict:
    return synth.one("AWS::Events::Rule", f"Workers{pascal(pool)}Alarms{name}")[1]["Properties"]


def _scaler(synth: Synth) -> tuple[str | None, dict | None]:
    functions = [(k, f) for k, f in synth.of_type("AWS::Lambda::Function").items()
                 if f["Properties"]["Handler"] == SCALER_HANDLER]
    assert len(functions) <= 1
    return functions[0] if functions else (None, None)


def _pools_variable(synth: Synth) -> list[dict]:
    """The scaler's POOLS, its CloudFormation references shown as their logical ids."""
    _, function = _scaler(synth)
    value = function["Properties"]["Environment"]["Variables"]["POOLS"]
    text = "".join(
        part if isinstance(part, str) else json.dumps(part, sort_keys=True).replace('"', "'")
        for part in value["Fn::Join"][1]
    )
    return json.loads(text)


def _submitters(synth: Synth) -> set[str]:
    """Roles (logical id without hash) that any policy of the stack allows batch:SubmitJob."""
    found = set()
    for policy in synth.of_type("AWS::IAM::Policy").values():
        actions = {action for _, action, _ in grants(policy["Properties"]["PolicyDocument"]["Statement"])}
        if "batch:SubmitJob" in actions:
            found |= {strip_hash(role["Ref"]) for role in policy["Properties"]["Roles"]}
    return found


# --- alarms (the same in both modes) -----------------------------------------------------------

@pytest.mark.parametrize("name, threshold", [("LowDepthAlarm", 5), ("HighDepthAlarm", 50)])
def test_depth_alarms_watch_visible_messages_every_minute(default: Synth, name: str, threshold: int) -> None:
    queue_id, _ = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    alarm = _alarm(default, "default", name)
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["Threshold"]) == (60, 1, threshold)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_sla_alarm_fires_when_a_message_stays_visible_for_the_sla(default: Synth) -> None:
    # Visible (waiting) messages only: a task that merely runs longer than the SLA is in flight.
    queue_id, _ = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    alarm = _alarm(default, "default", "SlaAlarm")
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", "Minimum")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    # 300 s = five one-minute readings in a row, every one of them with a visible message.
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (60, 5, 5)
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert alarm["TreatMissingData"] == "notBreaching"


@pytest.mark.parametrize("synth_name", ["default", "alarms_mode"])
def test_no_alarm_watches_the_age_of_the_oldest_message(request, synth_name: str) -> None:
    # ApproximateAgeOfOldestMessage counts in-flight messages: a long task would look like a wait.
    synth = request.getfixturevalue(synth_name)
    metrics = {a["Properties"]["MetricName"] for a in synth.of_type("AWS::CloudWatch::Alarm").values()}
    assert "ApproximateAgeOfOldestMessage" not in metrics


def test_each_pools_scaling_settings_reach_only_its_own_alarms(alarms_mode: Synth) -> None:
    # The arm pool's SLA of 150 s rounds up to three whole minutes; the other pools keep the defaults.
    assert ARM_ALARMS == {"age_alarm_seconds": 150, "low_threshold": 2, "high_threshold": 200, "high_array_size": 40}
    for pool, (periods, low, high, array_size) in {"arm": (3, 2, 200, 40), "default": (5, 5, 50, 10),
                                                     "gpu": (5, 5, 50, 10)}.items():
        sla = _alarm(alarms_mode, pool, "SlaAlarm")
        assert (sla["EvaluationPeriods"], sla["DatapointsToAlarm"], sla["Threshold"]) == (periods, periods, 1), pool
        assert _alarm(alarms_mode, pool, "LowDepthAlarm")["Threshold"] == low, pool
        assert _alarm(alarms_mode, pool, "HighDepthAlarm")["Threshold"] == high, pool
        (target,) = _rule(alarms_mode, pool, "HighDepthRule")["Targets"]
        assert target["BatchParameters"]["ArrayProperties"] == {"Size": array_size}, pool


def test_dead_letter_queues_have_alarms(default: Synth) -> None:
    dlq_id, _ = default.pool("default", "TaskQueueDeadLetterQueue", "AWS::SQS::Queue")
    events_dlq_id, _ = default.one("AWS::SQS::Queue", EVENTS_DLQ)
    for name, queue_id in (("WorkersMonitoringDefaultTaskDeadLetterAlarm", dlq_id),
                           ("WorkersMonitoringEventsDeadLetterAlarm", events_dlq_id)):
        alarm = default.one("AWS::CloudWatch::Alarm", name)[1]["Properties"]
        assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")


@pytest.mark.parametrize("rule, alarm", list(zip(RULES, ALARMS)))
def test_alarm_rules_fire_on_entering_alarm(default: Synth, rule: str, alarm: str) -> None:
    alarm_id, _ = default.one("AWS::CloudWatch::Alarm", f"WorkersDefaultAlarms{alarm}")
    assert _rule(default, "default", rule)["EventPattern"] == {
        "source": ["aws.cloudwatch"],
        "detail-type": ["CloudWatch Alarm State Change"],
        "resources": [{"Fn::GetAtt": [alarm_id, "Arn"]}],
        "detail": {"state": {"value": ["ALARM"]}},
    }


@pytest.mark.parametrize("synth_name", ["default", "alarms_mode"])
def test_events_dead_letter_queue_accepts_only_this_stacks_rules(request, synth_name: str) -> None:
    synth = request.getfixturevalue(synth_name)
    events_dlq_id, _ = synth.one("AWS::SQS::Queue", EVENTS_DLQ)
    rule_ids = set(synth.of_type("AWS::Events::Rule"))
    (policy,) = [p for p in synth.of_type("AWS::SQS::QueuePolicy").values()
                 if p["Properties"]["Queues"] == [{"Ref": events_dlq_id}]]
    allows = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    sources = set()
    for st in allows:
        assert st["Action"] == "sqs:SendMessage" and st["Principal"] == {"Service": "events.amazonaws.com"}
        sources.add(st["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0])
    assert sources == rule_ids


# --- scaler mode (the default): one brain ------------------------------------------------------

def test_in_scaler_mode_every_rule_only_runs_the_scaler(three_pools: Synth) -> None:
    function_id, _ = _scaler(three_pools)
    events_dlq_id, _ = three_pools.one("AWS::SQS::Queue", EVENTS_DLQ)
    rules = [_rule(three_pools, pool, rule) for pool in POOLS for rule in RULES]
    rules.append(three_pools.one("AWS::Events::Rule", "WorkersScalingScalerSchedule")[1]["Properties"])
    # Every rule but the one that tells the alarm topic of failed worker jobs (monitoring.py).
    assert len(rules) == len(three_pools.of_type("AWS::Events::Rule")) - 1 == 10
    for rule in rules:
        (target,) = rule["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}, rule["Description"]
        assert "BatchParameters" not in target
        assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 2}
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [events_dlq_id, "Arn"]}}


def test_in_scaler_mode_only_the_scaler_may_submit_jobs(three_pools: Synth) -> None:
    # No EventBridge role for Batch, no other role with SubmitJob: nothing outside the scaler's
    # count (which never exceeds a pool's max_workers) can add a worker.
    assert _submitters(three_pools) == {"WorkersScalingScalerRole"}
    assert not [k for k in three_pools.of_type("AWS::IAM::Role") if "EventsRole" in k]


def test_failed_scaler_runs_raise_an_alarm(default: Synth) -> None:
    function_id, _ = _scaler(default)
    alarm = default.one("AWS::CloudWatch::Alarm", "WorkersMonitoringScalerFailingAlarm")[1]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    assert (alarm["Period"], alarm["Threshold"]) == (300, 3)


def test_scaler_function_loops_one_run_at_a_time(default: Synth) -> None:
    function_id, function = _scaler(default)
    props = function["Properties"]
    group_id, group = default.one("AWS::Logs::LogGroup", "WorkersScalingScalerLogs")
    assert (props["Runtime"], props["Architectures"], props["MemorySize"]) == ("python3.12", ["arm64"], 256)
    assert props["ReservedConcurrentExecutions"] == 1
    # The loop stops starting decisions 5 s before the next minute's run; the timeout leaves the
    # last decision 30 s on top of the loop.
    assert (SCALER_LOOP_SECONDS, props["Timeout"]) == (55, 85)
    assert props["Environment"]["Variables"]["LOOP_SECONDS"] == "55"
    assert props["LoggingConfig"] == {"LogGroup": {"Ref": group_id}}
    assert group["Properties"]["RetentionInDays"] == 30
    default.template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {"FunctionName": {"Ref": function_id}, "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 60},
    )


def test_scaler_environment_is_the_scaler_contract(default: Synth) -> None:
    queue_id, _ = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    worker_id, _ = default.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    job_queue_id, _ = default.pool("default", "JobQueue", "AWS::Batch::JobQueue")
    _, function = _scaler(default)
    variables = function["Properties"]["Environment"]["Variables"]
    # What the handler reads, no more and no less.
    assert set(variables) == set(scaler_handler.ENV_NAMES) | set(scaler_handler.OPTIONAL_ENV_NAMES)
    assert variables["METRICS_NAMESPACE"] == "BatchCelery/BatchCelery"
    assert (variables["POLL_SECONDS"], variables["LOOP_SECONDS"]) == ("10", "55")
    # An idle run makes one check and ends; the runs loop for 5 minutes after work was last seen.
    assert (variables["IDLE_CHECK"], variables["COOLDOWN_SECONDS"]) == ("minute", "300")
    assert SCALER_COOLDOWN_SECONDS == 300
    assert _pools_variable(default) == [{
        "pool": "default",
        "queue_url": f"{{'Ref': '{queue_id}'}}",
        "job_queue": f"{{'Fn::GetAtt': ['{job_queue_id}', 'JobQueueArn']}}",
        "job_definition": f"{{'Ref': '{worker_id}'}}",
        "job_name": "celery-worker-default",
        # 0: sized to the target wait from the pool's reported run times; a Fargate start expected.
        "messages_per_worker": 0,
        "target_wait_seconds": 90,
        "start_seconds": 60,
        "max_workers": 48,
        "tasks_per_worker": 1,
    }]
    assert set(_pools_variable(default)[0]) == set(scaler_handler.POOL_FIELDS)


def test_scaler_settings_reach_its_environment(custom: Synth) -> None:
    _, function = _scaler(custom)
    assert function["Properties"]["Environment"]["Variables"]["POLL_SECONDS"] == "20"
    (pool,) = _pools_variable(custom)
    # A worker of concurrency 3 holds up to 3 in-flight messages and is one busy worker.
    assert (pool["max_workers"], pool["messages_per_worker"], pool["tasks_per_worker"]) == (64, 4, 3)


def test_scaler_idle_check_loop_reaches_its_environment(tmp_path) -> None:
    from .conftest import synth

    looping = synth(tmp_path, scaler_idle_check="loop")
    _, function = _scaler(looping)
    assert function["Properties"]["Environment"]["Variables"]["IDLE_CHECK"] == "loop"
    # The handler accepts what the stack sets (POOLS resolved to a plain pool).
    pool = {"pool": "default", "queue_url": "https://sqs/q", "job_queue": "jq", "job_definition": "jd",
            "job_name": "celery-worker-default", "messages_per_worker": 0, "target_wait_seconds": 90,
            "start_seconds": 60, "max_workers": 48, "tasks_per_worker": 1}
    config = scaler_handler.ScalerConfig.from_env(
        {**function["Properties"]["Environment"]["Variables"], "POOLS": json.dumps([pool])})
    assert (config.idle_check, config.cooldown_seconds) == ("loop", 300)


def test_scaler_runs_every_minute_and_on_every_alarm(three_pools: Synth) -> None:
    function_id, _ = _scaler(three_pools)
    target = {"Fn::GetAtt": [function_id, "Arn"]}
    assert three_pools.one("AWS::Events::Rule", "WorkersScalingScalerSchedule")[1]["Properties"][
        "ScheduleExpression"] == "rate(1 minute)"
    permissions = [p["Properties"] for p in three_pools.of_type("AWS::Lambda::Permission").values()
                   if p["Properties"]["FunctionName"] == target]
    # The schedule and three alarm rules per pool.
    assert len(permissions) == 1 + 3 * len(POOLS)
    assert all(p["Principal"] == "events.amazonaws.com" and p["Action"] == "lambda:InvokeFunction"
               for p in permissions)


def test_scaler_role_is_scoped_to_the_queue_job_queue_and_worker_definition(default: Synth) -> None:
    assert grants(default.statements_of_role("WorkersScalingScalerRole")) == {
        ("Allow", "logs:CreateLogStream", "WorkersScalingScalerLogs.Arn"),
        ("Allow", "logs:PutLogEvents", "WorkersScalingScalerLogs.Arn"),
        ("Allow", "sqs:GetQueueAttributes", "WorkersDefaultPoolTaskQueue.Arn"),
        # The pools' reported run times (target sizing); no resource type, no usable condition key.
        ("Allow", "cloudwatch:GetMetricData", "*"),
        ("Allow", "batch:SubmitJob", "WorkersDefaultPoolJobQueue.JobQueueArn"),
        ("Allow", "batch:SubmitJob", "WorkersDefaultPoolWorkerJobDefinition"),
        # Neither action supports resource-level permissions (acknowledged in cdk-nag).
        ("Allow", "batch:ListJobs", "*"),
        ("Allow", "batch:DescribeJobs", "*"),
    }
    _, role = default.one("AWS::IAM::Role", "WorkersScalingScalerRole")
    assert "ManagedPolicyArns" not in role["Properties"]


def test_scaler_asset_holds_the_scaler_and_the_two_shared_modules_and_imports_alone(default: Synth) -> None:
    _, function = _scaler(default)
    key = function["Properties"]["Code"]["S3Key"]
    asset_dir = default.outdir / f"asset.{key.removesuffix('.zip')}"
    files = {p.relative_to(asset_dir).as_posix() for p in asset_dir.rglob("*") if p.is_file()}
    assert files == {
        "batch_celery/__init__.py", "batch_celery/scaler/__init__.py", "batch_celery/scaler/policy.py",
        "batch_celery/scaler/handler.py", "batch_celery/scaler/warm.py", "batch_celery_container/contract.py", "batch_celery_container/emf.py",
    }
    # As Lambda loads it: the asset folder alone on the path, nothing of the repository.
    module, _, name = function["Properties"]["Handler"].rpartition(".")
    probe = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(asset_dir)!r}]; "
                                     f"import {module} as m; print(m.__file__, callable(m.{name}))"],
        capture_output=True, text=True, cwd=asset_dir,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(asset_dir)) and probe.stdout.strip().endswith("True")


# --- alarms mode: the original sample's design, no Lambda --------------------------------------

@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("rule, array_size", [("LowDepthRule", None), ("HighDepthRule", 10), ("SlaRule", None)])
def test_in_alarms_mode_each_rule_submits_its_pools_worker_jobs_exactly_once(
    alarms_mode: Synth, pool: str, rule: str, array_size: int | None
) -> None:
    worker_id, _ = alarms_mode.pool(pool, "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    job_queue_id, _ = alarms_mode.pool(pool, "JobQueue", "AWS::Batch::JobQueue")
    events_dlq_id, _ = alarms_mode.one("AWS::SQS::Queue", EVENTS_DLQ)
    (target,) = _rule(alarms_mode, pool, rule)["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]}
    expected = {"JobDefinition": {"Ref": worker_id}, "JobName": f"celery-worker-{pool}"}
    if array_size:
        expected["ArrayProperties"] = {"Size": ARM_ALARMS["high_array_size"] if pool == "arm" else array_size}
    assert target["BatchParameters"] == expected
    # SubmitJob has no idempotency token: a retried delivery whose answer was lost submits twice.
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 0}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [events_dlq_id, "Arn"]}}


def test_alarms_mode_deploys_no_lambda_and_no_schedule(alarms_mode: Synth) -> None:
    assert _scaler(alarms_mode) == (None, None)
    assert not [r for r in alarms_mode.of_type("AWS::Events::Rule").values() if "ScheduleExpression" in r["Properties"]]
    assert not [k for k in alarms_mode.resources if k.startswith(("WorkersScaling", "WorkersMonitoringScaler"))]
    assert not alarms_mode.of_type("AWS::Lambda::Permission")
    assert "ScalerFunctionName" not in alarms_mode.outputs
    assert sorted(strip_hash(k) for k in alarms_mode.of_type("AWS::Events::Rule")) == sorted(
        [f"Workers{pascal(pool)}Alarms{rule}" for pool in POOLS for rule in RULES]
        + ["WorkersMonitoringWorkerJobFailedRule"])
    # Three scaling alarms per pool, one per task DLQ and the events DLQ's.
    assert len(alarms_mode.of_type("AWS::CloudWatch::Alarm")) == 3 * 3 + 3 + 1


def test_in_alarms_mode_eventbridge_may_only_submit_each_pools_worker_job_to_its_job_queue(alarms_mode: Synth) -> None:
    roles = {f"Workers{pascal(pool)}PoolWorkerJobDefinitionEventsRole": pool for pool in POOLS}
    assert _submitters(alarms_mode) == set(roles)
    for role, pool in roles.items():
        assert grants(alarms_mode.statements_of_role(role)) == {
            ("Allow", "batch:SubmitJob", f"Workers{pascal(pool)}PoolWorkerJobDefinition"),
            ("Allow", "batch:SubmitJob", f"Workers{pascal(pool)}PoolJobQueue.JobQueueArn"),
        }, pool


def test_rejects_an_unknown_scaler_idle_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_celery.settings import Settings, SettingsError

    from .conftest import REPO

    monkeypatch.chdir(REPO)
    with pytest.raises(SettingsError) as raised:
        Settings.from_context({"scaler_idle_check": "never"})
    assert str(raised.value) == (
        'batch-celery.scaler_idle_check = "never": must be "minute" (an idle run makes one check and ends) or '
        '"loop" (every run decides every scaler_poll_seconds, work or none)')


def test_warm_capacity_reaches_the_scaler_only_for_the_pools_that_keep_some(tmp_path) -> None:
    from .conftest import synth

    warm = synth(tmp_path, pools={"default": {"min_workers": 2, "min_workers_hours": "mon-fri 08:00-18:00 +01:00"},
                                  "batch": {"tasks": ["batch.*"]}})
    _, function = _scaler(warm)
    default, batch = _pools_variable(warm)
    assert (default["min_workers"], default["warm_hours"]) == (2, "mon-fri 08:00-18:00 +01:00")
    assert "min_workers" not in batch and "warm_hours" not in batch
    # The handler accepts what the stack sets.
    config = scaler_handler.ScalerConfig.from_env({**function["Properties"]["Environment"]["Variables"],
                                                  "POOLS": json.dumps([{**default, "queue_url": "q1"},
                                                                       {**batch, "queue_url": "q2"}])})
    assert [(p.min_workers, p.warm_hours) for p in config.pools] == [(2, "mon-fri 08:00-18:00 +01:00"), (0, "")]

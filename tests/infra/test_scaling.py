"""Alarms, their rules, and the scaler: scaler mode (the default) and alarms mode."""

from __future__ import annotations

import pytest

from batch_celery.scaler import handler as scaler_handler
from batch_celery.scaling import SCALER_LOOP_SECONDS

from .conftest import Synth, grants

SCALER_HANDLER = "scaler.handler.handler"
ALARM_RULES = ("ScalingLowDepthRule", "ScalingHighDepthRule", "ScalingSlaRule")


def _alarm(synth: Synth, prefix: str) -> dict:
    return synth.one("AWS::CloudWatch::Alarm", prefix)[1]["Properties"]


def _rule(synth: Synth, prefix: str) -> dict:
    return synth.one("AWS::Events::Rule", prefix)[1]["Properties"]


def _batch_target(rule: dict) -> dict:
    (target,) = [t for t in rule["Targets"] if "BatchParameters" in t]
    return target


def _scaler(synth: Synth) -> tuple[str, dict]:
    functions = [(k, f) for k, f in synth.of_type("AWS::Lambda::Function").items()
                 if f["Properties"]["Handler"] == SCALER_HANDLER]
    assert len(functions) <= 1
    return functions[0] if functions else (None, None)


def _submitters(synth: Synth) -> set[str]:
    """Roles (logical id without hash) that any policy of the stack allows batch:SubmitJob."""
    found = set()
    for policy in synth.of_type("AWS::IAM::Policy").values():
        actions = {action for _, action, _ in grants(policy["Properties"]["PolicyDocument"]["Statement"])}
        if "batch:SubmitJob" in actions:
            found |= {role["Ref"][:-8] for role in policy["Properties"]["Roles"]}
    return found


# --- alarms (the same in both modes) -----------------------------------------------------------

@pytest.mark.parametrize("prefix, threshold", [("ScalingLowDepthAlarm", 5), ("ScalingHighDepthAlarm", 50)])
def test_depth_alarms_watch_visible_messages_every_minute(default: Synth, prefix: str, threshold: int) -> None:
    queue_id, _ = default.one("AWS::SQS::Queue", "TaskQueue1")
    alarm = _alarm(default, prefix)
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["Threshold"]) == (60, 1, threshold)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_sla_alarm_fires_when_a_message_stays_visible_for_the_sla(default: Synth) -> None:
    # Visible (waiting) messages only: a task that merely runs longer than the SLA is in flight.
    queue_id, _ = default.one("AWS::SQS::Queue", "TaskQueue1")
    alarm = _alarm(default, "ScalingSlaAlarm")
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


def test_sla_periods_round_the_sla_up_to_whole_minutes(make_synth) -> None:
    custom = make_synth(age_alarm_seconds=150, scaling_mode="alarms", low_threshold=2, high_threshold=200,
                        high_array_size=40)
    alarm = _alarm(custom, "ScalingSlaAlarm")
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"], alarm["Threshold"]) == (3, 3, 1)
    assert _alarm(custom, "ScalingLowDepthAlarm")["Threshold"] == 2
    assert _alarm(custom, "ScalingHighDepthAlarm")["Threshold"] == 200
    assert _batch_target(_rule(custom, "ScalingHighDepthRule"))["BatchParameters"]["ArrayProperties"] == {"Size": 40}


def test_dead_letter_queues_have_alarms(default: Synth) -> None:
    dlq_id, _ = default.one("AWS::SQS::Queue", "TaskQueueDeadLetterQueue")
    events_dlq_id, _ = default.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
    for prefix, queue_id in (("MonitoringTaskDeadLetterAlarm", dlq_id), ("MonitoringEventsDeadLetterAlarm", events_dlq_id)):
        alarm = _alarm(default, prefix)
        assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": [queue_id, "QueueName"]}
        assert alarm["Threshold"] == 1


@pytest.mark.parametrize("rule_prefix, alarm_prefix", list(zip(
    ALARM_RULES, ("ScalingLowDepthAlarm", "ScalingHighDepthAlarm", "ScalingSlaAlarm"))))
def test_alarm_rules_fire_on_entering_alarm(default: Synth, rule_prefix: str, alarm_prefix: str) -> None:
    alarm_id, _ = default.one("AWS::CloudWatch::Alarm", alarm_prefix)
    assert _rule(default, rule_prefix)["EventPattern"] == {
        "source": ["aws.cloudwatch"],
        "detail-type": ["CloudWatch Alarm State Change"],
        "resources": [{"Fn::GetAtt": [alarm_id, "Arn"]}],
        "detail": {"state": {"value": ["ALARM"]}},
    }


@pytest.mark.parametrize("synth_name", ["default", "alarms_mode"])
def test_events_dead_letter_queue_accepts_only_this_stacks_rules(request, synth_name: str) -> None:
    synth = request.getfixturevalue(synth_name)
    events_dlq_id, _ = synth.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
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

def test_in_scaler_mode_every_rule_only_runs_the_scaler(default: Synth) -> None:
    function_id, _ = _scaler(default)
    events_dlq_id, _ = default.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
    for prefix in (*ALARM_RULES, "ScalingScalerSchedule"):
        (target,) = _rule(default, prefix)["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}, prefix
        assert "BatchParameters" not in target, prefix
        assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 2}
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [events_dlq_id, "Arn"]}}


def test_in_scaler_mode_only_the_scaler_may_submit_jobs(default: Synth) -> None:
    # No EventBridge role for Batch, no other role with SubmitJob: nothing outside the scaler's
    # count (which never exceeds max_workers) can add a worker.
    assert _submitters(default) == {"ScalingScalerRole"}
    assert not [k for k in default.of_type("AWS::IAM::Role") if "EventsRole" in k]


def test_failed_scaler_runs_raise_an_alarm(default: Synth) -> None:
    function_id, _ = _scaler(default)
    alarm = _alarm(default, "MonitoringScalerFailingAlarm")
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    assert (alarm["Period"], alarm["Threshold"]) == (300, 3)


def test_scaler_function_loops_one_run_at_a_time(default: Synth) -> None:
    function_id, function = _scaler(default)
    props = function["Properties"]
    group_id, group = default.one("AWS::Logs::LogGroup", "ScalingScalerLogs")
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
    queue_id, _ = default.one("AWS::SQS::Queue", "TaskQueue1")
    worker_id, _ = default.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    job_queue_id, _ = default.one("AWS::Batch::JobQueue", "WorkersJobQueue")
    _, function = _scaler(default)
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables == {
        "QUEUE_URL": {"Ref": queue_id},
        "JOB_QUEUE": {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]},
        "JOB_DEFINITION": {"Ref": worker_id},
        "JOB_NAME": "celery-worker",
        "MESSAGES_PER_WORKER": "10",
        "MAX_WORKERS": "48",
        "TASKS_PER_WORKER": "1",
        "POLL_SECONDS": "10",
        "LOOP_SECONDS": "55",
    }
    # What the handler requires, no more and no less.
    assert set(variables) == set(scaler_handler.ENV_NAMES)


def test_scaler_settings_reach_its_environment(make_synth) -> None:
    small = make_synth(worker_vcpus=0.25, worker_memory_mib=512, max_vcpus=16, messages_per_worker=4,
                       scaler_poll_seconds=20, worker_concurrency=3)
    variables = _scaler(small)[1]["Properties"]["Environment"]["Variables"]
    # max_workers defaults to what the compute environment runs at once: 16 / 0.25.
    assert (variables["MAX_WORKERS"], variables["MESSAGES_PER_WORKER"], variables["POLL_SECONDS"]) == ("64", "4", "20")
    # A worker of concurrency 3 holds up to 3 in-flight messages and is one busy worker.
    assert variables["TASKS_PER_WORKER"] == "3"


def test_scaler_runs_every_minute_and_on_every_alarm(default: Synth) -> None:
    function_id, _ = _scaler(default)
    target = {"Fn::GetAtt": [function_id, "Arn"]}
    assert _rule(default, "ScalingScalerSchedule")["ScheduleExpression"] == "rate(1 minute)"
    permissions = [p["Properties"] for p in default.of_type("AWS::Lambda::Permission").values()
                   if p["Properties"]["FunctionName"] == target]
    assert len(permissions) == 4
    assert all(p["Principal"] == "events.amazonaws.com" and p["Action"] == "lambda:InvokeFunction"
               for p in permissions)


def test_scaler_role_is_scoped_to_the_queue_job_queue_and_worker_definition(default: Synth) -> None:
    assert grants(default.statements_of_role("ScalingScalerRole")) == {
        ("Allow", "logs:CreateLogStream", "ScalingScalerLogs.Arn"),
        ("Allow", "logs:PutLogEvents", "ScalingScalerLogs.Arn"),
        ("Allow", "sqs:GetQueueAttributes", "TaskQueue.Arn"),
        ("Allow", "batch:SubmitJob", "WorkersJobQueue.JobQueueArn"),
        ("Allow", "batch:SubmitJob", "WorkersWorkerJobDefinition"),
        # Neither action supports resource-level permissions (acknowledged in cdk-nag).
        ("Allow", "batch:ListJobs", "*"),
        ("Allow", "batch:DescribeJobs", "*"),
    }
    _, role = default.one("AWS::IAM::Role", "ScalingScalerRole")
    assert "ManagedPolicyArns" not in role["Properties"]


def test_scaler_asset_holds_only_the_scaler_package(default: Synth) -> None:
    _, function = _scaler(default)
    key = function["Properties"]["Code"]["S3Key"]
    asset_dir = default.outdir / f"asset.{key.removesuffix('.zip')}"
    files = {p.relative_to(asset_dir).as_posix() for p in asset_dir.rglob("*") if p.is_file()}
    assert {"scaler/__init__.py", "scaler/policy.py", "scaler/handler.py"} <= files
    assert all(f.startswith("scaler/") and f.endswith(".py") and "__pycache__" not in f for f in files), files


# --- alarms mode: the original sample's design, no Lambda --------------------------------------

@pytest.mark.parametrize("rule_prefix, array_size", [
    ("ScalingLowDepthRule", None), ("ScalingHighDepthRule", 10), ("ScalingSlaRule", None)])
def test_in_alarms_mode_each_rule_submits_worker_jobs_exactly_once(
    alarms_mode: Synth, rule_prefix: str, array_size: int | None
) -> None:
    worker_id, _ = alarms_mode.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    job_queue_id, _ = alarms_mode.one("AWS::Batch::JobQueue", "WorkersJobQueue")
    events_dlq_id, _ = alarms_mode.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
    (target,) = _rule(alarms_mode, rule_prefix)["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]}
    expected = {"JobDefinition": {"Ref": worker_id}, "JobName": "celery-worker"}
    if array_size:
        expected["ArrayProperties"] = {"Size": array_size}
    assert target["BatchParameters"] == expected
    # SubmitJob has no idempotency token: a retried delivery whose answer was lost submits twice.
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 0}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [events_dlq_id, "Arn"]}}


def test_alarms_mode_deploys_no_lambda_and_no_schedule(alarms_mode: Synth) -> None:
    assert _scaler(alarms_mode) == (None, None)
    assert not [r for r in alarms_mode.of_type("AWS::Events::Rule").values() if "ScheduleExpression" in r["Properties"]]
    assert not [k for k in alarms_mode.resources if k.startswith(("ScalingScaler", "MonitoringScaler"))]
    assert not alarms_mode.of_type("AWS::Lambda::Permission")
    assert "ScalerFunctionName" not in alarms_mode.template.to_json()["Outputs"]
    assert sorted(k[:-8] for k in alarms_mode.of_type("AWS::Events::Rule")) == sorted(ALARM_RULES)
    # Three scaling alarms and the two dead-letter alarms.
    assert len(alarms_mode.of_type("AWS::CloudWatch::Alarm")) == 5


def test_in_alarms_mode_eventbridge_may_only_submit_the_worker_job_to_this_job_queue(alarms_mode: Synth) -> None:
    assert _submitters(alarms_mode) == {"WorkersWorkerJobDefinitionEventsRole"}
    assert grants(alarms_mode.statements_of_role("WorkersWorkerJobDefinitionEventsRole")) == {
        ("Allow", "batch:SubmitJob", "WorkersWorkerJobDefinition"),
        ("Allow", "batch:SubmitJob", "WorkersJobQueue.JobQueueArn"),
    }

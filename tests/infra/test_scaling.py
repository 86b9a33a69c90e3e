"""Alarms, the rules that submit workers, and the scaler (on and switched off)."""

from __future__ import annotations

import pytest

from .conftest import Synth, grants

SCALER_HANDLER = "scaler.handler.handler"


@pytest.fixture(scope="module")
def scaler_off(make_synth) -> Synth:
    return make_synth(scaler_enabled=False)


def _alarm(synth: Synth, prefix: str) -> dict:
    return synth.one("AWS::CloudWatch::Alarm", prefix)[1]["Properties"]


def _rule(synth: Synth, prefix: str) -> dict:
    return synth.one("AWS::Events::Rule", prefix)[1]["Properties"]


def _batch_target(rule: dict) -> dict:
    (target,) = [t for t in rule["Targets"] if "BatchParameters" in t]
    return target


# --- alarms --------------------------------------------------------------------------------

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


def test_age_alarm_fires_at_the_sla(default: Synth) -> None:
    alarm = _alarm(default, "ScalingAgeAlarm")
    assert alarm["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert (alarm["Period"], alarm["Threshold"], alarm["Statistic"]) == (60, 300, "Maximum")
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_dead_letter_queues_have_alarms(default: Synth) -> None:
    dlq_id, _ = default.one("AWS::SQS::Queue", "TaskQueueDeadLetterQueue")
    events_dlq_id, _ = default.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
    for prefix, queue_id in (("MonitoringTaskDeadLetterAlarm", dlq_id), ("MonitoringEventsDeadLetterAlarm", events_dlq_id)):
        alarm = _alarm(default, prefix)
        assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": [queue_id, "QueueName"]}
        assert alarm["Threshold"] == 1


def test_failed_scaler_runs_raise_an_alarm(default: Synth) -> None:
    function_id, _ = _scaler(default)
    alarm = _alarm(default, "MonitoringScalerFailingAlarm")
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    assert (alarm["Period"], alarm["Threshold"]) == (300, 3)


# --- rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rule_prefix, alarm_prefix, array_size",
    [("ScalingLowDepthRule", "ScalingLowDepthAlarm", None),
     ("ScalingHighDepthRule", "ScalingHighDepthAlarm", 10),
     ("ScalingAgeRule", "ScalingAgeAlarm", None)],
)
def test_alarm_rules_submit_worker_jobs_on_entering_alarm(
    default: Synth, rule_prefix: str, alarm_prefix: str, array_size: int | None
) -> None:
    alarm_id, _ = default.one("AWS::CloudWatch::Alarm", alarm_prefix)
    worker_id, _ = default.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    job_queue_id, _ = default.one("AWS::Batch::JobQueue", "WorkersJobQueue")
    events_dlq_id, _ = default.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
    rule = _rule(default, rule_prefix)
    assert rule["EventPattern"] == {
        "source": ["aws.cloudwatch"],
        "detail-type": ["CloudWatch Alarm State Change"],
        "resources": [{"Fn::GetAtt": [alarm_id, "Arn"]}],
        "detail": {"state": {"value": ["ALARM"]}},
    }
    target = _batch_target(rule)
    assert target["Arn"] == {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]}
    expected = {"JobDefinition": {"Ref": worker_id}, "JobName": "celery-worker"}
    if array_size:
        expected["ArrayProperties"] = {"Size": array_size}
    assert target["BatchParameters"] == expected
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 3}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [events_dlq_id, "Arn"]}}


def test_events_dead_letter_queue_accepts_only_this_stacks_rules(default: Synth) -> None:
    events_dlq_id, _ = default.one("AWS::SQS::Queue", "ScalingEventsDeadLetterQueue")
    rule_ids = set(default.of_type("AWS::Events::Rule"))
    (policy,) = [p for p in default.of_type("AWS::SQS::QueuePolicy").values()
                 if p["Properties"]["Queues"] == [{"Ref": events_dlq_id}]]
    allows = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    sources = set()
    for st in allows:
        assert st["Action"] == "sqs:SendMessage" and st["Principal"] == {"Service": "events.amazonaws.com"}
        sources.add(st["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0])
    assert sources == rule_ids


# --- scaler --------------------------------------------------------------------------------

def _scaler(synth: Synth) -> tuple[str, dict]:
    functions = [(k, f) for k, f in synth.of_type("AWS::Lambda::Function").items()
                 if f["Properties"]["Handler"] == SCALER_HANDLER]
    assert len(functions) <= 1
    return functions[0] if functions else (None, None)


def test_scaler_function_runs_the_scaler_package_one_at_a_time(default: Synth) -> None:
    function_id, function = _scaler(default)
    props = function["Properties"]
    group_id, group = default.one("AWS::Logs::LogGroup", "ScalingScalerLogs")
    assert props["Runtime"] == "python3.12"
    assert props["Timeout"] == 30
    assert props["ReservedConcurrentExecutions"] == 1
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
    assert function["Properties"]["Environment"]["Variables"] == {
        "QUEUE_URL": {"Ref": queue_id},
        "JOB_QUEUE": {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]},
        "JOB_DEFINITION": {"Ref": worker_id},
        "JOB_NAME": "celery-worker",
        "MESSAGES_PER_WORKER": "10",
        "MAX_WORKERS": "48",
    }


def test_scaler_max_workers_defaults_to_what_the_compute_environment_runs(make_synth) -> None:
    small = make_synth(worker_vcpus=0.25, worker_memory_mib=512, max_vcpus=16, messages_per_worker=4)
    variables = _scaler(small)[1]["Properties"]["Environment"]["Variables"]
    assert (variables["MAX_WORKERS"], variables["MESSAGES_PER_WORKER"]) == ("64", "4")


def test_scaler_runs_every_minute_and_on_every_alarm(default: Synth) -> None:
    function_id, _ = _scaler(default)
    target = {"Fn::GetAtt": [function_id, "Arn"]}
    schedule = _rule(default, "ScalingScalerSchedule")
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    assert [t["Arn"] for t in schedule["Targets"]] == [target]
    for prefix in ("ScalingLowDepthRule", "ScalingHighDepthRule", "ScalingAgeRule"):
        assert target in [t["Arn"] for t in _rule(default, prefix)["Targets"]], prefix
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


def test_switching_the_scaler_off_removes_function_and_schedule_but_keeps_alarms(scaler_off: Synth) -> None:
    assert _scaler(scaler_off) == (None, None)
    assert not [r for r in scaler_off.of_type("AWS::Events::Rule").values() if "ScheduleExpression" in r["Properties"]]
    assert not [k for k in scaler_off.resources if k.startswith("ScalingScaler")]
    assert "ScalerFunctionName" not in scaler_off.template.to_json()["Outputs"]
    assert len(scaler_off.of_type("AWS::CloudWatch::Alarm")) == 5
    for prefix in ("ScalingLowDepthRule", "ScalingHighDepthRule", "ScalingAgeRule"):
        targets = _rule(scaler_off, prefix)["Targets"]
        assert len(targets) == 1 and "BatchParameters" in targets[0]


def test_alarm_settings_reach_alarms_and_rules(make_synth) -> None:
    custom = make_synth(low_threshold=2, high_threshold=200, high_array_size=40, age_alarm_seconds=120)
    assert _alarm(custom, "ScalingLowDepthAlarm")["Threshold"] == 2
    assert _alarm(custom, "ScalingHighDepthAlarm")["Threshold"] == 200
    assert _alarm(custom, "ScalingAgeAlarm")["Threshold"] == 120
    assert _batch_target(_rule(custom, "ScalingHighDepthRule"))["BatchParameters"]["ArrayProperties"] == {"Size": 40}

"""Schedules (batch_celery/schedules.py) on the synthesized template: one EventBridge Scheduler
schedule per entry, sending its task to the pool it routes to through the sender Lambda, with
least privilege, dead-lettering and cdk-nag clean; and one line for every invalid schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from batch_celery.settings import Settings, SettingsError
from batch_celery_container import schedule_sender

from .conftest import THREE_POOLS, Synth, grants, strip_hash, synth

SCHEDULES = {
    "nightly-report": {"task": "reports.nightly", "args": [1, "a"], "kwargs": {"day": "yesterday"},
                       "cron": "0 2 * * ? *", "timezone": "Europe/Berlin"},
    "gpu.warm": {"task": "gpu.warm", "rate": "5 minutes"},
}
# reports.nightly matches no pool's tasks: the default pool; gpu.warm matches the gpu pool's "gpu.*".
ROUTED = {"nightly-report": "Default", "gpu.warm": "Gpu"}
SENDER_ROLE, SCHEDULER_ROLE = "WorkersSchedulesSenderRole", "WorkersSchedulesSchedulerRole"
EVENTS_DLQ = "WorkersEventsDeadLetterQueue"


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), pools=THREE_POOLS, schedules=SCHEDULES)


@pytest.fixture(scope="module")
def scheduled_kms(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), schedules={"hourly": {"task": "t.hourly", "rate": "1 hour"}},
                 kms_key=True)


def schedules_of(s: Synth) -> dict[str, dict]:
    """Each schedule's properties by its name (from its input)."""
    out = {}
    for schedule in s.of_type("AWS::Scheduler::Schedule").values():
        properties = schedule["Properties"]
        out[json.loads(_input(properties))["schedule"]] = properties
    return out


def _input(properties: dict) -> str:
    """The target input with each reference written as <LogicalIdWithoutHash[.Attribute]>."""
    value = properties["Target"]["Input"]
    if isinstance(value, str):
        return value
    separator, parts = value["Fn::Join"]
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif "Ref" in part:
            out.append(f"<{strip_hash(part['Ref'])}>")
        else:
            logical_id, attribute = part["Fn::GetAtt"]
            out.append(f"<{strip_hash(logical_id)}.{attribute}>")
    return separator.join(out)


def test_each_schedule_is_one_scheduler_schedule_with_its_expression_and_time_zone(scheduled: Synth) -> None:
    schedules = schedules_of(scheduled)
    assert set(schedules) == set(SCHEDULES)
    nightly, warm = schedules["nightly-report"], schedules["gpu.warm"]
    assert (nightly["ScheduleExpression"], nightly["ScheduleExpressionTimezone"]) == ("cron(0 2 * * ? *)", "Europe/Berlin")
    assert (warm["ScheduleExpression"], warm["ScheduleExpressionTimezone"]) == ("rate(5 minutes)", "UTC")
    assert all(s["State"] == "ENABLED" and s["FlexibleTimeWindow"] == {"Mode": "OFF"} for s in schedules.values())


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_fire_sends_the_task_to_the_queue_of_the_pool_it_routes_to(scheduled: Synth, name: str) -> None:
    properties = schedules_of(scheduled)[name]
    fire = json.loads(_input(properties))
    queue = f"Workers{ROUTED[name]}PoolTaskQueue"
    assert fire == {
        "schedule": name, "task": SCHEDULES[name]["task"], "args": SCHEDULES[name].get("args", []),
        "kwargs": SCHEDULES[name].get("kwargs", {}), "queue": f"<{queue}.QueueName>", "queue_url": f"<{queue}>",
        # Scheduler writes the fire's own time and id in (context attributes).
        "scheduled_time": "<aws.scheduler.scheduled-time>", "execution_id": "<aws.scheduler.execution-id>",
    }
    # What the sender reads is what the construct writes.
    assert set(schedule_sender.REQUIRED) <= set(fire)
    function_id, function = scheduled.one("AWS::Lambda::Function", "WorkersSchedulesSender")
    assert properties["Target"]["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert function["Properties"]["Handler"] == "batch_celery_container.schedule_sender.handler"


def test_an_undeliverable_fire_and_a_failed_run_go_to_the_events_dead_letter_queue(scheduled: Synth) -> None:
    dlq_id, _ = scheduled.one("AWS::SQS::Queue", EVENTS_DLQ)
    for properties in schedules_of(scheduled).values():
        target = properties["Target"]
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [dlq_id, "Arn"]}}
        assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 20}
    _, function = scheduled.one("AWS::Lambda::Function", "WorkersSchedulesSender")
    assert function["Properties"]["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}}
    _, config = scheduled.one("AWS::Lambda::EventInvokeConfig", "WorkersSchedulesSenderEventInvokeConfig")
    assert (config["Properties"]["MaximumRetryAttempts"], config["Properties"]["MaximumEventAgeInSeconds"]) == (2, 3600)


def test_the_sender_may_send_only_to_the_queues_its_schedules_route_to(scheduled: Synth) -> None:
    got = grants(scheduled.statements_of_role(SENDER_ROLE))
    sends = {resource for effect, action, resource in got if action == "sqs:SendMessage"}
    assert sends == {"WorkersDefaultPoolTaskQueue.Arn", "WorkersGpuPoolTaskQueue.Arn", f"{EVENTS_DLQ}.Arn"}
    actions = {action for _, action, _ in got}
    assert actions == {"sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
                       "logs:CreateLogStream", "logs:PutLogEvents"}


def test_the_scheduler_role_may_invoke_only_the_sender_and_only_scheduler_of_this_account_assumes_it(
        scheduled: Synth) -> None:
    got = grants(scheduled.statements_of_role(SCHEDULER_ROLE))
    invokes = {resource for _, action, resource in got if action == "lambda:InvokeFunction"}
    assert invokes == {"WorkersSchedulesSender.Arn",
                       json.dumps({"Fn::Join": ["", [{"Fn::GetAtt": [scheduled.one(
                           "AWS::Lambda::Function", "WorkersSchedulesSender")[0], "Arn"]}, ":*"]]}, sort_keys=True)}
    assert {action for _, action, _ in got} == {"lambda:InvokeFunction", "sqs:SendMessage"}
    _, role = scheduled.one("AWS::IAM::Role", SCHEDULER_ROLE)
    [statement] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert "Fn::Join" in statement["Condition"]["ArnLike"]["aws:SourceArn"]


@pytest.mark.parametrize("pool, spared", [("Default", True), ("Gpu", True), ("Arm", False)])
def test_a_queue_policy_spares_the_sender_where_it_sends_and_only_there(scheduled: Synth, pool: str,
                                                                        spared: bool) -> None:
    queue_id, _ = scheduled.pool(pool.lower(), "TaskQueue", "AWS::SQS::Queue")
    sender_id, _ = scheduled.one("AWS::IAM::Role", SENDER_ROLE)
    [policy] = [p for p in scheduled.of_type("AWS::SQS::QueuePolicy").values()
                if {"Ref": queue_id} in p["Properties"]["Queues"]]
    [deny] = [st for st in policy["Properties"]["PolicyDocument"]["Statement"] if st.get("Sid") == "OnlyNamedPrincipalsSend"]
    assert ({"Fn::GetAtt": [sender_id, "Arn"]} in deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == spared


def test_with_kms_key_the_sender_and_scheduler_may_use_the_key_to_send(scheduled_kms: Synth) -> None:
    key_id, _ = scheduled_kms.one("AWS::KMS::Key", "WorkersKey")
    key = f"{strip_hash(key_id)}.Arn"
    sender = {action for _, action, resource in grants(scheduled_kms.statements_of_role(SENDER_ROLE)) if resource == key}
    scheduler = {action for _, action, resource in grants(scheduled_kms.statements_of_role(SCHEDULER_ROLE))
                 if resource == key}
    assert {"kms:GenerateDataKey*", "kms:Decrypt"} <= sender
    assert scheduler == {"kms:GenerateDataKey", "kms:Decrypt"}
    _, logs = scheduled_kms.one("AWS::Logs::LogGroup", "WorkersSchedulesSenderLogs")
    assert logs["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}


def test_outputs_list_the_schedules_and_the_senders_log_group(scheduled: Synth) -> None:
    outputs = scheduled.outputs
    assert json.loads(outputs["Schedules"]["Value"]) == {
        "nightly-report": {"task": "reports.nightly", "pool": "default", "expression": "cron(0 2 * * ? *)",
                           "timezone": "Europe/Berlin"},
        "gpu.warm": {"task": "gpu.warm", "pool": "gpu", "expression": "rate(5 minutes)", "timezone": "UTC"},
    }
    assert strip_hash(outputs["ScheduleSenderLogGroupName"]["Value"]["Ref"]) == "WorkersSchedulesSenderLogs"


def test_sender_asset_holds_the_sender_and_its_two_modules_and_imports_alone(scheduled: Synth) -> None:
    _, function = scheduled.one("AWS::Lambda::Function", "WorkersSchedulesSender")
    asset_dir = scheduled.outdir / f"asset.{function['Properties']['Code']['S3Key'].removesuffix('.zip')}"
    files = {p.relative_to(asset_dir).as_posix() for p in asset_dir.rglob("*") if p.is_file()}
    assert files == {"batch_celery_container/schedule_sender.py", "batch_celery_container/contract.py",
                     "batch_celery_container/emf.py"}
    module, _, name = function["Properties"]["Handler"].rpartition(".")
    probe = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(asset_dir)!r}]; "
                                     f"import {module} as m; print(m.__file__, callable(m.{name}), 'celery' in sys.modules)"],
        capture_output=True, text=True, cwd=asset_dir,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(asset_dir)) and probe.stdout.strip().endswith("True False")


@pytest.mark.parametrize("pack", [AwsSolutionsChecks, NIST80053R5Checks])
@pytest.mark.parametrize("synth_name", ["scheduled", "scheduled_kms"])
def test_cdk_nag_has_no_unacknowledged_findings(request, synth_name: str, pack) -> None:
    s: Synth = request.getfixturevalue(synth_name)
    report = pack(s.app).validate_scope(s.stack)
    assert [f"{v.rule_name}: {[r.locations for r in v.violating_resources]}" for v in report.violations] == []


@pytest.mark.slow  # cfn-lint: seconds of CPU per template
def test_cfn_lint_reports_nothing(scheduled: Synth) -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), "--format", "parseable", "--ignore-checks", "W3005", "--",
                             str(scheduled.template_file)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- one line for every invalid schedule ----------------------------------------------------------

S = "batch-celery.schedules"
CRON_EXAMPLE = '"0 2 * * ? *" (02:00 every day) or "*/15 8-18 ? * MON-FRI *"'
RATE_ALLOWED = 'allowed: "N minute(s)|hour(s)|day(s)" with N >= 1, singular for 1 (e.g. "5 minutes", "1 hour")'
ONE_OF = 'give exactly one of cron (e.g. "0 2 * * ? *") and rate (e.g. "5 minutes")'


@pytest.mark.parametrize("schedules, line", [
    ({"n": {"task": "r", "cron": "0 2 * * * *"}},
     f"{S}.n.cron = \"0 2 * * * *\": needs '?' in exactly one of day-of-month and day-of-week (the other says "
     f"which days), e.g. {CRON_EXAMPLE}"),
    ({"n": {"task": "r", "cron": "0 2 * *"}},
     f"{S}.n.cron = \"0 2 * *\": has 4 fields; EventBridge Scheduler's cron has six: minutes hours day-of-month "
     f"month day-of-week year, e.g. {CRON_EXAMPLE}"),
    ({"n": {"task": "r", "cron": "0 25 * * ? *"}},
     f"{S}.n.cron = \"0 25 * * ? *\": hours '25' is not allowed; hours takes 0-23, '*', ranges (a-b), lists (a,b) "
     "and steps (*/n)"),
    ({"n": {"task": "r", "cron": "0 2 ? * FUN *"}},
     f"{S}.n.cron = \"0 2 ? * FUN *\": day-of-week 'FUN' is not allowed; day-of-week takes 1-7 or SUN-SAT, '*', "
     "ranges (a-b), lists (a,b) and steps (*/n), or '?', 'L', 'nL' and 'n#k'"),
    ({"n": {"task": "r", "rate": "1 minutes"}}, f'{S}.n.rate = "1 minutes": {RATE_ALLOWED}; write "1 minute"'),
    ({"n": {"task": "r", "rate": "0 minutes"}}, f'{S}.n.rate = "0 minutes": {RATE_ALLOWED}'),
    ({"n": {"task": "r", "rate": "90 seconds"}}, f'{S}.n.rate = "90 seconds": {RATE_ALLOWED}'),
    ({"n": {"task": "r", "rate": "5 minutes", "cron": "0 2 * * ? *"}}, f'{S}.n.cron = "0 2 * * ? *": {ONE_OF}'),
    ({"n": {"task": "r"}}, f"{S}.n.rate = null: {ONE_OF}"),
    ({"n": {"task": "r", "rate": "5 minutes", "timezone": "Mars/Base"}},
     f'{S}.n.timezone = "Mars/Base": allowed: an IANA time zone name, e.g. "UTC", "Europe/Berlin", "America/New_York"'),
    ({"n n": {"task": "r", "rate": "5 minutes"}},
     f"{S}.n n = \"n n\": not a schedule name: allowed: 1..64 letters, digits, '-', '_' and '.' (EventBridge "
     "Scheduler's schedule names)"),
    ({"n": {"task": "reports.*", "rate": "5 minutes"}},
     f"{S}.n.task = \"reports.*\": must be one Celery task name, not a glob (1..200 letters, digits, '_', '.', ':', "
     "'-'), e.g. \"reports.nightly\"; it goes to the pool whose tasks match it, else the default pool"),
    ({"n": {"rate": "5 minutes"}}, f'{S}.n.task = null: is required: the Celery task name, e.g. "reports.nightly"'),
    ({"n": {"task": "r", "rate": "5 minutes", "args": {"a": 1}}},
     f"{S}.n.args = {{'a': 1}}: must be a list of JSON values, e.g. [1, \"a\"]"),
    ({"n": {"task": "r", "rate": "5 minutes", "kwarg": {}}},
     f'{S}.n.kwarg = {{}}: unknown schedule setting; did you mean "kwargs"? (allowed: task, args, kwargs, cron, rate, '
     "timezone)"),
    ({"n": {"task": "r", "rate": "5 minutes", "args": ["x" * 9000]}},
     f'{S}.n.args = "9010 characters with kwargs": args and kwargs take at most 8192 characters as JSON; put a '
     "large input in S3 and its key in kwargs"),
    ([], f"{S} = []: must be an object of schedule name -> schedule settings"),
])
def test_rejects_an_invalid_schedule_in_one_line(schedules, line: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_context({"schedules": schedules})
    assert str(error.value) == line
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("cron", ["0 2 * * ? *", "*/15 8-18 ? * MON-FRI *", "0 10 ? * 6#3 *", "0 10 L * ? *",
                                  "0 9 15W * ? 2026-2030", "0,30 0 ? JAN,JUL 2L *", "cron(5 4 1 * ? *)"])
def test_accepts_eventbridge_scheduler_crons(cron: str) -> None:
    settings = Settings.from_context({"schedules": {"n": {"task": "r", "cron": cron}}})
    assert settings.props.schedules["n"].expression == (cron if cron.startswith("cron(") else f"cron({cron})")


def test_a_schedule_routes_as_the_producers_do() -> None:
    settings = Settings.from_context({"pools": THREE_POOLS, "schedules": SCHEDULES})
    assert {name: settings.props.schedule_pool(name) for name in SCHEDULES} == {
        "nightly-report": "default", "gpu.warm": "gpu"}


def test_the_dashboards_last_row_shows_the_last_fires_and_the_tasks_sent(scheduled: Synth) -> None:
    from .test_dashboard import metrics, rows

    layout = rows(scheduled)
    # Below the stack's row and the pools' (and any other row the stack adds), last.
    assert len(layout) >= 1 + len(THREE_POOLS) + 1
    last_fires, sent, failures = layout[-1]
    assert all(w["properties"]["title"].startswith("schedules: ") for w in layout[-1])
    assert sum(w["width"] for w in layout[-1]) == 24
    query = last_fires["properties"]["query"]
    assert "<WorkersSchedulesSenderLogs>" in query and 'filter sender = "schedule-sender"' in query
    assert all(field in query for field in ("schedule", "task_id", "queue", "scheduled_time"))
    assert {(name, tuple(dims.items())) for _, name, dims, _ in metrics(sent)} == {
        ("scheduled_tasks", (("schedule", name),)) for name in SCHEDULES}
    assert [name for _, name, _, _ in metrics(failures)] == ["Errors", "Throttles"]


def test_a_cdk_app_of_its_own_gets_schedules_from_the_props(tmp_path) -> None:
    # As a user embeds the construct: a bare app and stack, ScheduleProps built in code.
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from batch_celery.construct import CeleryBatchWorkers
    from batch_celery.props import CeleryBatchWorkersProps, PoolProps, ScheduleProps

    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Embedded")
    workers = CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps(
        pools={"default": PoolProps(), "video": PoolProps(tasks=("video.*",))},
        schedules={"weekly-cleanup": ScheduleProps(task="video.cleanup", kwargs={"older_than_days": 30},
                                                   cron="0 3 ? * SUN *", timezone="America/New_York")},
    ))
    assert workers.schedules is not None and workers.schedules.target_pools == ["video"]
    assert set(workers.schedules.schedules) == {"weekly-cleanup"}
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::Scheduler::Schedule", 1)
    template.has_resource_properties("AWS::Scheduler::Schedule", {
        "ScheduleExpression": "cron(0 3 ? * SUN *)", "ScheduleExpressionTimezone": "America/New_York"})

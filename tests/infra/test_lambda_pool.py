"""A Lambda pool (compute "lambda") beside a Batch pool, on the synthesized template: the function and
its SQS event source mapping, its limits, no Batch resources and no scaler entry for it, its access,
alarms and dashboard row; and the settings synth refuses for it, one line each."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from batch_celery.props import LAMBDA_TIMEOUT_MARGIN_SECONDS, LAMBDA_VISIBILITY_FACTOR, SettingsError
from batch_celery.settings import Settings
from batch_celery_container import contract

from .conftest import REPO, QUEUE_ACTIONS, Synth, grants, synth

LIGHT = {"compute": "lambda", "memory_mib": 1024, "task_time_limit_seconds": 60, "max_workers": 20,
         "tasks": ["light.*"]}
POOLS = {"default": {}, "light": LIGHT}
P = "batch-celery.pools"


@pytest.fixture(scope="module")
def lambda_pools(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), pools=POOLS)


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), network="public", pools=POOLS)


def _function(s: Synth) -> dict:
    return s.pool("light", "Function", "AWS::Lambda::Function")[1]["Properties"]


def test_the_mapping_takes_one_message_reports_batch_item_failures_and_caps_concurrency_at_max_workers(
        lambda_pools: Synth) -> None:
    queue_id, _ = lambda_pools.pool("light", "TaskQueue", "AWS::SQS::Queue")
    function_id, _ = lambda_pools.pool("light", "Function", "AWS::Lambda::Function")
    lambda_pools.template.resource_count_is("AWS::Lambda::EventSourceMapping", 1)
    lambda_pools.template.has_resource_properties("AWS::Lambda::EventSourceMapping", {
        "EventSourceArn": {"Fn::GetAtt": [queue_id, "Arn"]},
        "FunctionName": {"Ref": function_id},
        "BatchSize": 1,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": LIGHT["max_workers"]},
    })


def test_the_function_is_the_pool_image_with_the_lambda_entry_point_its_memory_and_timeout(lambda_pools: Synth) -> None:
    function = _function(lambda_pools)
    assert function["PackageType"] == "Image"
    assert function["ImageConfig"] == {"EntryPoint": ["batch-celery-lambda"], "Command": ["lambda_handler.handler"]}
    assert function["MemorySize"] == LIGHT["memory_mib"]
    assert function["Timeout"] == LIGHT["task_time_limit_seconds"] + LAMBDA_TIMEOUT_MARGIN_SECONDS
    assert function["Architectures"] == ["x86_64"]
    # The same image asset as the Batch pool's job definition (one build, one tag).
    _, job_definition = lambda_pools.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    image = json.dumps(job_definition["Properties"]["ContainerProperties"]["Image"])
    tag = json.dumps(function["Code"]["ImageUri"]).rsplit(":", 1)[-1]
    assert tag.strip('"]} ') in image


def test_the_queue_visibility_timeout_is_six_times_the_function_timeout(lambda_pools: Synth) -> None:
    function = _function(lambda_pools)
    _, queue = lambda_pools.pool("light", "TaskQueue", "AWS::SQS::Queue")
    visibility = queue["Properties"]["VisibilityTimeout"]
    assert visibility == LAMBDA_VISIBILITY_FACTOR * function["Timeout"]
    assert function["Environment"]["Variables"][contract.VISIBILITY_TIMEOUT_SECONDS] == str(visibility)


def test_the_function_environment_is_the_workers_with_its_dead_letter_queue(lambda_pools: Synth) -> None:
    env = _function(lambda_pools)["Environment"]["Variables"]
    queue_id, _ = lambda_pools.pool("light", "TaskQueue", "AWS::SQS::Queue")
    dlq_id, _ = lambda_pools.pool("light", "TaskQueueDeadLetterQueue", "AWS::SQS::Queue")
    assert env[contract.QUEUE_URL] == {"Ref": queue_id}
    assert env[contract.DEAD_LETTER_QUEUE_URL] == {"Ref": dlq_id}
    assert env[contract.POOL] == "light"
    assert env[contract.TASK_TIME_LIMIT_SECONDS] == "60"
    assert {contract.RESULT_TABLE, contract.METRICS_NAMESPACE} <= set(env)
    # Lambda reserves the region variables and sets them itself.
    assert contract.REGION not in env and "AWS_REGION" not in env


def test_the_lambda_pool_has_no_batch_resources_and_the_scaler_does_not_see_it(lambda_pools: Synth) -> None:
    for resource_type in ("AWS::Batch::ComputeEnvironment", "AWS::Batch::JobQueue"):
        assert not [k for k in lambda_pools.of_type(resource_type) if "Light" in k]
    # Worker and filler job definitions of the Batch pool only.
    assert not [k for k in lambda_pools.of_type("AWS::Batch::JobDefinition") if "Light" in k]
    _, scaler = lambda_pools.one("AWS::Lambda::Function", "WorkersScalingScaler")
    pools = json.dumps(scaler["Properties"]["Environment"]["Variables"]["POOLS"])
    assert '\\"pool\\":\\"default\\"' in pools and "light" not in pools
    assert "PoolLightJobQueueArn" not in lambda_pools.outputs
    assert "PoolLightFunctionName" in lambda_pools.outputs


def test_routes_send_the_pools_tasks_to_its_queue(lambda_pools: Synth) -> None:
    routes = json.dumps(lambda_pools.outputs["Routes"]["Value"])
    queue_id, _ = lambda_pools.pool("light", "TaskQueue", "AWS::SQS::Queue")
    assert queue_id in routes and "light.*" in routes


def test_the_function_role_consumes_its_own_queue_only_and_writes_results(lambda_pools: Synth) -> None:
    granted = grants(lambda_pools.statements_of_role("WorkersLightPoolFunctionRole"))
    sqs = {(action, resource) for effect, action, resource in granted if action.startswith("sqs:")}
    assert {resource for _, resource in sqs} == {"WorkersLightPoolTaskQueue.Arn",
                                                 "WorkersLightPoolTaskQueueDeadLetterQueue.Arn"}
    assert {a for a, r in sqs if r == "WorkersLightPoolTaskQueue.Arn"} == QUEUE_ACTIONS
    assert {a for a, r in sqs if r == "WorkersLightPoolTaskQueueDeadLetterQueue.Arn"} >= {"sqs:SendMessage"}
    assert not {a for a, r in sqs if r == "WorkersLightPoolTaskQueueDeadLetterQueue.Arn"} & {
        "sqs:ReceiveMessage", "sqs:DeleteMessage"}
    assert ("Allow", "dynamodb:PutItem", "WorkersResultsTable.Arn") in granted
    assert not [g for g in granted if g[1].startswith("batch:")]


def test_the_queue_policy_names_the_function_role_as_its_reader(lambda_pools: Synth) -> None:
    role_id, _ = lambda_pools.one("AWS::IAM::Role", "WorkersLightPoolFunctionRole")
    _, policy = lambda_pools.pool("light", "TaskQueuePolicy", "AWS::SQS::QueuePolicy")
    assert role_id in json.dumps(policy["Properties"]["PolicyDocument"])


def test_the_function_runs_in_the_worker_subnets_of_a_private_vpc(lambda_pools: Synth) -> None:
    subnets = json.dumps(_function(lambda_pools)["VpcConfig"]["SubnetIds"])
    assert "PrivateSubnet" in subnets


def test_in_network_private_endpoints_the_function_has_the_workers_subnets_and_security_group(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    s = synth(tmp_path_factory.mktemp("cdk.out"), network="private-endpoints", pools=POOLS)
    vpc = _function(s)["VpcConfig"]
    sg_id, _ = s.one("AWS::EC2::SecurityGroup", "WorkersNetworkWorkerSecurityGroup")
    assert vpc["SecurityGroupIds"] == [{"Fn::GetAtt": [sg_id, "GroupId"]}]
    _, environment = s.pool("default", "ComputeEnvironment", "AWS::Batch::ComputeEnvironment")
    assert vpc["SubnetIds"] == environment["Properties"]["ComputeResources"]["Subnets"]


def test_in_network_public_the_function_runs_outside_the_vpc(public: Synth) -> None:
    assert "VpcConfig" not in _function(public)


def test_alarms_sla_and_function_errors_notify_the_topic_and_no_depth_alarms(lambda_pools: Synth) -> None:
    topic_id, _ = lambda_pools.one("AWS::SNS::Topic", "WorkersMonitoringAlarmTopic")
    for name in ("WorkersLightAlarmsSlaAlarm", "WorkersLightAlarmsFunctionErrorsAlarm",
                 "WorkersMonitoringLightTaskDeadLetterAlarm"):
        _, alarm = lambda_pools.one("AWS::CloudWatch::Alarm", name)
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}], name
    assert not [k for k in lambda_pools.of_type("AWS::CloudWatch::Alarm") if "LightAlarmsLowDepth" in k
                or "LightAlarmsHighDepth" in k]
    assert not [k for k in lambda_pools.of_type("AWS::Events::Rule") if "Light" in k]


def test_the_dashboard_has_a_row_for_the_lambda_pool(lambda_pools: Synth) -> None:
    _, dashboard = lambda_pools.one("AWS::CloudWatch::Dashboard", "WorkersDashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert "light: functions running (Lambda, at most 20)" in body
    assert "light: dead-letter queue" in body and "light: tasks per minute" in body


def test_every_resource_of_the_pool_carries_the_pool_tag(lambda_pools: Synth) -> None:
    for logical_id, resource in lambda_pools.resources.items():
        if logical_id.startswith("WorkersLightPool") and "Tags" in resource["Properties"]:
            tags = resource["Properties"]["Tags"]
            assert {"Key": "pool", "Value": "light"} in tags, logical_id


@pytest.mark.parametrize("pack", [AwsSolutionsChecks, NIST80053R5Checks])
@pytest.mark.parametrize("synth_name", ["lambda_pools", "public"])
def test_cdk_nag_has_no_unacknowledged_findings(request, synth_name: str, pack) -> None:
    s: Synth = request.getfixturevalue(synth_name)
    report = pack(s.app).validate_scope(s.stack)
    assert [f"{v.rule_name}: {[r.locations for r in v.violating_resources]}" for v in report.violations] == []


def test_an_arm64_lambda_pool_is_an_arm64_function(tmp_path_factory: pytest.TempPathFactory) -> None:
    s = synth(tmp_path_factory.mktemp("cdk.out"), pools={"default": {}, "light": {**LIGHT, "platform": "linux/arm64"}})
    assert _function(s)["Architectures"] == ["arm64"]


def test_a_lambda_pool_may_be_the_default_pool_the_filler_runs_on_the_batch_pool(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    s = synth(tmp_path_factory.mktemp("cdk.out"), pools={"light": {**LIGHT, "tasks": []}, "batch": {"tasks": ["b.*"]}})
    job_queue_id, _ = s.pool("batch", "JobQueue", "AWS::Batch::JobQueue")
    assert s.outputs["FillerJobQueueArn"]["Value"] == {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]}


INVALID = [
    ({"compute": "lambda", "task_time_limit_seconds": 881},
     f"{P}.light.task_time_limit_seconds = 881: a Lambda pool's tasks may run at most 880 s (Lambda stops a function"
     ' at 900 s, and the function keeps 20 s to record the result); longer tasks belong in a Batch pool ("fargate",'
     ' "ec2")'),
    ({"compute": "lambda"},  # the Batch default of 3 h
     f"{P}.light.task_time_limit_seconds = 10800: a Lambda pool's tasks may run at most 880 s (Lambda stops a"
     ' function at 900 s, and the function keeps 20 s to record the result); longer tasks belong in a Batch pool'
     ' ("fargate", "ec2")'),
    ({**LIGHT, "memory_mib": 10241}, f"{P}.light.memory_mib = 10241: a Lambda function takes 128..10240 MiB"),
    ({**LIGHT, "memory_mib": 64}, f"{P}.light.memory_mib = 64: a Lambda function takes 128..10240 MiB"),
    ({**LIGHT, "vcpus": 2},
     f"{P}.light.vcpus = 2: a Lambda function's CPU comes with its memory (about 1 vCPU per 1769 MiB, 6 at 10240"
     " MiB); leave vcpus out and size memory_mib"),
    ({**LIGHT, "gpus": 1}, f'{P}.light.gpus = 1: Lambda has no GPUs; set compute to "ec2" or "ec2_spot"'),
    ({**LIGHT, "instance_types": ["c7g"]},
     f'{P}.light.instance_types = ["c7g"]: a Lambda pool runs on no instances of its own; leave instance_types out'
     ' or use compute "ec2"'),
    ({**LIGHT, "max_workers": 1},
     f"{P}.light.max_workers = 1: a Lambda pool's max_workers is its event source mapping's maximum concurrency,"
     " 2..1000"),
    ({**LIGHT, "max_workers": 1001},
     f"{P}.light.max_workers = 1001: a Lambda pool's max_workers is its event source mapping's maximum concurrency,"
     " 2..1000"),
    ({**LIGHT, "concurrency": 2},
     f"{P}.light.concurrency = 2: a Lambda function runs one task at a time; max_workers says how many run at once"),
    ({**LIGHT, "max_receive_count": 1},
     f"{P}.light.max_receive_count = 1: a Lambda pool needs >= 2: a task with a countdown or eta waits out one"
     " receive in SQS before it runs"),
    ({**LIGHT, "job_timeout_seconds": 3600},
     f"{P}.light.job_timeout_seconds = 3600: a Lambda pool has no Batch worker jobs or scaler; its event source"
     " mapping takes the messages (max_workers at once); leave it out"),
    ({**LIGHT, "idle_seconds": 30},
     f"{P}.light.idle_seconds = 30: a Lambda pool has no Batch worker jobs or scaler; its event source mapping"
     " takes the messages (max_workers at once); leave it out"),
]


@pytest.mark.parametrize("light, message", INVALID, ids=[m.split(" = ")[0].rsplit(".", 1)[-1] + str(i)
                                                          for i, (_, m) in enumerate(INVALID)])
def test_rejects_what_lambda_cannot_do(light: dict, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SettingsError) as raised:
        Settings.from_context({"pools": {"default": {}, "light": light}})
    assert str(raised.value) == message
    assert "\n" not in str(raised.value)


def test_rejects_a_deployment_of_lambda_pools_only() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_context({"pools": {"light": LIGHT}})
    assert str(raised.value) == (
        'batch-celery.pools = ["light"]: at least one pool must run on Batch ("fargate", "fargate_spot", "ec2" or'
        ' "ec2_spot"): the filler job runs there; a "lambda" pool runs beside them')


def test_a_longer_visibility_timeout_setting_is_kept() -> None:
    settings = Settings.from_context({"pools": {"default": {}, "light": {**LIGHT, "visibility_timeout_seconds": 900}}})
    assert settings.props.pools["light"].queue_visibility_timeout_seconds == 900


@pytest.mark.parametrize("access", ["default", "restricted"])
def test_policy_evaluation_gives_the_function_role_what_a_worker_role_gets(access: str, tmp_path_factory) -> None:
    """The queue and key policies evaluated as AWS evaluates them (policy_evaluation.py), for a
    Batch pool and a Lambda pool side by side: the function role is the Lambda pool's workers."""
    from .policy_evaluation import STACKS, StackPolicies, matrix, principals_for
    from .test_policy_evaluation import EXPECTED

    s = synth(tmp_path_factory.mktemp("cdk.out"), **STACKS[access], pools=POOLS)
    stack = StackPolicies(s.template.to_json())
    pools = ["Default", "Light"]
    for pool in pools:
        got = matrix(stack, pool, principals_for(stack, pool, pools), access)
        # Another pool's role: nothing on this pool's queues (the deployment's key is one for all).
        other_pool = EXPECTED[access]["workers"] & {"decrypt directly"}
        expected = {**EXPECTED[access], **{f"workers of {other}": other_pool for other in pools if other != pool}}
        if pool == "Light":
            expected["scaler"] = set()  # the scaler does not watch a Lambda pool's queue
        assert got.rows == expected, got.render()

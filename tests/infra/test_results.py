"""The result table: Celery's schema, on-demand, encrypted, recoverable, expiring; workers write,
the filler reads; `results: false` removes it all; and a user's app is granted read the documented way."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Template

from batch_celery.construct import CeleryBatchWorkers
from batch_celery.props import CeleryBatchWorkersProps, PoolProps, pascal
from batch_celery_container import contract, limits

from .conftest import THREE_POOLS, Synth, env_of, grants, synth

TABLE = "WorkersResultsTable"
WRITE = {"dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:ConditionCheckItem", "dynamodb:DeleteItem",
         "dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
         "dynamodb:PutItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:UpdateItem", "dynamodb:DescribeTimeToLive"}


@pytest.fixture(scope="module")
def without_results(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), results=False)


@pytest.fixture(scope="module")
def kept_30_days(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), result_expires_days=30)


def _table(s: Synth) -> tuple[str, dict]:
    return s.one("AWS::DynamoDB::GlobalTable", TABLE)


def test_the_table_is_celerys_schema_on_demand_encrypted_recoverable_and_expiring(default: Synth) -> None:
    _, table = _table(default)
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": contract.RESULT_KEY_ATTRIBUTE, "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": contract.RESULT_TTL_ATTRIBUTE, "Enabled": True}
    [replica] = props["Replicas"]
    assert replica["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


@pytest.mark.parametrize("pool", tuple(THREE_POOLS))
def test_every_pools_workers_get_the_table_and_may_write_results_there_only(three_pools: Synth, pool: str) -> None:
    table_id, _ = _table(three_pools)
    _, job_definition = three_pools.pool(pool, "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    env = env_of(job_definition)
    assert env[contract.RESULT_TABLE] == {"Ref": table_id}
    assert env[contract.RESULT_EXPIRES_DAYS] == str(limits.DEFAULT_RESULT_EXPIRES_DAYS)
    assert env[contract.METRICS_NAMESPACE] == "BatchCelery/BatchCelery"
    role = f"Workers{pascal(pool)}PoolWorkerRole"
    on_table = {(e, a) for e, a, r in grants(three_pools.statements_of_role(role)) if r.startswith(TABLE)}
    assert on_table == {("Allow", action) for action in WRITE}
    dynamodb_anywhere_else = {r for e, a, r in grants(three_pools.statements_of_role(role))
                              if a.startswith("dynamodb:") and not r.startswith(TABLE)}
    assert dynamodb_anywhere_else == set()


def test_the_filler_may_only_read_results_and_knows_the_table(default: Synth) -> None:
    table_id, _ = _table(default)
    actions = {a for e, a, r in grants(default.statements_of_role("WorkersFillerRole")) if r.startswith(TABLE)}
    assert actions and all(a in {"dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan",
                                 "dynamodb:ConditionCheckItem", "dynamodb:DescribeTable", "dynamodb:GetRecords",
                                 "dynamodb:GetShardIterator"} for a in actions), actions
    _, filler = default.one("AWS::Batch::JobDefinition", "WorkersFillerJobDefinition")
    assert env_of(filler)[contract.RESULT_TABLE] == {"Ref": table_id}


def test_outputs_name_the_table_and_the_metrics_namespace(default: Synth) -> None:
    table_id, _ = _table(default)
    assert default.outputs["ResultTableName"]["Value"] == {"Ref": table_id}
    assert default.outputs["MetricsNamespace"]["Value"] == "BatchCelery/BatchCelery"


def test_result_expiry_reaches_the_workers(kept_30_days: Synth) -> None:
    _, job_definition = kept_30_days.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    assert env_of(job_definition)[contract.RESULT_EXPIRES_DAYS] == "30"


def test_results_false_leaves_no_table_no_variables_no_grants_no_output(without_results: Synth) -> None:
    assert without_results.of_type("AWS::DynamoDB::GlobalTable") == {}
    _, job_definition = without_results.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    env = env_of(job_definition)
    assert contract.RESULT_TABLE not in env and contract.RESULT_EXPIRES_DAYS not in env
    assert contract.METRICS_NAMESPACE in env  # metrics stay on
    assert "ResultTableName" not in without_results.outputs
    assert not any(a.startswith("dynamodb:") for _, a, _ in grants(
        without_results.statements_of_role("WorkersDefaultPoolWorkerRole")))


def test_a_users_application_role_is_granted_read_the_documented_way() -> None:
    # As the README shows: embed the construct, then grant the application's role.
    app = cdk.App()
    stack = cdk.Stack(app, "UserStack")
    workers = CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps())
    app_role = iam.Role(stack, "AppRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
    workers.results.grant_read(app_role)
    template = Template.from_stack(stack).to_json()
    [policy] = [p for p in template["Resources"].values() if p["Type"] == "AWS::IAM::Policy"
                and any(r.get("Ref", "").startswith("AppRole") for r in p["Properties"]["Roles"])]
    actions = {a for s in policy["Properties"]["PolicyDocument"]["Statement"]
               for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert "dynamodb:GetItem" in actions and "dynamodb:BatchGetItem" in actions
    assert not {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:UpdateItem"} & actions


def test_grant_send_tasks_lets_an_application_send_to_every_pool_and_read_results_only() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "UserStack")
    workers = CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps(pools={
        "default": PoolProps(), "gpu": PoolProps(compute="ec2_spot", gpus=1, vcpus=4, memory_mib=15000,
                                                 tasks=("gpu.*",))}))
    app_role = iam.Role(stack, "AppRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
    workers.grant_send_tasks(app_role)
    template = Template.from_stack(stack).to_json()
    [policy] = [p for p in template["Resources"].values() if p["Type"] == "AWS::IAM::Policy"
                and any(r.get("Ref", "").startswith("AppRole") for r in p["Properties"]["Roles"])]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action: dict[str, list] = {}
    for statement in statements:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]:
            by_action.setdefault(action, []).extend(resources)
    queues = {stack.resolve(stack.get_logical_id(pool.queue.node.default_child)) for pool in workers.pools.values()}
    sent_to = {r["Fn::GetAtt"][0] for r in by_action["sqs:SendMessage"]}
    assert sent_to == queues  # every pool's task queue, and no dead-letter queue
    assert not {a for a in by_action if a.startswith("sqs:")} - {
        "sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"}
    assert {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:DescribeTable"} <= set(by_action)
    assert not {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:UpdateItem"} & set(by_action)
    # The queues' policies deny sending to anyone not named: the grantee is named in each.
    role_arn = {"Fn::GetAtt": [stack.resolve(stack.get_logical_id(app_role.node.default_child)), "Arn"]}
    for queue_id in queues:
        [policy] = [p for p in template["Resources"].values() if p["Type"] == "AWS::SQS::QueuePolicy"
                    and {"Ref": queue_id} in p["Properties"]["Queues"]]
        [deny_send] = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                       if s["Effect"] == "Deny" and s.get("Sid") == "OnlyNamedPrincipalsSend"]
        assert role_arn in deny_send["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]

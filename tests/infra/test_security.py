"""The security posture a regulated company's review asks for, read off the template:
tags on every resource, audit evidence kept apart and kept after the stack, least privilege."""

from __future__ import annotations

from typing import Any

import pytest

from batch_celery.construct import PROJECT_TAG
from batch_celery.pool import POOL_TAG

from .conftest import THREE_POOLS, Synth, synth

# Resource types whose template properties take tags, and how they hold them.
LIST_TAGGED = ("AWS::SQS::Queue", "AWS::IAM::Role", "AWS::Logs::LogGroup", "AWS::Lambda::Function",
               "AWS::SNS::Topic", "AWS::KMS::Key", "AWS::EC2::VPC", "AWS::EC2::Subnet",
               "AWS::EC2::SecurityGroup", "AWS::EC2::NatGateway", "AWS::EC2::EIP", "AWS::EC2::InternetGateway",
               "AWS::EC2::RouteTable", "AWS::EC2::FlowLog", "AWS::DynamoDB::GlobalTable",
               "AWS::EC2::LaunchTemplate")
MAP_TAGGED = ("AWS::Batch::ComputeEnvironment", "AWS::Batch::JobQueue", "AWS::Batch::JobDefinition")


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    properties = resource.get("Properties", {})
    if resource["Type"] == "AWS::DynamoDB::GlobalTable":
        tags = [tag for replica in properties.get("Replicas", []) for tag in replica.get("Tags", [])]
    else:
        tags = properties.get("Tags", [])
    if isinstance(tags, dict):
        return dict(tags)
    return {tag["Key"]: tag["Value"] for tag in tags}


@pytest.mark.parametrize("fixture", ["default", "three_pools"])
def test_every_taggable_resource_names_the_project_and_each_pools_its_pool(fixture: str, request) -> None:
    template: Synth = request.getfixturevalue(fixture)
    checked = 0
    for logical_id, resource in template.resources.items():
        if resource["Type"] not in LIST_TAGGED + MAP_TAGGED:
            continue
        checked += 1
        tags = tags_of(resource)
        assert tags.get(PROJECT_TAG[0]) == PROJECT_TAG[1], f"{logical_id} ({resource['Type']}) lacks the project tag"
        for pool in (["default"] if fixture == "default" else list(THREE_POOLS)):
            prefix = f"Workers{pool.capitalize()}Pool"
            if logical_id.startswith(prefix):
                assert tags.get(POOL_TAG) == pool, f"{logical_id} lacks tag {POOL_TAG}={pool}"
    assert checked >= 25


def test_flow_logs_and_job_logs_have_their_own_retention_and_audit_evidence_outlives_the_stack(default) -> None:
    groups = default.of_type("AWS::Logs::LogGroup")
    flow = [r for k, r in groups.items() if k.startswith("WorkersNetworkFlowLogs")]
    assert [r["Properties"]["RetentionInDays"] for r in flow] == [365]
    assert flow[0]["DeletionPolicy"] == flow[0]["UpdateReplacePolicy"] == "Retain"
    [jobs] = [r for k, r in groups.items() if k.startswith("WorkersJobLogs")]
    assert jobs["Properties"]["RetentionInDays"] == 30 and jobs["DeletionPolicy"] == "Delete"
    dead_letter = {k: r for k, r in default.of_type("AWS::SQS::Queue").items() if "DeadLetter" in k}
    assert len(dead_letter) == 2  # the pool's DLQ and the events DLQ
    assert {r["DeletionPolicy"] for r in dead_letter.values()} == {"Retain"}
    task_queue = default.pool("default", "TaskQueue", "AWS::SQS::Queue")[1]
    assert task_queue["DeletionPolicy"] == "Delete"


def test_retain_on_delete_false_deletes_them_with_the_stack(tmp_path) -> None:
    stack = synth(tmp_path, retain_on_delete=False, flow_log_retention_days=90)
    groups = stack.of_type("AWS::Logs::LogGroup")
    [flow] = [r for k, r in groups.items() if k.startswith("WorkersNetworkFlowLogs")]
    assert (flow["Properties"]["RetentionInDays"], flow["DeletionPolicy"]) == (90, "Delete")
    assert {r["DeletionPolicy"] for k, r in stack.of_type("AWS::SQS::Queue").items()} == {"Delete"}


# --- who may do what with the tasks (access.py) -------------------------------------------------
# test_policy_evaluation.py evaluates the queue, key and trust policies as AWS does.

@pytest.mark.parametrize("value, message", [
    (["arn:aws:iam::123:role/x"], "must be a list of IAM role ARNs"),
    ("arn:aws:iam::123456789012:role/x", "must be a list of IAM role ARNs"),
    (["arn:aws:iam::123456789012:user/x"], "must be a list of IAM role ARNs"),
])
def test_a_bad_role_arn_fails_synth_with_one_line(tmp_path, value, message) -> None:
    from batch_celery.props import SettingsError

    with pytest.raises(SettingsError, match=message) as error:
        synth(tmp_path, producer_role_arns=value)
    assert "batch-celery.producer_role_arns" in str(error.value) and "\n" not in str(error.value)


# --- confused deputy --------------------------------------------------------------------------

GUARDED = {"ecs-tasks.amazonaws.com": "ecs:", "vpc-flow-logs.amazonaws.com": "ec2:",
           "events.amazonaws.com": "events:"}


@pytest.mark.parametrize("fixture", ["default", "three_pools", "alarms_mode"])
def test_every_service_trust_that_can_name_its_source_names_this_account(fixture: str, request) -> None:
    stack: Synth = request.getfixturevalue(fixture)
    seen = set()
    for logical_id, role in stack.of_type("AWS::IAM::Role").items():
        for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            service = statement["Principal"].get("Service")
            if service not in GUARDED:
                # Lambda and EC2 set neither key when they assume an execution or instance role.
                assert service in ("lambda.amazonaws.com", "ec2.amazonaws.com"), (logical_id, service)
                continue
            seen.add(service)
            condition = statement.get("Condition", {})
            assert condition.get("StringEquals") == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}, logical_id
            source_arn = json_text(condition["ArnLike"]["aws:SourceArn"])
            assert GUARDED[service] in source_arn and "AWS::AccountId" in source_arn and "AWS::Region" in source_arn
    assert seen >= {"ecs-tasks.amazonaws.com", "vpc-flow-logs.amazonaws.com"}
    if fixture == "alarms_mode":
        assert "events.amazonaws.com" in seen  # the rules that submit jobs


def json_text(value: Any) -> str:
    import json

    return json.dumps(value)


# --- read-only root filesystem, explicit user ----------------------------------------------------

@pytest.mark.parametrize("fixture", ["default", "three_pools"])
def test_jobs_run_as_the_images_user_on_a_read_only_root_with_tmp_as_scratch(fixture: str, request) -> None:
    from batch_celery.pool import WORKER_USER

    stack: Synth = request.getfixturevalue(fixture)
    definitions = stack.of_type("AWS::Batch::JobDefinition")
    assert len(definitions) >= 2  # the workers' and the filler's
    for logical_id, definition in definitions.items():
        container = definition["Properties"]["ContainerProperties"]
        assert container["ReadonlyRootFilesystem"] is True, logical_id
        assert container["User"] == WORKER_USER
        assert container["Volumes"] == [{"Name": "scratch"}]  # task storage, no host path
        assert container["MountPoints"] == [{"ContainerPath": "/tmp", "SourceVolume": "scratch"}]


@pytest.mark.parametrize("dockerfile", ["batch_celery_container/Dockerfile", "examples/gpu-pool/Dockerfile"])
def test_each_image_runs_as_that_user_and_declares_its_scratch_volume(dockerfile: str) -> None:
    from batch_celery.pool import WORKER_USER

    from .conftest import REPO

    lines = [line.strip() for line in (REPO / dockerfile).read_text().splitlines()]
    assert [line for line in lines if line.startswith("USER ")] == [f"USER {WORKER_USER}"]
    # VOLUME /tmp makes the job's scratch volume start as the image's /tmp, writable by that user.
    assert "VOLUME /tmp" in lines

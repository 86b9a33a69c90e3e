"""Network, task queue, workers and their IAM, asserted resource by resource."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match

from .conftest import Synth, grants

def _env(job_definition: dict) -> dict:
    return {e["Name"]: e["Value"] for e in job_definition["Properties"]["ContainerProperties"]["Environment"]}


# --- network -------------------------------------------------------------------------------

def test_vpc_has_a_public_and_a_private_subnet_in_each_of_two_azs(default: Synth) -> None:
    subnets = default.of_type("AWS::EC2::Subnet").values()
    public = [s for s in subnets if s["Properties"]["MapPublicIpOnLaunch"]]
    assert (len(subnets), len(public)) == (4, 2)
    default.template.resource_count_is("AWS::EC2::VPC", 1)


def test_one_nat_gateway_serves_the_private_subnets(default: Synth) -> None:
    default.template.resource_count_is("AWS::EC2::NatGateway", 1)
    routes = [r["Properties"] for r in default.of_type("AWS::EC2::Route").values() if "NatGatewayId" in r["Properties"]]
    assert len(routes) == 2 and all(r["DestinationCidrBlock"] == "0.0.0.0/0" for r in routes)


def test_vpc_flow_logs_all_traffic_into_a_log_group_with_retention(default: Synth) -> None:
    group_id, group = default.one("AWS::Logs::LogGroup", "NetworkFlowLogs")
    assert group["Properties"]["RetentionInDays"] == 30
    default.template.has_resource_properties(
        "AWS::EC2::FlowLog",
        {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs",
         "LogGroupName": {"Ref": group_id}},
    )


def test_default_security_group_is_stripped_of_rules(default: Synth) -> None:
    default.template.resource_count_is("Custom::VpcRestrictDefaultSG", 1)


@pytest.fixture(scope="module")
def one_az(make_synth) -> Synth:
    return make_synth(max_azs=1, log_retention_days=7)


def test_max_azs_sets_the_subnets(one_az: Synth) -> None:
    assert len(one_az.of_type("AWS::EC2::Subnet")) == 2
    one_az.template.resource_count_is("AWS::EC2::NatGateway", 1)


def test_log_retention_days_reaches_every_log_group(one_az: Synth) -> None:
    groups = one_az.of_type("AWS::Logs::LogGroup").values()
    assert len(groups) == 3
    assert {g["Properties"]["RetentionInDays"] for g in groups} == {7}


# --- task queue ----------------------------------------------------------------------------

def test_task_queue_is_encrypted_with_a_dead_letter_queue_and_explicit_timings(default: Synth) -> None:
    dlq_id, dlq = default.one("AWS::SQS::Queue", "TaskQueueDeadLetterQueue")
    _, queue = default.one("AWS::SQS::Queue", "TaskQueue1")
    assert queue["Properties"] == {
        "SqsManagedSseEnabled": True,
        "VisibilityTimeout": 300,
        "MessageRetentionPeriod": 4 * 86400,
        "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}, "maxReceiveCount": 3},
    }
    assert dlq["Properties"] == {"SqsManagedSseEnabled": True, "MessageRetentionPeriod": 14 * 86400}


def test_queue_names_are_generated_not_hard_coded(default: Synth) -> None:
    assert all("QueueName" not in q["Properties"] for q in default.of_type("AWS::SQS::Queue").values())


def test_every_queue_denies_requests_without_tls(default: Synth) -> None:
    queues = set(default.of_type("AWS::SQS::Queue"))
    protected = set()
    for policy in default.of_type("AWS::SQS::QueuePolicy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}:
                assert st["Action"] == "sqs:*" and st["Principal"] == {"AWS": "*"}
                protected |= {q["Ref"] for q in policy["Properties"]["Queues"]}
    assert protected == queues


def test_queue_settings_reach_the_queue_and_the_worker(make_synth) -> None:
    # A 4-hour task with a 5-minute crash-recovery window: the worker's heartbeat keeps the
    # running task's message invisible, so the task limit may exceed the visibility timeout.
    custom = make_synth(task_time_limit_seconds=4 * 3600, visibility_timeout_seconds=300, stop_grace_seconds=10,
                        message_retention_days=7, max_receive_count=5, job_timeout_seconds=5 * 3600)
    _, queue = custom.one("AWS::SQS::Queue", "TaskQueue1")
    assert queue["Properties"]["VisibilityTimeout"] == 300
    assert queue["Properties"]["MessageRetentionPeriod"] == 7 * 86400
    assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 5
    _, worker = custom.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    env = _env(worker)
    assert (env["TASK_TIME_LIMIT_SECONDS"], env["VISIBILITY_TIMEOUT_SECONDS"], env["STOP_GRACE_SECONDS"]) == (
        "14400", "300", "10")
    assert worker["Properties"]["Timeout"] == {"AttemptDurationSeconds": 5 * 3600}


# --- compute -------------------------------------------------------------------------------

def test_compute_environment_is_managed_fargate_in_the_private_subnets(default: Synth) -> None:
    _, env = default.one("AWS::Batch::ComputeEnvironment", "WorkersComputeEnvironment")
    props = env["Properties"]
    private = sorted(k for k in default.of_type("AWS::EC2::Subnet") if "Private" in k)
    assert props["Type"] == "managed"
    assert props["ComputeResources"]["Type"] == "FARGATE"
    assert props["ComputeResources"]["MaxvCpus"] == 48
    assert sorted(s["Ref"] for s in props["ComputeResources"]["Subnets"]) == private
    # Batch's service-linked role, not a role with a managed policy.
    assert "ServiceRole" not in props


def test_job_queue_is_fifo_over_the_one_compute_environment(default: Synth) -> None:
    env_id, _ = default.one("AWS::Batch::ComputeEnvironment", "WorkersComputeEnvironment")
    _, queue = default.one("AWS::Batch::JobQueue", "WorkersJobQueue")
    assert "SchedulingPolicyArn" not in queue["Properties"]
    assert queue["Properties"]["ComputeEnvironmentOrder"] == [
        {"ComputeEnvironment": {"Fn::GetAtt": [env_id, "ComputeEnvironmentArn"]}, "Order": 1}]


def test_image_is_built_for_amd64_by_default(default: Synth) -> None:
    assets = json.loads((default.outdir / "BatchCelery.assets.json").read_text())
    images = list(assets["dockerImages"].values())
    assert len(images) == 1
    assert images[0]["source"]["platform"] == "linux/amd64"
    for job_id, job in default.of_type("AWS::Batch::JobDefinition").items():
        assert job["Properties"]["ContainerProperties"]["RuntimePlatform"] == {
            "CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}, job_id


def test_graviton_and_spot_settings_switch_image_jobs_and_compute(make_synth) -> None:
    graviton = make_synth(platform="linux/arm64", spot=True)
    assets = json.loads((graviton.outdir / "BatchCelery.assets.json").read_text())
    assert [i["source"]["platform"] for i in assets["dockerImages"].values()] == ["linux/arm64"]
    for job in graviton.of_type("AWS::Batch::JobDefinition").values():
        assert job["Properties"]["ContainerProperties"]["RuntimePlatform"]["CpuArchitecture"] == "ARM64"
    _, env = graviton.one("AWS::Batch::ComputeEnvironment", "WorkersComputeEnvironment")
    assert env["Properties"]["ComputeResources"]["Type"] == "FARGATE_SPOT"


# --- job definitions -----------------------------------------------------------------------

def test_worker_job_runs_the_lifecycle_script_without_public_ip(default: Synth) -> None:
    group_id, _ = default.one("AWS::Logs::LogGroup", "WorkersJobLogs")
    role_id, _ = default.one("AWS::IAM::Role", "WorkersWorkerRole")
    default.template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "Type": "container",
            "PlatformCapabilities": ["FARGATE"],
            "ContainerProperties": Match.object_like({
                "Command": ["./run_celery_worker.sh"],
                "NetworkConfiguration": {"AssignPublicIp": "DISABLED"},
                "LinuxParameters": {"InitProcessEnabled": True},
                "JobRoleArn": {"Fn::GetAtt": [role_id, "Arn"]},
                "LogConfiguration": {
                    "LogDriver": "awslogs",
                    "Options": {"awslogs-group": {"Ref": group_id}, "awslogs-stream-prefix": "worker",
                                "awslogs-region": {"Ref": "AWS::Region"}},
                },
            }),
            "Timeout": {"AttemptDurationSeconds": 4 * 3600},
        },
    )
    _, worker = default.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    assert sorted(worker["Properties"]["ContainerProperties"]["ResourceRequirements"], key=str) == [
        {"Type": "MEMORY", "Value": "2048"}, {"Type": "VCPU", "Value": "1"}]


def test_worker_job_retries_infrastructure_failures_and_exits_on_application_errors(default: Synth) -> None:
    _, worker = default.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    strategy = worker["Properties"]["RetryStrategy"]
    assert strategy["Attempts"] == 3
    rules = strategy["EvaluateOnExit"]
    assert 1 <= len(rules) <= 5
    # Batch retries when no rule matches, so the catch-all EXIT must come last.
    assert rules[-1] == {"Action": "EXIT", "OnReason": "*"}
    retried = {r.get("OnStatusReason") or r.get("OnReason") for r in rules[:-1]}
    assert all(r["Action"] == "RETRY" for r in rules[:-1])
    assert "Your Spot Task was interrupted*" in retried
    assert "CannotPullContainerError:*" in retried


def test_worker_environment_is_the_container_contract(default: Synth) -> None:
    queue_id, _ = default.one("AWS::SQS::Queue", "TaskQueue1")
    _, worker = default.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    assert _env(worker) == {
        "CELERY_QUEUE_NAME": {"Fn::GetAtt": [queue_id, "QueueName"]},
        "CELERY_QUEUE_URL": {"Ref": queue_id},
        "AWS_DEFAULT_REGION": {"Ref": "AWS::Region"},
        "IDLE_SECONDS": "60",
        "POLL_SECONDS": "10",
        "WORKER_CONCURRENCY": "1",
        "TASK_TIME_LIMIT_SECONDS": "900",
        "VISIBILITY_TIMEOUT_SECONDS": "300",
        "STOP_GRACE_SECONDS": "20",
    }


def test_filler_job_sends_num_messages_tasks(default: Synth) -> None:
    queue_id, _ = default.one("AWS::SQS::Queue", "TaskQueue1")
    _, filler = default.one("AWS::Batch::JobDefinition", "WorkersFillerJobDefinition")
    props = filler["Properties"]
    assert props["ContainerProperties"]["Command"] == [
        "python", "fill-batch-queue.py", "--num-messages", "Ref::numMessages"]
    assert props["Parameters"] == {"numMessages": "100"}
    assert props["ContainerProperties"]["NetworkConfiguration"] == {"AssignPublicIp": "DISABLED"}
    assert _env(filler) == {
        "CELERY_QUEUE_NAME": {"Fn::GetAtt": [queue_id, "QueueName"]},
        "CELERY_QUEUE_URL": {"Ref": queue_id},
        "AWS_DEFAULT_REGION": {"Ref": "AWS::Region"},
    }
    assert "Timeout" in props


def test_job_logs_have_retention(default: Synth) -> None:
    _, group = default.one("AWS::Logs::LogGroup", "WorkersJobLogs")
    assert group["Properties"]["RetentionInDays"] == 30


# --- IAM -----------------------------------------------------------------------------------

def test_worker_role_consumes_and_sends_on_the_task_queue_and_only_sends_to_the_dlq(default: Synth) -> None:
    allowed = grants(default.statements_of_role("WorkersWorkerRole"))
    queue_actions = {"sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                     "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"}
    dlq_actions = {"sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"}
    assert allowed == {("Allow", a, "TaskQueue.Arn") for a in queue_actions} | {
        ("Allow", a, "TaskQueueDeadLetterQueue.Arn") for a in dlq_actions}


def test_filler_role_only_sends_to_the_task_queue(default: Synth) -> None:
    assert grants(default.statements_of_role("WorkersFillerRole")) == {
        ("Allow", a, "TaskQueue.Arn") for a in ("sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl")}


def test_job_execution_roles_only_pull_the_image_and_write_job_logs(default: Synth) -> None:
    for prefix in ("WorkersWorkerContainerExecutionRole", "WorkersFillerContainerExecutionRole"):
        allowed = grants(default.statements_of_role(prefix))
        by_resource = {(action, resource) for _, action, resource in allowed}
        assert ("ecr:GetAuthorizationToken", "*") in by_resource
        assert {a for a, r in by_resource if r == "*"} == {"ecr:GetAuthorizationToken"}
        assert {a for a, r in by_resource if r == "WorkersJobLogs.Arn"} == {"logs:CreateLogStream", "logs:PutLogEvents"}
        ecr = {a for a, r in by_resource if "container-assets" in r}
        assert ecr == {"ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"}
        assert len(by_resource) == 6


def test_no_role_has_a_service_wildcard_or_a_managed_full_access_policy(default: Synth) -> None:
    for role_id, role in default.of_type("AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "FullAccess" not in managed, role_id
        if managed != "[]":
            # Only CDK's own provider that strips the default security group's rules.
            assert role_id.startswith("CustomVpcRestrictDefaultSG") and "AWSLambdaBasicExecutionRole" in managed
    for policy_id, policy in default.of_type("AWS::IAM::Policy").items():
        for _, action, _ in grants(policy["Properties"]["PolicyDocument"]["Statement"]):
            assert not action.endswith(":*") and action != "*", (policy_id, action)


# --- outputs and environment ---------------------------------------------------------------

def test_outputs_name_what_they_hold(default: Synth) -> None:
    outputs = default.template.to_json()["Outputs"]
    queue_id, _ = default.one("AWS::SQS::Queue", "TaskQueue1")
    worker_id, _ = default.one("AWS::Batch::JobDefinition", "WorkersWorkerJobDefinition")
    filler_id, _ = default.one("AWS::Batch::JobDefinition", "WorkersFillerJobDefinition")
    job_queue_id, _ = default.one("AWS::Batch::JobQueue", "WorkersJobQueue")
    assert outputs["TaskQueueUrl"]["Value"] == {"Ref": queue_id}
    assert outputs["TaskQueueName"]["Value"] == {"Fn::GetAtt": [queue_id, "QueueName"]}
    assert outputs["JobQueueArn"]["Value"] == {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]}
    assert outputs["WorkerJobDefinitionArn"]["Value"] == {"Ref": worker_id}
    assert outputs["FillerJobDefinitionArn"]["Value"] == {"Ref": filler_id}
    assert {"DeadLetterQueueUrl", "ScalerFunctionName"} <= set(outputs)


def test_stack_is_environment_agnostic(default: Synth) -> None:
    text = json.dumps(default.template.to_json())
    assert default.stack.resolve(default.stack.region) == {"Ref": "AWS::Region"}
    assert default.stack.resolve(default.stack.account) == {"Ref": "AWS::AccountId"}
    assert "us-east-1" not in text and "eu-west-1" not in text

"""The default stack (one pool) and the custom one: network, task queue, workers, IAM, outputs."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match

from batch_celery_container import contract

from .conftest import CUSTOM_STACK_NAME, QUEUE_ACTIONS, SEND_ACTIONS, Synth, env_of, grants, strip_hash

# Properties that would give a resource a fixed physical name; two deployments in one account
# (another stack_name) must not collide on any of them.
PHYSICAL_NAMES = ("QueueName", "JobQueueName", "ComputeEnvironmentName", "JobDefinitionName", "FunctionName",
                  "RoleName", "LogGroupName", "AlarmName", "Name", "PolicyName", "InstanceProfileName",
                  "GroupName")


# --- network -------------------------------------------------------------------------------

def test_vpc_has_a_public_and_a_private_subnet_in_each_of_two_azs(default: Synth) -> None:
    subnets = default.of_type("AWS::EC2::Subnet")
    public = [k for k in subnets if "PublicSubnet" in k]
    assert (len(subnets), len(public)) == (4, 2)
    # No subnet hands out public addresses; the NAT gateways have their own (Security Hub EC2.15).
    assert not any(s["Properties"]["MapPublicIpOnLaunch"] for s in subnets.values())
    default.template.resource_count_is("AWS::EC2::VPC", 1)


def test_one_nat_gateway_serves_the_private_subnets(default: Synth) -> None:
    default.template.resource_count_is("AWS::EC2::NatGateway", 1)
    routes = [r["Properties"] for r in default.of_type("AWS::EC2::Route").values() if "NatGatewayId" in r["Properties"]]
    assert len(routes) == 2 and all(r["DestinationCidrBlock"] == "0.0.0.0/0" for r in routes)


def test_vpc_flow_logs_all_traffic_into_a_log_group_with_retention(default: Synth) -> None:
    group_id, group = default.one("AWS::Logs::LogGroup", "WorkersNetworkFlowLogs")
    assert group["Properties"]["RetentionInDays"] == 365  # flow_log_retention_days, audit evidence
    default.template.has_resource_properties(
        "AWS::EC2::FlowLog",
        {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs",
         "LogGroupName": {"Ref": group_id}},
    )


def test_default_security_group_is_stripped_of_rules(default: Synth) -> None:
    default.template.resource_count_is("Custom::VpcRestrictDefaultSG", 1)


def test_max_azs_sets_the_subnets(custom: Synth) -> None:
    assert len(custom.of_type("AWS::EC2::Subnet")) == 2
    custom.template.resource_count_is("AWS::EC2::NatGateway", 1)


def test_log_retention_days_reaches_every_log_group(custom: Synth) -> None:
    groups = {k: g for k, g in custom.of_type("AWS::Logs::LogGroup").items() if "FlowLogs" not in k}
    # Job logs, scaler logs; the flow logs have flow_log_retention_days (test_security.py).
    assert len(groups) == 2
    assert {g["Properties"]["RetentionInDays"] for g in groups.values()} == {7}


# --- stack name: two deployments in one account ---------------------------------------------

def test_stack_name_setting_names_the_stack_and_its_template(custom: Synth) -> None:
    assert custom.stack.stack_name == CUSTOM_STACK_NAME
    assert custom.template_file.is_file()
    assert not (custom.outdir / "BatchCelery.template.json").exists()


def test_no_resource_has_a_fixed_physical_name(default: Synth, three_pools: Synth) -> None:
    # Every name is generated from the stack's, so a second stack_name deploys beside the first.
    for synth in (default, three_pools):
        for logical_id, resource in synth.resources.items():
            if resource["Type"].startswith(("AWS::SQS", "AWS::Batch", "AWS::IAM", "AWS::Lambda", "AWS::Logs",
                                            "AWS::CloudWatch", "AWS::Events")):
                props = resource.get("Properties", {})
                # A literal string is a fixed name; a Ref/GetAtt (a permission's FunctionName) points
                # at a generated one. CDK names IAM policies after their logical id: per role, not global.
                named = {key for key in PHYSICAL_NAMES if isinstance(props.get(key), str)} - {"PolicyName"}
                assert not named, (logical_id, named)


# --- task queue ----------------------------------------------------------------------------

def test_task_queue_is_encrypted_with_a_dead_letter_queue_and_explicit_timings(default: Synth) -> None:
    dlq_id, dlq = default.pool("default", "TaskQueueDeadLetterQueue", "AWS::SQS::Queue")
    _, queue = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    untagged = {k: v for k, v in queue["Properties"].items() if k != "Tags"}  # tags: test_security.py
    assert untagged == {
        "SqsManagedSseEnabled": True,
        "VisibilityTimeout": 300,
        "MessageRetentionPeriod": 4 * 86400,
        "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}, "maxReceiveCount": 3},
    }
    assert {k: v for k, v in dlq["Properties"].items() if k != "Tags"} == {
        "SqsManagedSseEnabled": True, "MessageRetentionPeriod": 14 * 86400}


def test_queue_names_are_generated_not_hard_coded(three_pools: Synth) -> None:
    queues = three_pools.of_type("AWS::SQS::Queue").values()
    assert len(queues) == 7
    assert all("QueueName" not in q["Properties"] for q in queues)


def test_every_queue_denies_requests_without_tls(three_pools: Synth) -> None:
    queues = set(three_pools.of_type("AWS::SQS::Queue"))
    protected = set()
    for policy in three_pools.of_type("AWS::SQS::QueuePolicy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}:
                assert st["Action"] == "sqs:*" and st["Principal"] == {"AWS": "*"}
                protected |= {q["Ref"] for q in policy["Properties"]["Queues"]}
    assert protected == queues


def test_queue_settings_reach_the_queue_and_the_worker(custom: Synth) -> None:
    _, queue = custom.pool("default", "TaskQueue", "AWS::SQS::Queue")
    assert queue["Properties"]["VisibilityTimeout"] == 300
    assert queue["Properties"]["MessageRetentionPeriod"] == 7 * 86400
    assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 5
    _, worker = custom.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    env = env_of(worker)
    assert (env["TASK_TIME_LIMIT_SECONDS"], env["VISIBILITY_TIMEOUT_SECONDS"], env["STOP_GRACE_SECONDS"],
            env["WORKER_CONCURRENCY"]) == ("14400", "300", "10", "3")
    assert worker["Properties"]["Timeout"] == {"AttemptDurationSeconds": 5 * 3600}
    assert sorted(worker["Properties"]["ContainerProperties"]["ResourceRequirements"], key=str) == [
        {"Type": "MEMORY", "Value": "512"}, {"Type": "VCPU", "Value": "0.25"}]


# --- compute -------------------------------------------------------------------------------

def test_compute_environment_is_managed_fargate_in_the_private_subnets(default: Synth) -> None:
    _, env = default.pool("default", "ComputeEnvironment", "AWS::Batch::ComputeEnvironment")
    props = env["Properties"]
    private = sorted(k for k in default.of_type("AWS::EC2::Subnet") if "Private" in k)
    assert props["Type"] == "managed"
    assert props["ComputeResources"]["Type"] == "FARGATE"
    assert props["ComputeResources"]["MaxvCpus"] == 48
    assert sorted(s["Ref"] for s in props["ComputeResources"]["Subnets"]) == private
    # Batch's service-linked role, not a role with a managed policy.
    assert "ServiceRole" not in props


def test_job_queue_is_fifo_over_the_one_compute_environment(default: Synth) -> None:
    env_id, _ = default.pool("default", "ComputeEnvironment", "AWS::Batch::ComputeEnvironment")
    _, queue = default.pool("default", "JobQueue", "AWS::Batch::JobQueue")
    assert "SchedulingPolicyArn" not in queue["Properties"]
    assert queue["Properties"]["ComputeEnvironmentOrder"] == [
        {"ComputeEnvironment": {"Fn::GetAtt": [env_id, "ComputeEnvironmentArn"]}, "Order": 1}]


def test_image_is_built_for_amd64_by_default(default: Synth) -> None:
    images = list(default.assets["dockerImages"].values())
    assert len(images) == 1
    assert images[0]["source"]["platform"] == "linux/amd64"
    for job_id, job in default.of_type("AWS::Batch::JobDefinition").items():
        assert job["Properties"]["ContainerProperties"]["RuntimePlatform"] == {
            "CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}, job_id


def test_fargate_spot_compute_and_max_workers_size_the_compute_environment(custom: Synth) -> None:
    _, env = custom.pool("default", "ComputeEnvironment", "AWS::Batch::ComputeEnvironment")
    # 64 workers of 0.25 vCPU.
    assert (env["Properties"]["ComputeResources"]["Type"], env["Properties"]["ComputeResources"]["MaxvCpus"]) == (
        "FARGATE_SPOT", 16)


# --- job definitions -----------------------------------------------------------------------

def test_worker_job_runs_the_lifecycle_script_without_public_ip(default: Synth) -> None:
    group_id, _ = default.one("AWS::Logs::LogGroup", "WorkersJobLogs")
    role_id, _ = default.pool("default", "WorkerRole", "AWS::IAM::Role")
    default.template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "Type": "container",
            "PlatformCapabilities": ["FARGATE"],
            "ContainerProperties": Match.object_like({
                "Command": ["batch-celery-worker"],
                "NetworkConfiguration": {"AssignPublicIp": "DISABLED"},
                "LinuxParameters": {"InitProcessEnabled": True},
                "JobRoleArn": {"Fn::GetAtt": [role_id, "Arn"]},
                "LogConfiguration": {
                    "LogDriver": "awslogs",
                    "Options": {"awslogs-group": {"Ref": group_id}, "awslogs-stream-prefix": "worker-default",
                                "awslogs-region": {"Ref": "AWS::Region"}},
                },
            }),
            "Timeout": {"AttemptDurationSeconds": 8 * 3600},
        },
    )
    _, worker = default.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    assert sorted(worker["Properties"]["ContainerProperties"]["ResourceRequirements"], key=str) == [
        {"Type": "MEMORY", "Value": "2048"}, {"Type": "VCPU", "Value": "1"}]


def test_worker_job_retries_infrastructure_failures_and_exits_on_application_errors(default: Synth) -> None:
    _, worker = default.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    strategy = worker["Properties"]["RetryStrategy"]
    assert strategy["Attempts"] == 3
    rules = strategy["EvaluateOnExit"]
    # Batch allows at most five rules.
    assert 1 <= len(rules) <= 5
    # Batch retries when no rule matches, so the catch-all EXIT must come last.
    assert rules[-1] == {"Action": "EXIT", "OnReason": "*"}
    retried = {r.get("OnStatusReason") or r.get("OnReason") for r in rules[:-1]}
    assert all(r["Action"] == "RETRY" for r in rules[:-1])
    assert "Your Spot Task was interrupted*" in retried
    assert "Host EC2*" in retried
    assert "CannotPullContainerError:*" in retried


def test_worker_environment_is_the_container_contract(default: Synth) -> None:
    queue_id, _ = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    _, worker = default.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    assert env_of(worker) == {
        "CELERY_QUEUE_NAME": {"Fn::GetAtt": [queue_id, "QueueName"]},
        "CELERY_QUEUE_URL": {"Ref": queue_id},
        "AWS_DEFAULT_REGION": {"Ref": "AWS::Region"},
        "WORKER_POOL": "default",
        "IDLE_SECONDS": "60",
        "POLL_SECONDS": "10",
        "WORKER_CONCURRENCY": "1",
        "TASK_TIME_LIMIT_SECONDS": "10800",
        "JOB_TIMEOUT_SECONDS": "28800",
        "VISIBILITY_TIMEOUT_SECONDS": "300",
        "STOP_GRACE_SECONDS": "20",
        "METRICS_NAMESPACE": "BatchCelery/BatchCelery",
        "CELERY_RESULT_TABLE": {"Ref": default.one("AWS::DynamoDB::GlobalTable", "WorkersResultsTable")[0]},
        "CELERY_RESULT_EXPIRES_DAYS": "7",
    }
    assert set(env_of(worker)) == set(contract.WORKER_VARIABLES + contract.FEATURE_VARIABLES)


def test_filler_job_sends_num_messages_tasks(default: Synth) -> None:
    queue_id, _ = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    _, filler = default.one("AWS::Batch::JobDefinition", "WorkersFillerJobDefinition")
    props = filler["Properties"]
    assert props["ContainerProperties"]["Command"] == [
        "batch-celery-fill", "--num-messages", "Ref::numMessages"]
    assert props["Parameters"] == {"numMessages": "100"}
    assert props["ContainerProperties"]["NetworkConfiguration"] == {"AssignPublicIp": "DISABLED"}
    env = env_of(filler)
    # The filler reads results (--wait); it writes no metrics.
    assert set(env) == set(contract.FILLER_VARIABLES) | {contract.RESULT_TABLE, contract.RESULT_EXPIRES_DAYS}
    assert (env["CELERY_QUEUE_NAME"], env["CELERY_QUEUE_URL"], env["AWS_DEFAULT_REGION"]) == (
        {"Fn::GetAtt": [queue_id, "QueueName"]}, {"Ref": queue_id}, {"Ref": "AWS::Region"})
    # The routes the filler sends by are the stack's Routes output.
    assert env["CELERY_ROUTES"] == default.outputs["Routes"]["Value"]
    assert props["Timeout"] == {"AttemptDurationSeconds": 30 * 60}


def test_job_logs_have_retention(default: Synth) -> None:
    _, group = default.one("AWS::Logs::LogGroup", "WorkersJobLogs")
    assert group["Properties"]["RetentionInDays"] == 30


# --- IAM -----------------------------------------------------------------------------------

def test_worker_role_consumes_and_sends_on_the_task_queue_and_only_sends_to_the_dlq(default: Synth) -> None:
    # Besides writing results (tests/infra/test_results.py).
    allowed = {g for g in grants(default.statements_of_role("WorkersDefaultPoolWorkerRole"))
               if not g[2].startswith("WorkersResultsTable")}
    assert allowed == {("Allow", a, "WorkersDefaultPoolTaskQueue.Arn") for a in QUEUE_ACTIONS} | {
        ("Allow", a, "WorkersDefaultPoolTaskQueueDeadLetterQueue.Arn") for a in SEND_ACTIONS}


def test_filler_role_only_sends_to_the_task_queue(default: Synth) -> None:
    # Besides reading results (tests/infra/test_results.py).
    assert {g for g in grants(default.statements_of_role("WorkersFillerRole"))
            if not g[2].startswith("WorkersResultsTable")} == {
        ("Allow", a, "WorkersDefaultPoolTaskQueue.Arn") for a in SEND_ACTIONS}


def test_job_execution_roles_only_pull_the_image_and_write_job_logs(three_pools: Synth) -> None:
    roles = [strip_hash(k) for k in three_pools.of_type("AWS::IAM::Role") if "ExecutionRole" in k]
    assert sorted(roles) == sorted([
        "WorkersDefaultPoolWorkerContainerExecutionRole", "WorkersArmPoolWorkerContainerExecutionRole",
        "WorkersGpuPoolWorkerContainerExecutionRole", "WorkersFillerContainerExecutionRole"])
    for role in roles:
        by_resource = {(action, resource) for _, action, resource in grants(three_pools.statements_of_role(role))}
        assert {a for a, r in by_resource if r == "*"} == {"ecr:GetAuthorizationToken"}, role
        assert {a for a, r in by_resource if r == "WorkersJobLogs.Arn"} == {
            "logs:CreateLogStream", "logs:PutLogEvents"}, role
        ecr = {a for a, r in by_resource if "container-assets" in r}
        assert ecr == {"ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"}, role
        assert len(by_resource) == 6, role


def test_no_role_has_a_service_wildcard_or_a_managed_full_access_policy(three_pools: Synth) -> None:
    for role_id, role in three_pools.of_type("AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "FullAccess" not in managed, role_id
        if managed != "[]":
            # Only CDK's provider that strips the default security group's rules, and the GPU
            # pool's EC2 instances (the ECS agent's policy, acknowledged in cdk-nag).
            allowed = {
                "CustomVpcRestrictDefaultSGCustomResourceProviderRole": "AWSLambdaBasicExecutionRole",
                "WorkersGpuPoolComputeEnvironmentInstanceProfileRole": "service-role/AmazonEC2ContainerServiceforEC2Role",
            }
            assert strip_hash(role_id) in allowed and allowed[strip_hash(role_id)] in managed, role_id
            assert len(role["Properties"]["ManagedPolicyArns"]) == 1, role_id
    for policy_id, policy in three_pools.of_type("AWS::IAM::Policy").items():
        for _, action, _ in grants(policy["Properties"]["PolicyDocument"]["Statement"]):
            assert not action.endswith(":*") and action != "*", (policy_id, action)


# --- outputs and environment ---------------------------------------------------------------

def test_outputs_name_what_they_hold(default: Synth) -> None:
    outputs = default.outputs
    queue_id, _ = default.pool("default", "TaskQueue", "AWS::SQS::Queue")
    dlq_id, _ = default.pool("default", "TaskQueueDeadLetterQueue", "AWS::SQS::Queue")
    worker_id, _ = default.pool("default", "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    job_queue_id, _ = default.pool("default", "JobQueue", "AWS::Batch::JobQueue")
    filler_id, _ = default.one("AWS::Batch::JobDefinition", "WorkersFillerJobDefinition")
    function_id, _ = default.one("AWS::Lambda::Function", "WorkersScalingScaler")
    # Routes: test_pools.py; the dashboard's: test_dashboard.py.
    assert {name: output["Value"] for name, output in outputs.items()
            if name not in ("Routes", "DashboardName", "DashboardUrl")} == {
        "PoolDefaultQueueName": {"Fn::GetAtt": [queue_id, "QueueName"]},
        "PoolDefaultQueueUrl": {"Ref": queue_id},
        "PoolDefaultDeadLetterQueueUrl": {"Ref": dlq_id},
        "PoolDefaultJobQueueArn": {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]},
        "PoolDefaultJobDefinitionArn": {"Ref": worker_id},
        "FillerJobDefinitionArn": {"Ref": filler_id},
        "FillerJobQueueArn": {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]},
        "ScalerFunctionName": {"Ref": function_id},
        "AlarmTopicArn": {"Ref": default.one("AWS::SNS::Topic", "WorkersMonitoringAlarmTopic")[0]},
        "MetricsNamespace": "BatchCelery/BatchCelery",
        "ResultTableName": {"Ref": default.one("AWS::DynamoDB::GlobalTable", "WorkersResultsTable")[0]},
        "ScalerLogGroupName": {"Ref": default.one("AWS::Logs::LogGroup", "WorkersScalingScalerLogs")[0]},
    }
    assert all(output["Description"] for output in outputs.values())


def test_stack_is_environment_agnostic(default: Synth) -> None:
    text = json.dumps(default.template.to_json())
    assert default.stack.resolve(default.stack.region) == {"Ref": "AWS::Region"}
    assert default.stack.resolve(default.stack.account) == {"Ref": "AWS::AccountId"}
    assert "us-east-1" not in text and "eu-west-1" not in text

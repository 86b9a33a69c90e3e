"""Three pools in one stack: each its own queues, compute, job queue and worker job, and
no pool's workers may touch another pool's queues."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batch_celery import CONTAINER_DIR
from batch_celery.construct import BUILD_CONTEXT
from batch_celery.props import pascal
from batch_celery.scaler import handler as scaler_handler
from batch_celery_container import contract, routing

from .conftest import GPU_IMAGE, QUEUE_ACTIONS, REPO, SEND_ACTIONS, THREE_POOLS, Synth, env_of, grants, strip_hash

POOLS = tuple(THREE_POOLS)
FAKE_ACCOUNT, FAKE_REGION = "123456789012", "eu-west-1"


def _queue(synth: Synth, pool: str) -> str:
    return synth.pool(pool, "TaskQueue", "AWS::SQS::Queue")[0]


def _dlq(synth: Synth, pool: str) -> str:
    return synth.pool(pool, "TaskQueueDeadLetterQueue", "AWS::SQS::Queue")[0]


def _worker(synth: Synth, pool: str) -> tuple[str, dict]:
    return synth.pool(pool, "WorkerJobDefinition", "AWS::Batch::JobDefinition")


def _compute(synth: Synth, pool: str) -> dict:
    return synth.pool(pool, "ComputeEnvironment", "AWS::Batch::ComputeEnvironment")[1]["Properties"]


def _resolve(value: Any, template: dict) -> str:
    """A CloudFormation string (Fn::Join of literals, Refs and GetAtts) with every reference
    replaced by what CloudFormation would put there, in a fake account and region."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_resolve(part, template) for part in parts)
    if value == {"Ref": "AWS::Region"}:
        return FAKE_REGION
    logical_id, attribute = value["Fn::GetAtt"] if "Fn::GetAtt" in value else (value["Ref"], "Ref")
    kind = template["Resources"][logical_id]["Type"]
    name = f"BatchCelery-{logical_id}-ABCDEF123456"
    return {
        ("AWS::SQS::Queue", "Ref"): f"https://sqs.{FAKE_REGION}.amazonaws.com/{FAKE_ACCOUNT}/{name}",
        ("AWS::SQS::Queue", "QueueName"): name,
        ("AWS::Batch::JobQueue", "JobQueueArn"): f"arn:aws:batch:{FAKE_REGION}:{FAKE_ACCOUNT}:job-queue/{name}",
        ("AWS::Batch::JobDefinition", "Ref"): f"arn:aws:batch:{FAKE_REGION}:{FAKE_ACCOUNT}:job-definition/{name}:1",
    }[(kind, attribute)]


# --- queues --------------------------------------------------------------------------------

def test_each_pool_has_its_own_queue_redriving_to_its_own_dead_letter_queue(three_pools: Synth) -> None:
    # Three task queues, three DLQs, the events DLQ.
    three_pools.template.resource_count_is("AWS::SQS::Queue", 7)
    for pool in POOLS:
        _, queue = three_pools.pool(pool, "TaskQueue", "AWS::SQS::Queue")
        assert queue["Properties"]["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [_dlq(three_pools, pool), "Arn"]}, "maxReceiveCount": 3}, pool
    assert len({_dlq(three_pools, pool) for pool in POOLS}) == 3


# --- compute -------------------------------------------------------------------------------

def test_each_pool_has_its_own_compute_environment(three_pools: Synth) -> None:
    three_pools.template.resource_count_is("AWS::Batch::ComputeEnvironment", 3)
    kinds = {pool: _compute(three_pools, pool)["ComputeResources"]["Type"] for pool in POOLS}
    assert kinds == {"default": "FARGATE", "arm": "FARGATE", "gpu": "SPOT"}
    private = sorted(k for k in three_pools.of_type("AWS::EC2::Subnet") if "Private" in k)
    for pool in POOLS:
        props = _compute(three_pools, pool)
        assert props["Type"] == "managed" and "ServiceRole" not in props, pool
        assert sorted(s["Ref"] for s in props["ComputeResources"]["Subnets"]) == private, pool


def test_gpu_pool_runs_on_spot_gpu_instances_with_the_nvidia_ami(three_pools: Synth) -> None:
    resources = _compute(three_pools, "gpu")["ComputeResources"]
    assert resources["InstanceTypes"] == ["g5", "g6"]
    assert resources["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]
    assert resources["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    # Nothing runs (or is paid for) while the queue is empty; 48 workers of 4 vCPUs at most.
    assert (resources["MinvCpus"], resources["MaxvCpus"]) == (0, 192)
    assert resources["UpdateToLatestImageVersion"] is True


def test_arm_pool_runs_arm64_jobs_on_fargate_from_an_arm64_image(three_pools: Synth) -> None:
    _, arm = _worker(three_pools, "arm")
    assert arm["Properties"]["ContainerProperties"]["RuntimePlatform"] == {
        "CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"}
    _, default = _worker(three_pools, "default")
    assert default["Properties"]["ContainerProperties"]["RuntimePlatform"]["CpuArchitecture"] == "X86_64"
    image_tag = arm["Properties"]["ContainerProperties"]["Image"]["Fn::Sub"].rsplit(":", 1)[1]
    assert three_pools.assets["dockerImages"][image_tag]["source"]["platform"] == "linux/arm64"


def test_one_image_per_directory_and_platform(three_pools: Synth) -> None:
    # The bundled image for amd64 (default pool and filler), for arm64, and the GPU example's.
    sources = sorted((s["source"]["platform"], "dockerBuildContexts" in s["source"])
                     for s in three_pools.assets["dockerImages"].values())
    assert sources == [("linux/amd64", False), ("linux/amd64", True), ("linux/arm64", False)]
    tags = {pool: _worker(three_pools, pool)[1]["Properties"]["ContainerProperties"]["Image"]["Fn::Sub"]
            for pool in POOLS}
    _, filler = three_pools.one("AWS::Batch::JobDefinition", "WorkersFillerJobDefinition")
    assert len(set(tags.values())) == 3
    assert filler["Properties"]["ContainerProperties"]["Image"]["Fn::Sub"] == tags["default"]


def test_gpu_image_is_built_from_its_dockerfile_with_the_worker_code_as_a_build_context(three_pools: Synth) -> None:
    _, gpu = _worker(three_pools, "gpu")
    tag = gpu["Properties"]["ContainerProperties"]["Image"]["Fn::Sub"].rsplit(":", 1)[1]
    source = three_pools.assets["dockerImages"][tag]["source"]
    staged = three_pools.outdir / source["directory"]
    assert (staged / "Dockerfile").read_bytes() == (REPO / GPU_IMAGE / "Dockerfile").read_bytes()
    assert source["platform"] == "linux/amd64"
    assert source["dockerBuildContexts"] == {BUILD_CONTEXT: str(CONTAINER_DIR)}


# --- job queues and job definitions --------------------------------------------------------

def test_each_job_queue_runs_only_its_pools_compute_environment(three_pools: Synth) -> None:
    three_pools.template.resource_count_is("AWS::Batch::JobQueue", 3)
    for pool in POOLS:
        env_id, _ = three_pools.pool(pool, "ComputeEnvironment", "AWS::Batch::ComputeEnvironment")
        _, queue = three_pools.pool(pool, "JobQueue", "AWS::Batch::JobQueue")
        assert queue["Properties"]["ComputeEnvironmentOrder"] == [
            {"ComputeEnvironment": {"Fn::GetAtt": [env_id, "ComputeEnvironmentArn"]}, "Order": 1}], pool


def test_worker_job_definitions_match_their_compute(three_pools: Synth) -> None:
    # Three workers and the filler.
    three_pools.template.resource_count_is("AWS::Batch::JobDefinition", 4)
    capabilities = {pool: _worker(three_pools, pool)[1]["Properties"]["PlatformCapabilities"] for pool in POOLS}
    assert capabilities == {"default": ["FARGATE"], "arm": ["FARGATE"], "gpu": ["EC2"]}
    requirements = {
        pool: sorted((r["Type"], r["Value"]) for r in
                     _worker(three_pools, pool)[1]["Properties"]["ContainerProperties"]["ResourceRequirements"])
        for pool in POOLS
    }
    assert requirements == {
        "default": [("MEMORY", "2048"), ("VCPU", "1")],
        "arm": [("MEMORY", "2048"), ("VCPU", "1")],
        "gpu": [("GPU", "1"), ("MEMORY", "15000"), ("VCPU", "4")],
    }
    gpu = _worker(three_pools, "gpu")[1]["Properties"]["ContainerProperties"]
    # EC2 jobs take the instance's network: no Fargate-only properties.
    assert "NetworkConfiguration" not in gpu and "RuntimePlatform" not in gpu
    assert gpu["LinuxParameters"] == {"InitProcessEnabled": True}


@pytest.mark.parametrize("pool", POOLS)
def test_worker_environment_is_the_contract_with_its_own_pool_and_queue(three_pools: Synth, pool: str) -> None:
    queue_id = _queue(three_pools, pool)
    role_id, _ = three_pools.pool(pool, "WorkerRole", "AWS::IAM::Role")
    _, worker = _worker(three_pools, pool)
    defaults = dict(idle_seconds=60, poll_seconds=10, concurrency=1, task_time_limit_seconds=3 * 3600,
                    visibility_timeout_seconds=300, stop_grace_seconds=20, job_timeout_seconds=8 * 3600)
    assert env_of(worker) == contract.worker_environment(
        pool=pool,
        queue_name={"Fn::GetAtt": [queue_id, "QueueName"]},  # type: ignore[arg-type]
        queue_url={"Ref": queue_id},  # type: ignore[arg-type]
        region={"Ref": "AWS::Region"},  # type: ignore[arg-type]
        **defaults,
        metrics_namespace="BatchCelery/BatchCelery",
        result_table={"Ref": three_pools.one("AWS::DynamoDB::GlobalTable", "WorkersResultsTable")[0]},  # type: ignore[arg-type]
        result_expires_days=7,
    )
    assert env_of(worker)["WORKER_POOL"] == pool
    container = worker["Properties"]["ContainerProperties"]
    assert container["JobRoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert container["LogConfiguration"]["Options"]["awslogs-stream-prefix"] == f"worker-{pool}"
    assert container["Command"] == ["batch-celery-worker"]


# --- scaler --------------------------------------------------------------------------------

def test_one_scaler_lists_every_pool_with_its_own_queue_job_queue_and_definition(three_pools: Synth) -> None:
    functions = [f for f in three_pools.of_type("AWS::Lambda::Function").values()
                 if f["Properties"]["Handler"] == "batch_celery.scaler.handler.handler"]
    assert len(functions) == 1
    variables = functions[0]["Properties"]["Environment"]["Variables"]
    template = three_pools.template.to_json()
    pools = json.loads(_resolve(variables["POOLS"], template))
    expected = []
    for pool in POOLS:
        job_queue_id, _ = three_pools.pool(pool, "JobQueue", "AWS::Batch::JobQueue")
        worker_id, _ = _worker(three_pools, pool)
        expected.append({
            "pool": pool,
            "queue_url": _resolve({"Ref": _queue(three_pools, pool)}, template),
            "job_queue": _resolve({"Fn::GetAtt": [job_queue_id, "JobQueueArn"]}, template),
            "job_definition": _resolve({"Ref": worker_id}, template),
            "job_name": f"celery-worker-{pool}",
            "messages_per_worker": 0,
            "target_wait_seconds": 90,
            # An EC2 pool's first worker waits for an instance too.
            "start_seconds": 180 if pool == "gpu" else 60,
            "max_workers": 48,
            "tasks_per_worker": 1,
        })
    assert pools == expected
    # The handler accepts what the stack sets, pool for pool.
    config = scaler_handler.ScalerConfig.from_env({**variables, "POOLS": json.dumps(pools)})
    assert [p.pool for p in config.pools] == list(POOLS)
    assert (config.poll_seconds, config.loop_seconds) == (10, 55)


# --- alarms and outputs --------------------------------------------------------------------

@pytest.mark.parametrize("pool", POOLS)
def test_each_pool_has_its_depth_sla_and_dead_letter_alarms_on_its_own_queues(three_pools: Synth, pool: str) -> None:
    queue_name = {"Fn::GetAtt": [_queue(three_pools, pool), "QueueName"]}
    for alarm in ("LowDepthAlarm", "HighDepthAlarm", "SlaAlarm"):
        _, props = three_pools.one("AWS::CloudWatch::Alarm", f"Workers{pascal(pool)}Alarms{alarm}")
        assert props["Properties"]["Dimensions"] == [{"Name": "QueueName", "Value": queue_name}], alarm
        assert pool in props["Properties"]["AlarmDescription"], alarm
    _, dlq_alarm = three_pools.one("AWS::CloudWatch::Alarm", f"WorkersMonitoring{pascal(pool)}TaskDeadLetterAlarm")
    assert dlq_alarm["Properties"]["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": [_dlq(three_pools, pool), "QueueName"]}}]


def test_alarm_count_is_three_per_pool_plus_one_per_dead_letter_queue(three_pools: Synth) -> None:
    # 3 x (low, high, SLA) + 3 task DLQs + the events DLQ + the failing scaler.
    three_pools.template.resource_count_is("AWS::CloudWatch::Alarm", 9 + 3 + 1 + 1)
    # 3 x 3 alarm rules + the scaler's schedule + failed worker jobs -> the alarm topic.
    three_pools.template.resource_count_is("AWS::Events::Rule", 11)


def test_outputs_name_each_pools_resources(three_pools: Synth) -> None:
    outputs = three_pools.outputs
    for pool in POOLS:
        p = f"Pool{pascal(pool)}"
        queue_id, dlq_id = _queue(three_pools, pool), _dlq(three_pools, pool)
        job_queue_id, _ = three_pools.pool(pool, "JobQueue", "AWS::Batch::JobQueue")
        worker_id, _ = _worker(three_pools, pool)
        assert {k: v["Value"] for k, v in outputs.items() if k.startswith(p)} == {
            f"{p}QueueName": {"Fn::GetAtt": [queue_id, "QueueName"]},
            f"{p}QueueUrl": {"Ref": queue_id},
            f"{p}DeadLetterQueueUrl": {"Ref": dlq_id},
            f"{p}JobQueueArn": {"Fn::GetAtt": [job_queue_id, "JobQueueArn"]},
            f"{p}JobDefinitionArn": {"Ref": worker_id},
        }
    assert set(outputs) - {k for k in outputs if k.startswith("Pool")} == {
        "Routes", "FillerJobDefinitionArn", "FillerJobQueueArn", "ScalerFunctionName", "AlarmTopicArn",
        "MetricsNamespace", "ResultTableName", "ScalerLogGroupName", "DashboardName", "DashboardUrl"}
    # The filler runs in the default (first) pool's job queue.
    assert outputs["FillerJobQueueArn"]["Value"] == outputs["PoolDefaultJobQueueArn"]["Value"]


def test_routes_output_is_what_routing_reads(three_pools: Synth) -> None:
    template = three_pools.template.to_json()
    routes = routing.parse_routes(_resolve(three_pools.outputs["Routes"]["Value"], template))
    assert routes.default_pool == "default" and routes.region == FAKE_REGION
    assert list(routes.pools) == list(POOLS)
    for pool in POOLS:
        queue_id = _queue(three_pools, pool)
        assert routes.pools[pool].queue_url == _resolve({"Ref": queue_id}, template)
        assert routes.pools[pool].queue_name == _resolve({"Fn::GetAtt": [queue_id, "QueueName"]}, template)
        assert routes.pools[pool].tasks == tuple(THREE_POOLS[pool].get("tasks", ()))
    assert [routing.pool_for(routes, task) for task in ("gpu.matmul", "arm.resize", "reports.daily")] == [
        "gpu", "arm", "default"]


# --- IAM isolation -------------------------------------------------------------------------

@pytest.mark.parametrize("pool", POOLS)
def test_worker_role_consumes_only_its_own_queue_and_sends_only_to_its_own_dlq(three_pools: Synth, pool: str) -> None:
    queue, dlq = strip_hash(_queue(three_pools, pool)), strip_hash(_dlq(three_pools, pool))
    # Besides the shared result table (tests/infra/test_results.py).
    allowed = {g for g in grants(three_pools.statements_of_role(f"Workers{pascal(pool)}PoolWorkerRole"))
               if not g[2].startswith("WorkersResultsTable")}
    assert allowed == {("Allow", a, f"{queue}.Arn") for a in QUEUE_ACTIONS} | {
        ("Allow", a, f"{dlq}.Arn") for a in SEND_ACTIONS}


def test_no_worker_role_touches_another_pools_queues(three_pools: Synth) -> None:
    for pool in POOLS:
        resources = {r for _, _, r in grants(three_pools.statements_of_role(f"Workers{pascal(pool)}PoolWorkerRole"))}
        others = {f"{strip_hash(q(three_pools, other))}.Arn" for other in POOLS if other != pool for q in (_queue, _dlq)}
        assert not resources & others, pool
        assert "*" not in resources, pool
    # No policy names two pools' queues for one principal, whatever its role.
    for policy_id, policy in three_pools.of_type("AWS::IAM::Policy").items():
        roles = {strip_hash(r["Ref"]) for r in policy["Properties"]["Roles"]}
        if roles & {f"Workers{pascal(p)}PoolWorkerRole" for p in POOLS}:
            touched = {r for _, _, r in grants(policy["Properties"]["PolicyDocument"]["Statement"])}
            pools = {p for p in POOLS if any(r.startswith(f"Workers{pascal(p)}Pool") for r in touched)}
            assert len(pools) == 1, (policy_id, pools)


def test_scaler_may_submit_only_the_pools_worker_definitions_to_the_pools_job_queues(three_pools: Synth) -> None:
    submits = {r for _, action, r in grants(three_pools.statements_of_role("WorkersScalingScalerRole"))
               if action == "batch:SubmitJob"}
    assert submits == {f"Workers{pascal(p)}PoolJobQueue.JobQueueArn" for p in POOLS} | {
        f"Workers{pascal(p)}PoolWorkerJobDefinition" for p in POOLS}
    reads = {r for _, action, r in grants(three_pools.statements_of_role("WorkersScalingScalerRole"))
             if action.startswith("sqs:")}
    assert reads == {f"{strip_hash(_queue(three_pools, p))}.Arn" for p in POOLS}


def test_filler_may_only_send_to_the_pools_queues(three_pools: Synth) -> None:
    assert {g for g in grants(three_pools.statements_of_role("WorkersFillerRole"))
            if not g[2].startswith("WorkersResultsTable")} == {
        ("Allow", a, f"{strip_hash(_queue(three_pools, p))}.Arn") for a in SEND_ACTIONS for p in POOLS}


@pytest.mark.parametrize("pool", POOLS)
def test_worker_learns_its_job_timeout_from_the_setting_that_sets_it(three_pools: Synth, pool: str) -> None:
    # One setting, written once: the job definition's timeout and the worker's deadline agree.
    _, definition = three_pools.pool(pool, "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    _, worker = _worker(three_pools, pool)
    timeout = definition["Properties"]["Timeout"]["AttemptDurationSeconds"]
    assert env_of(worker)[contract.JOB_TIMEOUT_SECONDS] == str(timeout)


@pytest.mark.parametrize("pool", POOLS)
def test_a_worker_leaving_at_its_deadline_is_not_retried(three_pools: Synth, pool: str) -> None:
    # Exit 7 (the job's deadline) ends the job FAILED with "Essential container in task exited".
    # Batch applies the first rule that matches (glob patterns): it must be the catch-all EXIT,
    # or Batch would restart a worker the scaler replaces anyway.
    from fnmatch import fnmatchcase

    _, definition = three_pools.pool(pool, "WorkerJobDefinition", "AWS::Batch::JobDefinition")
    rules = definition["Properties"]["RetryStrategy"]["EvaluateOnExit"]
    exit_7 = {"OnExitCode": "7", "OnStatusReason": "Essential container in task exited", "OnReason": ""}
    first = next(rule for rule in rules
                 if all(fnmatchcase(exit_7[key], pattern) for key, pattern in rule.items() if key != "Action"))
    assert first == {"Action": "EXIT", "OnReason": "*"}

"""The construct as a user embeds it: a bare `cdk.App()` and `cdk.Stack()`, no app.py, no cdk.json
context, their own VPC; an existing VPC through cdk.json's `vpc_id`; the README's example."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets

import batch_celery.construct as construct_module
from app import build_app
from batch_celery import CONTAINER_DIR
from batch_celery.construct import CeleryBatchWorkers
from batch_celery.props import CeleryBatchWorkersProps, PoolProps, SettingsError

from .conftest import GPU_IMAGE, REPO, synth

# Synthesizes stacks of its own (several seconds of CPU each): make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow


ACCOUNT, REGION = "123456789012", "eu-west-1"
VPC_ID = "vpc-0123456789abcdef0"
# What Vpc.from_lookup returns offline, before the CDK CLI has looked the VPC up.
DUMMY_VPC_ID, DUMMY_PRIVATE_SUBNETS = "vpc-12345", ["p-12345", "p-67890"]
README_HEADING = "## Use it in your own CDK app"
# Attribute of a pool -> the resource type it stands for.
POOL_ATTRIBUTES = {
    "queue": "AWS::SQS::Queue",
    "dead_letter_queue": "AWS::SQS::Queue",
    "compute_environment": "AWS::Batch::ComputeEnvironment",
    "job_queue": "AWS::Batch::JobQueue",
    "job_definition": "AWS::Batch::JobDefinition",
    "worker_role": "AWS::IAM::Role",
}


@dataclass
class Embedded:
    stack: cdk.Stack
    vpc: ec2.IVpc
    workers: CeleryBatchWorkers
    template: dict[str, Any]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == resource_type}

    def id_of(self, construct: Any) -> str:
        return self.stack.resolve(self.stack.get_logical_id(construct.node.default_child))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Embedded]:
    """Two user stacks in one bare app: one brings an ec2.Vpc it made, one looks a VPC up."""
    app = cdk.App(outdir=str(tmp_path_factory.mktemp("cdk.out")))

    given = cdk.Stack(app, "Given")
    given_vpc = ec2.Vpc(given, "Vpc", max_azs=2, subnet_configuration=[
        ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC),
        ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
    ])
    given_workers = CeleryBatchWorkers(given, "Workers", CeleryBatchWorkersProps(vpc=given_vpc, pools={
        "default": PoolProps(),
        "gpu": PoolProps(compute="ec2_spot", gpus=1, vcpus=4, memory_mib=15000, tasks=("gpu.*",)),
    }))

    looked = cdk.Stack(app, "Looked", env=cdk.Environment(account=ACCOUNT, region=REGION))
    looked_vpc = ec2.Vpc.from_lookup(looked, "Vpc", vpc_id=VPC_ID)
    looked_workers = CeleryBatchWorkers(looked, "Workers", CeleryBatchWorkersProps(vpc=looked_vpc))

    assembly = app.synth()
    return {
        "given": Embedded(given, given_vpc, given_workers, assembly.get_stack_by_name("Given").template),
        "looked": Embedded(looked, looked_vpc, looked_workers, assembly.get_stack_by_name("Looked").template),
    }


# --- bring your own VPC ------------------------------------------------------------------------

def test_a_given_vpc_is_used_and_no_vpc_is_created(embedded: dict[str, Embedded]) -> None:
    given, looked = embedded["given"], embedded["looked"]
    # The user's own VPC is the only one; the looked-up one is not in the template at all.
    assert list(given.of_type("AWS::EC2::VPC")) == [given.id_of(given.vpc)]
    assert not looked.of_type("AWS::EC2::VPC")
    for user in (given, looked):
        assert user.workers.vpc is user.vpc and user.workers.network is None
        assert not [k for k in user.template["Resources"] if k.startswith("WorkersNetwork")]
        assert not user.of_type("AWS::EC2::FlowLog")


def test_compute_environments_use_the_given_vpcs_private_subnets(embedded: dict[str, Embedded]) -> None:
    given = embedded["given"]
    private = [given.stack.resolve(s.subnet_id) for s in given.vpc.private_subnets]
    assert len(private) == 2 and all("Private" in s["Ref"] for s in private)
    environments = given.of_type("AWS::Batch::ComputeEnvironment")
    assert len(environments) == 2
    for env_id, env in environments.items():
        assert env["Properties"]["ComputeResources"]["Subnets"] == private, env_id
    for group_id, group in given.of_type("AWS::EC2::SecurityGroup").items():
        assert group["Properties"]["VpcId"] == {"Ref": given.id_of(given.vpc)}, group_id


def test_a_looked_up_vpc_gives_its_private_subnets(embedded: dict[str, Embedded]) -> None:
    looked = embedded["looked"]
    (env,) = looked.of_type("AWS::Batch::ComputeEnvironment").values()
    assert env["Properties"]["ComputeResources"]["Subnets"] == DUMMY_PRIVATE_SUBNETS
    assert [g["Properties"]["VpcId"] for g in looked.of_type("AWS::EC2::SecurityGroup").values()] == [DUMMY_VPC_ID]


@pytest.mark.parametrize("pool", ["default", "gpu"])
def test_pool_attributes_are_the_templates_resources(embedded: dict[str, Embedded], pool: str) -> None:
    given = embedded["given"]
    worker_pool = given.workers.pools[pool]
    ids = {}
    for attribute, resource_type in POOL_ATTRIBUTES.items():
        logical_id = given.id_of(getattr(worker_pool, attribute))
        assert given.template["Resources"][logical_id]["Type"] == resource_type, attribute
        ids[attribute] = logical_id
    assert len(set(ids.values())) == len(ids)
    resources = given.template["Resources"]
    assert resources[ids["queue"]]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": [ids["dead_letter_queue"], "Arn"]}
    assert resources[ids["job_queue"]]["Properties"]["ComputeEnvironmentOrder"][0]["ComputeEnvironment"] == {
        "Fn::GetAtt": [ids["compute_environment"], "ComputeEnvironmentArn"]}
    assert resources[ids["job_definition"]]["Properties"]["ContainerProperties"]["JobRoleArn"] == {
        "Fn::GetAtt": [ids["worker_role"], "Arn"]}
    assert worker_pool.name == pool and worker_pool.job_name == f"celery-worker-{pool}"


def test_the_first_pool_is_the_default_pool(embedded: dict[str, Embedded]) -> None:
    workers = embedded["given"].workers
    assert workers.default_pool is workers.pools["default"]
    assert list(workers.pools) == ["default", "gpu"]


def _vpc_without_egress(subnets: list[ec2.SubnetConfiguration]) -> tuple[cdk.Stack, ec2.Vpc]:
    stack = cdk.Stack(cdk.App(), "NoEgress")
    return stack, ec2.Vpc(stack, "Vpc", max_azs=2, subnet_configuration=subnets)


PUBLIC = ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC)
ISOLATED = ec2.SubnetConfiguration(name="Isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)


@pytest.mark.parametrize("subnets", [[PUBLIC], [PUBLIC, ISOLATED]], ids=["public-only", "isolated-only"])
def test_rejects_a_vpc_without_private_subnets_with_egress(subnets: list) -> None:
    stack, vpc = _vpc_without_egress(subnets)
    with pytest.raises(SettingsError) as raised:
        CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps(vpc=vpc))
    assert raised.value.key == "vpc"
    assert str(raised.value).endswith(
        ": has no private subnets with egress; the workers need them to reach SQS, ECR and CloudWatch")


def test_a_vpc_without_egress_is_named_by_its_path_not_a_token() -> None:
    # The one line must name the VPC the user passed; an unresolved CDK token names nothing.
    stack, vpc = _vpc_without_egress([PUBLIC])
    with pytest.raises(SettingsError) as raised:
        CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps(vpc=vpc))
    assert "${Token[" not in str(raised.value), str(raised.value)
    assert vpc.node.path in str(raised.value), str(raised.value)


# --- vpc_id through app.py (cdk.json) -----------------------------------------------------------

def test_vpc_id_deploys_into_the_looked_up_vpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CDK CLI sets these from the credentials it runs with; offline, the lookup gives CDK's
    # dummy VPC and the manifest asks the CLI to look the real one up and synthesize again. That
    # first, offline synth must succeed, or the CLI never gets to the lookup.
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("CDK_DEFAULT_REGION", REGION)
    result = synth(tmp_path, vpc_id=VPC_ID)
    assert not result.of_type("AWS::EC2::VPC")
    assert not [k for k in result.resources if k.startswith("WorkersNetwork")]
    (env,) = result.of_type("AWS::Batch::ComputeEnvironment").values()
    assert env["Properties"]["ComputeResources"]["Subnets"] == DUMMY_PRIVATE_SUBNETS
    assert (result.stack.account, result.stack.region) == (ACCOUNT, REGION)
    missing = json.loads((tmp_path / "manifest.json").read_text())["missing"]
    assert [(m["provider"], m["props"]["filter"]) for m in missing] == [("vpc-provider", {"vpc-id": VPC_ID})]


def test_vpc_id_without_account_and_region_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
    monkeypatch.delenv("CDK_DEFAULT_REGION", raising=False)
    with pytest.raises(SettingsError) as raised:
        build_app(cdk.App(context={"batch-celery": {"vpc_id": VPC_ID}}))
    assert str(raised.value) == (
        f'batch-celery.vpc_id = "{VPC_ID}": CDK looks the VPC up at synth: run cdk with AWS credentials and a'
        " region (CDK_DEFAULT_ACCOUNT and CDK_DEFAULT_REGION are unset)")


# --- images -------------------------------------------------------------------------------------

def _image_hashes(workers: CeleryBatchWorkers) -> set[str]:
    return {c.asset_hash for c in workers.node.children if isinstance(c, ecr_assets.DockerImageAsset)}


def test_a_pools_own_image_is_rebuilt_when_the_worker_code_it_copies_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pool's Dockerfile copies the lifecycle script from the "batch-celery" build context. The
    # asset hash is the image's tag: if it ignores that context, `cdk deploy` keeps the published
    # image and the pool runs the old lifecycle script.
    worker_code = tmp_path / "batch_celery_container"
    shutil.copytree(CONTAINER_DIR, worker_code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    monkeypatch.setattr(construct_module, "CONTAINER_DIR", worker_code)

    def hashes() -> set[str]:
        stack = cdk.Stack(cdk.App(), "Images")
        workers = CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps(pools={
            "gpu": PoolProps(compute="ec2", gpus=1, vcpus=4, memory_mib=15000, image=str(REPO / GPU_IMAGE)),
        }))
        found = _image_hashes(workers)
        # The bundled image (the filler's) and the GPU pool's own.
        assert len(found) == 2
        return found

    before = hashes()
    with (worker_code / "run_celery_worker.sh").open("a") as script:
        script.write("# a change to the lifecycle script\n")
    after = hashes()
    assert before.isdisjoint(after), "an image that copies the worker code kept its tag after that code changed"


def test_pools_whose_image_directories_share_a_name_get_one_image_each(tmp_path: Path) -> None:
    for team in ("vision", "audio"):
        (tmp_path / team / "worker").mkdir(parents=True)
        (tmp_path / team / "worker" / "Dockerfile").write_text(f"FROM public.ecr.aws/docker/library/python:3.12\n# {team}\n")
    stack = cdk.Stack(cdk.App(), "Images")
    workers = CeleryBatchWorkers(stack, "Workers", CeleryBatchWorkersProps(pools={
        "default": PoolProps(),
        "vision": PoolProps(image=str(tmp_path / "vision" / "worker"), tasks=("vision.*",)),
        "audio": PoolProps(image=str(tmp_path / "audio" / "worker"), tasks=("audio.*",)),
    }))
    # The bundled image and the two teams' own.
    assert len(_image_hashes(workers)) == 3


# --- the README's example -----------------------------------------------------------------------

def _readme_example() -> str | None:
    text = (REPO / "README.md").read_text()
    if README_HEADING not in text:
        return None
    section = text.split(README_HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, f"the README section {README_HEADING!r} has no ```python block"
    return match.group(1)


def test_readme_example_synthesizes() -> None:
    code = _readme_example()
    if code is None:
        pytest.skip(f"README.md has no {README_HEADING!r} section yet")
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    with contextlib.chdir(REPO):
        exec(compile(code, "README.md (Use it in your own CDK app)", "exec"), namespace)
    app = namespace.get("app")
    assert isinstance(app, cdk.App), "the README example must define `app = cdk.App()` at its top level"
    assembly = app.synth()
    embedded = [c for c in app.node.find_all() if isinstance(c, CeleryBatchWorkers)]
    assert embedded, "the README example builds no CeleryBatchWorkers"
    for workers in embedded:
        stack = cdk.Stack.of(workers)
        resources = assembly.get_stack_by_name(stack.stack_name).template["Resources"]
        job_queues = [k for k, r in resources.items() if r["Type"] == "AWS::Batch::JobQueue"]
        assert len(job_queues) == len(workers.pools)
        for pool in workers.pools.values():
            logical_id = stack.resolve(stack.get_logical_id(pool.queue.node.default_child))
            assert resources[logical_id]["Type"] == "AWS::SQS::Queue"

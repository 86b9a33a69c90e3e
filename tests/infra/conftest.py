"""Synthesize the real app (app.py's build_app, cdk.json's feature flags) once per session.

Each configuration is built once and shared by every module that asserts on it: `default` (the
committed cdk.json), `three_pools` (Fargate, Fargate arm64 and GPU EC2 Spot), `alarms_mode` (the
same three pools without the scaler Lambda) and `custom` (one pool with every number moved off its
default, one AZ, another stack name).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from constructs import IConstruct

from app import build_app
from batch_celery.props import pascal
from batch_celery.settings import CONTEXT_KEY

REPO = Path(__file__).resolve().parents[2]
GPU_IMAGE = "examples/gpu-pool"

# The Pools example of docs/configuration.md: most tasks on Fargate, arm64-friendly ones on Graviton, GPU tasks on EC2 Spot
# built from the worked example's Dockerfile.
THREE_POOLS: dict[str, dict[str, Any]] = {
    "default": {},
    "arm": {"platform": "linux/arm64", "tasks": ["arm.*"]},
    "gpu": {"compute": "ec2_spot", "gpus": 1, "vcpus": 4, "memory_mib": 15000, "tasks": ["gpu.*"],
            "image": GPU_IMAGE},
}
# alarms mode: the arm pool's scaling numbers off their defaults, so each pool's alarms and rules
# are seen to take their own pool's values.
ARM_ALARMS = {"age_alarm_seconds": 150, "low_threshold": 2, "high_threshold": 200, "high_array_size": 40}
CUSTOM_STACK_NAME = "BatchCeleryStaging"
CUSTOM = {
    "stack_name": CUSTOM_STACK_NAME,
    "max_azs": 1,
    "log_retention_days": 7,
    "scaler_poll_seconds": 20,
    "pools": {
        "default": {
            "compute": "fargate_spot", "vcpus": 0.25, "memory_mib": 512, "max_workers": 64,
            "messages_per_worker": 4, "concurrency": 3,
            # A 4-hour task with a 5-minute crash-recovery window: the worker's heartbeat keeps the
            # running task's message invisible, so the task limit may exceed the visibility timeout.
            "task_time_limit_seconds": 4 * 3600, "visibility_timeout_seconds": 300, "stop_grace_seconds": 10,
            "message_retention_days": 7, "max_receive_count": 5, "job_timeout_seconds": 5 * 3600,
        },
    },
}


# What a worker role may do on its own task queue, and what sending to a queue takes.
QUEUE_ACTIONS = {"sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                 "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"}
SEND_ACTIONS = {"sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"}


def cdk_json_context(**settings: Any) -> dict[str, Any]:
    """cdk.json's context (feature flags included) with the given `batch-celery` settings."""
    context = dict(json.loads((REPO / "cdk.json").read_text())["context"])
    context[CONTEXT_KEY] = settings
    return context


def committed_settings() -> dict[str, Any]:
    return json.loads((REPO / "cdk.json").read_text())["context"].get(CONTEXT_KEY) or {}


def strip_hash(logical_id: str) -> str:
    return re.sub(r"[0-9A-F]{8}$", "", logical_id)


@dataclass
class Synth:
    app: cdk.App
    stack: cdk.Stack
    template: Template
    outdir: Path

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template.to_json()["Resources"]

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return self.template.to_json().get("Outputs", {})

    @property
    def template_file(self) -> Path:
        return self.outdir / f"{self.stack.stack_name}.template.json"

    @property
    def assets(self) -> dict[str, Any]:
        return json.loads((self.outdir / f"{self.stack.stack_name}.assets.json").read_text())

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == resource_type}

    def one(self, resource_type: str, name: str) -> tuple[str, dict[str, Any]]:
        """The one resource of that type whose logical id, without its hash suffix, is `name`."""
        matches = [(k, r) for k, r in self.of_type(resource_type).items() if strip_hash(k) == name]
        assert len(matches) == 1, f"expected one {resource_type} {name}, got {[k for k, _ in matches]}"
        return matches[0]

    def pool(self, pool: str, part: str, resource_type: str) -> tuple[str, dict[str, Any]]:
        """A pool's resource, e.g. pool("gpu", "JobQueue", "AWS::Batch::JobQueue")."""
        return self.one(resource_type, f"Workers{pascal(pool)}Pool{part}")

    def id_of(self, construct: IConstruct) -> str:
        """The logical id of an L2 construct's CloudFormation resource."""
        return self.stack.resolve(self.stack.get_logical_id(construct.node.default_child))

    def statements_of_role(self, role_name: str) -> list[dict[str, Any]]:
        """Every statement any policy grants the role (inline, attached, managed excluded)."""
        role_id, role = self.one("AWS::IAM::Role", role_name)
        statements = []
        for policy in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"].get("Roles", []):
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
        for inline in role["Properties"].get("Policies", []):
            statements += inline["PolicyDocument"]["Statement"]
        return statements


def env_of(job_definition: dict[str, Any]) -> dict[str, Any]:
    """A job definition's container environment as a dict."""
    return {e["Name"]: e["Value"] for e in job_definition["Properties"]["ContainerProperties"]["Environment"]}


def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(effect, action, resource) triples, resources rendered as short strings, for exact checks."""
    out = set()
    for st in statements:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for action in actions:
            for resource in resources:
                out.add((st["Effect"], action, _short(resource)))
    return out


def _short(resource: Any) -> str:
    """GetAtt/Ref to the logical id without its hash suffix, e.g. 'WorkersDefaultPoolTaskQueue.Arn'."""
    if resource == "*":
        return "*"
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        logical_id, attribute = resource["Fn::GetAtt"]
        return f"{strip_hash(logical_id)}.{attribute}"
    if isinstance(resource, dict) and "Ref" in resource:
        return strip_hash(resource["Ref"])
    return json.dumps(resource, sort_keys=True)


def synth(outdir: Path, **settings: Any) -> Synth:
    """app.py's app from cdk.json's context with these settings, run from the repository root as
    the CDK CLI runs it (a pool's `image` directory is relative to cdk.json's folder)."""
    with contextlib.chdir(REPO):
        app = cdk.App(context=cdk_json_context(**settings), outdir=str(outdir))
        app, stack = build_app(app)
        assembly = app.synth()
    template = Template.from_json(assembly.get_stack_by_name(stack.stack_name).template)
    return Synth(app=app, stack=stack, template=template, outdir=outdir)


@pytest.fixture(scope="session")
def default(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The stack as `cdk synth` builds it from the committed cdk.json."""
    return synth(tmp_path_factory.mktemp("cdk.out"), **committed_settings())


@pytest.fixture(scope="session")
def three_pools(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """Three pools: Fargate (default), Fargate arm64, GPU on EC2 Spot with its own image."""
    assert (REPO / GPU_IMAGE / "Dockerfile").is_file(), f"{GPU_IMAGE}/Dockerfile is missing"
    return synth(tmp_path_factory.mktemp("cdk.out"), pools=THREE_POOLS)


@pytest.fixture(scope="session")
def alarms_mode(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """`scaling_mode: "alarms"` (the original sample's design, no Lambda) over the three pools."""
    pools = {**THREE_POOLS, "arm": {**THREE_POOLS["arm"], **ARM_ALARMS}}
    return synth(tmp_path_factory.mktemp("cdk.out"), scaling_mode="alarms", pools=pools)


@pytest.fixture(scope="session")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """One Fargate Spot pool with its numbers off their defaults, one AZ, another stack name."""
    return synth(tmp_path_factory.mktemp("cdk.out"), **CUSTOM)

"""Synthesize the real app (app.py's build_app, cdk.json's feature flags) once per module."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from app import build_app
from batch_celery.settings import CONTEXT_KEY
from batch_celery.stack import BatchCeleryStack

REPO = Path(__file__).resolve().parents[2]


def cdk_json_context(**settings: Any) -> dict[str, Any]:
    """cdk.json's context (feature flags included) with the given `batch-celery` settings."""
    context = dict(json.loads((REPO / "cdk.json").read_text())["context"])
    context[CONTEXT_KEY] = settings
    return context


@dataclass
class Synth:
    app: cdk.App
    stack: BatchCeleryStack
    template: Template
    outdir: Path

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template.to_json()["Resources"]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == resource_type}

    def one(self, resource_type: str, logical_id_prefix: str) -> tuple[str, dict[str, Any]]:
        matches = [(k, r) for k, r in self.of_type(resource_type).items() if k.startswith(logical_id_prefix)]
        assert len(matches) == 1, f"expected one {resource_type} {logical_id_prefix}*, got {[k for k, _ in matches]}"
        return matches[0]

    def statements_of_role(self, role_prefix: str) -> list[dict[str, Any]]:
        """Every statement any policy grants the role (inline, attached, managed excluded)."""
        role_id, role = self.one("AWS::IAM::Role", role_prefix)
        statements = []
        for policy in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"].get("Roles", []):
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
        for inline in role["Properties"].get("Policies", []):
            statements += inline["PolicyDocument"]["Statement"]
        return statements


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
    """GetAtt/Ref to the logical id without its hash suffix, e.g. 'TaskQueue.Arn'."""
    if resource == "*":
        return "*"
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        logical_id, attribute = resource["Fn::GetAtt"]
        return f"{_strip_hash(logical_id)}.{attribute}"
    if isinstance(resource, dict) and "Ref" in resource:
        return _strip_hash(resource["Ref"])
    return json.dumps(resource, sort_keys=True)


def _strip_hash(logical_id: str) -> str:
    return re.sub(r"[0-9A-F]{8}$", "", logical_id)


def synth(outdir: Path, **settings: Any) -> Synth:
    app = cdk.App(context=cdk_json_context(**settings), outdir=str(outdir))
    app, stack = build_app(app)
    assembly = app.synth()
    template = Template.from_json(assembly.get_stack_by_name(stack.stack_name).template)
    return Synth(app=app, stack=stack, template=template, outdir=outdir)


@pytest.fixture(scope="module")
def make_synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Synth]:
    def make(**settings: Any) -> Synth:
        return synth(tmp_path_factory.mktemp("cdk.out"), **settings)

    return make


@pytest.fixture(scope="module")
def default(make_synth: Callable[..., Synth]) -> Synth:
    """The stack as `cdk synth` builds it from the committed cdk.json."""
    block = json.loads((REPO / "cdk.json").read_text())["context"].get(CONTEXT_KEY) or {}
    return make_synth(**block)


@pytest.fixture(scope="session")
def alarms_mode(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """`scaling_mode: "alarms"`: the original sample's design, no Lambda (shared: it is slow to build)."""
    return synth(tmp_path_factory.mktemp("cdk.out"), scaling_mode="alarms")

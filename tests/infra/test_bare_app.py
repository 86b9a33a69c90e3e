"""The construct in a bare `cdk.App()`: no cdk.json, no context, so no feature flags, as in an app
that embeds it without this repository's cdk.json. What the construct secures it says itself, so
both nag packs pass here as they do with cdk.json's flags (test_compliance.py)."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from batch_celery.construct import CeleryBatchWorkers

# Synthesizes a stack of its own (several seconds of CPU): make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow

# cdk.json sets this flag; without it, ec2.Vpc leaves the default security group's rules in place
# unless the construct asks for their removal itself.
RESTRICT_DEFAULT_SG_FLAG = "@aws-cdk/aws-ec2:restrictDefaultSecurityGroup"


@dataclass
class Bare:
    app: cdk.App
    stack: cdk.Stack
    workers: CeleryBatchWorkers
    template: Template


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Bare:
    """A user's stack in an app with no context, the construct with its default props (its own VPC)."""
    app = cdk.App(outdir=str(tmp_path_factory.mktemp("cdk.out")))
    stack = cdk.Stack(app, "User")
    # The point of this module: the flag must not be on here, by context or by the environment.
    assert not cdk.FeatureFlags.of(stack).is_enabled(RESTRICT_DEFAULT_SG_FLAG)
    workers = CeleryBatchWorkers(stack, "Workers")
    assembly = app.synth()
    return Bare(app, stack, workers, Template.from_json(assembly.get_stack_by_name(stack.stack_name).template))


@pytest.mark.parametrize("pack", [AwsSolutionsChecks, NIST80053R5Checks])
def test_cdk_nag_has_no_findings_without_feature_flags(bare: Bare, pack) -> None:
    report = pack(bare.app).validate_scope(bare.stack)
    findings = [f"{v.rule_name}: {[r.construct_path for r in v.violating_resources]}" for v in report.violations]
    assert findings == []
    assert report.success


def test_the_vpcs_default_security_group_is_closed_without_the_flag(bare: Bare) -> None:
    vpc_id = bare.stack.resolve(bare.stack.get_logical_id(bare.workers.vpc.node.default_child))
    # CDK's custom resource removes the default group's ingress and egress rules at deploy.
    bare.template.resource_count_is("Custom::VpcRestrictDefaultSG", 1)
    bare.template.has_resource_properties("Custom::VpcRestrictDefaultSG", {
        "DefaultSecurityGroupId": {"Fn::GetAtt": [vpc_id, "DefaultSecurityGroup"]},
    })

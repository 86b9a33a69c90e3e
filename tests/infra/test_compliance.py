"""cdk-nag (AwsSolutions and NIST 800-53 rev 5), cfn-lint and a snapshot of the whole template."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from .conftest import Synth

CFN_LINT = Path(sys.executable).parent / "cfn-lint"
ASSET_HASH = re.compile(r"\b[0-9a-f]{64}\b")

SYNTHS = ["default", "three_pools", "alarms_mode"]
EXECUTION_ROLE = "AwsSolutions-IAM5[Resource::*]"
EC2_INSTANCE_ROLE = (
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]"
)
# Acknowledgments of the default stack; the three-pool stack adds one per pool's execution role
# and one for the GPU pool's EC2 instance role.
DEFAULT_ACKS = {
    ("Workers/Scaling/ScalerRole", "AwsSolutions-IAM5[Resource::*]"),
    ("Workers/Scaling/Scaler", "AwsSolutions-L1"),
    ("Workers/EventsDeadLetterQueue", "AwsSolutions-SQS3"),
    ("Workers/DefaultPool/WorkerContainer/ExecutionRole", EXECUTION_ROLE),
    ("Workers/FillerContainer/ExecutionRole", EXECUTION_ROLE),
}
THREE_POOL_ACKS = DEFAULT_ACKS | {
    ("Workers/ArmPool/WorkerContainer/ExecutionRole", EXECUTION_ROLE),
    ("Workers/GpuPool/WorkerContainer/ExecutionRole", EXECUTION_ROLE),
    ("Workers/GpuPool/ComputeEnvironment", EC2_INSTANCE_ROLE),
}


@pytest.mark.parametrize("pack", [AwsSolutionsChecks, NIST80053R5Checks])
@pytest.mark.parametrize("synth_name", SYNTHS)
def test_cdk_nag_has_no_unacknowledged_findings(request, synth_name: str, pack) -> None:
    synth: Synth = request.getfixturevalue(synth_name)
    report = pack(synth.app).validate_scope(synth.stack)
    findings = [
        f"{v.rule_name}: {[r.locations for r in v.violating_resources]}" for v in report.violations
    ]
    assert findings == []
    assert report.success


@pytest.mark.parametrize("synth_name, expected", [
    ("default", DEFAULT_ACKS),
    ("three_pools", THREE_POOL_ACKS),
    # No scaler: no scaler acknowledgments.
    ("alarms_mode", THREE_POOL_ACKS - {("Workers/Scaling/ScalerRole", "AwsSolutions-IAM5[Resource::*]"),
                                       ("Workers/Scaling/Scaler", "AwsSolutions-L1")}),
])
def test_cdk_nag_acknowledgments_all_carry_reasons(request, synth_name: str, expected: set) -> None:
    # The acknowledgments this stack makes, and the reason for each, as recorded in the tree.
    acks = _acknowledgments(request.getfixturevalue(synth_name))
    assert set(acks) == expected
    assert all(len(reason) > 80 for reason in acks.values()), acks


# The NIST 800-53 rev 5 rules the stacks acknowledge (each where it applies, with its reason).
NIST_ACKS = {
    "NIST.800.53.R5-IAMNoInlinePolicy", "NIST.800.53.R5-CloudWatchLogGroupEncrypted",
    "NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW", "NIST.800.53.R5-CloudWatchAlarmAction",
}
NIST_SCALER_ACKS = {"NIST.800.53.R5-LambdaInsideVPC", "NIST.800.53.R5-LambdaDLQ"}


@pytest.mark.parametrize("synth_name, expected", [
    ("default", NIST_ACKS | NIST_SCALER_ACKS),
    ("three_pools", NIST_ACKS | NIST_SCALER_ACKS),
    ("alarms_mode", NIST_ACKS),
])
def test_nist_acknowledgments_are_the_known_ones_each_with_a_reason(request, synth_name: str, expected: set) -> None:
    acks = _acknowledgments(request.getfixturevalue(synth_name), prefix="NIST.800.53.R5-")
    assert {rule for _, rule in acks} == expected
    assert all(len(reason) > 80 for reason in acks.values()), acks
    # The public subnets hold only the NAT gateways and map no public address.
    assert all(path.startswith("Workers/Network/Vpc/PublicSubnet") for path, rule in acks
               if rule == "NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW")


def _acknowledgments(synth: Synth, prefix: str = "AwsSolutions-") -> dict[tuple[str, str], str]:
    found = {}
    for construct in synth.stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                path = construct.node.path.removeprefix(synth.stack.node.path + "/")
                for rule_id, reason in entry.data.items():
                    # CDK acknowledges some of its own CloudFormation-Validate rules; ours are nag's.
                    if prefix in rule_id:
                        found[(path, rule_id.split("::", 1)[-1])] = reason
    return found


@pytest.mark.slow  # cfn-lint: seconds of CPU per template
@pytest.mark.parametrize("synth_name", SYNTHS)
def test_cfn_lint_reports_nothing(request, synth_name: str) -> None:
    template = request.getfixturevalue(synth_name).template_file
    # W3005 (a DependsOn already implied by a GetAtt) is ignored: aws-cdk-lib's Lambda L2 renders
    # an explicit DependsOn on the function's role next to the GetAtt, for our scaler and for
    # CDK's own default-security-group provider; it is redundant and harmless.
    result = subprocess.run(
        [str(CFN_LINT), "--format", "parseable", "--ignore-checks", "W3005", "--", str(template)],
        capture_output=True, text=True, timeout=120,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _normalised(template: dict[str, Any]) -> dict[str, Any]:
    """Asset hashes (image tag, Lambda zip keys) replaced, so code changes don't churn the snapshot."""
    text = ASSET_HASH.sub("<asset-hash>", json.dumps(template, sort_keys=True))
    normalised = json.loads(text)
    normalised.get("Resources", {}).pop("CDKMetadata", None)
    return normalised


@pytest.mark.parametrize("synth_name", ["default", "three_pools"])
def test_template_matches_snapshot(request, synth_name: str, snapshot) -> None:
    assert _normalised(request.getfixturevalue(synth_name).template.to_json()) == snapshot

"""The three network modes of a new VPC: what each builds, what the workers may reach, and the
rules that keep a mode from being combined with what it cannot serve."""

from __future__ import annotations

import pytest
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from batch_celery.props import SettingsError
from batch_celery.settings import Settings

from .conftest import THREE_POOLS, Synth, synth

# Synthesizes stacks of its own (several seconds of CPU each): make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow


FARGATE_POOLS = {name: pool for name, pool in THREE_POOLS.items() if pool.get("compute", "fargate").startswith("fargate")}


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), network="private-endpoints", pools=THREE_POOLS, kms_key=True)


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), network="public", pools=FARGATE_POOLS)


def endpoint_services(stack: Synth) -> set[str]:
    names = set()
    for endpoint in stack.of_type("AWS::EC2::VPCEndpoint").values():
        service = endpoint["Properties"]["ServiceName"]
        text = service if isinstance(service, str) else str(service)
        names.add(next(part for part in ("ecr.dkr", "ecr.api", "ecs-agent", "ecs-telemetry", "sqs", "logs", "kms",
                                          "s3", "dynamodb", "ecs") if f".{part}" in text or f"'{part}" in text))
    return names


def test_private_endpoints_has_no_way_out_but_the_endpoints(endpoints: Synth) -> None:
    for kind in ("AWS::EC2::NatGateway", "AWS::EC2::InternetGateway", "AWS::EC2::EIP"):
        assert endpoints.of_type(kind) == {}, kind
    assert all("NatGatewayId" not in r["Properties"] and "GatewayId" not in r["Properties"]
               for r in endpoints.of_type("AWS::EC2::Route").values())
    # The three pools include an EC2 GPU pool (its ECS agent's endpoints) and kms_key is on.
    assert endpoint_services(endpoints) == {"sqs", "ecr.api", "ecr.dkr", "logs", "kms", "ecs", "ecs-agent",
                                            "ecs-telemetry", "s3", "dynamodb"}
    [group] = [g for k, g in endpoints.of_type("AWS::EC2::SecurityGroup").items() if "WorkerSecurityGroup" in k]
    egress = group["Properties"]["SecurityGroupEgress"]
    assert {(rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) for rule in egress} == {(443, 443, "tcp")}
    assert "SecurityGroupIngress" not in group["Properties"]
    group_id = next(k for k in endpoints.of_type("AWS::EC2::SecurityGroup") if "WorkerSecurityGroup" in k)
    for environment in endpoints.of_type("AWS::Batch::ComputeEnvironment").values():
        assert environment["Properties"]["ComputeResources"]["SecurityGroupIds"] == [{"Fn::GetAtt": [group_id, "GroupId"]}]


def test_public_puts_fargate_workers_in_public_subnets_with_their_own_address(public: Synth) -> None:
    assert public.of_type("AWS::EC2::NatGateway") == {}
    subnets = public.of_type("AWS::EC2::Subnet")
    assert len(subnets) == 2 and not any(s["Properties"]["MapPublicIpOnLaunch"] for s in subnets.values())
    for definition in public.of_type("AWS::Batch::JobDefinition").values():
        network = definition["Properties"]["ContainerProperties"]["NetworkConfiguration"]
        assert network == {"AssignPublicIp": "ENABLED"}
    groups = public.of_type("AWS::EC2::SecurityGroup").values()
    assert groups and not any("SecurityGroupIngress" in g["Properties"] for g in groups)


def test_private_keeps_one_nat_and_assigns_no_public_ip(default: Synth) -> None:
    assert len(default.of_type("AWS::EC2::NatGateway")) == 1 and default.of_type("AWS::EC2::VPCEndpoint") == {}
    for definition in default.of_type("AWS::Batch::JobDefinition").values():
        assert definition["Properties"]["ContainerProperties"]["NetworkConfiguration"] == {"AssignPublicIp": "DISABLED"}


@pytest.mark.parametrize("pack", [AwsSolutionsChecks, NIST80053R5Checks])
@pytest.mark.parametrize("fixture", ["endpoints", "public"])
def test_every_mode_passes_both_nag_packs(request, fixture: str, pack) -> None:
    stack: Synth = request.getfixturevalue(fixture)
    assert [v.rule_name for v in pack(stack.app).validate_scope(stack.stack).violations] == []


@pytest.mark.parametrize("block, message", [
    ({"network": "vpn"}, r'^batch-celery\.network = "vpn": must be "private" \(NAT gateway\), "private-endpoints"'),
    ({"network": "public", "pools": {"default": {}, "gpu": {"compute": "ec2_spot", "gpus": 1, "vcpus": 4,
                                                         "memory_mib": 15000, "tasks": ["gpu.*"]}}},
     r'^batch-celery\.pools\.gpu\.compute = "ec2_spot": cannot run in network "public"'),
    ({"network": "public", "vpc_id": "vpc-0123456789abcdef0"},
     r'^batch-celery\.network = "public": shapes a new VPC only'),
])
def test_a_mode_that_cannot_serve_fails_synth_with_one_line(block, message) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_context(block)

"""The VPC the Batch workers run in, in one of three network modes, with flow logs on.

    private            (default) workers in private subnets, out through a NAT gateway in the
                       public subnets; egress unrestricted (tasks may call anything, e.g. a database).
    private-endpoints  no NAT, no internet gateway: workers in isolated subnets reach AWS only
                       through VPC endpoints (interface endpoints for SQS, ECR, CloudWatch Logs and
                       what else the pools need; S3 and DynamoDB gateway endpoints); their security
                       group allows HTTPS out and nothing else.
    public             no NAT: workers in public subnets with a public IP of their own and no
                       inbound rule; the cheapest, with the internet one security group away.

No subnet maps public IPs on launch (Security Hub EC2.15): the NAT gateways have Elastic IPs, and
in public mode each Fargate worker asks for its address itself.
"""

from __future__ import annotations

from typing import Sequence

from aws_cdk import Acknowledgment, RemovalPolicy, Validations, aws_ec2 as ec2, aws_kms as kms, aws_logs as logs
from constructs import Construct

from .nag import LOG_GROUP_KEY_ACK
from .props import NETWORK_MODES

__all__ = ["NETWORK_MODES", "Network", "interface_endpoints"]
HTTPS = ec2.Port.tcp(443)
# The new VPC's range (CDK's default, written out so that rules can name it as a literal).
VPC_CIDR = "10.0.0.0/16"

# Interface endpoints every private-endpoints VPC gets: the workers' queue, image and logs.
BASE_ENDPOINTS = {
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
}
# EC2 pools: the ECS agent on the instances registers and reports through these.
EC2_ENDPOINTS = {
    "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,
    "EcsAgent": ec2.InterfaceVpcEndpointAwsService.ECS_AGENT,
    "EcsTelemetry": ec2.InterfaceVpcEndpointAwsService.ECS_TELEMETRY,
}
# kms_key: SQS, DynamoDB and Logs call KMS themselves; the workers call it for SQS data keys.
KMS_ENDPOINT = {"Kms": ec2.InterfaceVpcEndpointAwsService.KMS}


def interface_endpoints(*, ec2_pools: bool, kms_key: bool) -> dict[str, ec2.InterfaceVpcEndpointAwsService]:
    """The interface endpoints a private-endpoints VPC needs (docs/costs.md prices them)."""
    return {**BASE_ENDPOINTS, **(EC2_ENDPOINTS if ec2_pools else {}), **(KMS_ENDPOINT if kms_key else {})}


class Network(Construct):
    """A new VPC in one of NETWORK_MODES; ``worker_subnets`` and ``worker_security_groups`` say
    where the compute environments go."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        mode: str = "private",
        max_azs: int = 2,
        nat_gateways: int = 1,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        log_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        key: kms.IKey | None = None,
        endpoints: dict[str, ec2.InterfaceVpcEndpointAwsService] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.mode = mode
        worker_subnet_type = {
            "private": ec2.SubnetType.PRIVATE_WITH_EGRESS,
            "private-endpoints": ec2.SubnetType.PRIVATE_ISOLATED,
            "public": ec2.SubnetType.PUBLIC,
        }[mode]
        subnets: list[ec2.SubnetConfiguration] = []
        if mode in ("private", "public"):
            # Only the NAT gateways (private) or the workers with their own addresses (public)
            # live here: nothing launched here gets a public address by default (EC2.15).
            subnets.append(ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24,
                                                   map_public_ip_on_launch=False))
        if mode != "public":
            subnets.append(ec2.SubnetConfiguration(name="Private", subnet_type=worker_subnet_type, cidr_mask=20))
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(VPC_CIDR),
            max_azs=max_azs,
            nat_gateways=nat_gateways if mode == "private" else 0,
            subnet_configuration=subnets,
            # The default security group lets its members reach each other and anything outside;
            # nothing here uses it, so a custom resource removes its rules. Said here, not left to
            # the app's @aws-cdk/aws-ec2:restrictDefaultSecurityGroup flag, which an app that embeds
            # the construct may not set (NIST 800-53 VPCDefaultSecurityGroupClosed, Security Hub EC2.2).
            restrict_default_security_group=True,
        )

        flow_log_group = logs.LogGroup(
            self,
            "FlowLogs",
            retention=log_retention,
            # Audit evidence: kept when the stack is deleted unless the deployment says otherwise.
            removal_policy=log_removal_policy,
            encryption_key=key,
        )
        if key is None:
            Validations.of(flow_log_group).acknowledge(LOG_GROUP_KEY_ACK)
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )

        self.worker_subnets = ec2.SubnetSelection(subnet_type=worker_subnet_type)
        # None: each compute environment gets CDK's own group (all egress, no ingress).
        self.worker_security_groups: list[ec2.ISecurityGroup] | None = None
        if mode == "private-endpoints":
            self._endpoints(endpoints if endpoints is not None else dict(BASE_ENDPOINTS))
        for subnet in self.vpc.public_subnets:
            Validations.of(subnet).acknowledge(Acknowledgment(
                id="NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW",
                reason=(
                    "The public subnets hold only the NAT gateways, whose route to the internet "
                    "gateway is what lets the workers in the private subnets reach SQS, ECR and "
                    "CloudWatch; no public address is assigned in them and nothing else runs there."
                    if mode == "private" else
                    "network: public puts the workers here on purpose (the cheapest mode, chosen by "
                    "the deployment); they take a public address each, have no inbound rule, and "
                    "reach SQS, ECR and CloudWatch through the internet gateway over HTTPS."
                ),
            ))

    def _endpoints(self, services: dict[str, ec2.InterfaceVpcEndpointAwsService]) -> None:
        """No route leaves the VPC: AWS is reached through endpoints, over HTTPS only."""
        self.worker_security_group = ec2.SecurityGroup(
            self, "WorkerSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
            description="batch-celery workers: HTTPS out to the VPC endpoints, nothing in",
        )
        # The interface endpoints' addresses are in the VPC; the gateway endpoints' (S3 for the
        # image layers, DynamoDB for results) are AWS's public ranges, reached through the route
        # tables' prefix-list routes: with no other route out, HTTPS to anywhere reaches only those.
        self.worker_security_group.add_egress_rule(ec2.Peer.ipv4(VPC_CIDR), HTTPS,
                                                   "HTTPS to the interface endpoints")
        self.worker_security_group.add_egress_rule(ec2.Peer.any_ipv4(), HTTPS,
                                                   "HTTPS to the S3 and DynamoDB gateway endpoints (no other route out)")
        self.worker_security_groups = [self.worker_security_group]
        endpoint_group = ec2.SecurityGroup(
            self, "EndpointSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
            description="batch-celery interface endpoints: HTTPS in from the VPC",
        )
        endpoint_group.add_ingress_rule(ec2.Peer.ipv4(VPC_CIDR), HTTPS, "HTTPS from the VPC")
        subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[subnets])
        self.vpc.add_gateway_endpoint("DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[subnets])
        self.interface_endpoints: Sequence[ec2.InterfaceVpcEndpoint] = [
            self.vpc.add_interface_endpoint(name, service=service, subnets=subnets, private_dns_enabled=True, open=False,
                                            security_groups=[endpoint_group])
            for name, service in services.items()
        ]

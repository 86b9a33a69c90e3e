"""The VPC the Batch workers run in: private subnets with NAT egress, flow logs on."""

from __future__ import annotations

from aws_cdk import Acknowledgment, RemovalPolicy, Validations, aws_ec2 as ec2, aws_kms as kms, aws_logs as logs
from constructs import Construct

from .nag import LOG_GROUP_KEY_ACK


class Network(Construct):
    """Public subnets hold only the NAT gateways; workers run in the private subnets."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        max_azs: int = 2,
        nat_gateways: int = 1,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        log_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=max_azs,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                # Only the NAT gateways live here, with their own Elastic IPs: nothing launched
                # here gets a public address by default (Security Hub EC2.15).
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24,
                                        map_public_ip_on_launch=False),
                ec2.SubnetConfiguration(
                    name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
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

        self.worker_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        for subnet in self.vpc.public_subnets:
            Validations.of(subnet).acknowledge(Acknowledgment(
                id="NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW",
                reason=(
                    "The public subnets hold only the NAT gateways, whose route to the internet "
                    "gateway is what lets the workers in the private subnets reach SQS, ECR and "
                    "CloudWatch; no public address is assigned in them and nothing else runs there."
                ),
            ))

"""The VPC the Batch workers run in: private subnets with NAT egress, flow logs on."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, aws_ec2 as ec2, aws_logs as logs
from constructs import Construct


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
    ) -> None:
        super().__init__(scope, construct_id)

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=max_azs,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
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
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )

        self.worker_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

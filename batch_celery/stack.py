"""The stack `cdk deploy` builds: the construct, configured from cdk.json, and its outputs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jsii
from aws_cdk import Acknowledgment, Aspects, CfnOutput, CfnResource, IAspect, Stack, TagManager, Tags, Validations
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from batch_celery_container import routing

from .construct import FILLER_JOB_NAME, PROJECT_TAG, CeleryBatchWorkers
from .props import pascal
from .settings import Settings


# What Vpc.from_lookup returns before the CLI has looked the VPC up (aws-cdk-lib's dummy response).
LOOKUP_PENDING_VPC_ID = "vpc-12345"


@jsii.implements(IAspect)
class _TagPlainResources:
    """CDK's own custom-resource provider (it empties the VPC's default security group) is a plain
    CfnResource that the Tags aspect does not reach: its role and function get the tag here."""

    def visit(self, node) -> None:
        if (isinstance(node, CfnResource) and not TagManager.is_taggable(node)
                and node.cfn_resource_type in ("AWS::IAM::Role", "AWS::Lambda::Function")):
            node.add_property_override("Tags", [{"Key": PROJECT_TAG[0], "Value": PROJECT_TAG[1]}])


class BatchCeleryStack(Stack):
    """Celery worker pools on AWS Batch that start when tasks arrive and stop when their work is done."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # The stack's own resources (CDK's custom resources) carry the project tag too.
        Tags.of(self).add(*PROJECT_TAG)
        Aspects.of(self).add(_TagPlainResources())
        props = settings.props
        if settings.vpc_id is not None:
            # Resolved by the CDK CLI at synth (cached in cdk.context.json); needs the stack's
            # account and region, which app.py sets when vpc_id is given.
            vpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=settings.vpc_id)
            if vpc.vpc_id == LOOKUP_PENDING_VPC_ID:
                # Not looked up yet: CDK answers with a placeholder VPC, and the CLI looks the real
                # one up once this first synth has told it to, then synthesizes again. Only this
                # first pass sees the placeholder ids, which CDK's own template checks reject.
                for rule in ("E1151", "E1154"):
                    Validations.of(self).acknowledge(Acknowledgment(
                        id=f"CloudFormation-Validate::{rule}",
                        reason="The VPC lookup is pending: CDK's placeholder VPC and subnet ids stand "
                               "in until the CLI looks the VPC up and synthesizes again with the real ids.",
                    ))
            props = replace(props, vpc=vpc)
        self.workers = CeleryBatchWorkers(self, "Workers", props)
        w = self.workers

        for name, pool in w.pools.items():
            p = f"Pool{pascal(name)}"
            CfnOutput(self, f"{p}QueueName", value=pool.queue.queue_name,
                      description=f"SQS queue (= Celery queue name) of pool {name}")
            CfnOutput(self, f"{p}QueueUrl", value=pool.queue.queue_url,
                      description=f"URL of the SQS queue of pool {name}")
            CfnOutput(self, f"{p}DeadLetterQueueUrl", value=pool.dead_letter_queue.queue_url,
                      description=f"URL of the dead-letter queue of pool {name}")
            if name in w.lambda_pools:
                CfnOutput(self, f"{p}FunctionName", value=w.lambda_pools[name].function.function_name,
                          description=f"Lambda function that runs the tasks of pool {name}")
                continue
            CfnOutput(self, f"{p}JobQueueArn", value=pool.job_queue.job_queue_arn,
                      description=f"ARN of the Batch job queue pool {name}'s workers run in")
            CfnOutput(self, f"{p}JobDefinitionArn", value=pool.job_definition.job_definition_arn,
                      description=f"ARN of the Batch job definition of one worker of pool {name}")
        CfnOutput(self, routing.OUTPUT_NAME, value=w.routes_json,
                  description="Task routing to the pools' queues, JSON for batch_celery_container/routing.py")
        CfnOutput(self, "FillerJobDefinitionArn", value=w.filler_job_definition.job_definition_arn,
                  description=f"Job definition that fills the queues (job name {FILLER_JOB_NAME}, "
                              "parameter numMessages); submit it to FillerJobQueueArn")
        CfnOutput(self, "FillerJobQueueArn", value=w.filler_job_queue.job_queue_arn,
                  description="Job queue the filler job runs in (the default pool's)")
        CfnOutput(self, "AlarmTopicArn", value=w.monitoring.topic.topic_arn,
                  description="SNS topic every alarm that needs a human notifies; subscribe to it")
        CfnOutput(self, "DashboardName", value=w.dashboard.dashboard_name,
                  description="CloudWatch dashboard: a row for the stack, a row per pool")
        CfnOutput(self, "DashboardUrl",
                  value=f"https://console.aws.amazon.com/cloudwatch/home?region={self.region}"
                        f"#dashboards:name={w.dashboard.dashboard_name}",
                  description="Opens the dashboard in the CloudWatch console")
        CfnOutput(self, "MetricsNamespace", value=w.metrics_namespace,
                  description="CloudWatch namespace of the task and scaler metrics (EMF)")
        if w.results is not None:
            CfnOutput(self, routing.RESULT_TABLE_OUTPUT, value=w.results.table_name,
                      description="DynamoDB table of task results (Celery result_backend "
                                  "dynamodb://@REGION/TABLE); grant your application read access")
        if w.schedules is not None:
            CfnOutput(self, "Schedules", value=w.schedules.schedules_json(props.schedules),
                      description="Periodic tasks: name -> task, pool, expression, time zone (EventBridge Scheduler)")
            CfnOutput(self, "ScheduleSenderLogGroupName", value=w.schedules.log_group.log_group_name,
                      description="Log group of the schedule sender (one JSON line per scheduled task sent)")
        if w.scaler is not None:
            CfnOutput(self, "ScalerFunctionName", value=w.scaler.function.function_name,
                      description="Name of the Lambda function that sizes every pool's workers")
            CfnOutput(self, "ScalerLogGroupName", value=w.scaler.log_group.log_group_name,
                      description="Log group of the scaler's decisions (one JSON line per pool per decision)")

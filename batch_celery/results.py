"""Where task results go: one DynamoDB table, the one Celery's DynamoDB backend reads and writes.

The schema is Celery's (``celery/backends/dynamodb.py``): partition key ``id`` (a string), the
encoded result in ``result``, and the expiry time in ``ttl``, which Celery writes when its URL
carries ``ttl_seconds`` and which DynamoDB's TTL then deletes by. On-demand capacity (a burst of
results never throttles), encrypted with a key of the account, point-in-time recovery on.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from batch_celery_container import contract

# Celery's DynamoDB backend names these attributes; they are not ours to choose.
KEY_ATTRIBUTE = contract.RESULT_KEY_ATTRIBUTE
TTL_ATTRIBUTE = contract.RESULT_TTL_ATTRIBUTE
# The backend describes the table's TTL when it first connects (and only updates it when it is
# not the attribute above, which it never is here, so the writers are not given UpdateTimeToLive).
DESCRIBE_TTL = "dynamodb:DescribeTimeToLive"


class ResultTable(Construct):
    """The result table; ``grant_write`` for workers, ``grant_read`` for an application that waits."""

    def __init__(self, scope: Construct, construct_id: str, *, expires_days: int, key: kms.IKey | None = None) -> None:
        super().__init__(scope, construct_id)
        self.expires_days = expires_days
        self.table = dynamodb.TableV2(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=KEY_ATTRIBUTE, type=dynamodb.AttributeType.STRING),
            billing=dynamodb.Billing.on_demand(),
            encryption=dynamodb.TableEncryptionV2.aws_managed_key(),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            # Results are a cache of what tasks returned, kept for days: nothing to keep when the
            # stack goes.
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.key = key
        if key is not None:
            # TableV2's customer_managed_key needs the replica's region at synth, which this
            # environment-agnostic stack leaves to CloudFormation: the same settings, written
            # directly. The grants below then add the key's use themselves.
            table = self.table.node.default_child
            table.add_property_override("SSESpecification", {"SSEEnabled": True, "SSEType": "KMS"})
            table.add_property_override("Replicas.0.SSESpecification", {"KMSMasterKeyId": key.key_arn})

    @property
    def table_name(self) -> str:
        return self.table.table_name

    def grant_write(self, grantee: iam.IGrantable) -> None:
        """A worker: Celery reads a task's result before it writes one (it never overwrites a
        success), so writing needs GetItem too."""
        self.table.grant_read_write_data(grantee)
        self.table.grant(grantee, DESCRIBE_TTL)
        if self.key is not None:
            self.key.grant_encrypt_decrypt(grantee)

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """An application that calls ``AsyncResult.get()`` (or the filler's ``--wait``)."""
        self.table.grant_read_data(grantee)
        if self.key is not None:
            self.key.grant_decrypt(grantee)

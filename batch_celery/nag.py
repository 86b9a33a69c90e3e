"""cdk-nag acknowledgments more than one module makes, each with the reason a reviewer reads."""

from __future__ import annotations

from aws_cdk import Acknowledgment

INLINE_POLICY_ACK = Acknowledgment(
    id="NIST.800.53.R5-IAMNoInlinePolicy",
    reason=(
        "Every policy here is one role's own, written by grant_* for exactly the resources that "
        "role uses (AWS::IAM::Policy attached to that role only); a managed policy would invite "
        "sharing it with roles that need less, which is what the rule guards against."
    ),
)
LOG_GROUP_KEY_ACK = Acknowledgment(
    id="NIST.800.53.R5-CloudWatchLogGroupEncrypted",
    reason=(
        "CloudWatch Logs encrypts every log group at rest with keys AWS owns; the logs hold task "
        "names, ids, return values and worker lifecycle lines. kms_key: true (or a key ARN) "
        "encrypts them with a customer-managed key instead, and this acknowledgment goes."
    ),
)

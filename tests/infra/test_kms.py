"""kms_key: one customer-managed key for everything that holds task data or evidence."""

from __future__ import annotations

import json

import pytest
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from batch_celery.props import SettingsError

from .conftest import THREE_POOLS, Synth, grants, synth

# Synthesizes stacks of its own (several seconds of CPU each): make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow


KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(scope="module")
def with_key(tmp_path_factory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), kms_key=True, pools=THREE_POOLS)


def key_ref(stack: Synth) -> dict:
    [key_id] = stack.of_type("AWS::KMS::Key")
    return {"Fn::GetAtt": [key_id, "Arn"]}


def test_one_rotating_key_encrypts_queues_logs_results_and_the_topic(with_key: Synth) -> None:
    [(key_id, key)] = with_key.of_type("AWS::KMS::Key").items()
    assert key["Properties"]["EnableKeyRotation"] is True and key["DeletionPolicy"] == "Retain"
    arn = {"Fn::GetAtt": [key_id, "Arn"]}
    queues = with_key.of_type("AWS::SQS::Queue")
    assert len(queues) == 7 and all(q["Properties"]["KmsMasterKeyId"] == arn for q in queues.values())
    assert not any("SqsManagedSseEnabled" in q["Properties"] for q in queues.values())
    groups = with_key.of_type("AWS::Logs::LogGroup")
    assert len(groups) == 3 and all(g["Properties"]["KmsKeyId"] == arn for g in groups.values())
    [table] = with_key.of_type("AWS::DynamoDB::GlobalTable").values()
    assert table["Properties"]["SSESpecification"]["SSEType"] == "KMS"
    assert all(r["SSESpecification"]["KMSMasterKeyId"] == arn for r in table["Properties"]["Replicas"])
    [topic] = with_key.of_type("AWS::SNS::Topic").values()
    assert topic["Properties"]["KmsMasterKeyId"] == arn


def test_the_key_policy_lets_only_the_services_that_need_it_use_it(with_key: Synth) -> None:
    [key] = with_key.of_type("AWS::KMS::Key").values()
    by_service: dict[str, list] = {}
    for statement in key["Properties"]["KeyPolicy"]["Statement"]:
        services = statement["Principal"].get("Service", [])
        for service in [services] if not isinstance(services, list) else services:
            by_service.setdefault(json.dumps(service), []).append(statement)
    [logs_name] = [name for name in by_service if "logs." in name]
    [logs] = by_service.pop(logs_name)
    assert "kms:EncryptionContext:aws:logs:arn" in logs["Condition"]["ArnLike"]  # this account's log groups
    # CloudWatch alarms and EventBridge publish to the topic and the events DLQ: data keys only.
    assert set(by_service) == {'"cloudwatch.amazonaws.com"', '"events.amazonaws.com"'}
    for statements in by_service.values():
        assert all(set(s["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"} for s in statements)
    [cloudwatch] = by_service['"cloudwatch.amazonaws.com"']
    assert cloudwatch["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_workers_and_the_filler_may_use_the_key_for_their_queues(with_key: Synth) -> None:
    key = f"{key_ref(with_key)['Fn::GetAtt'][0][:-8]}.Arn"
    worker = grants(with_key.statements_of_role("WorkersDefaultPoolWorkerRole"))
    assert ("Allow", "kms:Decrypt", key) in worker and ("Allow", "kms:GenerateDataKey*", key) in worker
    filler = grants(with_key.statements_of_role("WorkersFillerRole"))
    assert ("Allow", "kms:GenerateDataKey*", key) in filler


def test_a_key_arn_uses_that_key_and_creates_none(tmp_path) -> None:
    stack = synth(tmp_path, kms_key=KEY_ARN)
    assert stack.of_type("AWS::KMS::Key") == {}
    queues = stack.of_type("AWS::SQS::Queue").values()
    assert {q["Properties"]["KmsMasterKeyId"] for q in queues} == {KEY_ARN}
    assert {g["Properties"]["KmsKeyId"] for g in stack.of_type("AWS::Logs::LogGroup").values()} == {KEY_ARN}


def test_by_default_the_services_own_keys_and_the_topics_own_key(default: Synth) -> None:
    assert len(default.of_type("AWS::KMS::Key")) == 1  # the alarm topic's
    assert all(q["Properties"]["SqsManagedSseEnabled"] for q in default.of_type("AWS::SQS::Queue").values())
    assert not any("KmsKeyId" in g["Properties"] for g in default.of_type("AWS::Logs::LogGroup").values())


@pytest.mark.parametrize("pack", [AwsSolutionsChecks, NIST80053R5Checks])
def test_the_key_option_passes_both_packs_without_the_log_key_acknowledgment(with_key: Synth, pack) -> None:
    report = pack(with_key.app).validate_scope(with_key.stack)
    assert [v.rule_name for v in report.violations] == []
    acknowledged = {rule for construct in with_key.stack.node.find_all() for entry in construct.node.metadata
                    if entry.type == "aws:cdk:acknowledged-rules" for rule in entry.data}
    assert not any("CloudWatchLogGroupEncrypted" in rule for rule in acknowledged)


@pytest.mark.parametrize("value", ["yes", "arn:aws:kms:eu-west-1:123456789012:alias/mine", 1])
def test_a_bad_kms_key_fails_synth_with_one_line(tmp_path, value) -> None:
    with pytest.raises(SettingsError, match=r"^batch-celery\.kms_key = .*: must be false .*, true .* or a KMS key ARN"):
        synth(tmp_path, kms_key=value)

"""The alarm topic: encrypted, TLS only, told of everything that needs a human and of nothing else."""

from __future__ import annotations

import json

import pytest

from batch_celery.props import pascal

from .conftest import THREE_POOLS, Synth, strip_hash, synth

# Synthesizes stacks of its own (several seconds of CPU each): make test runs it, make test-fast does not.
pytestmark = pytest.mark.slow


POOLS = tuple(THREE_POOLS)


@pytest.fixture(scope="module")
def subscribed(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(tmp_path_factory.mktemp("cdk.out"), alarm_email="ops@example.com",
                 pools={"default": {"runnable_timeout_seconds": 900}})


def _topic(synth: Synth) -> str:
    return synth.one("AWS::SNS::Topic", "WorkersMonitoringAlarmTopic")[0]


def test_the_topic_is_encrypted_with_a_rotating_key_the_publishers_may_use(three_pools: Synth) -> None:
    topic_id = _topic(three_pools)
    key_id, key = three_pools.one("AWS::KMS::Key", "WorkersMonitoringAlarmTopicKey")
    assert three_pools.resources[topic_id]["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert key["Properties"]["EnableKeyRotation"] is True
    publishers = set()
    for statement in key["Properties"]["KeyPolicy"]["Statement"]:
        services = statement.get("Principal", {}).get("Service", []) if isinstance(statement.get("Principal"), dict) else []
        publishers |= set([services] if isinstance(services, str) else services)
    assert publishers == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}


def test_the_topic_refuses_plain_http(three_pools: Synth) -> None:
    (policy,) = three_pools.of_type("AWS::SNS::TopicPolicy").values()
    denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_alarms_that_need_a_human_notify_the_topic_and_depth_alarms_stay_quiet(three_pools: Synth) -> None:
    topic = {"Ref": _topic(three_pools)}
    notifying = {strip_hash(k) for k, a in three_pools.of_type("AWS::CloudWatch::Alarm").items()
                 if topic in a["Properties"].get("AlarmActions", [])}
    assert notifying == {
        *(f"WorkersMonitoring{pascal(pool)}TaskDeadLetterAlarm" for pool in POOLS),
        *(f"Workers{pascal(pool)}AlarmsSlaAlarm" for pool in POOLS),
        "WorkersMonitoringEventsDeadLetterAlarm",
        "WorkersMonitoringScalerFailingAlarm",
    }
    quiet = [k for k, a in three_pools.of_type("AWS::CloudWatch::Alarm").items() if "DepthAlarm" in k]
    assert len(quiet) == 6 and not any(three_pools.resources[k]["Properties"].get("AlarmActions") for k in quiet)


def test_every_failed_worker_job_of_the_pools_is_told_with_its_reason(three_pools: Synth) -> None:
    _, rule = three_pools.one("AWS::Events::Rule", "WorkersMonitoringWorkerJobFailedRule")
    pattern = rule["Properties"]["EventPattern"]
    assert (pattern["source"], pattern["detail-type"], pattern["detail"]["status"]) == (
        ["aws.batch"], ["Batch Job State Change"], ["FAILED"])
    queues = [{"Fn::GetAtt": [three_pools.pool(pool, "JobQueue", "AWS::Batch::JobQueue")[0], "JobQueueArn"]}
              for pool in POOLS]
    assert pattern["detail"]["jobQueue"] == queues
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Ref": _topic(three_pools)}
    assert "$.detail.statusReason" in str(target["InputTransformer"])
    assert "DeadLetterConfig" in target


def test_jobs_stuck_runnable_are_cancelled_after_the_pools_time(subscribed: Synth, three_pools: Synth) -> None:
    _, queue = subscribed.pool("default", "JobQueue", "AWS::Batch::JobQueue")
    actions = queue["Properties"]["JobStateTimeLimitActions"]
    assert {a["Reason"] for a in actions} == {
        "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
        "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"}
    assert {(a["Action"], a["State"], a["MaxTimeSeconds"]) for a in actions} == {("CANCEL", "RUNNABLE", 900)}
    for pool in POOLS:  # the default, an hour
        _, queue = three_pools.pool(pool, "JobQueue", "AWS::Batch::JobQueue")
        assert {a["MaxTimeSeconds"] for a in queue["Properties"]["JobStateTimeLimitActions"]} == {3600}


def test_alarm_email_subscribes_one_address(subscribed: Synth, three_pools: Synth) -> None:
    (subscription,) = subscribed.of_type("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == "ops@example.com"
    assert subscription["Properties"]["TopicArn"] == {"Ref": _topic(subscribed)}
    assert not three_pools.of_type("AWS::SNS::Subscription")
    assert subscribed.outputs["AlarmTopicArn"]["Value"] == {"Ref": _topic(subscribed)}


def test_a_worker_that_left_at_its_job_deadline_is_not_told_as_a_failure(three_pools: Synth) -> None:
    """The rule's pattern, matched by moto's implementation of EventBridge patterns on the events
    Batch sends: a crash (exit 3) and a job cancelled while RUNNABLE (no container) are told; the
    routine exit at the job's deadline is not."""
    from moto.events.models import EventPattern

    from batch_celery_container.contract import EXIT_JOB_DEADLINE

    _, rule = three_pools.one("AWS::Events::Rule", "WorkersMonitoringWorkerJobFailedRule")
    queue = "arn:aws:batch:us-east-1:123456789012:job-queue/default"
    pattern = json.loads(json.dumps(rule["Properties"]["EventPattern"]))
    pattern["detail"]["jobQueue"] = [queue]
    matcher = EventPattern(None, pattern)

    def event(**detail: object) -> dict:
        return {"source": "aws.batch", "detail-type": "Batch Job State Change",
                "detail": {"status": "FAILED", "jobQueue": queue, **detail}}

    assert matcher.matches_event(event(container={"exitCode": 3}))
    assert matcher.matches_event(event(statusReason="Job cancelled: RUNNABLE too long"))
    assert not matcher.matches_event(event(container={"exitCode": EXIT_JOB_DEADLINE}))
    assert not matcher.matches_event({**event(container={"exitCode": 3}), "detail": {"status": "SUCCEEDED", "jobQueue": queue}})

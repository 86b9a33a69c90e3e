"""What the local run takes from the synthesized stack, so local and AWS cannot drift.

The demo synthesizes the real CDK app (no AWS credentials, no Docker needed) and reads from its
template the task queue's and DLQ's attributes, the worker job's environment and the scaler's
settings. Values that CloudFormation resolves only at deploy time (queue URL, region) are skipped:
locally they come from moto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from batch_celery.local.queues import QueuePair

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_COMMAND = "./run_celery_worker.sh"


class TemplateError(RuntimeError):
    """The synthesized template lacks something the local run needs, or synth failed."""


@dataclass(frozen=True)
class QueueSpec:
    """The task queue and dead-letter queue as the stack declares them."""

    visibility_timeout: int
    retention_seconds: int
    max_receive_count: int
    dlq_retention_seconds: int
    managed_sse: bool

    def queue_attributes(self) -> dict[str, str]:
        attributes = {
            "VisibilityTimeout": str(self.visibility_timeout),
            "MessageRetentionPeriod": str(self.retention_seconds),
        }
        if self.managed_sse:
            attributes["SqsManagedSseEnabled"] = "true"
        return attributes


@dataclass(frozen=True)
class StackSpec:
    queue: QueueSpec
    # The worker job's environment, literal values only (no CloudFormation references).
    worker_environment: Mapping[str, str] = field(default_factory=dict)
    # The scaler Lambda's environment (literal values), empty when the scaler is switched off.
    scaler_environment: Mapping[str, str] = field(default_factory=dict)


def project_context() -> dict[str, Any]:
    """The context the CDK CLI would pass: cdk.json's ``context``, then cdk.context.json over it."""
    context: dict[str, Any] = {}
    for name, key in (("cdk.json", "context"), ("cdk.context.json", None)):
        path = REPO_ROOT / name
        if path.exists():
            data = json.loads(path.read_text())
            context.update(data.get(key, {}) if key else data)
    return context


def synthesize(outdir: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the real CDK app into ``outdir`` with the project's context (``overrides`` on top, as
    ``cdk synth -c`` would put them) and return its one stack template.

    ``python app.py`` alone does not read cdk.json: the CLI passes its context in
    ``CDK_CONTEXT_JSON``, so this does the same, or the user's settings would be ignored here.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env.update(
        CDK_OUTDIR=str(outdir),
        CDK_CONTEXT_JSON=json.dumps({**project_context(), **(overrides or {})}),
        AWS_EC2_METADATA_DISABLED="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION="1",
    )
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise TemplateError(f"synth failed: {lines[-1] if lines else 'exit ' + str(result.returncode)}")
    templates = sorted(outdir.glob("*.template.json"))
    if len(templates) != 1:
        raise TemplateError(f"expected one stack template in {outdir}, found {len(templates)}")
    return json.loads(templates[0].read_text())


def _resources(template: Mapping[str, Any], kind: str) -> dict[str, dict]:
    return {
        logical_id: resource
        for logical_id, resource in template.get("Resources", {}).items()
        if resource.get("Type") == kind
    }


def _literal_env(pairs: Any) -> dict[str, str]:
    if isinstance(pairs, Mapping):  # Lambda: {"Variables": {name: value}}
        items = pairs.items()
    else:  # Batch: [{"Name": name, "Value": value}]
        items = ((pair.get("Name"), pair.get("Value")) for pair in pairs or [])
    return {name: value for name, value in items if isinstance(value, str)}


def read_spec(template: Mapping[str, Any]) -> StackSpec:
    """The queue, worker and scaler settings the local run mirrors."""
    queues = _resources(template, "AWS::SQS::Queue")
    task_queues = [r for r in queues.values() if "RedrivePolicy" in r.get("Properties", {})]
    if len(task_queues) != 1:
        raise TemplateError(f"expected one queue with a redrive policy in the template, found {len(task_queues)}")
    properties = task_queues[0]["Properties"]
    redrive = properties["RedrivePolicy"]
    target = redrive.get("deadLetterTargetArn", {})
    dlq_id = target.get("Fn::GetAtt", [None])[0] if isinstance(target, Mapping) else None
    if dlq_id not in queues:
        raise TemplateError("the task queue's redrive policy does not name a queue of this stack")
    dlq = queues[dlq_id]["Properties"]
    spec = QueueSpec(
        visibility_timeout=int(properties.get("VisibilityTimeout", 30)),
        retention_seconds=int(properties.get("MessageRetentionPeriod", 345600)),
        max_receive_count=int(redrive["maxReceiveCount"]),
        dlq_retention_seconds=int(dlq.get("MessageRetentionPeriod", 345600)),
        managed_sse=bool(properties.get("SqsManagedSseEnabled", False)),
    )

    worker_env: dict[str, str] = {}
    for resource in _resources(template, "AWS::Batch::JobDefinition").values():
        container = resource.get("Properties", {}).get("ContainerProperties", {})
        if container.get("Command") == [WORKER_COMMAND]:
            worker_env = _literal_env(container.get("Environment"))
    if not worker_env:
        raise TemplateError(f"no worker job definition running {WORKER_COMMAND} in the template")

    scaler_env: dict[str, str] = {}
    for resource in _resources(template, "AWS::Lambda::Function").values():
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        if "MESSAGES_PER_WORKER" in variables:
            scaler_env = _literal_env(variables)
    return StackSpec(queue=spec, worker_environment=worker_env, scaler_environment=scaler_env)


def create_queues(sqs, name: str, spec: QueueSpec) -> QueuePair:
    """Create ``name`` and ``name-dlq`` on a local endpoint with the stack's attributes."""
    dlq_name = f"{name}-dlq"
    dlq_attributes = {"MessageRetentionPeriod": str(spec.dlq_retention_seconds)}
    if spec.managed_sse:
        dlq_attributes["SqsManagedSseEnabled"] = "true"
    dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes=dlq_attributes)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = spec.queue_attributes()
    attributes["RedrivePolicy"] = json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(spec.max_receive_count)}
    )
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return QueuePair(name, url, dlq_name, dlq_url, spec.visibility_timeout, spec.max_receive_count)

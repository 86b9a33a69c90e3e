"""What the local run takes from the synthesized stack, so local and AWS cannot drift.

The demo synthesizes the real CDK app (no AWS credentials, no Docker needed) and reads from its
template, per pool, the task queue's and DLQ's attributes, the worker job's environment and the
scaler's settings. Values that CloudFormation resolves only at deploy time (queue URL, region) are
skipped: locally they come from moto. What the template holds only inside joined strings (a pool's
task patterns and image) comes from the same settings the synth was given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from batch_celery.settings import project_context
from batch_celery_local import REPO_ROOT
from batch_celery_local.queues import QueuePair, create_queue_pair
from batch_celery.settings import Settings
from batch_celery_container import contract

WORKER_COMMAND = "batch-celery-worker"
# A Lambda pool's function runs its image with this entry point (batch_celery/lambda_pool.py).
LAMBDA_ENTRYPOINT = "batch-celery-lambda"


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


@dataclass(frozen=True)
class PoolSpec:
    """One pool as the stack declares it."""

    name: str
    queue: QueueSpec
    # The worker job's environment, literal values only (no CloudFormation references).
    worker_environment: Mapping[str, str]
    # The scaler's numbers for this pool (its POOLS entry); None in alarms mode.
    messages_per_worker: int | None = None
    target_wait_seconds: int | None = None
    max_workers: int | None = None
    tasks_per_worker: int = 1
    tasks: tuple[str, ...] = ()
    image: str | None = None
    # A Lambda pool (compute "lambda"): worker_environment is its function's; max_workers its
    # mapping's maximum concurrency.
    on_lambda: bool = False


@dataclass(frozen=True)
class StackSpec:
    # Pool name -> pool, in the stack's order: the first is the default pool.
    pools: Mapping[str, PoolSpec] = field(default_factory=dict)
    # Whether the stack has a result table (its setting results).
    results: bool = False

    @property
    def default_pool(self) -> PoolSpec:
        return next(iter(self.pools.values()))


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


def read_spec(template: Mapping[str, Any], settings: Settings | None = None) -> StackSpec:
    """Every pool's queue, worker and scaler settings the local run mirrors.

    ``settings`` (what the template was synthesized from) gives each pool's task patterns and image.
    """
    queues = _resources(template, "AWS::SQS::Queue")
    scaler_pools = _scaler_pools(template)
    pools: dict[str, PoolSpec] = {}
    for resource in _resources(template, "AWS::Batch::JobDefinition").values():
        container = resource.get("Properties", {}).get("ContainerProperties", {})
        if container.get("Command") != [WORKER_COMMAND]:
            continue
        pairs = container.get("Environment") or []
        name = _literal_env(pairs).get(contract.POOL)
        queue_ref = next((p.get("Value") for p in pairs if p.get("Name") == contract.QUEUE_URL), None)
        queue_id = queue_ref.get("Ref") if isinstance(queue_ref, Mapping) else None
        if not name or queue_id not in queues:
            raise TemplateError(f"a worker job definition lacks {contract.POOL} or a {contract.QUEUE_URL} of this stack")
        scaler = scaler_pools.get(name, {})
        props = settings.props.pools.get(name) if settings else None
        pools[name] = PoolSpec(
            name=name,
            queue=_queue_spec(queues, queue_id),
            worker_environment=_literal_env(pairs),
            messages_per_worker=scaler.get("messages_per_worker"),
            target_wait_seconds=scaler.get("target_wait_seconds"),
            max_workers=scaler.get("max_workers"),
            tasks_per_worker=scaler.get("tasks_per_worker", 1),
            tasks=props.tasks if props else (),
            image=props.image if props else None,
        )
    if not pools:
        raise TemplateError(f"no worker job definition running {WORKER_COMMAND} in the template")
    pools.update(_lambda_pools(template, queues, settings))
    if settings:  # the stack's order, so the first pool is the default one
        pools = {name: pools[name] for name in settings.props.pools if name in pools}
    return StackSpec(pools=pools, results=bool(_resources(template, "AWS::DynamoDB::GlobalTable")))


def _lambda_pools(template: Mapping[str, Any], queues: Mapping[str, Any],
                  settings: Settings | None) -> dict[str, PoolSpec]:
    """The Lambda pools: each function that runs the Lambda entry point, with its queue."""
    mappings = {}
    for resource in _resources(template, "AWS::Lambda::EventSourceMapping").values():
        properties = resource.get("Properties", {})
        function = properties.get("FunctionName", {})
        if isinstance(function, Mapping) and "Ref" in function:
            mappings[function["Ref"]] = properties
    pools = {}
    for logical_id, resource in _resources(template, "AWS::Lambda::Function").items():
        properties = resource.get("Properties", {})
        if (properties.get("ImageConfig") or {}).get("EntryPoint") != [LAMBDA_ENTRYPOINT]:
            continue
        variables = (properties.get("Environment") or {}).get("Variables") or {}
        name = _literal_env(variables).get(contract.POOL)
        queue_ref = variables.get(contract.QUEUE_URL)
        queue_id = queue_ref.get("Ref") if isinstance(queue_ref, Mapping) else None
        if not name or queue_id not in queues:
            raise TemplateError(f"a Lambda pool's function lacks {contract.POOL} or a {contract.QUEUE_URL} of this stack")
        props = settings.props.pools.get(name) if settings else None
        scaling = (mappings.get(logical_id) or {}).get("ScalingConfig") or {}
        pools[name] = PoolSpec(
            name=name,
            queue=_queue_spec(queues, queue_id),
            worker_environment=_literal_env(variables),
            max_workers=scaling.get("MaximumConcurrency"),
            tasks=props.tasks if props else (),
            image=props.image if props else None,
            on_lambda=True,
        )
    return pools


def _queue_spec(queues: Mapping[str, Any], queue_id: str) -> QueueSpec:
    properties = queues[queue_id].get("Properties", {})
    redrive = properties.get("RedrivePolicy") or {}
    target = redrive.get("deadLetterTargetArn", {})
    dlq_id = target.get("Fn::GetAtt", [None])[0] if isinstance(target, Mapping) else None
    if dlq_id not in queues:
        raise TemplateError(f"the redrive policy of queue {queue_id} does not name a queue of this stack")
    dlq = queues[dlq_id].get("Properties", {})
    return QueueSpec(
        visibility_timeout=int(properties.get("VisibilityTimeout", 30)),
        retention_seconds=int(properties.get("MessageRetentionPeriod", 345600)),
        max_receive_count=int(redrive["maxReceiveCount"]),
        dlq_retention_seconds=int(dlq.get("MessageRetentionPeriod", 345600)),
        managed_sse=bool(properties.get("SqsManagedSseEnabled", False)),
    )


def _scaler_pools(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The scaler's POOLS entries by pool name ({} in alarms mode).

    POOLS is a JSON string joined with deploy-time references (queue URLs, ARNs); each reference
    becomes a distinct placeholder so the JSON parses and the numbers can be read.
    """
    for resource in _resources(template, "AWS::Lambda::Function").values():
        value = resource.get("Properties", {}).get("Environment", {}).get("Variables", {}).get("POOLS")
        if value is None:
            continue
        if isinstance(value, Mapping) and "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            value = separator.join(
                part if isinstance(part, str) else f"deploy-time-{index}" for index, part in enumerate(parts)
            )
        try:
            return {entry["pool"]: entry for entry in json.loads(value)}
        except (TypeError, ValueError, KeyError) as error:
            raise TemplateError(f"the scaler's POOLS variable could not be read: {error}") from None
    return {}


def create_queues(sqs, name: str, spec: QueueSpec) -> QueuePair:
    """Create ``name`` and ``name-dlq`` on a local endpoint with the stack's attributes."""
    return create_queue_pair(
        sqs,
        name,
        visibility_timeout=spec.visibility_timeout,
        max_receive_count=spec.max_receive_count,
        retention_seconds=spec.retention_seconds,
        dlq_retention_seconds=spec.dlq_retention_seconds,
        managed_sse=spec.managed_sse,
    )

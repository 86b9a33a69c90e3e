"""Evaluate a synthesized stack's queue, key and trust policies as AWS evaluates them.

moto enforces no resource policy, so a Deny that locks everybody out passes every moto test. Here
each request (a principal, an action, a resource) goes through @cloud-copilot/iam-simulate, a
maintained implementation of IAM's documented evaluation logic (explicit deny wins; another
account needs an allow in the resource policy as well as in its own; a KMS key or a role's trust
policy must itself let the principal in), with the identity policies the template gives the
stack's roles and stand-in identity policies for the people and applications around it.

    python -m tests.infra.policy_evaluation          # prints the matrix for the five stacks

The template is environment-agnostic: its account, region and resource names are tokens, resolved
here to ACCOUNT and REGION and to names made from the logical ids.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .conftest import THREE_POOLS, committed_settings, synth

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("iam_simulate.mjs")
SIMULATOR = REPO / "node_modules" / "@cloud-copilot" / "iam-simulate"

ACCOUNT = "123456789012"
OTHER = "210987654321"
REGION = "us-east-1"
PARTITION = "aws"
SQS_SERVICE = f"sqs.{REGION}.amazonaws.com"

ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
# An application role given more than it needs in its own account: what keeps it in its lane is
# then the queue's and the key's policy alone.
BROAD_APP_POLICY = {"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": ["sqs:*", "kms:*"], "Resource": "*"}]}

ALLOWED = "Allowed"


# --- the template's tokens ------------------------------------------------------------------------

def _key_id(logical_id: str) -> str:
    digest = hashlib.sha256(logical_id.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


class Resolver:
    """Turns a template's Ref / Fn::GetAtt / Fn::Join values into the strings AWS would see."""

    PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": PARTITION,
              "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "BatchCelery"}

    def __init__(self, template: Mapping[str, Any]) -> None:
        self.resources: Mapping[str, Any] = template["Resources"]

    def arn(self, logical_id: str) -> str:
        kind = self.resources[logical_id]["Type"]
        if kind == "AWS::IAM::Role":
            return f"arn:{PARTITION}:iam::{ACCOUNT}:role/{logical_id}"
        if kind == "AWS::SQS::Queue":
            return f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{logical_id}"
        if kind == "AWS::KMS::Key":
            return f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{_key_id(logical_id)}"
        if kind == "AWS::DynamoDB::GlobalTable":
            return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{logical_id}"
        if kind == "AWS::SNS::Topic":
            return f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{logical_id}"
        if kind == "AWS::Logs::LogGroup":
            return f"arn:{PARTITION}:logs:{REGION}:{ACCOUNT}:log-group:{logical_id}:*"
        if kind == "AWS::Events::Rule":
            return f"arn:{PARTITION}:events:{REGION}:{ACCOUNT}:rule/{logical_id}"
        if kind == "AWS::Lambda::Function":
            return f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{logical_id}"
        if kind == "AWS::Batch::JobQueue":
            return f"arn:{PARTITION}:batch:{REGION}:{ACCOUNT}:job-queue/{logical_id}"
        if kind == "AWS::Batch::JobDefinition":
            return f"arn:{PARTITION}:batch:{REGION}:{ACCOUNT}:job-definition/{logical_id}:1"
        if kind == "AWS::ECS::Cluster":
            return f"arn:{PARTITION}:ecs:{REGION}:{ACCOUNT}:cluster/{logical_id}"
        raise ValueError(f"no ARN for {logical_id} ({kind})")

    def ref(self, logical_id: str) -> str:
        if logical_id in self.PSEUDO:
            return self.PSEUDO[logical_id]
        kind = self.resources[logical_id]["Type"]
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{logical_id}"
        if kind == "AWS::KMS::Key":
            return _key_id(logical_id)
        if kind in ("AWS::Batch::JobQueue", "AWS::Batch::JobDefinition", "AWS::SNS::Topic"):
            return self.arn(logical_id)
        return logical_id

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            [(name, argument)] = value.items()
            if name == "Ref":
                return self.ref(argument)
            if name == "Fn::GetAtt":
                logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                if attribute == "Arn" or attribute.endswith("Arn"):  # JobQueueArn, StreamArn, ...
                    return self.arn(logical_id)
                if attribute == "QueueName":
                    return logical_id
                if attribute == "QueueUrl":
                    return self.ref(logical_id)
                raise ValueError(f"unknown attribute {attribute} of {logical_id}")
            if name == "Fn::Join":
                separator, parts = argument
                return separator.join(str(self(part)) for part in parts)
            if name.startswith("Fn::"):
                raise ValueError(f"cannot resolve {name}")
        return {key: self(item) for key, item in value.items()}


# --- principals and requests ---------------------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    """Who asks: an IAM role (``arn`` a role ARN) with its identity policies, or a service."""

    name: str
    arn: str
    policies: tuple[Mapping[str, Any], ...] = ()
    service: bool = False

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]


def role(name: str, account: str, role_name: str, *policies: Mapping[str, Any]) -> Principal:
    return Principal(name, f"arn:{PARTITION}:iam::{account}:role/{role_name}", tuple(policies))


@dataclass(frozen=True)
class Request:
    principal: Principal
    action: str
    resource: str  # an ARN
    resource_policy: Mapping[str, Any] | None
    context: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        context: dict[str, Any] = {"aws:SecureTransport": "true", **self.context}
        if not self.principal.service:
            context.setdefault("aws:PrincipalArn", self.principal.arn)
            context.setdefault("aws:PrincipalAccount", self.principal.account)
            if self.action.startswith("kms:"):
                context.setdefault("kms:CallerAccount", self.principal.account)
        return {"principal": self.principal.arn, "action": self.action, "resource": self.resource,
                "resourceAccount": self.resource.split(":")[4] or ACCOUNT,
                "resourcePolicy": self.resource_policy, "identityPolicies": list(self.principal.policies),
                "context": context}


def simulate(requests: Iterable[Request]) -> list[str]:
    """Each request's decision: "Allowed", "ExplicitlyDenied" or "ImplicitlyDenied"."""
    requests = list(requests)
    if not SIMULATOR.is_dir():
        raise RuntimeError(f"{SIMULATOR.relative_to(REPO)} is missing: run make test (it runs npm ci)")
    result = subprocess.run(["node", str(RUNNER)], input=json.dumps([r.as_json() for r in requests]),
                            capture_output=True, text=True, check=False, cwd=REPO, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"iam-simulate failed: {result.stderr.strip()}")
    decisions = json.loads(result.stdout)
    assert len(decisions) == len(requests)
    return decisions


# --- a stack's policies --------------------------------------------------------------------------

def strip_hash(logical_id: str) -> str:
    return logical_id[:-8] if len(logical_id) > 8 and all(c in "0123456789ABCDEF" for c in logical_id[-8:]) else logical_id


class StackPolicies:
    """The policies of one synthesized template, resolved."""

    def __init__(self, template: Mapping[str, Any]) -> None:
        self.template = template
        self.resolve = Resolver(template)
        self.resources: Mapping[str, Any] = template["Resources"]

    def logical_id(self, kind: str, name: str) -> str:
        """The one resource of ``kind`` whose logical id without its hash is ``name``."""
        [found] = [k for k, r in self.resources.items() if r["Type"] == kind and strip_hash(k) == name]
        return found

    def queue_policy(self, queue_id: str) -> dict[str, Any]:
        statements = []
        for resource in self.resources.values():
            if resource["Type"] == "AWS::SQS::QueuePolicy" and {"Ref": queue_id} in resource["Properties"]["Queues"]:
                statements += resource["Properties"]["PolicyDocument"]["Statement"]
        return {"Version": "2012-10-17", "Statement": self.resolve(statements)}

    def key_policy(self, key_id: str) -> dict[str, Any]:
        return self.resolve(self.resources[key_id]["Properties"]["KeyPolicy"])

    def trust_policy(self, role_id: str) -> dict[str, Any]:
        return self.resolve(self.resources[role_id]["Properties"]["AssumeRolePolicyDocument"])

    def stack_role(self, name: str, role_name: str) -> Principal:
        """One of the stack's roles with every policy the template gives it (AWS managed
        policies aside: none of them reaches SQS, KMS or STS)."""
        role_id = self.logical_id("AWS::IAM::Role", role_name)
        documents = [self.resolve(r["Properties"]["PolicyDocument"]) for r in self.resources.values()
                     if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"].get("Roles", [])]
        documents += [self.resolve(p["PolicyDocument"]) for p in self.resources[role_id]["Properties"].get("Policies", [])]
        return Principal(name, self.resolve.arn(role_id), tuple(documents))

    def roles_named(self, prefix: str) -> list[str]:
        return sorted(strip_hash(k) for k, r in self.resources.items()
                      if r["Type"] == "AWS::IAM::Role" and k.startswith(prefix))

    @property
    def key_id(self) -> str | None:
        keys = [k for k, r in self.resources.items() if r["Type"] == "AWS::KMS::Key" and strip_hash(k) == "WorkersKey"]
        return keys[0] if keys else None


# --- what people and applications can do, as capabilities ---------------------------------------

# A capability holds when every request it takes is allowed. With the deployment's key, a queue
# request also takes the key requests SQS makes for it with the caller's credentials.
QUEUE, DLQ = "queue", "dlq"
CAPABILITIES: dict[str, tuple[tuple[str, str], ...]] = {
    "send": ((QUEUE, "sqs:SendMessage"),),
    "consume": ((QUEUE, "sqs:ReceiveMessage"), (QUEUE, "sqs:DeleteMessage"), (QUEUE, "sqs:ChangeMessageVisibility")),
    "purge": ((QUEUE, "sqs:PurgeQueue"),),
    "read DLQ": ((DLQ, "sqs:ReceiveMessage"), (DLQ, "sqs:DeleteMessage"), (DLQ, "sqs:ChangeMessageVisibility")),
    # SQS developer guide, "DLQ redrive": on the DLQ StartMessageMoveTask, ReceiveMessage,
    # DeleteMessage, GetQueueAttributes; on the destination SendMessage.
    "redrive": ((DLQ, "sqs:StartMessageMoveTask"), (DLQ, "sqs:ReceiveMessage"), (DLQ, "sqs:DeleteMessage"),
                (DLQ, "sqs:GetQueueAttributes"), (QUEUE, "sqs:SendMessage")),
    "purge DLQ": ((DLQ, "sqs:PurgeQueue"),),
    "send to DLQ": ((DLQ, "sqs:SendMessage"),),
    "depth": ((QUEUE, "sqs:GetQueueAttributes"),),
    # Attributes (the redrive policy among them), tags, the queue policy itself.
    "manage queues": ((QUEUE, "sqs:SetQueueAttributes"), (DLQ, "sqs:SetQueueAttributes"),
                      (QUEUE, "sqs:TagQueue"), (DLQ, "sqs:TagQueue")),
}
# What SQS asks KMS for on the caller's behalf (SQS developer guide, key management): a sender
# needs GenerateDataKey and Decrypt, a receiver Decrypt.
KEY_FOR = {"sqs:SendMessage": ("kms:GenerateDataKey", "kms:Decrypt"), "sqs:ReceiveMessage": ("kms:Decrypt",)}
# Using the key outside SQS (decrypting anything it encrypted: logs, results) and managing it.
DIRECT_KEY = {"decrypt directly": "kms:Decrypt", "manage key": "kms:PutKeyPolicy"}


@dataclass
class Matrix:
    """Which capabilities each principal has on one pool's queues (and the key)."""

    stack: str
    pool: str
    rows: dict[str, set[str]]
    columns: list[str]

    def render(self) -> str:
        width = max(len(name) for name in self.rows)
        lines = [f"{self.stack}, pool {self.pool}:"]
        lines += [f"  {name:<{width}}  {', '.join(c for c in self.columns if c in allowed) or '-'}"
                  for name, allowed in self.rows.items()]
        return "\n".join(lines)


def matrix(stack: StackPolicies, pool: str, principals: Iterable[Principal], label: str = "") -> Matrix:
    queue_id = stack.logical_id("AWS::SQS::Queue", f"Workers{pool}PoolTaskQueue")
    dlq_id = stack.logical_id("AWS::SQS::Queue", f"Workers{pool}PoolTaskQueueDeadLetterQueue")
    queues = {QUEUE: (stack.resolve.arn(queue_id), stack.queue_policy(queue_id)),
              DLQ: (stack.resolve.arn(dlq_id), stack.queue_policy(dlq_id))}
    key_id = stack.key_id
    key = (stack.resolve.arn(key_id), stack.key_policy(key_id)) if key_id else None
    columns = list(CAPABILITIES) + (list(DIRECT_KEY) if key else [])

    principals = list(principals)
    plan: list[tuple[str, str, Request]] = []
    for principal in principals:
        for capability, steps in CAPABILITIES.items():
            for target, action in steps:
                arn, policy = queues[target]
                plan.append((principal.name, capability, Request(principal, action, arn, policy)))
                for key_action in KEY_FOR.get(action, ()) if key else ():
                    plan.append((principal.name, capability, Request(
                        principal, key_action, key[0], key[1], {"kms:ViaService": SQS_SERVICE})))
        for capability, key_action in DIRECT_KEY.items() if key else ():
            plan.append((principal.name, capability, Request(principal, key_action, key[0], key[1])))
    decisions = simulate(request for _, _, request in plan)
    rows: dict[str, set[str]] = {p.name: set(columns) for p in principals}
    for (name, capability, _), decision in zip(plan, decisions, strict=True):
        if decision != ALLOWED:
            rows[name].discard(capability)
    return Matrix(label, pool, rows, columns)


# --- the principals around a deployment ----------------------------------------------------------

# People and applications, as stand-ins with broad rights in their own account: what keeps each in
# its lane is then the queues' and the key's policies alone.
PEOPLE = (
    role("account admin", ACCOUNT, "Admin", ADMIN_POLICY),
    role("operator", ACCOUNT, "oncall", ADMIN_POLICY),
    role("operator, other account", OTHER, "central-ops", ADMIN_POLICY),
    role("producer", ACCOUNT, "web", BROAD_APP_POLICY),
    role("producer, other account", OTHER, "web", BROAD_APP_POLICY),
    role("stranger, other account", OTHER, "Admin", ADMIN_POLICY),
)
OPERATOR, OPERATOR_OTHER, PRODUCER, PRODUCER_OTHER = (p.arn for p in PEOPLE[1:5])


def principals_for(stack: StackPolicies, pool: str, pools: Iterable[str]) -> list[Principal]:
    """Everybody a deployment meets, for one pool: the people and applications above and the
    stack's own roles (with the template's policies)."""
    own = [stack.stack_role("filler", "WorkersFillerRole"),
           stack.stack_role("workers", worker_role_name(stack, pool))]
    own += [stack.stack_role(f"workers of {other}", worker_role_name(stack, other)) for other in pools if other != pool]
    scaler = stack.roles_named("WorkersScalingScalerRole")
    if scaler:
        own.append(stack.stack_role("scaler", scaler[0]))
    sender = stack.roles_named("WorkersSchedulesSenderRole")
    if sender:
        own.append(stack.stack_role("schedule sender", sender[0]))
    return [*PEOPLE, *own]


def worker_role_name(stack: StackPolicies, pool: str) -> str:
    """The role that runs a pool's tasks: its worker jobs' role, or a Lambda pool's function role."""
    name = f"Workers{pool}PoolWorkerRole"
    return name if stack.roles_named(name) else f"Workers{pool}PoolFunctionRole"


def trust_requests(stack: StackPolicies) -> list[tuple[str, str, Request]]:
    """(role, who, request): each service role of the stack assumed by its service acting for this
    account, by the same service acting for another account, and by this account's admin."""
    out = []
    for role_id, resource in stack.resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        trust = stack.trust_policy(role_id)
        arn = stack.resolve.arn(role_id)
        for statement in trust["Statement"]:
            services = statement["Principal"].get("Service", [])
            for service in [services] if isinstance(services, str) else services:
                # Lambda and EC2 give no source account or ARN when they assume a role: who may
                # use one of those roles is decided by iam:PassRole in this account, not here.
                for who, account in (("for this account", ACCOUNT), ("for another account", OTHER)):
                    source = _source_arn(service, account)
                    context = {"aws:SourceAccount": account, "aws:SourceArn": source} if source else {}
                    out.append((strip_hash(role_id), f"{service} {who}", Request(
                        Principal(service, service, service=True), "sts:AssumeRole", arn, trust, context)))
        admin = role("account admin", ACCOUNT, "Admin", ADMIN_POLICY)
        out.append((strip_hash(role_id), "account admin", Request(admin, "sts:AssumeRole", arn, trust)))
    return out


def trusted(stack: StackPolicies) -> list[tuple[str, str]]:
    """(role, who) for each trust request the stack allows."""
    requests = trust_requests(stack)
    decisions = simulate(request for _, _, request in requests)
    return [(role_name, who) for (role_name, who, _), decision in zip(requests, decisions, strict=True)
            if decision == ALLOWED]


def _source_arn(service: str, account: str) -> str | None:
    """What a service acting for ``account`` gives as aws:SourceArn when it assumes a role."""
    return {
        "ecs-tasks.amazonaws.com": f"arn:{PARTITION}:ecs:{REGION}:{account}:task/batch-cluster/0123456789abcdef",
        "vpc-flow-logs.amazonaws.com": f"arn:{PARTITION}:ec2:{REGION}:{account}:vpc-flow-log/fl-0123456789abcdef0",
        "events.amazonaws.com": f"arn:{PARTITION}:events:{REGION}:{account}:rule/submit-workers",
        "scheduler.amazonaws.com": f"arn:{PARTITION}:scheduler:{REGION}:{account}:schedule/default/nightly-report",
    }.get(service)


# --- the four stacks -----------------------------------------------------------------------------

STACKS: dict[str, dict[str, Any]] = {
    # The committed cdk.json: nobody named, this account's administrators operate.
    "default": {},
    # Operators and producers named, in this account and another, and the deployment's key.
    "restricted": {"operator_role_arns": [OPERATOR, OPERATOR_OTHER], "producer_role_arns": [PRODUCER, PRODUCER_OTHER],
                   "kms_key": True},
    # The key with nobody named but a producer of another account.
    "kms": {"kms_key": True, "producer_role_arns": [PRODUCER_OTHER]},
    "multi-pool": {"pools": THREE_POOLS},  # the session's three_pools stack
    # Schedules on two of the three pools, with the key: the sender sends to those two only.
    "scheduled": {"pools": THREE_POOLS, "kms_key": True, "schedules": {
        "nightly-report": {"task": "reports.nightly", "cron": "0 2 * * ? *"},
        "gpu-warm": {"task": "gpu.warm", "rate": "1 hour"}}},
}


def synthesized(name: str) -> dict[str, Any]:
    """The template of one of STACKS, synthesized as the tests' fixtures synthesize it (the default
    stack from the committed cdk.json)."""
    import tempfile

    with tempfile.TemporaryDirectory() as outdir:
        settings = committed_settings() if name == "default" else STACKS[name]
        return synth(Path(outdir), **settings).template.to_json()


def pools_of(settings: Mapping[str, Any]) -> list[str]:
    from batch_celery.props import pascal

    return [pascal(name) for name in settings.get("pools", {"default": {}})]


def main() -> int:
    for label, settings in STACKS.items():
        stack = StackPolicies(synthesized(label))
        pools = pools_of(settings)
        for pool in pools[:1]:
            print(matrix(stack, pool, principals_for(stack, pool, pools), label).render())
        print("  trust: " + "; ".join(f"{role_name} <- {who}" for role_name, who in trusted(stack)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

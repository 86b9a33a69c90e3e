"""The queue, key and trust policies evaluated as AWS evaluates them (policy_evaluation.py), for
every kind of principal a deployment meets, on the default, restricted, kms and multi-pool stacks.

moto enforces none of these policies, so without this evaluation a Deny that locked every
administrator out of the dead-letter queues would pass every other test.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import THREE_POOLS, Synth, synth
from .policy_evaluation import (
    ACCOUNT, ADMIN_POLICY, ALLOWED, CAPABILITIES, OTHER, STACKS, Principal, Request, StackPolicies, matrix,
    pools_of, principals_for, role, simulate, trust_requests,
)

EVERYTHING = set(CAPABILITIES)
NOTHING: set[str] = set()
# What only IAM in this account gives: another account's operator works the tasks, not the queues.
MANAGE = {"manage queues"}
WORKERS = {"send", "consume", "send to DLQ", "depth"}
FILLER = {"send", "depth"}
SCALER = {"depth"}
KEY = {"decrypt directly", "manage key"}

# Nobody named: this account's administrators (and whoever else its IAM lets use SQS) operate;
# nobody of another account gets in.
NOBODY_NAMED = {
    "account admin": EVERYTHING,
    "operator": EVERYTHING,
    "operator, other account": NOTHING,
    "producer": EVERYTHING,
    "producer, other account": NOTHING,
    "stranger, other account": NOTHING,
    "filler": FILLER,
    "workers": WORKERS,
    "scaler": SCALER,
}
EXPECTED: dict[str, dict[str, set[str]]] = {
    "default": NOBODY_NAMED,
    "multi-pool": NOBODY_NAMED,
    # Operators and producers named (in this account and another) and the key: only the named
    # operators read, redrive and purge; an administrator still manages (depth, the key itself).
    "restricted": {
        "account admin": {"depth"} | MANAGE | KEY,
        "operator": EVERYTHING | KEY,
        "operator, other account": EVERYTHING - MANAGE,  # the key through SQS only
        "producer": {"send", "depth"} | MANAGE | KEY,  # its own broad IAM rights in this account
        "producer, other account": {"send"},
        "stranger, other account": NOTHING,
        "filler": FILLER | {"decrypt directly"},
        "workers": WORKERS | {"decrypt directly"},
        "scaler": SCALER,
    },
    # The key, nobody named but a producer of another account, which may send and do nothing else.
    "kms": {
        **{name: allowed | KEY for name, allowed in NOBODY_NAMED.items() if allowed == EVERYTHING},
        "operator, other account": NOTHING,
        "producer, other account": {"send"},
        "stranger, other account": NOTHING,
        "filler": FILLER | {"decrypt directly"},
        "workers": WORKERS | {"decrypt directly"},
        "scaler": SCALER,
    },
    # The key and schedules on the default and gpu pools: the sender sends there and nowhere else
    # (it may use the key directly through IAM, as the filler and workers may).
    "scheduled": {
        **{name: allowed | KEY for name, allowed in NOBODY_NAMED.items() if allowed == EVERYTHING},
        "operator, other account": NOTHING,
        "producer, other account": NOTHING,
        "stranger, other account": NOTHING,
        "filler": FILLER | {"decrypt directly"},
        "workers": WORKERS | {"decrypt directly"},
        "scaler": SCALER,
        "schedule sender": {"send", "depth", "decrypt directly"},
    },
}
# The pools no schedule routes to: the sender may not send there.
UNSCHEDULED = {"scheduled": {"Arm"}}


@pytest.fixture(scope="module")
def stacks(default: Synth, three_pools: Synth, tmp_path_factory) -> dict[str, StackPolicies]:
    """The five stacks: two the session already synthesized, three of this module's own."""
    assert STACKS["default"] == {} and STACKS["multi-pool"] == {"pools": THREE_POOLS}
    out = {"default": default, "multi-pool": three_pools}
    for name in ("restricted", "kms", "scheduled"):
        out[name] = synth(tmp_path_factory.mktemp("cdk.out"), **STACKS[name])
    return {name: StackPolicies(stack.template.to_json()) for name, stack in out.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_principal_can_do_exactly_what_its_part_needs(stacks: dict[str, StackPolicies], name: str) -> None:
    stack = stacks[name]
    pools = pools_of(STACKS[name])
    for pool in pools:
        got = matrix(stack, pool, principals_for(stack, pool, pools), name)
        # Another pool's workers may not touch this pool's queues; with the key they may still
        # use it directly, as their own queue needs (IAM grants the key, not a queue).
        others = {"decrypt directly"} if STACKS[name].get("kms_key") else NOTHING
        expected = {**EXPECTED[name], **{f"workers of {other}": others for other in pools if other != pool}}
        if pool in UNSCHEDULED.get(name, ()):
            expected["schedule sender"] = {"decrypt directly"}
        assert got.rows == expected, got.render()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_service_roles_trust_their_service_only_for_this_account(stacks: dict[str, StackPolicies], name: str) -> None:
    requests = trust_requests(stacks[name])
    decisions = simulate(request for _, _, request in requests)
    guarded = 0
    for (role_name, who, request), decision in zip(requests, decisions, strict=True):
        service = request.principal.arn
        if who == "account admin":
            assert decision != ALLOWED, f"{role_name}: an administrator may assume it"
        elif service in ("lambda.amazonaws.com", "ec2.amazonaws.com"):
            continue  # no source keys: iam:PassRole in this account decides
        else:
            guarded += 1
            expected = who.endswith("for this account")
            assert (decision == ALLOWED) == expected, f"{role_name} <- {who}: {decision}"
    assert guarded >= 2 * 5  # workers, filler, their execution roles, flow logs; each twice


# --- the evaluator, on the examples of AWS's documentation ----------------------------------------

QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:orders"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SEND_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}]}


def decide(principal: Principal, action: str, resource: str, policy: Any, **context: str) -> str:
    [decision] = simulate([Request(principal, action, resource, policy, context)])
    return decision


def statement(effect: str, principal: Any, action: str, resource: str, **condition: Any) -> dict[str, Any]:
    out = {"Effect": effect, "Principal": principal, "Action": action, "Resource": resource}
    return {**out, "Condition": condition} if condition else out


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def test_evaluator_same_account_needs_an_allow_in_either_policy() -> None:
    """IAM user guide, policy evaluation logic: within one account, an identity-based or a
    resource-based allow is enough; no allow anywhere is an implicit deny."""
    app = role("app", ACCOUNT, "app", SEND_ONLY)
    nobody = role("nobody", ACCOUNT, "nobody")
    assert decide(app, "sqs:SendMessage", QUEUE, None) == ALLOWED
    assert decide(nobody, "sqs:SendMessage", QUEUE, None) == "ImplicitlyDenied"
    assert decide(nobody, "sqs:SendMessage", QUEUE, document(statement("Allow", {"AWS": nobody.arn}, "sqs:SendMessage", QUEUE))) == ALLOWED


def test_evaluator_another_account_needs_an_allow_in_both() -> None:
    """IAM user guide, cross-account policy evaluation logic: the resource's policy must allow the
    principal and the principal's own account must allow the request."""
    app = role("app", OTHER, "app", SEND_ONLY)
    allow = document(statement("Allow", {"AWS": app.arn}, "sqs:SendMessage", QUEUE))
    assert decide(app, "sqs:SendMessage", QUEUE, None) == "ImplicitlyDenied"
    assert decide(app, "sqs:SendMessage", QUEUE, allow) == ALLOWED
    assert decide(role("bare", OTHER, "app"), "sqs:SendMessage", QUEUE, allow) == "ImplicitlyDenied"


def test_evaluator_an_explicit_deny_wins_and_a_missing_key_is_null() -> None:
    """An explicit deny overrides any allow. The Null operator: "false" matches only when the key
    is present (IAM user guide, condition operators), so a request without a principal ARN (SQS
    moving a message itself) escapes a deny guarded by it."""
    admin = role("admin", ACCOUNT, "Admin", ADMIN_POLICY)
    deny = document(statement("Deny", {"AWS": "*"}, "sqs:SendMessage", QUEUE,
                              Null={"aws:PrincipalArn": "false"}, ArnNotEquals={"aws:PrincipalArn": [f"arn:aws:iam::{ACCOUNT}:role/w"]}))
    assert decide(admin, "sqs:SendMessage", QUEUE, deny) == "ExplicitlyDenied"
    assert decide(role("w", ACCOUNT, "w", SEND_ONLY), "sqs:SendMessage", QUEUE, deny) == ALLOWED
    service = Principal("sqs", "sqs.amazonaws.com", service=True)
    allow_service = document(deny["Statement"][0], statement("Allow", {"Service": "sqs.amazonaws.com"}, "sqs:SendMessage", QUEUE))
    assert decide(service, "sqs:SendMessage", QUEUE, allow_service) == ALLOWED


def test_evaluator_a_key_policy_must_let_the_account_in_for_iam_to_count() -> None:
    """KMS developer guide, default key policy: IAM policies grant use of a key only when its key
    policy allows the account; else only the principals the key policy names."""
    admin = role("admin", ACCOUNT, "Admin", ADMIN_POLICY)
    root = document(statement("Allow", {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "kms:*", "*"))
    closed = document(statement("Allow", {"AWS": f"arn:aws:iam::{ACCOUNT}:role/keeper"}, "kms:*", "*"))
    assert decide(admin, "kms:Decrypt", KEY_ARN, root) == ALLOWED
    assert decide(admin, "kms:Decrypt", KEY_ARN, closed) == "ImplicitlyDenied"
    via_sqs = document(statement("Allow", {"AWS": f"arn:aws:iam::{OTHER}:role/web"}, "kms:Decrypt", "*",
                                 StringEquals={"kms:ViaService": "sqs.us-east-1.amazonaws.com"}))
    web = role("web", OTHER, "web", ADMIN_POLICY)
    assert decide(web, "kms:Decrypt", KEY_ARN, via_sqs, **{"kms:ViaService": "sqs.us-east-1.amazonaws.com"}) == ALLOWED
    assert decide(web, "kms:Decrypt", KEY_ARN, via_sqs) == "ImplicitlyDenied"


def test_evaluator_a_trust_policy_names_who_may_assume_the_role() -> None:
    """IAM user guide, confused deputy: a service acting for another account is kept out by
    aws:SourceAccount; an administrator's own allow does not reach a role whose trust policy
    does not name it or its account."""
    trust = document(statement("Allow", {"Service": "ecs-tasks.amazonaws.com"}, "sts:AssumeRole", "*",
                               StringEquals={"aws:SourceAccount": ACCOUNT}))
    arn = f"arn:aws:iam::{ACCOUNT}:role/worker"
    ecs = Principal("ecs", "ecs-tasks.amazonaws.com", service=True)
    assert decide(ecs, "sts:AssumeRole", arn, trust, **{"aws:SourceAccount": ACCOUNT}) == ALLOWED
    assert decide(ecs, "sts:AssumeRole", arn, trust, **{"aws:SourceAccount": OTHER}) == "ImplicitlyDenied"
    assert decide(role("admin", ACCOUNT, "Admin", ADMIN_POLICY), "sts:AssumeRole", arn, trust) == "ImplicitlyDenied"

"""cdk.json's `batch-celery` block -> the stack's name, its VPC and the construct's props.

`app.py` reads the block once and builds `Settings` from it; the stack passes `Settings.props` to
`CeleryBatchWorkers`. This module only translates: every default and rule lives in props.py. Every
invalid value fails synth with one `SettingsError` line: the key (``batch-celery.pools.gpu.vcpus``),
the value, what is allowed.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from .props import (
    DEFAULT_POOL,
    STACK_NAME,
    CeleryBatchWorkersProps,
    PoolProps,
    ScheduleProps,
    SettingsError,
    describe,
)

CONTEXT_KEY = "batch-celery"
# The checkout: where cdk.json is for the commands that read it without the CDK CLI (status, the demo).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFIX = f"{CONTEXT_KEY}."
DEFAULT_STACK_NAME = "BatchCelery"
VPC_ID = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")

# Deployment-wide keys of cdk.json besides `pools` and `schedules` (blocks translated into props
# objects below): the props' own, minus what cdk.json cannot hold (a VPC object: cdk.json names
# one by `vpc_id`).
DEPLOYMENT_KEYS = tuple(f.name for f in fields(CeleryBatchWorkersProps) if f.name not in ("pools", "vpc", "schedules"))
STACK_KEYS = ("stack_name", "vpc_id")

# Keys that have a new place, and where it is: a context that still holds one gets the line
# saying where to put it instead of "unknown setting".
_MOVED = {
    "platform": "platform", "worker_vcpus": "vcpus", "worker_memory_mib": "memory_mib",
    "worker_concurrency": "concurrency", "task_time_limit_seconds": "task_time_limit_seconds",
    "visibility_timeout_seconds": "visibility_timeout_seconds",
    "message_retention_days": "message_retention_days", "max_receive_count": "max_receive_count",
    "idle_seconds": "idle_seconds", "poll_seconds": "poll_seconds", "job_timeout_seconds": "job_timeout_seconds",
    "job_attempts": "job_attempts", "stop_grace_seconds": "stop_grace_seconds",
    "low_threshold": "low_threshold", "high_threshold": "high_threshold", "high_array_size": "high_array_size",
    "age_alarm_seconds": "age_alarm_seconds", "messages_per_worker": "messages_per_worker",
    "max_workers": "max_workers",
}
REPLACED_KEYS = {
    "scaler_enabled": (
        'replaced by scaling_mode: "scaler" (the default: the Lambda scaler decides) or "alarms" '
        "(no Lambda: the alarm rules submit workers themselves); remove scaler_enabled"
    ),
    "spot": 'replaced by a pool\'s compute: "pools": {"default": {"compute": "fargate_spot"}}',
    "max_vcpus": 'replaced by a pool\'s max_workers (its compute gets max_workers x vcpus): '
                 '"pools": {"default": {"max_workers": 48}}',
    **{
        old: f'moved into a pool: "pools": {{"{DEFAULT_POOL}": {{"{new}": ...}}}}'
        for old, new in _MOVED.items()
    },
}


@dataclass(frozen=True)
class Settings:
    """What cdk.json decides: the stack's name, an existing VPC to use, and the construct's props."""

    stack_name: str = DEFAULT_STACK_NAME
    """CloudFormation stack name; another name deploys another, independent copy."""
    vpc_id: str | None = None
    """Deploy into this existing VPC (looked up at synth: needs AWS credentials) instead of a new one."""
    props: CeleryBatchWorkersProps = field(default_factory=CeleryBatchWorkersProps)

    @classmethod
    def from_context(cls, raw: Mapping[str, Any] | str | None) -> "Settings":
        """Build settings from the `batch-celery` context block (None or {} = all defaults)."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            # `cdk synth -c 'batch-celery={"max_azs": 1}'` passes the block as a JSON string.
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                pass
        if not isinstance(raw, Mapping):
            raise SettingsError(CONTEXT_KEY, raw, "must be a JSON object of settings")
        known = (*STACK_KEYS, "pools", "schedules", *DEPLOYMENT_KEYS)
        for key in raw:
            if key in REPLACED_KEYS:
                raise SettingsError(PREFIX + key, raw[key], REPLACED_KEYS[key])
            if key not in known:
                raise SettingsError(PREFIX + key, raw[key], _unknown(key, known, pool_keys=PoolProps.keys()))

        stack_name = raw.get("stack_name", DEFAULT_STACK_NAME)
        if not isinstance(stack_name, str) or not STACK_NAME.match(stack_name):
            raise SettingsError(
                PREFIX + "stack_name", stack_name,
                "must be a CloudFormation stack name: a letter, then letters, digits and hyphens (<= 128)",
            )
        vpc_id = raw.get("vpc_id")
        if vpc_id is not None and (not isinstance(vpc_id, str) or not VPC_ID.match(vpc_id)):
            raise SettingsError(PREFIX + "vpc_id", vpc_id, "must be null (a new VPC) or a VPC id such as vpc-0123456789abcdef0")
        if vpc_id is not None:
            for key in ("max_azs", "nat_gateways", "network"):
                if key in raw:
                    raise SettingsError(PREFIX + key, raw[key], "shapes a new VPC only; remove it when vpc_id is set")

        pools = _pools(raw.get("pools"))
        schedules = _schedules(raw.get("schedules"))
        try:
            props = CeleryBatchWorkersProps(
                **({"pools": pools} if pools is not None else {}),
                **({"schedules": schedules} if schedules is not None else {}),
                **{key: raw[key] for key in DEPLOYMENT_KEYS if key in raw},
            )
        except SettingsError as error:
            raise error.under(PREFIX) from None
        return cls(stack_name=stack_name, vpc_id=vpc_id, props=props)


# Where a reader finds every key: the line names the likely one, not all of them.
REFERENCE = "docs/configuration.md"


def _unknown(key: str, known: Iterable[str], pool: str | None = None, pool_keys: Iterable[str] = ()) -> str:
    """What an unknown key gets: the closest known key, if one is close, and where the full list is."""
    where = f"every pool key is in {REFERENCE}#pools" if pool else f"every key is in {REFERENCE}"
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f'unknown {"pool " if pool else ""}setting; did you mean "{close[0]}"? ({where})'
    close = difflib.get_close_matches(key, list(pool_keys), n=1)
    if close:
        return (f'unknown setting; "{close[0]}" is a pool setting: "pools": {{"{DEFAULT_POOL}": '
                f'{{"{close[0]}": ...}}}} ({where})')
    return f'unknown {"pool " if pool else ""}setting ({where})'


def _pools(raw: Any) -> dict[str, PoolProps] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise SettingsError(PREFIX + "pools", raw, "must be an object of pool name -> pool settings, at least one")
    allowed = PoolProps.keys()
    pools = {}
    for name, block in raw.items():
        if not isinstance(block, Mapping):
            raise SettingsError(f"{PREFIX}pools.{name}", block, "must be an object of pool settings ({} for the defaults)")
        for key in block:
            if key not in allowed:
                raise SettingsError(f"{PREFIX}pools.{name}.{key}", block[key], _unknown(key, allowed, pool=name))
        try:
            pools[name] = PoolProps(**block)
        except SettingsError as error:
            raise error.under(f"{PREFIX}pools.{name}.") from None
    return pools


def _schedules(raw: Any) -> dict[str, ScheduleProps] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SettingsError(PREFIX + "schedules", raw, "must be an object of schedule name -> schedule settings")
    allowed = ScheduleProps.keys()
    schedules = {}
    for name, block in raw.items():
        where = f"{PREFIX}schedules.{name}"
        if not isinstance(block, Mapping):
            raise SettingsError(where, block, 'must be an object, e.g. {"task": "reports.nightly", "cron": "0 2 * * ? *"}')
        for key in block:
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                raise SettingsError(f"{where}.{key}", block[key],
                                    f"unknown schedule setting; {hint}(allowed: {', '.join(allowed)})")
        if "task" not in block:
            raise SettingsError(f"{where}.task", None, 'is required: the Celery task name, e.g. "reports.nightly"')
        try:
            schedules[name] = ScheduleProps(**block)
        except SettingsError as error:
            raise error.under(f"{where}.") from None
    return schedules


__all__ = ["CONTEXT_KEY", "Settings", "SettingsError", "describe"]


def project_context(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The context the CDK CLI would pass: cdk.json's ``context``, then cdk.context.json over it."""
    context: dict[str, Any] = {}
    for name, key in (("cdk.json", "context"), ("cdk.context.json", None)):
        path = root / name
        if path.exists():
            data = json.loads(path.read_text())
            context.update(data.get(key, {}) if key else data)
    return context

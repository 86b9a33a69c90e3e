"""Which pool runs which task: the routes JSON the stack publishes, and the rules behind it.

Each worker pool has its own SQS queue and its workers consume only that queue; a producer picks
the queue by task name with Celery's ``task_routes``. The stack publishes where every pool's
queue is as the CloudFormation output ``Routes`` (and gives it to the filler job as
``CELERY_ROUTES``)::

    {"default_pool": "default", "region": "eu-west-1",
     "pools": {"default": {"queue_name": "...", "queue_url": "https://sqs...", "tasks": []},
               "gpu": {"queue_name": "...", "queue_url": "https://sqs...", "tasks": ["gpu.*"]}}}

A task whose name matches no pattern goes to the default pool. Your producer app reads it once::

    import routing  # or: from batch_celery_container import routing
    routes = routing.routes_from_outputs("outputs.json")  # cdk deploy --outputs-file outputs.json
    app.conf.update(broker_url="sqs://", **routing.celery_settings(routes))

Standard library only, with no side effects: synth imports it as ``batch_celery_container.routing``
and checks the configuration with the same rules the worker and the filler apply to the JSON,
so a pool name or pattern synth accepts is never refused at run time, and the other way round.
Each ``*_problem`` function returns None when the value is allowed, or the text of what is
allowed; the caller names the key in its own words.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence
from urllib.parse import urlsplit

# Pool names become parts of CloudFormation logical IDs, resource names and job names.
MAX_POOL_NAME_LENGTH = 32
_POOL_NAME = re.compile(rf"[a-z](?:[a-z0-9-]{{0,{MAX_POOL_NAME_LENGTH - 2}}}[a-z0-9])?")
MAX_TASK_PATTERN_LENGTH = 200
# Celery task names in practice (module paths, "app:task"), and "*" as Celery's glob. "?" and "["
# are left out: Celery treats them as globs only in a pattern that also has a "*".
_TASK_PATTERN = re.compile(rf"[A-Za-z0-9_.:*-]{{1,{MAX_TASK_PATTERN_LENGTH}}}")
# The name of the stack output that holds the routes JSON, and of the result table's.
OUTPUT_NAME = "Routes"
RESULT_TABLE_OUTPUT = "ResultTableName"


class RoutingError(ValueError):
    """The routes are unusable; the message is one line naming what is wrong and what is allowed."""


def pool_name_problem(name: object) -> str | None:
    if isinstance(name, str) and _POOL_NAME.fullmatch(name):
        return None
    return (
        f"allowed: lowercase letters, digits and dashes, starting with a letter, not ending with a "
        f"dash, at most {MAX_POOL_NAME_LENGTH} characters (e.g. 'gpu', 'video-encode')"
    )


def task_pattern_problem(pattern: object) -> str | None:
    if isinstance(pattern, str) and _TASK_PATTERN.fullmatch(pattern):
        return None
    return (
        f"allowed: a task name or a glob with '*' (e.g. 'gpu.*', 'video.encode') of 1..{MAX_TASK_PATTERN_LENGTH} "
        "characters, each a letter, digit, '_', '.', '-', ':' or '*'"
    )


def duplicate_pattern(pools: Mapping[str, Sequence[str]]) -> tuple[str, str, str] | None:
    """A task pattern that two pools claim, as (pattern, first pool, second pool), or None.

    Celery would send such tasks to one of them only, by an order nobody chose on purpose.
    """
    owner: dict[str, str] = {}
    for pool, patterns in pools.items():
        for pattern in patterns:
            if pattern in owner:
                return pattern, owner[pattern], pool
            owner[pattern] = pool
    return None


def queue_name_of(queue_url: str) -> str | None:
    """The queue name an SQS queue URL ends with, or None when it is not an http(s) queue URL."""
    parts = urlsplit(queue_url)
    name = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if parts.scheme not in ("http", "https") or not parts.hostname or not name:
        return None
    return name


@dataclass(frozen=True)
class PoolRoute:
    """One pool's queue and the task names (or globs) routed to it."""

    queue_name: str
    queue_url: str
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Routes:
    """Every pool's queue and tasks, in the order the stack lists the pools; see ``parse_routes``."""

    default_pool: str
    region: str
    pools: Mapping[str, PoolRoute]

    @property
    def default_queue(self) -> str:
        return self.pools[self.default_pool].queue_name


def routes_document(*, default_pool: str, region: str, pools: Mapping[str, PoolRoute]) -> dict:
    """The routes as the JSON object ``parse_routes`` reads; the stack serialises this with its
    queue names and URLs (CloudFormation tokens at synth), so the format is written only here."""
    return {
        "default_pool": default_pool,
        "region": region,
        "pools": {
            name: {"queue_name": pool.queue_name, "queue_url": pool.queue_url, "tasks": list(pool.tasks)}
            for name, pool in pools.items()
        },
    }


def parse_routes(value: str | Mapping) -> Routes:
    """The routes from their JSON text or its parsed object; RoutingError (one line) if unusable.

    Keys this version does not know are ignored, so a producer keeps working with the output of
    a newer stack.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise RoutingError(f"the routes are not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    document = _object(value, "the routes", _ROUTES_SHAPE)
    region = _text(document, "region", "the routes")
    pools_document = _object(document.get("pools"), "the routes' 'pools'", '{"NAME": {...}, ...}')
    if not pools_document:
        raise RoutingError("the routes' 'pools' is empty; allowed: an object with at least one pool")
    pools: dict[str, PoolRoute] = {}
    for name, pool_document in pools_document.items():
        problem = pool_name_problem(name)
        if problem:
            raise RoutingError(f"pool name {name!r} is not allowed; {problem}")
        pools[name] = _pool(name, pool_document)
    default_pool = _text(document, "default_pool", "the routes")
    if default_pool not in pools:
        raise RoutingError(f"default_pool {default_pool!r} is not one of the pools; allowed: {', '.join(pools)}")
    owners: dict[str, str] = {}
    for name, pool in pools.items():
        if pool.queue_name in owners:
            raise RoutingError(
                f"pools {owners[pool.queue_name]!r} and {name!r} have the same queue {pool.queue_name!r}; "
                "allowed: one queue per pool (a pool's workers consume only its queue)"
            )
        owners[pool.queue_name] = name
    duplicate = duplicate_pattern({name: pool.tasks for name, pool in pools.items()})
    if duplicate:
        pattern, first, second = duplicate
        raise RoutingError(f"task pattern {pattern!r} is routed to pools {first!r} and {second!r}; allowed: one pool per pattern")
    return Routes(default_pool=default_pool, region=region, pools=MappingProxyType(pools))


def _pool(name: str, document: object) -> PoolRoute:
    where = f"pool {name!r}"
    pool = _object(document, where, _POOL_SHAPE)
    queue_name = _text(pool, "queue_name", where)
    queue_url = _text(pool, "queue_url", where)
    named = queue_name_of(queue_url)
    if named is None:
        raise RoutingError(f"{where}: queue_url {queue_url!r} is not a queue URL; expected http(s)://host/ACCOUNT/NAME")
    if named != queue_name:
        raise RoutingError(
            f"{where}: queue_url {queue_url!r} does not end with its queue_name {queue_name!r}; they must name the same queue"
        )
    tasks = pool.get("tasks", [])
    if not isinstance(tasks, list):
        raise RoutingError(f"{where}: 'tasks' is not a list; allowed: a list of task names or globs (e.g. [\"gpu.*\"])")
    for pattern in tasks:
        problem = task_pattern_problem(pattern)
        if problem:
            raise RoutingError(f"{where}: task pattern {pattern!r} is not allowed; {problem}")
    return PoolRoute(queue_name=queue_name, queue_url=queue_url, tasks=tuple(tasks))


_POOL_SHAPE = '{"queue_name": "...", "queue_url": "https://...", "tasks": ["gpu.*"]}'
_ROUTES_SHAPE = f'{{"default_pool": "NAME", "region": "...", "pools": {{"NAME": {_POOL_SHAPE}}}}}'


def _object(value: object, what: str, shape: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise RoutingError(f"{what} is not a JSON object; expected {shape}")
    return value


def _text(document: Mapping, key: str, where: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RoutingError(f"{where}: {key!r} is missing or empty; expected a non-empty string")
    return value


def celery_settings(routes: Routes) -> dict:
    """The Celery settings that send each task to its pool's queue.

    ``app.conf.update(celery_settings(routes))`` on a producer whose ``broker_url`` is ``sqs://``.
    ``task_routes`` and ``broker_transport_options`` replace settings of the same name: an app
    that has its own merges them first, e.g. for the transport options::

        settings = celery_settings(routes)
        options = {**app.conf.broker_transport_options, **settings["broker_transport_options"]}
        app.conf.update(settings, broker_transport_options=options)

    and the same for ``task_routes`` (and ``predefined_queues``, if the app sends to queues of its
    own as well). Every pool's queue is a predefined queue, so kombu neither lists nor creates
    queues: sending needs only sqs:SendMessage on them.
    """
    return {
        "task_default_queue": routes.default_queue,
        "task_routes": {
            pattern: {"queue": pool.queue_name} for pool in routes.pools.values() for pattern in pool.tasks
        },
        "broker_transport_options": {
            "region": routes.region,
            "predefined_queues": {pool.queue_name: {"url": pool.queue_url} for pool in routes.pools.values()},
        },
    }


def queue_for(routes: Routes, task_name: str) -> str:
    """The queue ``task_name`` goes to under ``celery_settings(routes)``, decided as Celery's
    MapRoute (celery/app/routes.py) does: an exact name first, then the globs in pool order,
    the first match winning; no match means the default pool."""
    exact: dict[str, str] = {}
    globs: list[tuple[re.Pattern, str]] = []
    for pool in routes.pools.values():
        for pattern in pool.tasks:
            if "*" in pattern:
                globs.append((re.compile(fnmatch.translate(pattern)), pool.queue_name))
            else:
                exact[pattern] = pool.queue_name
    if task_name in exact:
        return exact[task_name]
    return next((queue for regex, queue in globs if regex.match(task_name)), routes.default_queue)


def pool_for(routes: Routes, task_name: str) -> str:
    """The name of the pool whose workers run ``task_name``."""
    queue = queue_for(routes, task_name)
    return next(name for name, pool in routes.pools.items() if pool.queue_name == queue)


def routes_from_outputs(outputs: str | os.PathLike | Mapping, stack_name: str | None = None) -> Routes:
    """The routes from ``cdk deploy --outputs-file outputs.json``: a path, or its parsed JSON
    ``{StackName: {"Routes": "<json>", ...}}``. ``stack_name`` picks one stack when the file
    holds the routes of several."""
    return parse_routes(stack_outputs(outputs, stack_name)[OUTPUT_NAME])


def producer_settings(outputs: str | os.PathLike | Mapping, stack_name: str | None = None) -> dict:
    """Every Celery setting an application needs to send tasks to the pools and read their
    results, from ``cdk deploy --outputs-file outputs.json`` (or its parsed JSON)::

        batch = Celery("myapp-batch", set_as_current=False)
        batch.conf.update(routing.producer_settings("outputs.json"))
        batch.send_task("video.encode", kwargs={"key": "in/cat.mp4"}).get(timeout=3600)

    The broker is ``sqs://`` with no credentials in it: boto3 finds them (the application's IAM
    role on AWS). Then ``celery_settings`` (the region, every pool's queue predefined, the
    routes), JSON as the only serializer (what the workers accept), and the stack's result table
    as the result backend when the stack has one (output ``ResultTableName``).
    """
    stack = stack_outputs(outputs, stack_name)
    routes = parse_routes(stack[OUTPUT_NAME])
    settings = {
        "broker_url": "sqs://",
        **celery_settings(routes),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }
    table = stack.get(RESULT_TABLE_OUTPUT)
    if isinstance(table, str) and table:
        settings["result_backend"] = f"dynamodb://@{routes.region}/{table}"
    return settings


def stack_outputs(outputs: str | os.PathLike | Mapping, stack_name: str | None = None) -> Mapping:
    """One stack's outputs from ``cdk deploy --outputs-file``'s file (a path) or its parsed JSON:
    the stack named ``stack_name``, or the only one with a ``Routes`` output."""
    if not isinstance(outputs, Mapping):
        try:
            with open(outputs, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise RoutingError(f"cannot read the outputs file {os.fspath(outputs)!r}: {error.strerror or error}") from None
        try:
            outputs = json.loads(text)
        except json.JSONDecodeError as error:
            raise RoutingError(
                f"the outputs file {os.fspath(outputs)!r} is not JSON ({error.msg}); "
                "expected the file of cdk deploy --outputs-file"
            ) from None
        if not isinstance(outputs, Mapping):
            raise RoutingError("the outputs file is not a JSON object; expected the file of cdk deploy --outputs-file")
    with_routes = [name for name, stack in outputs.items() if isinstance(stack, Mapping) and OUTPUT_NAME in stack]
    if stack_name is None:
        if not with_routes:
            raise RoutingError(f"no stack in the outputs has a {OUTPUT_NAME!r} output; stacks: {', '.join(outputs) or 'none'}")
        if len(with_routes) > 1:
            raise RoutingError(
                f"several stacks have a {OUTPUT_NAME!r} output; choose one with stack_name: {', '.join(with_routes)}"
            )
        stack_name = with_routes[0]
    elif stack_name not in with_routes:
        raise RoutingError(
            f"stack {stack_name!r} has no {OUTPUT_NAME!r} output in the outputs; "
            f"stacks that have one: {', '.join(with_routes) or 'none'}"
        )
    return outputs[stack_name]

"""The worker's configuration, read from the environment once and validated.

The queue is born in CDK and reaches the worker only through the job's environment, so this
module is the one place that reads it, by the names contract.py declares. Run it as a script to
check an environment before a worker starts: it prints one line and exits 0, or prints what is
wrong and exits 2.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

import contract
import limits
import routing

# A task that raised is received again after this many seconds times its receive count (capped
# by the visibility timeout), until SQS moves it to the dead-letter queue (sqs_transport/failed_task_backoff.py).
FAILED_TASK_RETRY_SECONDS = 30


class ConfigError(ValueError):
    """One environment variable is missing or wrong; the message says which and what is allowed."""


@dataclass(frozen=True)
class WorkerSettings:
    queue_name: str
    queue_url: str
    region: str
    # The pool this worker serves (its queue is the pool's); None for a worker outside a stack.
    pool: str | None = None
    # Standard boto3 variable: when set, the broker and every boto3 client speak to it (moto).
    endpoint_url: str | None = None
    concurrency: int = 1
    # Messages each worker process holds besides the running one's; 1 for long tasks (see below).
    prefetch_multiplier: int = 1
    task_time_limit_seconds: int = limits.DEFAULT_TASK_TIME_LIMIT_SECONDS
    # The queue's visibility timeout: held messages are extended to it every heartbeat, so it is
    # the window in which a crashed worker's messages return to the queue.
    visibility_timeout_seconds: int = limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    heartbeat_seconds: int = limits.default_heartbeat_seconds(limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS)
    # Where the worker writes what it holds for the lifecycle script (held_messages.py); None: nowhere.
    run_dir: str | None = None
    # Extra modules with tasks the worker imports (comma-separated in CELERY_TASK_MODULES).
    task_modules: tuple[str, ...] = ()
    # The DynamoDB table results go to (Celery's DynamoDB backend); None: results off.
    result_table: str | None = None
    result_expires_days: int = limits.DEFAULT_RESULT_EXPIRES_DAYS
    # CloudWatch namespace of the per-task EMF lines (task_metrics.py); None: none written.
    metrics_namespace: str | None = None
    # Your own Celery app (CELERY_APP, as `celery -A` takes it: "proj" or "proj.celery:app");
    # None: the bundled app of celery_app.py. Either way apply_to() layers the settings below onto it.
    app: str | None = None

    @property
    def result_backend(self) -> str | None:
        """Celery's DynamoDB backend URL: region and table, and ``ttl_seconds`` so each result
        carries the expiry time DynamoDB's TTL deletes it by. No credentials in it (boto3's chain,
        the job role), no endpoint (boto3 reads AWS_ENDPOINT_URL_DYNAMODB itself)."""
        if not self.result_table:
            return None
        return f"dynamodb://@{self.region}/{self.result_table}?ttl_seconds={self.result_expires_days * 86400}"

    @property
    def task_soft_time_limit_seconds(self) -> int:
        """A little below the hard limit, so a task can clean up before it is killed."""
        return limits.soft_time_limit(self.task_time_limit_seconds)

    @property
    def broker_url(self) -> str:
        """``sqs://`` with no credentials, so boto3's chain supplies them (the Batch job role).

        With an endpoint, kombu takes host and port from the URL and the scheme from
        ``is_secure`` (see ``broker_transport_options``).
        """
        if not self.endpoint_url:
            return "sqs://"
        parts = urlsplit(self.endpoint_url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return f"sqs://{netloc}//"

    @property
    def endpoint_is_secure(self) -> bool:
        return not self.endpoint_url or urlsplit(self.endpoint_url).scheme == "https"

    def celery_config(self) -> dict:
        """Every Celery setting of the worker and the filler, in one place."""
        return dict(
            broker_url=self.broker_url,
            # kombu's SQS transport with the outage crash of kombu 5.7.0 fixed (see that module).
            broker_transport="sqs_transport:Transport",
            broker_transport_options={
                "region": self.region,
                # kombu speaks https unless told otherwise, also to a local http endpoint.
                "is_secure": self.endpoint_is_secure,
                # The queue and its dead-letter queue exist before any worker (CDK creates them).
                # Naming it here stops kombu from listing or creating queues.
                "predefined_queues": {self.queue_name: {"url": self.queue_url}},
                "visibility_timeout": self.visibility_timeout_seconds,
                "wait_time_seconds": limits.LONG_POLL_SECONDS,
                # Held messages are kept invisible by a heartbeat and given back at once when the
                # worker stops (held_messages.py); the state file tells the lifecycle script.
                "heartbeat_seconds": self.heartbeat_seconds,
                "run_dir": self.run_dir,
                # Pause after an empty or failed receive, and between checks whether the worker
                # has a free slot again (no request then). An idle queue is long-polled, so this
                # costs no requests; kombu's 1 s default would cap one worker at 1 task/s.
                "polling_interval": 0.05,
                "failed_task_retry_seconds": min(FAILED_TASK_RETRY_SECONDS, self.visibility_timeout_seconds),
                # Comes with every received message at no extra request: when it was sent, so
                # the task's wait can be measured (task_metrics.py).
                "fetch_message_attributes": ["SentTimestamp"],
            },
            broker_connection_retry_on_startup=True,
            # A worker outlives an SQS outage instead of giving up after kombu's default 100
            # retries: the lifecycle script, not the broker connection, decides when it ends.
            broker_connection_max_retries=None,
            # Every task goes to the batch queue unless routed elsewhere; "batch.*" says it twice
            # on purpose, so a changed default cannot send the compute tasks anywhere else.
            task_default_queue=self.queue_name,
            # The worker consumes that queue alone: an app's own task_queues (its Redis queues) are
            # not this pool's and are not predefined, so kombu would refuse them.
            task_queues=None,
            task_routes={"batch.*": {"queue": self.queue_name}},
            task_serializer="json",
            accept_content=["json"],
            result_serializer="json",
            # Results (and errors) go to the stack's DynamoDB table for AsyncResult.get(); without
            # a table a task's return value is only logged by the worker (CloudWatch).
            result_backend=self.result_backend,
            task_ignore_result=self.result_backend is None,
            # Ack after the task finished; a worker that dies mid-task leaves its message in SQS.
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            # A task that raised or hit its time limit is not acked either. kombu leaves a
            # rejected message in a queue with a redrive policy, so SQS delivers it again and,
            # after maxReceiveCount receives, moves it to the dead-letter queue. (Celery's
            # default acks it: the task would be gone, with only a log line left.)
            task_acks_on_failure=False,
            task_acks_on_timeout=False,
            # Hold no message the worker is not running: a prefetched one would wait out part
            # of its visibility timeout in this worker's buffer while other workers idle. Tasks
            # of well under a second gain from more (WORKER_PREFETCH_MULTIPLIER; bench.worker).
            worker_prefetch_multiplier=self.prefetch_multiplier,
            # A message Celery cannot decode is rejected (kept for the dead-letter queue), not
            # deleted, and no malformed message stops the worker (dead_letter_consumer.py).
            worker_consumer="dead_letter_consumer:Consumer",
            worker_concurrency=self.concurrency,
            task_time_limit=self.task_time_limit_seconds,
            task_soft_time_limit=self.task_soft_time_limit_seconds,
            # Remote control, events and heartbeats need a fanout exchange SQS does not have.
            worker_enable_remote_control=False,
            worker_send_task_events=False,
            task_send_sent_event=False,
            # Running tasks keep going when the consumer reconnects: their SQS receipt handles
            # stay valid, so they are still acked when they finish.
            worker_cancel_long_running_tasks_on_connection_loss=False,
            include=list(self.task_modules),
        )

    def apply_to(self, app) -> None:
        """Layer this worker's settings onto ``app`` (yours, or the bundled one): the settings the
        transport, the lifecycle and the stack depend on replace the app's own (RUNTIME_OWNED); the
        app keeps its routes and serializers, and gets this worker's only where it left Celery's
        default (APP_DEFAULTS); its task modules are kept and CELERY_TASK_MODULES' added."""
        from celery.app.defaults import DEFAULTS

        config = self.celery_config()
        conf = app.conf
        layered = {key: config[key] for key in RUNTIME_OWNED}
        # Without a result table the stack stores no results: an app's own backend stays yours.
        if self.result_backend is None and conf.result_backend != DEFAULTS["result_backend"]:
            layered.pop("result_backend")
            layered.pop("task_ignore_result")
        for key in APP_DEFAULTS:
            if _same(conf[key], DEFAULTS[key]):
                layered[key] = config[key]
        layered["include"] = list(dict.fromkeys([*(conf.include or ()), *self.task_modules]))
        conf.update(layered)

    def sqs_client(self):
        """A boto3 SQS client with short timeouts (boto3 honours AWS_ENDPOINT_URL_SQS itself)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "sqs",
            region_name=self.region,
            config=Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WorkerSettings":
        env = os.environ if environ is None else environ
        queue_name = _required(env, contract.QUEUE_NAME)
        queue_url = _required(env, contract.QUEUE_URL)
        named = routing.queue_name_of(queue_url)
        if named is None:
            raise ConfigError(f"{contract.QUEUE_URL}={queue_url!r} is not a queue URL; expected http(s)://host/ACCOUNT/NAME")
        if named != queue_name:
            raise ConfigError(
                f"{contract.QUEUE_URL}={queue_url!r} does not end with {contract.QUEUE_NAME}={queue_name!r}; "
                "they must name the same queue"
            )
        # AWS_REGION is what the AWS runtimes set; the stack sets the contract's name.
        region = env.get("AWS_REGION") or env.get(contract.REGION)
        if not region:
            raise ConfigError(f"AWS_REGION or {contract.REGION} must be set to the queue's region")
        pool = env.get(contract.POOL, "").strip() or None
        if pool is not None:
            _check(contract.POOL, pool, routing.pool_name_problem(pool))
        endpoint_url = env.get(contract.ENDPOINT_URL_SQS) or None
        if endpoint_url is not None:
            parts = urlsplit(endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"{contract.ENDPOINT_URL_SQS}={endpoint_url!r} is not an endpoint; expected http(s)://host[:port]"
                )
        visibility = _int(env, contract.VISIBILITY_TIMEOUT_SECONDS, limits.DEFAULT_VISIBILITY_TIMEOUT_SECONDS)
        _check(contract.VISIBILITY_TIMEOUT_SECONDS, visibility, limits.visibility_timeout_problem(visibility))
        time_limit = _int(env, contract.TASK_TIME_LIMIT_SECONDS, limits.DEFAULT_TASK_TIME_LIMIT_SECONDS)
        _check(contract.TASK_TIME_LIMIT_SECONDS, time_limit, limits.task_time_limit_problem(time_limit, visibility))
        heartbeat = _int(env, contract.HEARTBEAT_SECONDS, limits.default_heartbeat_seconds(visibility))
        _check(contract.HEARTBEAT_SECONDS, heartbeat, limits.heartbeat_problem(heartbeat, visibility))
        # Read by the lifecycle script; checked here so that a bad value is one line before start.
        grace = _int(env, contract.STOP_GRACE_SECONDS, limits.DEFAULT_STOP_GRACE_SECONDS)
        _check(contract.STOP_GRACE_SECONDS, grace, limits.stop_grace_problem(grace))
        modules = tuple(m.strip() for m in env.get(contract.TASK_MODULES, "").split(",") if m.strip())
        result_table = env.get(contract.RESULT_TABLE, "").strip() or None
        if result_table is not None:
            _check(contract.RESULT_TABLE, result_table, _table_name_problem(result_table))
        expires = _int(env, contract.RESULT_EXPIRES_DAYS, limits.DEFAULT_RESULT_EXPIRES_DAYS, low=None)
        _check(contract.RESULT_EXPIRES_DAYS, expires, limits.result_expires_days_problem(expires))
        return cls(
            queue_name=queue_name,
            queue_url=queue_url,
            region=region,
            pool=pool,
            endpoint_url=endpoint_url,
            concurrency=_int(env, contract.CONCURRENCY, 1, 1, limits.MAX_CONCURRENCY),
            prefetch_multiplier=_int(env, contract.PREFETCH_MULTIPLIER, 1, 1, 100),
            task_time_limit_seconds=time_limit,
            visibility_timeout_seconds=visibility,
            heartbeat_seconds=heartbeat,
            run_dir=env.get(contract.RUN_DIR) or None,
            task_modules=modules,
            result_table=result_table,
            result_expires_days=expires,
            metrics_namespace=env.get(contract.METRICS_NAMESPACE, "").strip() or None,
            app=_app_spec(env),
        )


# What a worker's app always gets from this runtime, whatever the app sets, and why (the comments
# in celery_config say more): the broker is the pool's SQS queue through this project's transport
# (another broker or queue would never see the pool's tasks); acks, rejects and prefetch are what
# keep a task from being lost or stuck in a buffer; the time limits are the ones the job's deadline
# is computed from; the consumer routes undecodable messages to the dead-letter queue; remote
# control and events need a fanout exchange SQS lacks; results go where the stack's producers and
# the doctor read them (the result table; without one, an app's own backend is kept).
RUNTIME_OWNED = (
    "broker_url", "broker_transport", "broker_transport_options", "broker_connection_retry_on_startup",
    "broker_connection_max_retries", "task_default_queue", "task_queues",
    "result_backend", "task_ignore_result",
    "task_acks_late", "task_reject_on_worker_lost", "task_acks_on_failure", "task_acks_on_timeout",
    "worker_prefetch_multiplier", "worker_consumer", "worker_concurrency",
    "task_time_limit", "task_soft_time_limit",
    "worker_enable_remote_control", "worker_send_task_events", "task_send_sent_event",
    "worker_cancel_long_running_tasks_on_connection_loss",
)
# What an app keeps when it sets it (its own routes, its serializers); this runtime's otherwise.
APP_DEFAULTS = ("task_routes", "task_serializer", "accept_content", "result_serializer")


def load_app(spec: str):
    """Your Celery app, found as `celery -A` finds it (``proj``: proj.app, proj.celery or
    proj.celery.app; ``proj.celery:app``). Its module runs as it does under `celery -A proj`: a
    Django project's proj/celery.py sets DJANGO_SETTINGS_MODULE before it builds the app, and
    Celery's Django fixup calls django.setup() when the worker starts. A failing import is one
    line naming CELERY_APP and the error's last line."""
    import traceback

    from celery import Celery
    from celery.app.utils import find_app

    try:
        app = find_app(spec)
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises, one line
        reason = "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]
        raise ConfigError(f"{contract.APP}={spec!r} cannot be loaded: {reason}") from None
    if not isinstance(app, Celery):
        raise ConfigError(f"{contract.APP}={spec!r} is a {type(app).__name__}, not a Celery app; "
                          "allowed: a module with a Celery app (proj), or module:attribute (proj.celery:app)")
    return app


def _same(value, default) -> bool:
    """An app setting left at Celery's default (a tuple default may read back as a list)."""
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def _app_spec(env: Mapping[str, str]) -> str | None:
    """CELERY_APP as `celery -A` takes it: a module ("proj"), or "module:attribute"."""
    spec = env.get(contract.APP, "").strip() or None
    if spec is not None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?", spec):
        raise ConfigError(f"{contract.APP}={spec!r} is not an app; allowed: a module (proj) or module:attribute "
                          "(proj.celery:app), as `celery -A` takes it")
    return spec


def _table_name_problem(name: str) -> str | None:
    """DynamoDB's rule for a table name (3-255 of letters, digits, '_', '-', '.')."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", name):
        return "allowed: a DynamoDB table name, 3-255 letters, digits, '_', '-' or '.'"
    return None


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; the worker job's environment must provide it")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int | None = 1, high: int | None = None) -> int:
    """A whole number from ``env``; ``low`` None leaves the range to a shared rule (limits.py)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    allowed = f"{low}..{high}" if high is not None else f"a whole number >= {low}" if low is not None else "a whole number"
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; allowed: {allowed}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name}={value} is out of range; allowed: {allowed}")
    return value


def _check(name: str, value: int | str, problem: str | None) -> None:
    """A rule of limits.py or routing.py (shared with synth) broken: one line with the variable's name."""
    if problem:
        raise ConfigError(f"{name}={value!r} is not allowed; {problem}")


def main() -> int:
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    # Before the worker starts: its transport overrides private kombu/celery members (kombu_contract.py).
    import kombu_contract

    release_problem = kombu_contract.problem()
    if release_problem:
        print(f"configuration error: {release_problem}", file=sys.stderr)
        return 2
    if settings.app:
        # Your app is imported here first, so a wrong name or a failing import is one line, not a
        # worker that never starts.
        try:
            app = load_app(settings.app)
        except ConfigError as error:
            print(f"configuration error: {error}", file=sys.stderr)
            return 2
    print(
        (f"app {settings.app} ({app.main}), " if settings.app else "")
        + f"{'pool ' + settings.pool + ', ' if settings.pool else ''}queue {settings.queue_name} in {settings.region}"
        f"{' via ' + settings.endpoint_url if settings.endpoint_url else ''}, "
        f"concurrency {settings.concurrency}, prefetch {settings.prefetch_multiplier}, task time limit {settings.task_time_limit_seconds} s "
        f"(soft {settings.task_soft_time_limit_seconds} s), visibility timeout {settings.visibility_timeout_seconds} s "
        f"kept by a heartbeat every {settings.heartbeat_seconds} s; "
        + (f"results in DynamoDB table {settings.result_table} for {settings.result_expires_days} days"
           if settings.result_table else "no result backend")
        + (f"; metrics in {settings.metrics_namespace}" if settings.metrics_namespace else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

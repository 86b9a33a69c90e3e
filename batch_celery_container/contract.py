"""The worker's environment contract: every variable the CDK side sets and the container reads.

Declared once, here, with no dependencies: the CDK app builds the job environment with
``worker_environment`` / ``filler_environment`` (``from batch_celery_container import contract``),
the worker reads the same names (``import contract`` in worker_settings.py; the lifecycle script
reads the same spelling, checked by tests/container/test_static.py). Whatever synth accepts, the
worker accepts: tests start a worker from the environment of every pool synth builds.
"""

from __future__ import annotations

from typing import Mapping

# --- set by the stack on every worker job --------------------------------------------------
QUEUE_NAME = "CELERY_QUEUE_NAME"
QUEUE_URL = "CELERY_QUEUE_URL"
REGION = "AWS_DEFAULT_REGION"
POOL = "WORKER_POOL"
IDLE_SECONDS = "IDLE_SECONDS"
POLL_SECONDS = "POLL_SECONDS"
CONCURRENCY = "WORKER_CONCURRENCY"
TASK_TIME_LIMIT_SECONDS = "TASK_TIME_LIMIT_SECONDS"
VISIBILITY_TIMEOUT_SECONDS = "VISIBILITY_TIMEOUT_SECONDS"
STOP_GRACE_SECONDS = "STOP_GRACE_SECONDS"
# The job definition's timeout (the same setting): the worker stops taking tasks in time for it.
JOB_TIMEOUT_SECONDS = "JOB_TIMEOUT_SECONDS"

# --- set by the stack on a Lambda pool's function (lambda_handler.py) ---------------------------
# Where the function copies a task that cannot wait in SQS or used up its Celery retries (the
# Batch worker finds its dead-letter queue through the queue's redrive policy instead).
DEAD_LETTER_QUEUE_URL = "CELERY_DEAD_LETTER_QUEUE_URL"

# --- set by the stack on worker jobs, the filler and the scaler when the feature is on ----------
# Where task results go (a DynamoDB table name; unset: results off) and how long they are kept.
RESULT_TABLE = "CELERY_RESULT_TABLE"
RESULT_EXPIRES_DAYS = "CELERY_RESULT_EXPIRES_DAYS"
# The result table's schema is Celery's DynamoDB backend's: these attribute names are its own.
RESULT_KEY_ATTRIBUTE = "id"
RESULT_TTL_ATTRIBUTE = "ttl"
# CloudWatch namespace of the EMF lines (emf.py); unset: no metric lines.
METRICS_NAMESPACE = "METRICS_NAMESPACE"

# --- set by the stack on the filler job: where each task name goes (routing.py's JSON) --------
ROUTES = "CELERY_ROUTES"

# --- optional, never set by the stack (an image or a local run sets them) ---------------------
TASK_MODULES = "CELERY_TASK_MODULES"
# Your own Celery app, as `celery -A` takes it ("proj", "proj.celery:app"); unset: the bundled app.
# The worker imports it and layers this project's settings onto it (worker_settings.apply_to).
APP = "CELERY_APP"
PREFETCH_MULTIPLIER = "WORKER_PREFETCH_MULTIPLIER"
HEARTBEAT_SECONDS = "HEARTBEAT_SECONDS"
RUN_DIR = "WORKER_RUN_DIR"
ENDPOINT_URL_SQS = "AWS_ENDPOINT_URL_SQS"
# boto3 reads it by itself; the local run points the result backend at moto with it.
ENDPOINT_URL_DYNAMODB = "AWS_ENDPOINT_URL_DYNAMODB"

# --- the lifecycle script's exit statuses the stack acts on (run_celery_worker.sh's header) -------
# The worker left at its job's deadline: routine, not retried, not reported as a failure.
EXIT_JOB_DEADLINE = 7

# --- the task every worker registers (celery_app.py) and `python -m batch_celery doctor` sends -----
PROBE_TASK = "batch_celery.probe"

WORKER_VARIABLES = (
    QUEUE_NAME, QUEUE_URL, REGION, POOL, IDLE_SECONDS, POLL_SECONDS, CONCURRENCY,
    TASK_TIME_LIMIT_SECONDS, VISIBILITY_TIMEOUT_SECONDS, STOP_GRACE_SECONDS, JOB_TIMEOUT_SECONDS,
)
FILLER_VARIABLES = (QUEUE_NAME, QUEUE_URL, REGION, ROUTES)
# Set by the stack when metrics and results are on (they are by default).
FEATURE_VARIABLES = (METRICS_NAMESPACE, RESULT_TABLE, RESULT_EXPIRES_DAYS)


def worker_environment(
    *,
    pool: str,
    queue_name: str,
    queue_url: str,
    region: str,
    idle_seconds: int,
    poll_seconds: int,
    concurrency: int,
    task_time_limit_seconds: int,
    visibility_timeout_seconds: int,
    stop_grace_seconds: int,
    job_timeout_seconds: int,
    metrics_namespace: str | None = None,
    result_table: str | None = None,
    result_expires_days: int | None = None,
) -> dict[str, str]:
    """The environment of one pool's worker job (values may be CloudFormation tokens)."""
    return {
        **optional_environment(metrics_namespace=metrics_namespace, result_table=result_table,
                               result_expires_days=result_expires_days),
        QUEUE_NAME: queue_name,
        QUEUE_URL: queue_url,
        REGION: region,
        POOL: pool,
        IDLE_SECONDS: str(idle_seconds),
        POLL_SECONDS: str(poll_seconds),
        CONCURRENCY: str(concurrency),
        TASK_TIME_LIMIT_SECONDS: str(task_time_limit_seconds),
        VISIBILITY_TIMEOUT_SECONDS: str(visibility_timeout_seconds),
        STOP_GRACE_SECONDS: str(stop_grace_seconds),
        JOB_TIMEOUT_SECONDS: str(job_timeout_seconds),
    }


def filler_environment(
    *, queue_name: str, queue_url: str, region: str, routes_json: str,
    result_table: str | None = None, result_expires_days: int | None = None,
) -> dict[str, str]:
    """The filler job's environment: the default pool's queue, the routes to every pool, and the
    result table (``--wait`` reads the results there)."""
    return {
        QUEUE_NAME: queue_name, QUEUE_URL: queue_url, REGION: region, ROUTES: routes_json,
        **optional_environment(result_table=result_table, result_expires_days=result_expires_days),
    }


def optional_environment(
    *, metrics_namespace: str | None = None, result_table: str | None = None,
    result_expires_days: int | None = None,
) -> dict[str, str]:
    """The variables of the features a stack may turn off: only those that are on."""
    env = {}
    if metrics_namespace:
        env[METRICS_NAMESPACE] = metrics_namespace
    if result_table:
        env[RESULT_TABLE] = result_table
        if result_expires_days is not None:
            env[RESULT_EXPIRES_DAYS] = str(result_expires_days)
    return env


def missing(environ: Mapping[str, str], names: tuple[str, ...] = WORKER_VARIABLES) -> list[str]:
    """Names of the contract that ``environ`` lacks (empty values count as missing)."""
    return [name for name in names if not str(environ.get(name, "")).strip()]

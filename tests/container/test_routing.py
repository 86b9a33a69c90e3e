"""routing.py: the rules synth and the worker share, the routes JSON, and real Celery routing on SQS."""

from __future__ import annotations

import base64
import json
import re
import sys

import pytest
from celery import Celery

from batch_celery import CONTAINER_DIR
from harness.lifecycle import environment

sys.path.insert(0, str(CONTAINER_DIR))
import contract  # noqa: E402
import routing  # noqa: E402
from worker_settings import ConfigError, WorkerSettings  # noqa: E402

URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/"


def document(**changes) -> dict:
    """A valid routes document (as the stack publishes it) with ``changes`` on top."""
    value = {
        "default_pool": "default",
        "region": "eu-west-1",
        "pools": {
            "default": {"queue_name": "Stack-PoolDefaultQueue", "queue_url": URL + "Stack-PoolDefaultQueue", "tasks": []},
            "gpu": {"queue_name": "Stack-PoolGpuQueue", "queue_url": URL + "Stack-PoolGpuQueue", "tasks": ["gpu.*", "video.encode"]},
        },
    }
    value.update(changes)
    return value


def with_pool(name: str, **changes) -> dict:
    value = document()
    value["pools"][name] = {**value["pools"][name], **changes}
    return value


# --- the shared rules ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "gpu", "g", "video-encode", "g5-xl", "a" * 32])
def test_pool_name_allowed(name):
    assert routing.pool_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "GPU", "1gpu", "-gpu", "gpu-", "gpu_x", "gpu.x", "a" * 33, None, 5])
def test_rejects_bad_pool_name(name):
    assert routing.pool_name_problem(name).startswith("allowed: lowercase letters, digits and dashes, starting with a letter")


@pytest.mark.parametrize("pattern", ["gpu.*", "video.encode", "proj.tasks:run", "*", "a_b-c.*.x", "x" * 200])
def test_task_pattern_allowed(pattern):
    assert routing.task_pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", ["", "gpu.?", "gpu.[ab]", "video encode", "gpu/x", "x" * 201, None, ["gpu.*"]])
def test_rejects_bad_task_pattern(pattern):
    assert routing.task_pattern_problem(pattern).startswith("allowed: a task name or a glob with '*'")


def test_duplicate_pattern_names_both_pools():
    assert routing.duplicate_pattern({"a": ["x.*"], "b": ["y"], "c": ["z", "x.*"]}) == ("x.*", "a", "c")
    assert routing.duplicate_pattern({"a": ["x.*"], "b": ["x.y"]}) is None


# --- the routes JSON -------------------------------------------------------------------------


def test_parses_the_stack_output():
    routes = routing.parse_routes(json.dumps(document()))
    assert (routes.default_pool, routes.region, list(routes.pools)) == ("default", "eu-west-1", ["default", "gpu"])
    assert routes.pools["gpu"] == routing.PoolRoute("Stack-PoolGpuQueue", URL + "Stack-PoolGpuQueue", ("gpu.*", "video.encode"))
    assert routes.default_queue == "Stack-PoolDefaultQueue"
    # The parsed object and the text give the same routes; keys of a newer stack are ignored.
    assert routing.parse_routes({**document(), "version": 2}) == routes


def test_routes_document_is_what_parse_reads():
    routes = routing.parse_routes(document())
    rebuilt = routing.routes_document(default_pool=routes.default_pool, region=routes.region, pools=routes.pools)
    assert rebuilt == document()
    assert routing.parse_routes(json.dumps(rebuilt)) == routes


@pytest.mark.parametrize(
    "value, expected",
    [
        ("{", "the routes are not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
        ("[]", 'the routes is not a JSON object; expected {"default_pool": "NAME", "region": "...", "pools": {"NAME": {'),
        (document(region=""), "the routes: 'region' is missing or empty; expected a non-empty string"),
        ({k: v for k, v in document().items() if k != "default_pool"}, "the routes: 'default_pool' is missing or empty"),
        (document(pools=[]), "the routes' 'pools' is not a JSON object; expected {\"NAME\": {...}, ...}"),
        (document(pools={}), "the routes' 'pools' is empty; allowed: an object with at least one pool"),
        (document(pools={"GPU": document()["pools"]["gpu"]}), "pool name 'GPU' is not allowed; allowed: lowercase letters"),
        (document(pools={"gpu": "queue"}), "pool 'gpu' is not a JSON object; expected {\"queue_name\": \"...\", \"queue_url\""),
        (with_pool("gpu", queue_name=None), "pool 'gpu': 'queue_name' is missing or empty"),
        (with_pool("gpu", queue_url="Stack-PoolGpuQueue"), "pool 'gpu': queue_url 'Stack-PoolGpuQueue' is not a queue URL; expected http(s)://host/ACCOUNT/NAME"),
        (with_pool("gpu", queue_url=URL + "Other"), "pool 'gpu': queue_url '" + URL + "Other' does not end with its queue_name 'Stack-PoolGpuQueue'"),
        (with_pool("gpu", tasks="gpu.*"), "pool 'gpu': 'tasks' is not a list; allowed: a list of task names or globs"),
        (with_pool("gpu", tasks=["gpu .x"]), "pool 'gpu': task pattern 'gpu .x' is not allowed; allowed: a task name or a glob"),
        (document(default_pool="cpu"), "default_pool 'cpu' is not one of the pools; allowed: default, gpu"),
        (with_pool("default", tasks=["video.encode"]), "task pattern 'video.encode' is routed to pools 'default' and 'gpu'; allowed: one pool per pattern"),
        (with_pool("gpu", queue_name="Stack-PoolDefaultQueue", queue_url=URL + "Stack-PoolDefaultQueue"),
         "pools 'default' and 'gpu' have the same queue 'Stack-PoolDefaultQueue'; allowed: one queue per pool"),
    ],
)
def test_rejects_bad_routes(value, expected):
    with pytest.raises(routing.RoutingError) as error:
        routing.parse_routes(value)
    assert str(error.value).startswith(expected), str(error.value)
    assert "\n" not in str(error.value)
    assert isinstance(error.value, ValueError)


def test_celery_settings_send_each_pool_its_tasks():
    settings = routing.celery_settings(routing.parse_routes(document()))
    assert settings == {
        "task_default_queue": "Stack-PoolDefaultQueue",
        "task_routes": {"gpu.*": {"queue": "Stack-PoolGpuQueue"}, "video.encode": {"queue": "Stack-PoolGpuQueue"}},
        "broker_transport_options": {
            "region": "eu-west-1",
            "predefined_queues": {
                "Stack-PoolDefaultQueue": {"url": URL + "Stack-PoolDefaultQueue"},
                "Stack-PoolGpuQueue": {"url": URL + "Stack-PoolGpuQueue"},
            },
        },
    }


def test_queue_for_decides_as_celery_does():
    # Exact names beat globs of earlier pools; among globs the first pool's wins; the rest: default.
    value = document()
    value["pools"]["video"] = {"queue_name": "Video", "queue_url": URL + "Video", "tasks": ["video.enc*", "gpu.special", "*.slow"]}
    routes = routing.parse_routes(value)
    app = Celery("producer", set_as_current=False)
    app.conf.update(routing.celery_settings(routes))
    names = ["gpu.x", "gpu.special", "gpu.", "gpux", "video.encode", "video.encoder", "batch.slow", "gpu.very.slow",
             "batch.calculate_pi", "GPU.x", "video.encode.x", ""]
    decided = {name: routing.queue_for(routes, name) for name in names}
    assert decided == {name: app.amqp.router.route({}, name)["queue"].name for name in names}
    assert (decided["gpu.special"], decided["video.encode"], decided["video.encoder"], decided["GPU.x"]) == (
        "Video", "Stack-PoolGpuQueue", "Video", "Stack-PoolDefaultQueue")
    assert routing.pool_for(routes, "gpu.special") == "video"


# --- the routes from cdk deploy --outputs-file ------------------------------------------------


def test_reads_routes_from_the_outputs_file(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"BatchCelery": {"Routes": json.dumps(document()), "JobQueueArn": "arn:..."}, "Web": {"Url": "x"}}))
    assert routing.routes_from_outputs(path) == routing.parse_routes(document())
    assert routing.routes_from_outputs(str(path), "BatchCelery") == routing.parse_routes(document())


def test_outputs_with_several_stacks_need_a_stack_name():
    outputs = {"Prod": {"Routes": json.dumps(document())}, "Staging": {"Routes": json.dumps(document(region="us-east-1"))}}
    with pytest.raises(routing.RoutingError, match="^several stacks have a 'Routes' output; choose one with stack_name: Prod, Staging$"):
        routing.routes_from_outputs(outputs)
    assert routing.routes_from_outputs(outputs, stack_name="Staging").region == "us-east-1"


@pytest.mark.parametrize(
    "outputs, stack_name, expected",
    [
        ({"Web": {"Url": "x"}}, None, "no stack in the outputs has a 'Routes' output; stacks: Web"),
        ({}, None, "no stack in the outputs has a 'Routes' output; stacks: none"),
        ({"Prod": {"Routes": "{}"}}, "Dev", "stack 'Dev' has no 'Routes' output in the outputs; stacks that have one: Prod"),
        ({"Prod": {"Routes": "not json"}}, None, "the routes are not JSON"),
    ],
)
def test_rejects_outputs_without_routes(outputs, stack_name, expected):
    with pytest.raises(routing.RoutingError, match="^" + re.escape(expected)):
        routing.routes_from_outputs(outputs, stack_name)


def test_rejects_unreadable_outputs_file(tmp_path):
    with pytest.raises(routing.RoutingError, match=r"^cannot read the outputs file '.*missing.json': No such file or directory$"):
        routing.routes_from_outputs(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("Outputs:\n")
    with pytest.raises(routing.RoutingError, match=r"^the outputs file '.*bad.json' is not JSON \(Expecting value\); expected the file of cdk deploy --outputs-file$"):
        routing.routes_from_outputs(tmp_path / "bad.json")


# --- the worker's side: its pool, and the contract's names ----------------------------------

BASE_ENV = {contract.QUEUE_NAME: "jobs", contract.QUEUE_URL: URL + "jobs", contract.REGION: "eu-west-1"}


def test_worker_knows_its_pool(capsys):
    assert WorkerSettings.from_env(BASE_ENV).pool is None
    assert WorkerSettings.from_env({**BASE_ENV, contract.POOL: "gpu"}).pool == "gpu"
    import worker_settings

    with environment({**BASE_ENV, contract.POOL: "gpu"}):
        assert worker_settings.main() == 0
    assert capsys.readouterr().out.startswith("pool gpu, queue jobs in eu-west-1, concurrency 1")


def test_worker_rejects_bad_pool_name():
    with pytest.raises(ConfigError, match=r"^WORKER_POOL='GPU' is not allowed; allowed: lowercase letters"):
        WorkerSettings.from_env({**BASE_ENV, contract.POOL: "GPU"})


def test_worker_settings_names_variables_only_through_the_contract():
    source = (CONTAINER_DIR / "worker_settings.py").read_text()
    names = [value for key, value in vars(contract).items() if key.isupper() and isinstance(value, str)]
    assert names and not [name for name in names if f'"{name}"' in source or f"'{name}'" in source]


# --- end to end: a producer app on real SQS (moto server) ------------------------------------


def test_producer_sends_each_task_to_its_pools_queue(moto_server, sqs, make_queues):
    default, gpu = make_queues(), make_queues()
    routes = routing.parse_routes({
        "default_pool": "default",
        "region": moto_server.region,
        "pools": {
            "default": {"queue_name": default.name, "queue_url": default.url, "tasks": []},
            "gpu": {"queue_name": gpu.name, "queue_url": gpu.url, "tasks": ["gpu.*"]},
        },
    })
    settings = routing.celery_settings(routes)
    # A user's app: its own broker URL and transport options, merged as celery_settings says.
    port = moto_server.endpoint.rsplit(":", 1)[1]
    app = Celery("producer", set_as_current=False)
    app.conf.update(settings, broker_url=f"sqs://127.0.0.1:{port}//",
                    broker_transport_options={"is_secure": False, **settings["broker_transport_options"]})
    with environment(moto_server.client_env()):
        with app.producer_or_acquire() as producer:
            app.send_task("gpu.x", args=[1], producer=producer)
            app.send_task("batch.calculate_pi", kwargs={"terms": 10}, producer=producer)
            app.send_task("gpu.y", producer=producer)

    def tasks_in(queue_url):
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        return sorted(json.loads(base64.b64decode(m["Body"]))["headers"]["task"] for m in messages)

    assert tasks_in(gpu.url) == ["gpu.x", "gpu.y"]
    assert tasks_in(default.url) == ["batch.calculate_pi"]

"""The kombu/celery contract of the worker's transport: one test per private hook it uses, named after
the hook, so an upgrade that moves one fails here first and clearly; and the worker refuses a release
it was not written for (kombu_contract.py), tried with real older releases installed from PyPI.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from kombu.transport import SQS
from kombu.transport.virtual import base as virtual

from batch_celery import CONTAINER_DIR
from batch_celery_local import REPO_ROOT

sys.path.insert(0, str(CONTAINER_DIR))
import kombu_contract  # noqa: E402

OLD = {"celery": "5.5.3", "kombu": "5.5.4"}


def _params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _source(function) -> str:
    return inspect.getsource(function)


# --- the releases ------------------------------------------------------------------------------


def test_installed_releases_are_the_supported_ones():
    assert kombu_contract.problem() is None, kombu_contract.problem()


def test_pinned_releases_are_the_supported_ones():
    pins = dict(line.split("==") for line in (CONTAINER_DIR / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name, versions in kombu_contract.SUPPORTED.items():
        assert pins[name] in versions, f"requirements.txt pins {name} {pins[name]}; kombu_contract supports {versions}"


@pytest.fixture(scope="module")
def old_releases(tmp_path_factory) -> Path:
    """celery 5.5.3 and kombu 5.5.4 (what the issue tried) in a folder put first on PYTHONPATH."""
    target = tmp_path_factory.mktemp("old-releases")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
               *(f"{name}=={version}" for name, version in OLD.items())]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"could not install {OLD} from PyPI:\n{completed.stderr[-2000:]}"
    return target


def test_rejects_other_kombu_and_celery_before_the_worker_starts(moto_server, make_queues, tmp_path, old_releases):
    from harness.lifecycle import running_script, worker_env

    queues = make_queues()
    env = worker_env(moto_server, queues, tmp_path, PYTHONPATH=f"{old_releases}:{REPO_ROOT}")
    with running_script(env, tmp_path / "out.log") as run:
        status = run.wait(timeout=60)
    lines = [line for line in run.output.splitlines() if "unsupported" in line]
    assert status == 2, run.output[-3000:]
    assert lines == [
        "configuration error: unsupported kombu and celery: installed kombu 5.5.4, celery 5.5.3; the worker's SQS "
        "transport (sqs_transport/) is written for kombu 5.7.0, celery 5.7.0 (pin them as in "
        "batch_celery_container/requirements.txt)"
    ], run.output[-3000:]
    assert "starting Celery worker" not in run.output
    assert "Traceback" not in run.output


def test_rejects_other_release_at_import_of_the_transport(old_releases):
    # A worker started without the lifecycle script: the transport's import fails with the same line.
    completed = subprocess.run(
        [sys.executable, "-c", "import sqs_transport"], cwd=CONTAINER_DIR, capture_output=True, text=True,
        env={"PYTHONPATH": f"{old_releases}:{CONTAINER_DIR}", "PATH": "/usr/bin:/bin"}, timeout=60,
    )
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].startswith(
        "kombu_contract.UnsupportedRelease: unsupported kombu and celery: installed kombu 5.5.4, celery 5.5.3"
    ), completed.stderr[-2000:]


# --- kombu: methods the transport overrides (name, arguments, and who calls them) ----------------


def test_hook_channel_basic_consume():
    assert _params(SQS.Channel.basic_consume)[:5] == ["self", "queue", "no_ack", "callback", "consumer_tag"]
    # The hub comes from kombu's current loop when the channel is made (fix 6 hands it on after a restart).
    assert "get_event_loop()" in _source(SQS.Channel.__init__)
    assert "self.hub.call_soon(self._schedule_queue" in _source(SQS.Channel.basic_consume)


def test_hook_channel__schedule_queue():
    assert _params(SQS.Channel._schedule_queue) == ["self", "queue"]
    assert "_schedule_queue" in _source(SQS.Channel._loop1)


def test_hook_channel__get_from_sqs():
    assert _params(SQS.Channel._get_from_sqs) == ["self", "queue_name", "queue_url", "connection", "count", "callback"]
    assert "self._get_from_sqs(" in _source(SQS.Channel._get_async)


def test_hook_channel__on_messages_ready():
    assert _params(SQS.Channel._on_messages_ready) == ["self", "queue", "qname", "messages"]
    assert "transform(\n                self._on_messages_ready, callback, q_url, queue" in _source(SQS.Channel._get_async)
    # The defect fix 1 handles: kombu still expects a dict here.
    assert "messages.get('Messages')" in _source(SQS.Channel._on_messages_ready)


def test_hook_channel__message_to_python():
    assert _params(SQS.Channel._message_to_python) == ["self", "message", "queue_name", "q_url"]


def test_hook_channel__envelope_payload():
    assert _params(SQS.Channel._envelope_payload) == ["self", "payload", "raw_text", "message", "q_url"]
    payload = SQS.Channel._envelope_payload(None, {}, "body", {"ReceiptHandle": "rh"}, "url")
    assert payload["properties"]["delivery_info"] == {"sqs_message": {"ReceiptHandle": "rh"}, "sqs_queue": "url"}
    assert payload["properties"]["delivery_tag"] == "rh"


def test_hook_channel__restore():
    assert _params(SQS.Channel._restore) == ["self", "message", "unwanted_delivery_info"]
    # Given back at a close through QoS.restore_unacked, and at a requeue through _restore_at_beginning.
    assert "restore = self.channel._restore" in _source(virtual.QoS.restore_unacked)
    assert "return self._restore(message)" in _source(virtual.Channel._restore_at_beginning)


def test_hook_channel_close():
    source = _source(virtual.Channel.close)
    assert source.index("self._qos.restore_unacked_once()") < source.index("self.connection.close_channel(self)")
    assert "channel.connection = None" in _source(virtual.Transport.close_channel)


def test_hook_channel_basic_ack():
    source = _source(SQS.Channel.basic_ack)
    assert "self.qos.get(delivery_tag).delivery_info" in source and "delete_message(" in source


def test_hook_channel_get_message_attributes():
    # A property both receive paths read (fix 5 adds MessageAttributeNames ["All"] to it).
    assert isinstance(SQS.Channel.__dict__["get_message_attributes"], property)
    assert "self.get_message_attributes" in _source(SQS.Channel._receive_message)
    assert "self.get_message_attributes.get(" in _source(SQS.Channel.asynsqs)
    # The SQS channel's own basic_ack calls virtual.Channel.basic_ack, which fix 5 calls directly.
    assert "self.qos.ack(delivery_tag)" in _source(virtual.Channel.basic_ack)


def test_hook_channel_basic_reject():
    assert _params(SQS.Channel.basic_reject) == ["self", "delivery_tag", "requeue"]
    assert "is_backoff_task(delivery_tag)" in _source(SQS.Channel.basic_reject)


def test_hook_channel_conninfo_and_transport_options():
    assert "self.connection.client" in _source(SQS.Channel.conninfo.fget)
    assert "self.connection.client.transport_options" in _source(SQS.Channel.transport_options.fget)


def test_hook_transport_register_with_event_loop():
    assert _params(SQS.Transport.register_with_event_loop) == ["self", "connection", "loop"]


# --- kombu: private members the transport reads -------------------------------------------------


def test_hook_qos__delivered_and__dirty():
    class Channel:
        do_restore = False  # nothing to give back when the QoS is collected

    qos = virtual.QoS(channel=Channel())
    assert isinstance(qos._delivered, dict) and isinstance(qos._dirty, set)
    qos.append("message", "tag")
    qos.ack("tag")
    assert "tag" in qos._dirty and "tag" in qos._delivered  # acked, flushed only at the next append


def test_hook_qos_is_backoff_task():
    assert _params(SQS.QoS.is_backoff_task) == ["self", "delivery_tag"]


def test_hook_channel__has_redrive_policy():
    assert _params(SQS.Channel._has_redrive_policy) == ["self", "queue", "queue_url"]


def test_hook_channel__active_queues():
    assert "self._active_queues.append(queue)" in _source(virtual.Channel.basic_consume)


def test_hook_event_loop_cleared_by_hub_reset():
    # Why fix 6 restores the loop: Hub._close (run by Celery's hub.reset() after a connection error)
    # clears kombu's current loop. When this fails, kombu no longer does; the fix can go.
    from kombu.asynchronous import hub

    assert "set_event_loop(None)" in _source(hub.Hub._close)


# --- celery: what dead_letter_consumer.py and fix 6 use -------------------------------------------


def test_hook_celery_worker_state_active_requests():
    from celery.worker import state

    assert hasattr(state.active_requests, "__iter__")
    # A request enters it when a pool process accepts (starts) its task.
    assert inspect.signature(state.task_accepted).parameters["add_active_request"].default == state.active_requests.add


def test_hook_celery_consumer_create_task_handler_and_on_decode_error():
    from celery.worker.consumer import Consumer
    from celery.worker.consumer.consumer import dump_body

    assert _params(Consumer.create_task_handler) == ["self", "promise"]
    assert _params(Consumer.on_decode_error) == ["self", "message", "exc"]
    assert _params(dump_body) == ["m", "body"]

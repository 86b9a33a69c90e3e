"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import signal

import pytest

from batch_celery_local import motoserver
from harness.processes import live_pids


@pytest.fixture(scope="session")
def moto_server():
    """One moto server on 127.0.0.1 for the whole session; tests use their own queue names."""
    with motoserver.running() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def no_orphaned_workers(tmp_path_factory):
    """Every worker a test starts must be gone when the session ends: a leftover is a leak."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    # Workers run from a test's tmp_path, so their command lines name the session's base folder.
    leftovers = live_pids(cmdline_has=base)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leftovers, f"{len(leftovers)} process(es) started by the tests outlived them (killed now)"


# Infra test files that synthesize only stacks of their own (module fixtures, the CDK CLI, no
# cdk.json): each runs on one worker of its own, beside the shared "synth" group.
OWN_SYNTH = ("test_bare_app.py", "test_checkov.py", "test_cli.py", "test_embedding.py", "test_kms.py",
             "test_network.py", "test_settings.py", "test_lambda_pool.py")

# Schedules (EventBridge Scheduler, the sender Lambda) synthesize stacks of their own too.
OWN_SYNTH += ("test_schedules.py",)


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n`` (make test), the infrastructure tests that share the session's
    synthesized stacks (tests/infra/conftest.py) share one worker, so each stack is synthesized
    once; a file that synthesizes its own stacks gets a worker of its own, beside them."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        name = path.rsplit("/", 1)[-1]
        if path.startswith("tests/infra/"):
            item.add_marker(pytest.mark.xdist_group(f"synth-{name}" if name in OWN_SYNTH else "synth"))
        elif item.get_closest_marker("slow") is None or path.startswith("tests/bench/"):
            # Quick tests (and the benchmarks') stay with their file, so a module fixture (a
            # synth, a simulation) runs once; the slow ones, which mostly wait on workers, spread
            # over every worker.
            item.add_marker(pytest.mark.xdist_group(f"file-{path}"))

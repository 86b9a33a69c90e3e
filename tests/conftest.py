"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import signal

import pytest

from batch_celery.local import motoserver
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


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n`` (make test), the infrastructure tests share one worker: they share the
    session's synthesized stacks, and synthesizing them once per worker would cost more CPU than
    running them side by side saves."""
    for item in items:
        if item.nodeid.startswith("tests/infra/"):
            item.add_marker(pytest.mark.xdist_group("synth"))

"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from batch_celery.local import motoserver


@pytest.fixture(scope="session")
def moto_server():
    """One moto server on 127.0.0.1 for the whole session; tests use their own queue names."""
    with motoserver.running() as server:
        yield server


def _processes_using(folder: str) -> list[int]:
    """Live processes whose command line names ``folder`` (workers run from a test's tmp_path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if folder.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_orphaned_workers(tmp_path_factory):
    """Every worker a test starts must be gone when the session ends: a leftover is a leak."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    leftovers = _processes_using(base)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leftovers, f"{len(leftovers)} process(es) started by the tests outlived them (killed now)"

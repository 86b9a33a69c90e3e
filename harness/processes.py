"""Find the processes a test or benchmark started (psutil, so no /proc parsing of our own)."""

from __future__ import annotations

import os

import psutil

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


def live_pids(*, parent: int | None = None, cmdline_has: str | None = None, environ_has: str | None = None) -> list[int]:
    """Live processes other than this one that match every criterion given: a child of ``parent``,
    ``cmdline_has`` in the command line, the variable ``environ_has`` in the environment."""
    if parent is None:
        candidates = psutil.process_iter()
    else:
        try:
            candidates = psutil.Process(parent).children()
        except _GONE:
            return []
    found = []
    for process in candidates:
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if cmdline_has is not None and cmdline_has not in " ".join(process.cmdline()):
                continue
            if environ_has is not None and environ_has not in process.environ():
                continue
        except _GONE:
            continue
        found.append(process.pid)
    return found

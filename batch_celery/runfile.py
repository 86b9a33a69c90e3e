"""The local run's status file, for ``python -m batch_celery status --local``.

The demo rewrites it on every tick (write to a temporary file, then rename: a reader never sees
half a file): the moto server's endpoint and region, outputs named as the stack names them (with
the local queues' URLs), each pool's worker processes by the Batch state they stand for, and each
pool's last scaling decision, and each pool's last failed task run with its reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from batch_celery import CONTAINER_DIR

# Where `make demo` keeps it in the checkout (.demo/ is git-ignored).
DEFAULT_PATH = CONTAINER_DIR.parent / ".demo" / "run.json"


def write(path: Path, *, endpoint: str, region: str, outputs: Mapping[str, str],
          workers: Mapping[str, Mapping[str, int]], decisions: Mapping[str, Mapping[str, Any]],
          failures: Mapping[str, Mapping[str, Any]] | None = None,
          schedule_fires: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"endpoint": endpoint, "region": region, "outputs": dict(outputs),
                "workers": {pool: dict(states) for pool, states in workers.items()},
                "decisions": {pool: dict(decision) for pool, decision in decisions.items()},
                "failures": {pool: dict(failure) for pool, failure in (failures or {}).items()}}
    if schedule_fires:
        # Each schedule's last fire in the demo (EventBridge Scheduler's stand-in), for `status --local`.
        document["schedule_fires"] = {name: dict(fire) for name, fire in schedule_fires.items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".run.", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read(path: Path) -> dict[str, Any]:
    """The run file's content; FileNotFoundError when no local run wrote one."""
    return json.loads(path.read_text(encoding="utf-8"))


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)

"""The own-image example and the engine set-up script pass the linters the project's own image and
lifecycle script pass, and the example's task is right on its own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from batch_celery_local import REPO_ROOT

BIN = Path(sys.executable).parent
EXAMPLE = REPO_ROOT / "examples" / "cpu-pool"


def test_example_dockerfile_is_hadolint_clean():
    result = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=EXAMPLE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_engine_script_is_shellcheck_clean():
    result = subprocess.run([str(BIN / "shellcheck"), "harness/image_engine.sh"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_engine_names_the_base_image_every_built_dockerfile_names():
    name = subprocess.run([str(REPO_ROOT / "harness" / "image_engine.sh"), "base-name"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for dockerfile in (REPO_ROOT / "batch_celery_container" / "Dockerfile", EXAMPLE / "Dockerfile"):
        base = next(line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM "))
        assert name == f"docker.io/library/{base}"


@pytest.fixture
def cpu_tasks(monkeypatch):
    """The example's task module with a stand-in for the worker's app (only its task decorator)."""
    import types

    app = types.SimpleNamespace(task=lambda **options: lambda function: function)
    monkeypatch.setitem(sys.modules, "celery_app", types.SimpleNamespace(app=app))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "cpu_tasks", raising=False)
    import cpu_tasks

    yield cpu_tasks
    sys.modules.pop("cpu_tasks", None)


@pytest.mark.parametrize("limit, primes", [(2, 0), (3, 1), (10, 4), (100, 25), (100_000, 9592)])
def test_counts_primes_below_limit(cpu_tasks, limit, primes):
    assert cpu_tasks.count_primes(limit)["primes"] == primes


@pytest.mark.parametrize("limit", [1, 0, -5, 100_000_001, True, 2.5, "10"])
def test_rejects_limit_out_of_range(cpu_tasks, limit):
    with pytest.raises(ValueError, match=re.escape(f"limit={limit!r} is not allowed; allowed: a whole number 2..100000000")):
        cpu_tasks.count_primes(limit)

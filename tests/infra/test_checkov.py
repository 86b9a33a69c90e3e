"""checkov on the synthesized templates: zero failures but the skips in checkov-skips.yaml, each
with its reason, and no skip that no template needs any more."""

from __future__ import annotations

import fnmatch
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, THREE_POOLS, Synth, synth

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
SKIPS = REPO / "checkov-skips.yaml"
FARGATE_POOLS = {name: pool for name, pool in THREE_POOLS.items() if pool.get("compute", "fargate").startswith("fargate")}
# The default stack and the options that change the template most (three synths and scans: each
# costs seconds of CPU in make test).
TEMPLATES = {
    "default": {},
    "kms-private-endpoints": {"pools": THREE_POOLS, "kms_key": True, "network": "private-endpoints"},
    "public-alarms-mode-no-results": {"pools": FARGATE_POOLS, "network": "public", "results": False,
                                      "scaling_mode": "alarms"},
}

pytestmark = [
    pytest.mark.slow,  # a synth and a checkov run (seconds each) per template
    pytest.mark.skipif(not CHECKOV.exists(), reason="needs .venv-checkov: make test installs it"),
]


def skips() -> list[dict]:
    return yaml.safe_load(SKIPS.read_text())["skips"]


def failures(stack: Synth) -> list[tuple[str, str]]:
    """(check id, TYPE.LOGICALID) of every failed check on the template."""
    result = subprocess.run(
        [str(CHECKOV), "-f", str(stack.template_file), "--framework", "cloudformation", "-o", "json",
         "--compact", "--quiet", "--skip-download"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    if not report.get("results"):  # checkov's answer when every check passed
        return []
    return [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]


@pytest.fixture(scope="module")
def failed(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    return {name: failures(synth(tmp_path_factory.mktemp(name), **settings)) for name, settings in TEMPLATES.items()}


def skipped(check: str, resource: str) -> dict | None:
    return next((skip for skip in skips() if skip["check"] == check
                 and any(fnmatch.fnmatchcase(resource, pattern) for pattern in skip["resources"])), None)


def test_no_failure_but_the_listed_skips(failed) -> None:
    unexpected = [f"{template}: {check} {resource}" for template, found in failed.items()
                  for check, resource in found if skipped(check, resource) is None]
    assert unexpected == [], "checkov failures not in checkov-skips.yaml:\n" + "\n".join(unexpected)


def test_every_skip_is_still_needed_and_says_why(failed) -> None:
    used = defaultdict(set)
    for found in failed.values():
        for check, resource in found:
            for pattern in skipped(check, resource)["resources"] if skipped(check, resource) else ():
                if fnmatch.fnmatchcase(resource, pattern):
                    used[check].add(pattern)
    for skip in skips():
        assert len(skip["reason"]) > 80, skip["check"]
        stale = [pattern for pattern in skip["resources"] if pattern not in used[skip["check"]]]
        assert stale == [], f"{skip['check']}: no template fails on {stale}; remove them from checkov-skips.yaml"


def test_the_key_option_fixes_what_the_default_skips_for_encryption(failed) -> None:
    assert not any(check in ("CKV_AWS_27", "CKV_AWS_158") for check, _ in failed["kms-private-endpoints"])
    assert {check for check, _ in failed["default"]} >= {"CKV_AWS_27", "CKV_AWS_158"}

"""checkov on the synthesized templates: zero failures but the skips in checkov-skips.yaml, each
with its reason, and no skip that no template needs any more."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess

import pytest
import yaml

from .conftest import REPO, THREE_POOLS, Synth, committed_settings, synth

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
SKIPS = REPO / "checkov-skips.yaml"
FARGATE_POOLS = {name: pool for name, pool in THREE_POOLS.items()
                 if pool.get("compute", "fargate").startswith("fargate")}
# The default stack and the options that change the template most (three synths and scans: each
# costs seconds of CPU in make test).
# A Lambda pool (compute "lambda") rides along in the two option templates.
LAMBDA_POOL = {"light": {"compute": "lambda", "memory_mib": 1024, "task_time_limit_seconds": 60, "tasks": ["light.*"]}}
TEMPLATES = {
    "default": committed_settings(),  # what `cdk synth` builds from cdk.json
    "kms-private-endpoints": {"pools": {**THREE_POOLS, **LAMBDA_POOL}, "kms_key": True, "network": "private-endpoints"},
    "public-alarms-mode-no-results": {"pools": {**FARGATE_POOLS, **LAMBDA_POOL}, "network": "public", "results": False,
                                      "scaling_mode": "alarms"},
}

# A schedule rides along in the kms template: its sender Lambda, scheduler role and schedule.
TEMPLATES["kms-private-endpoints"] = {**TEMPLATES["kms-private-endpoints"],
                                      "schedules": {"nightly-report": {"task": "reports.nightly", "cron": "0 2 * * ? *"}}}

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
        # Offline and repeatable: no query to PyPI for a newer checkov on every run.
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    # A template checkov could not read would otherwise pass with nothing checked.
    assert summary["parsing_errors"] == 0 and summary["resource_count"] == len(stack.resources), summary
    assert summary["passed"] > 0, summary
    if not report.get("results"):  # checkov's answer when every check passed
        return []
    return [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]


@pytest.fixture(scope="module")
def failed(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    return {name: failures(synth(tmp_path_factory.mktemp(name), **settings))
            for name, settings in TEMPLATES.items()}


def matches(skip: dict, check: str, resource: str) -> list[str]:
    """The skip's resource patterns that cover this failure (none when the check differs)."""
    if skip["check"] != check:
        return []
    return [pattern for pattern in skip["resources"] if fnmatch.fnmatchcase(resource, pattern)]


def test_no_failure_but_the_listed_skips(failed) -> None:
    unexpected = [f"  {check} resource: {resource} (template {template})"
                  for template, found in failed.items() for check, resource in found
                  if not any(matches(skip, check, resource) for skip in skips())]
    assert unexpected == [], (
        "checkov failures not in checkov-skips.yaml (fix the resource, or add the check, the resource "
        "pattern and a reason a reviewer would accept to that file):\n" + "\n".join(unexpected))


def test_every_skip_says_why() -> None:
    for skip in skips():
        assert skip["resources"], f"{skip['check']}: no resources"
        assert len(skip.get("reason") or "") > 80, f"{skip['check']}: say why, as a reviewer would accept"


def test_every_skip_is_still_needed(failed) -> None:
    used = {(skip["check"], pattern) for found in failed.values() for check, resource in found
            for skip in skips() for pattern in matches(skip, check, resource)}
    stale = [f"  {skip['check']} {pattern}" for skip in skips() for pattern in skip["resources"]
             if (skip["check"], pattern) not in used]
    assert stale == [], ("no template fails on these any more; remove them from checkov-skips.yaml:\n"
                         + "\n".join(stale))


def test_the_key_option_fixes_what_the_default_skips_for_encryption(failed) -> None:
    assert not any(check in ("CKV_AWS_27", "CKV_AWS_158") for check, _ in failed["kms-private-endpoints"])
    assert {check for check, _ in failed["default"]} >= {"CKV_AWS_27", "CKV_AWS_158"}

"""`npx cdk synth` as a newcomer runs it: pinned CLI, no AWS credentials, no Docker engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [
    pytest.mark.skipif(shutil.which("npx") is None, reason="needs Node's npx (make install)"),
    pytest.mark.slow,  # the CDK CLI end to end: node, the app and jsii, ~10 s of CPU each
]

QUIET = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "CDK_DISABLE_VERSION_CHECK": "1",
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1",
}


def _cdk(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No AWS_* variables and an empty HOME: no profile, no credentials, no region to find.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(QUIET, HOME=str(home), npm_config_cache=str(home / ".npm"))
    return subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--no-notices", "--quiet", "--output", str(tmp_path / "cdk.out"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )


def test_cdk_synth_writes_the_template_without_credentials(tmp_path: Path) -> None:
    result = _cdk(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    template = json.loads((tmp_path / "cdk.out" / "BatchCelery.template.json").read_text())
    types = {r["Type"] for r in template["Resources"].values()}
    assert {"AWS::Batch::JobDefinition", "AWS::SQS::Queue", "AWS::Lambda::Function"} <= types
    report = json.loads((tmp_path / "cdk.out" / "validation-report.json").read_text())
    assert report["pluginReports"] == []


def test_cdk_synth_shows_a_bad_setting_as_one_line(tmp_path: Path) -> None:
    result = _cdk(tmp_path, "-c", 'batch-celery={"pools": {"gpu": {"gpus": 1}}}')
    assert result.returncode != 0
    assert ('error: batch-celery.pools.gpu.gpus = 1: Fargate has no GPUs; set compute to "ec2" or "ec2_spot"'
            in result.stderr.splitlines())
    assert "Traceback" not in result.stderr


def test_app_shows_unreadable_context_as_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env.update(QUIET, CDK_OUTDIR=str(tmp_path / "cdk.out"), CDK_CONTEXT_JSON="not-json")
    result = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the CDK context could not be read: Unexpected token 'o', \"not-json\" is not valid JSON"]

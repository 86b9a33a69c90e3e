"""The two distributions as a user installs them: both wheels built from the checkout, each
installed into a fresh venv outside it, the README's CDK app synthesized there with the installed
construct (no cdk.json, no context, the checkout nowhere on the path), and the worker's console
entry point run from its installed folder.

The installs take pip's `--no-compile` (byte-compiling aws-cdk-lib's modules would cost most of a
minute of CPU) and the checkout's pip through `--python`, so the venvs need no pip of their own;
what they hold is only what the wheels require.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import boto3
import pytest

from batch_celery.pool import WORKER_COMMAND
from batch_celery_container import entrypoint
from batch_celery_local.queues import create_queue_pair

REPO = Path(__file__).resolve().parents[2]
CONTAINER = REPO / "batch_celery_container"
README_HEADING = "## Use it in your own CDK app"
# Development tools that neither distribution may require, whatever the extra.
DEV_TOOLS = {"moto", "psutil", "pytest"}
# What a CDK app needs to synthesize the construct, and no more.
CONSTRUCT_REQUIRES = {"aws-cdk-lib", "constructs", "jsii"}
# Building the wheels fetches the build backend; installing the construct, aws-cdk-lib.
INSTALL_TIMEOUT = 240

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]


def _run(args: list, *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env(**extra: str) -> dict[str, str]:
    """What a user's shell has: a PATH (with node, for jsii) and a HOME; no PYTHONPATH, no venv."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION",
            "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)
    return {**env, "CDK_DISABLE_VERSION_CHECK": "1", "AWS_EC2_METADATA_DISABLED": "true", **extra}


def _fresh_venv(path: Path, wheel: Path, *pip_options: str) -> Path:
    """A venv with no pip and nothing in it but the wheel and what the wheel requires."""
    made = _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    assert made.returncode == 0, made.stderr
    python = path / "bin" / "python"
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile",
                      "--disable-pip-version-check", *pip_options, wheel],
                     cwd=path.parent, timeout=INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def _metadata(wheel: Path) -> tuple[dict[str, list[str]], list[str]]:
    """The wheel's core metadata (each field's values) and the files it installs."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        text = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    message = Parser().parsestr(text, headersonly=True)
    return {key: message.get_all(key) or [] for key in set(message.keys())}, names


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Both wheels, built from the checkout as a release builds them (pip's build isolation)."""
    out = tmp_path_factory.mktemp("wheels")
    for source in (REPO, CONTAINER):
        built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                      "--wheel-dir", out, source], cwd=out, timeout=INSTALL_TIMEOUT)
        assert built.returncode == 0, built.stdout + built.stderr
    found = {path.name.split("-", 1)[0]: path for path in out.glob("*.whl")}
    assert set(found) == {"batch_celery", "batch_celery_worker"}, sorted(found)
    return found


@pytest.fixture(scope="module")
def construct_venv(wheels, tmp_path_factory) -> Path:
    return _fresh_venv(tmp_path_factory.mktemp("construct") / "venv", wheels["batch_celery"])


@pytest.fixture(scope="module")
def worker_venv(wheels, tmp_path_factory) -> Path:
    # pycurl comes as a wheel, as in the images: building it would need a compiler and libcurl's headers.
    return _fresh_venv(tmp_path_factory.mktemp("worker") / "venv", wheels["batch_celery_worker"],
                       "--only-binary=pycurl")


def _readme_app() -> str:
    """The README's example: a bare cdk.App() with the construct embedded, as a user writes it."""
    section = (REPO / "README.md").read_text().split(README_HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, f"the README section {README_HEADING!r} has no ```python block"
    return match.group(1)


def test_both_distributions_carry_the_one_version(wheels) -> None:
    for wheel in wheels.values():
        metadata, _ = _metadata(wheel)
        assert metadata["Version"] == [entrypoint.__version__], wheel.name
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(entrypoint.__version__)}\b", changelog, re.M), \
        f"CHANGELOG.md has no entry for {entrypoint.__version__}"


def test_construct_requires_only_what_a_cdk_app_needs(wheels) -> None:
    metadata, _ = _metadata(wheels["batch_celery"])
    requires = metadata["Requires-Dist"]
    assert {_name(r) for r in requires if "extra ==" not in r} == CONSTRUCT_REQUIRES, requires
    assert not {_name(r) for r in requires} & DEV_TOOLS, requires


def test_construct_ships_the_image_build_context_and_not_the_demo(wheels) -> None:
    _, names = _metadata(wheels["batch_celery"])
    # The bundled image's build context, complete: the construct builds the image asset from it.
    context = {"Dockerfile", "requirements.txt", "run_celery_worker.sh", *(p.name for p in CONTAINER.glob("*.py"))}
    assert {f"batch_celery_container/{name}" for name in context} <= set(names)
    assert "batch_celery/scaler/handler.py" in names
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"batch_celery", "batch_celery_container", "batch_celery-" + entrypoint.__version__ + ".dist-info"}, tops
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_bare_cdk_app_outside_the_checkout_synthesizes_with_the_installed_construct(construct_venv, tmp_path) -> None:
    app_dir = tmp_path / "my-cdk-app"
    app_dir.mkdir()
    assert REPO not in app_dir.parents
    (app_dir / "app.py").write_text(
        "import batch_celery, sys\n"
        f"assert batch_celery.__file__.startswith({str(construct_venv.parent.parent)!r}), batch_celery.__file__\n"
        "assert not any(p.startswith(" + repr(str(REPO)) + ") for p in sys.path), sys.path\n"
        + _readme_app()
    )
    out = app_dir / "cdk.out"
    synth = _run([construct_venv, "app.py"], cwd=app_dir, env=_clean_env(CDK_OUTDIR=str(out)), timeout=180)
    assert synth.returncode == 0, synth.stdout + synth.stderr

    manifest = json.loads((out / "manifest.json").read_text())
    stacks = [a for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"]
    assert stacks, manifest
    template = json.loads((out / stacks[0]["properties"]["templateFile"]).read_text())
    job_definitions = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Batch::JobDefinition"]
    workers = [d for d in job_definitions if d["ContainerProperties"]["Command"] == WORKER_COMMAND]
    assert workers, f"no worker job definition (command {WORKER_COMMAND}) in the template"

    assets = json.loads(next(out.glob("*.assets.json")).read_text())
    images = [out / image["source"]["directory"] for image in assets["dockerImages"].values()]
    assert images, "no image asset"
    for image in images:
        # Staged from the installed package: the Dockerfile and what it copies, no bytecode.
        staged = {p.name for p in image.iterdir()}
        assert {"Dockerfile", "run_celery_worker.sh", "requirements.txt", "celery_app.py"} <= staged, staged
        assert "__pycache__" not in staged
    # The scaler's code is staged from site-packages: its package and the two shared modules, nothing else.
    lambdas = [out / f["source"]["path"] for f in assets["files"].values() if f["source"].get("packaging") == "zip"]
    scaler = [d for d in lambdas if (d / "batch_celery" / "scaler" / "handler.py").exists()]
    assert len(scaler) == 1, lambdas
    shipped = sorted(str(p.relative_to(scaler[0])) for p in scaler[0].rglob("*") if p.is_file())
    assert shipped == ["batch_celery/__init__.py", "batch_celery/scaler/__init__.py", "batch_celery/scaler/handler.py",
                       "batch_celery/scaler/policy.py", "batch_celery/scaler/warm.py", "batch_celery_container/contract.py",
                       "batch_celery_container/emf.py"], shipped


def test_worker_requires_the_pinned_worker_requirements(wheels) -> None:
    metadata, _ = _metadata(wheels["batch_celery_worker"])
    pinned = [line.split("#", 1)[0].strip() for line in (CONTAINER / "requirements.txt").read_text().splitlines()]
    normal = lambda r: r.lower().replace("_", "-").replace(" ", "")  # noqa: E731
    assert sorted(map(normal, metadata["Requires-Dist"])) == sorted(normal(p) for p in pinned if p)
    assert not {_name(r) for r in metadata["Requires-Dist"]} & DEV_TOOLS


def test_worker_entry_point_says_in_one_line_that_the_job_environment_is_missing(worker_venv, tmp_path) -> None:
    entry = worker_venv.parent / "batch-celery-worker"
    ran = _run([entry], cwd=tmp_path, env=_clean_env(), timeout=30)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    lines = [line for line in (ran.stdout + ran.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "CELERY_QUEUE_NAME" in lines[0], lines
    version = _run([entry, "--version"], cwd=tmp_path, env=_clean_env(), timeout=30)
    assert version.returncode == 0 and version.stdout.split() == ["batch-celery-worker", entrypoint.__version__]


def test_installed_worker_modules_import_each_other_and_accept_the_installed_celery(worker_venv, tmp_path) -> None:
    """The settings check the lifecycle script runs first, from the installed folder: the modules'
    bare-name imports resolve there, and the installed kombu/celery are the ones the transport's
    overrides are written for."""
    package = next(worker_venv.parent.parent.glob("lib/python*/site-packages/batch_celery_worker"))
    queue = "packaging-check"
    env = _clean_env(CELERY_QUEUE_NAME=queue, CELERY_QUEUE_URL=f"https://sqs.eu-west-1.amazonaws.com/123456789012/{queue}",
                     AWS_REGION="eu-west-1")
    ran = _run([worker_venv, package / "worker_settings.py"], cwd=tmp_path, env=env, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"queue {queue} in eu-west-1" in ran.stdout


def test_installed_worker_runs_a_task_from_the_folder_it_starts_in_and_leaves_idle(worker_venv, moto_server, tmp_path) -> None:
    """What an own image's job does: batch-celery-worker, started in the image's WORKDIR with the
    job's environment, runs a task of a module there and leaves once idle (exit 0)."""
    (tmp_path / "my_tasks.py").write_text(
        "from celery import shared_task\n\n\n@shared_task(name='mine.ping')\ndef ping():\n    return 'pong'\n"
    )
    client_env = moto_server.client_env()
    sqs = boto3.client("sqs", region_name=client_env["AWS_DEFAULT_REGION"], endpoint_url=client_env["AWS_ENDPOINT_URL"],
                       aws_access_key_id=client_env["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=client_env["AWS_SECRET_ACCESS_KEY"])
    queues = create_queue_pair(sqs, "packaging-installed-worker")
    # A message as Celery's SQS transport writes it (protocol 2, JSON), sent by a producer of the checkout.
    from celery import Celery

    producer = Celery("producer", set_as_current=False)
    producer.conf.update(
        broker_url=f"sqs://{client_env['AWS_ACCESS_KEY_ID']}:{client_env['AWS_SECRET_ACCESS_KEY']}@"
                   + client_env["AWS_ENDPOINT_URL"].split("://", 1)[1] + "//",
        broker_transport_options={"region": client_env["AWS_DEFAULT_REGION"], "is_secure": False,
                                  "predefined_queues": {queues.name: {"url": queues.url}}},
        task_default_queue=queues.name,
    )
    with producer.connection_for_write() as connection:
        producer.send_task("mine.ping", connection=connection)

    env = _clean_env(**client_env, **queues.worker_env(), CELERY_TASK_MODULES="my_tasks", IDLE_SECONDS="3",
                     POLL_SECONDS="1", TASK_TIME_LIMIT_SECONDS="25", WORKER_RUN_DIR=str(tmp_path / "run"))
    ran = _run([worker_venv.parent / "batch-celery-worker"], cwd=tmp_path, env=env, timeout=120)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    assert re.search(r"Task mine\.ping\[[^]]+\] succeeded", output), output
    left = sqs.get_queue_attributes(QueueUrl=queues.url, AttributeNames=["All"])["Attributes"]
    assert (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")

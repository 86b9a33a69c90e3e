"""Build a pool's worker image as `cdk deploy` would and run it as its Batch job definition would.

Used by tests/image/. Everything is read off a synthesized stack: the image asset (its directory in
the cloud assembly, build contexts, platform) that the job definition's ``Image`` names, and the
container settings Batch applies (command, user, read-only root filesystem, volumes and mount
points, init process, memory and vCPUs, environment). The references in the environment (queue,
region, result table) are resolved to local stand-ins on moto server; a setting this module does
not know how to reproduce is an error, not something quietly left out.

The engine is podman (harness/image_engine.sh installs it and the base image stand-in), on runc with
cgroupfs and with rlimits it may set on this kind of machine. Containers use the host's network: moto
listens on 127.0.0.1, and a build reaches the package index the way this machine does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from batch_celery_local import REPO_ROOT
from batch_celery_container import contract

ENGINE_SCRIPT = REPO_ROOT / "harness" / "image_engine.sh"
# crun refuses this machine's hybrid cgroups; runc with cgroupfs works (no systemd needed).
ENGINE = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
# podman's default rlimits cannot be set here ("error setting rlimit ... operation not permitted").
RLIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024")
# Every container and volume these tests make carries it, so cleanup finds them all.
LABEL = "batch-celery-image-test"
WORKER_COMMAND = ["batch-celery-worker"]


class ImageError(RuntimeError):
    """A build or run step failed, or the stack asks for something this harness cannot reproduce."""


# --- the engine --------------------------------------------------------------------------------

def unavailable() -> str | None:
    """Why images cannot be built and run on this machine, or None.

    The harness drives podman as root (runc with cgroupfs, the set-up tried on these machines), and
    make test installs it only as root with apt. Where it could be installed but is not, that is no
    reason to skip: the tests then fail.
    """
    if os.geteuid() != 0:
        return "not root: the image tests run podman as root (make test on CI runs as root)"
    if shutil.which("podman"):
        return None
    reason = subprocess.run([str(ENGINE_SCRIPT), "cannot-install"], capture_output=True, text=True).stdout.strip()
    return reason or None


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:2])} failed ({result.returncode}): {_tail(result.stderr or result.stdout)}")
    return result


def base_image() -> str:
    """The base image the Dockerfiles name; it must exist locally (no registry is reachable)."""
    if not shutil.which("podman"):
        raise ImageError("podman is not installed: run make test (it runs harness/image_engine.sh prepare)")
    name = subprocess.run([str(ENGINE_SCRIPT), "base-name"], capture_output=True, text=True, check=True).stdout.strip()
    if podman("image", "exists", name, check=False).returncode != 0:
        raise ImageError(f"the base image {name} is not on this machine: run make test (it runs "
                         f"harness/image_engine.sh prepare, which builds a stand-in under that name)")
    return name


# --- what the synthesized stack says ---------------------------------------------------------

@dataclass(frozen=True)
class ImageAsset:
    """A Docker image asset of the cloud assembly: what cdk-assets builds and pushes for a deploy."""

    asset_hash: str
    directory: Path
    dockerfile: str
    build_contexts: Mapping[str, str]
    build_args: Mapping[str, str]
    platform: str | None
    target: str | None


@dataclass(frozen=True)
class Mount:
    volume: str
    container_path: str
    read_only: bool


@dataclass(frozen=True)
class WorkerJob:
    """A pool's worker job definition, as Batch runs its container."""

    pool: str
    image_tag: str
    command: list[str]
    user: str | None
    read_only_root: bool
    init_process: bool
    mounts: tuple[Mount, ...]
    memory_mib: int | None
    vcpus: str | None
    # Name -> literal value or a CloudFormation reference ({"Ref": ...}, {"Fn::GetAtt": ...}).
    environment: Mapping[str, Any]
    # The pool's task queue's logical id (its URL and name are references to it).
    queue_id: str


def worker_job(template: Mapping[str, Any], pool: str) -> WorkerJob:
    """The worker job definition of ``pool`` in a synthesized template."""
    for resource in template["Resources"].values():
        if resource.get("Type") != "AWS::Batch::JobDefinition":
            continue
        container = resource["Properties"].get("ContainerProperties", {})
        environment = {pair["Name"]: pair["Value"] for pair in container.get("Environment", [])}
        if container.get("Command") != WORKER_COMMAND or environment.get(contract.POOL) != pool:
            continue
        return _worker_job(pool, container, environment)
    raise ImageError(f"no worker job definition of pool {pool!r} in the template")


def _worker_job(pool: str, container: Mapping[str, Any], environment: dict[str, Any]) -> WorkerJob:
    known = {"Command", "Environment", "ExecutionRoleArn", "JobRoleArn", "FargatePlatformConfiguration", "Image",
             "LinuxParameters", "LogConfiguration", "MountPoints", "NetworkConfiguration", "ReadonlyRootFilesystem",
             "ResourceRequirements", "RuntimePlatform", "User", "Volumes"}
    if unknown := sorted(set(container) - known):
        raise ImageError(f"pool {pool}: job definition settings this harness does not reproduce: {unknown}")
    if set(container.get("LinuxParameters", {})) - {"InitProcessEnabled"}:
        raise ImageError(f"pool {pool}: LinuxParameters this harness does not reproduce: {container['LinuxParameters']}")
    volumes = {}
    for volume in container.get("Volumes", []):
        # A volume with a name only is the task's own scratch storage; a host path or EFS is not.
        if set(volume) != {"Name"}:
            raise ImageError(f"pool {pool}: only volumes with a name alone (task storage) are reproduced, not {volume}")
        volumes[volume["Name"]] = volume
    mounts = []
    for point in container.get("MountPoints", []):
        if point["SourceVolume"] not in volumes:
            raise ImageError(f"pool {pool}: mount point {point} names no volume of the job definition")
        mounts.append(Mount(point["SourceVolume"], point["ContainerPath"], bool(point.get("ReadOnly", False))))
    resources = {r["Type"]: r["Value"] for r in container.get("ResourceRequirements", [])}
    if set(resources) - {"MEMORY", "VCPU"}:
        raise ImageError(f"pool {pool}: resource requirements this harness does not reproduce: {resources}")
    queue_url = environment.get(contract.QUEUE_URL)
    if not isinstance(queue_url, Mapping) or "Ref" not in queue_url:
        raise ImageError(f"pool {pool}: {contract.QUEUE_URL} is not a reference to a queue of the stack: {queue_url}")
    return WorkerJob(
        pool=pool,
        image_tag=_image_tag(pool, container.get("Image")),
        command=list(container["Command"]),
        user=container.get("User"),
        read_only_root=bool(container.get("ReadonlyRootFilesystem", False)),
        init_process=bool(container.get("LinuxParameters", {}).get("InitProcessEnabled", False)),
        mounts=tuple(mounts),
        memory_mib=int(resources["MEMORY"]) if "MEMORY" in resources else None,
        vcpus=resources.get("VCPU"),
        environment=environment,
        queue_id=queue_url["Ref"],
    )


def _image_tag(pool: str, image: Any) -> str:
    """The asset hash at the end of a CDK asset image URI (``...container-assets-...:HASH``)."""
    uri = image.get("Fn::Sub") if isinstance(image, Mapping) else image
    if not isinstance(uri, str) or ":" not in uri:
        raise ImageError(f"pool {pool}: the job's image is not a CDK image asset: {image}")
    return uri.rsplit(":", 1)[1]


def image_asset(outdir: Path, asset_hash: str) -> ImageAsset:
    """The Docker image asset ``asset_hash`` of the cloud assembly in ``outdir``."""
    for manifest in sorted(outdir.glob("*.assets.json")):
        images = json.loads(manifest.read_text()).get("dockerImages", {})
        if asset_hash not in images:
            continue
        source = images[asset_hash]["source"]
        unknown = set(source) - {"directory", "dockerFile", "dockerBuildContexts", "dockerBuildArgs", "platform",
                                 "dockerBuildTarget"}
        if unknown or "directory" not in source:
            raise ImageError(f"image asset {asset_hash}: source settings this harness does not reproduce: {sorted(unknown)}")
        return ImageAsset(
            asset_hash=asset_hash,
            directory=outdir / source["directory"],
            dockerfile=source.get("dockerFile", "Dockerfile"),
            build_contexts=dict(source.get("dockerBuildContexts", {})),
            build_args=dict(source.get("dockerBuildArgs", {})),
            platform=source.get("platform"),
            target=source.get("dockerBuildTarget"),
        )
    raise ImageError(f"no image asset {asset_hash} in {outdir}")


def resolve_environment(job: WorkerJob, references: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """The job's environment with each reference replaced: ``references`` maps (logical id, "Ref")
    or (logical id, attribute) to its local value. A reference it does not map is an error."""
    env = {}
    for name, value in job.environment.items():
        if isinstance(value, str):
            env[name] = value
            continue
        key = None
        if isinstance(value, Mapping) and set(value) == {"Ref"}:
            key = (value["Ref"], "Ref")
        elif isinstance(value, Mapping) and set(value) == {"Fn::GetAtt"}:
            key = tuple(value["Fn::GetAtt"])
        if key not in references:
            raise ImageError(f"pool {job.pool}: {name}={json.dumps(value)} has no local value")
        env[name] = references[key]
    return env


# --- build and run ------------------------------------------------------------------------------

def build(asset: ImageAsset, tag: str, *, timeout: float = 600) -> str:
    """Build the asset as cdk-assets would (its build contexts, build args, platform, target), from the
    local base image only. Returns the image id."""
    args = ["build", "--pull=never", "--network=host", "--quiet", "--tag", tag, "--file",
            str(asset.directory / asset.dockerfile)]
    for name, path in asset.build_contexts.items():
        args += ["--build-context", f"{name}={path}"]
    for name, value in asset.build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    if asset.platform:
        args += ["--platform", asset.platform]
    if asset.target:
        args += ["--target", asset.target]
    result = subprocess.run([*ENGINE, *args, str(asset.directory)], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ImageError(f"building image asset {asset.asset_hash} ({asset.directory}) failed:\n"
                         f"{_tail(result.stdout + result.stderr, 40)}")
    return result.stdout.strip().splitlines()[-1]


def declared_volumes(image: str) -> set[str]:
    """The paths the image declares with VOLUME."""
    return set(json.loads(podman("image", "inspect", "--format", "{{json .Config.Volumes}}", image).stdout) or {})


def run_arguments(job: WorkerJob, image: str, env: Mapping[str, str], name: str,
                  empty_dirs: Mapping[str, Path]) -> list[str]:
    """``podman run`` arguments that apply the job definition's container settings.

    A job volume is a bind mount on the task's storage. Over a path the image declares a VOLUME it
    starts with the image's content and modes there (ECS: "expose a path and its contents from a
    Dockerfile"): a named volume does the same. Anywhere else it starts as an empty root-owned
    folder: ``empty_dirs`` gives one on this machine per such mount (container path -> folder).
    """
    args = ["run", "--name", name, "--label", LABEL, "--network=host", *RLIMITS]
    if job.user:
        args += ["--user", job.user]
    if job.read_only_root:
        # podman would mount tmpfs on /tmp, /var/tmp and /run; Batch mounts nothing it is not told to.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if job.init_process:
        args.append("--init")
    if job.memory_mib:
        args += ["--memory", f"{job.memory_mib}m"]
    if job.vcpus:
        args += ["--cpus", job.vcpus]
    for mount in job.mounts:
        if mount.container_path in empty_dirs:
            option = f"type=bind,source={empty_dirs[mount.container_path]},target={mount.container_path}"
        else:
            option = f"type=volume,source={name}-{mount.volume},target={mount.container_path}"
        args += ["--mount", option + (",readonly=true" if mount.read_only else "")]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, image, *job.command]


@dataclass
class Container:
    """One container run, attached: ``process`` is ``podman run``, its output goes to a file."""

    name: str
    process: subprocess.Popen
    output_path: Path

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"container {self.name} did not exit within {timeout} s:\n{self.output[-3000:]}") from None

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        """The first match of ``pattern`` in the output; fails at once if the container exits first."""
        deadline = time.monotonic() + timeout
        while not (match := pattern.search(self.output)):
            if self.process.poll() is not None:
                raise AssertionError(f"container {self.name} exited with {self.process.returncode} before its "
                                     f"output showed {pattern.pattern!r}:\n{self.output[-3000:]}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern.pattern!r} in the output of container {self.name} within "
                                     f"{timeout} s:\n{self.output[-3000:]}")
            time.sleep(0.2)
        return match

    def stop_signal(self, signum: int = signal.SIGTERM) -> None:
        """Send the container a signal, as Batch sends SIGTERM to stop a job."""
        podman("kill", "--signal", signal.Signals(signum).name, self.name, timeout=30)


@contextmanager
def running(job: WorkerJob, image: str, env: Mapping[str, str], output_path: Path) -> Iterator[Container]:
    """``with running(job, image, env, path) as container:`` runs the job's container, then removes
    it and its volumes whatever happened."""
    name = f"{LABEL}-{job.pool}-{uuid.uuid4().hex[:8]}"
    declared = declared_volumes(image)
    storage = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    empty_dirs = {}
    for mount in job.mounts:
        if mount.container_path not in declared:
            empty_dirs[mount.container_path] = storage / mount.volume
            empty_dirs[mount.container_path].mkdir()
            empty_dirs[mount.container_path].chmod(0o755)  # root-owned, not writable by the job's user
    with open(output_path, "ab") as output:
        process = subprocess.Popen([*ENGINE, *run_arguments(job, image, env, name, empty_dirs)], stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield Container(name=name, process=process, output_path=output_path)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False, timeout=60)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for mount in job.mounts:
            if mount.container_path not in empty_dirs:
                podman("volume", "rm", "--force", f"{name}-{mount.volume}", check=False, timeout=60)
        shutil.rmtree(storage, ignore_errors=True)


def remove_image(tag: str) -> None:
    podman("rmi", "--force", tag, check=False, timeout=120)


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])

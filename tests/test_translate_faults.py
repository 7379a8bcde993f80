"""The translate job under faults: systemic failures mid-run, and stages that raise.

1. A systemic failure mid-run (the S3 server killed, an endpoint that stops answering) ends the
   CLI with ONE error line on stderr and exit code 2 within a bounded time, keeps the manifest of
   what was done (locally when the store is gone), and a rerun finishes the rest.
2. Every listed input ends in the manifest exactly once, whatever a stage raised: an over-long
   local file name, a write raising an unexpected exception type; an output that cannot be
   written at all is a systemic error found before any model work.

The model is a promoted version of freshly initialised tiny-preset generators at 32 px: these
tests are about the job's plumbing, not the pictures.

stderr of the CLI is judged after removing log lines, decided as follows: the job's own logging
(`[cyclegan_jobs.<module>] LEVEL ...`, the CLI's format) and TensorFlow's C++ (absl) lines
(`I0000 ...`, `W0000 ...`, `E0000 ...`, i.e. a severity letter then MMDD, absl's
"WARNING: All log messages before absl::InitializeLog() ..." banner, and the second line of TF's
CPU feature banner, "To enable the following instructions: ..."). Everything else on stderr (the
CLI's error line, Python warnings, tracebacks) counts.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import StallingProxy
from PIL import Image

from cyclegan_jobs import storage
from cyclegan_jobs.cli import main
from cyclegan_jobs.config import TranslateConfig
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.translation.translate import TranslateError, translate
from cyclegan_local import local_s3

SIZE = 32
ERROR_PREFIX = "cyclegan-jobs translate: error:"
_LOG_LINE = re.compile(
    r"\[cyclegan_jobs[.\]]"  # the job's logging
    r"|[IWEF]\d{4} "  # TensorFlow / absl C++ log lines: I0000, W0000, E0000 ...
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: "  # the 2nd line of TF's CPU feature banner
)
# From the fault to the exit, wall clock (measured on 2 busy cores: 2-8 s after the kill, about
# 11 s after a stall with --stall-timeout 5: the deadline, then the records upload given up).
KILL_EXIT_BOUND_S = 90.0
STALL_EXIT_MARGIN_S = 45.0


# helpers ----------------------------------------------------------------------------------


def _jpeg(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG")
    return buffer.getvalue()


def _put_faces(prefix: str, n: int, seed: int = 0) -> list[str]:
    """n small JPEG faces (32 px) under prefix, written in parallel; their keys."""
    rels = [f"people/face_{i:03d}.jpg" for i in range(n)]
    faces = synthetic_faces(n, SIZE, seed=seed)

    def put(i: int) -> None:
        storage.write_bytes(storage.join(prefix, rels[i]), _jpeg(faces[i]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    return rels


def _listed(prefix: str) -> list[str]:
    return sorted(info.rel for info in storage.list_objects(prefix, missing_ok=True))


def _pngs(rels: list[str]) -> list[str]:
    return sorted(r.rsplit(".", 1)[0] + ".png" for r in rels)


def _read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cyclegan_jobs.cli", "translate", *args]


def _run_args(
    inp: str, out: str, store: str, endpoint: str, work: Path, stall: float, batch: int = 1
) -> list[str]:
    """Batch size 1 for the run to stop (slow enough to stop mid-run); more for the rerun."""
    args = ["--input", inp, "--output", out, "--model-store", store, "--batch-size", str(batch)]
    args += ["--endpoint-url", endpoint, "--stall-timeout", f"{stall:g}", "--work-dir", str(work)]
    return _cli(*args)


def _not_log(stderr: str) -> list[str]:
    """stderr lines that are not log lines (see the module docstring)."""
    return [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]


def _assert_one_error_line(stderr: str) -> str:
    """Exactly one non-log line, the CLI's error line, and no traceback; returns the line."""
    assert "Traceback (most recent call last)" not in stderr, stderr[-4000:]
    lines = _not_log(stderr)
    assert len(lines) == 1, f"expected one error line, got {lines!r}\n{stderr[-4000:]}"
    assert lines[0].startswith(ERROR_PREFIX), lines
    return lines[0]


class Job:
    """The CLI in a subprocess, stdout and stderr to files (no pipe to fill up)."""

    def __init__(self, argv: list[str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / "stdout", logs / "stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None when it was still running after `timeout` (then killed)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, job: Job) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if job.proc.poll() is not None:
            pytest.fail(f"the job ended (rc {job.proc.returncode}) before {what}:\n{job.stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:g} s:\n{job.stderr[-3000:]}")
        time.sleep(0.2)


def _bounded(fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """fn() in a thread, so that a hung job fails this test instead of hanging the suite."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the job did not return within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def _local_manifest(work: Path, stderr: str) -> tuple[Path, list[dict]]:
    """The stopped run's local manifest (the one file in --work-dir), named on stderr."""
    found = sorted(work.glob("*.manifest.jsonl"))
    assert len(found) == 1, (found, stderr[-3000:])
    assert str(found[0]) in stderr, "stderr does not say where the local manifest is"
    lines = _read_jsonl(found[0].read_text())
    settled = re.search(r"(\d+) input\(s\) settled", stderr)
    assert settled and int(settled.group(1)) == len(lines), (settled, len(lines))
    return found[0], lines


def _assert_rerun_finishes(
    job: Job, out: str, rels: list[str], first_ok: set[str], timeout: float = 240.0
) -> dict:
    """The rerun exits 0, leaves exactly one stylized and one reconstructed output per input
    (each a readable picture), its manifest names every input once, and it redoes nothing the
    stopped run had finished."""
    rc = job.wait(timeout)
    assert rc == 0, job.stderr[-4000:]
    summary = json.loads(job.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["counts"]["failed"] == 0, summary
    expected = _pngs(rels)
    stylized, reconstructed = _listed(f"{out}/stylized"), _listed(f"{out}/reconstructed")
    assert stylized == expected and reconstructed == expected
    lines = _read_jsonl(storage.read_bytes(summary["manifest"]).decode())
    keys = Counter(line["key"] for line in lines)
    assert sorted(keys) == sorted(rels) and set(keys.values()) == {1}
    redone = {line["key"] for line in lines if line["status"] == "ok"}
    up_to_date = {line["key"] for line in lines if line["status"] == "skipped"}
    assert redone | up_to_date == set(rels)
    assert first_ok <= up_to_date, f"redone although done before: {sorted(first_ok & redone)}"

    def decodes(uri: str) -> tuple[int, ...]:
        return Image.open(io.BytesIO(storage.read_bytes(uri))).size

    uris = [f"{out}/{root}/{rel}" for root in ("stylized", "reconstructed") for rel in expected]
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(decodes, uris)) == {(SIZE, SIZE)}  # none truncated by the fault
    return summary


# 1a. the S3 server killed mid-run ---------------------------------------------------------


def test_s3_server_killed_mid_run_exits_2_keeps_manifest_and_rerun_finishes(
    random_model_store: str, aws_env: None, tmp_path: Path
) -> None:
    keys = {
        "access_key": os.environ["AWS_ACCESS_KEY_ID"],
        "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    data_dir, work = tmp_path / "s3", tmp_path / "work"
    server = local_s3.start(data_dir, **keys)
    servers, job = [server], None
    try:
        storage.configure(endpoint_url=server.endpoint_url)
        server.client().create_bucket(Bucket="faults")
        inp, out, n = "s3://faults/in", "s3://faults/out", 240
        rels = _put_faces(inp, n)
        job = Job(
            _run_args(inp, out, random_model_store, server.endpoint_url, work, 10), tmp_path / "1"
        )
        _wait_for(lambda: len(_listed(f"{out}/stylized")) >= 10, 180, "10 outputs", job)

        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        local_s3.stop(server)  # reaps it and removes its pid file; nothing left to stop
        rc = job.wait(KILL_EXIT_BOUND_S)
        took = time.monotonic() - killed
        print(f"\n[1a] exit {rc} {took:.1f} s after the S3 server was killed")
        assert rc == 2, f"rc {rc} after {took:.1f} s:\n{job.stderr[-4000:]}"
        stderr = job.stderr
        line = _assert_one_error_line(stderr)
        assert "stopped" in line and "a rerun does the rest" in line, line
        manifest, done = _local_manifest(work, stderr)
        first_ok = {d["key"] for d in done if d["status"] == "ok"}
        assert 1 <= len(first_ok) < n, f"{len(first_ok)} done: the kill came too late"
        assert len({d["key"] for d in done}) == len(done)  # nobody twice
        print(f"[1a] {len(first_ok)} of {n} done before the kill, kept in {manifest}")

        # A new server on the same data (new ports: a new endpoint), then the rerun.
        server = local_s3.start(data_dir, **keys)
        servers.append(server)
        storage.configure(endpoint_url=server.endpoint_url)
        for root in ("stylized", "reconstructed"):  # what the manifest says is done, is
            assert set(_pngs(list(first_ok))) <= set(_listed(f"{out}/{root}"))
        started = time.monotonic()
        rerun = Job(
            _run_args(
                inp, out, random_model_store, server.endpoint_url, tmp_path / "work2", 10, 16
            ),
            tmp_path / "2",
        )
        summary = _assert_rerun_finishes(rerun, out, rels, first_ok)
        print(f"[1a] rerun: {summary['counts']} in {time.monotonic() - started:.1f} s")
    finally:
        if job is not None:
            job.kill()
        storage.configure()
        for s in servers:
            local_s3.stop(s)


# 1b. an endpoint that stops answering ------------------------------------------------------


def test_stalled_endpoint_exits_2_after_the_stall_timeout_and_rerun_finishes(
    random_model_store: str, s3_server: local_s3.LocalS3, s3_bucket: str, tmp_path: Path
) -> None:
    inp, out, n, stall = f"{s3_bucket}/in", f"{s3_bucket}/out", 240, 5.0
    rels = _put_faces(inp, n)
    work = tmp_path / "work"
    with StallingProxy(s3_server.endpoint_url) as proxy:
        job = Job(_run_args(inp, out, random_model_store, proxy.url, work, stall), tmp_path / "1")
        try:
            _wait_for(lambda: len(_listed(f"{out}/stylized")) >= 10, 180, "10 outputs", job)
            proxy.stall()
            stalled = time.monotonic()
            rc = job.wait(stall + STALL_EXIT_MARGIN_S)
            took = time.monotonic() - stalled
        finally:
            job.kill()
        print(f"\n[1b] exit {rc} {took:.1f} s after the endpoint stalled (--stall-timeout 5)")
        print(f"[1b] proxy: {proxy.accepted} connections, {proxy.swallowed} bytes swallowed")
    assert proxy.open_sockets == 0  # the proxy stopped itself and closed everything
    assert rc == 2, f"rc {rc} after {took:.1f} s:\n{job.stderr[-4000:]}"
    stderr = job.stderr
    line = _assert_one_error_line(stderr)
    assert "stall" in line, line
    _, done = _local_manifest(work, stderr)
    first_ok = {d["key"] for d in done if d["status"] == "ok"}
    assert 1 <= len(first_ok) < n, f"{len(first_ok)} done: the stall came too late"
    assert len({d["key"] for d in done}) == len(done)

    started = time.monotonic()
    rerun = Job(
        _run_args(
            inp, out, random_model_store, s3_server.endpoint_url, tmp_path / "work2", stall, 16
        ),
        tmp_path / "2",
    )
    summary = _assert_rerun_finishes(rerun, out, rels, first_ok)
    print(f"[1b] rerun: {summary['counts']} in {time.monotonic() - started:.1f} s")


# 2. every input in the manifest exactly once, whatever a stage raised ---------------------


def _manifest_of(summary: dict) -> list[dict]:
    return _read_jsonl(storage.read_bytes(summary["manifest"]).decode())


def test_over_long_output_name_fails_that_input_alone(
    random_model_store: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    # 220 bytes: a legal name, but the output's temp file (.tmp-cyclegan-<name>.<32 hex>) is not.
    long_name = "long_" + "x" * 211 + ".jpg"
    assert len(long_name.encode()) == 220
    faces = synthetic_faces(11, SIZE, seed=3)
    (inp / long_name).write_bytes(_jpeg(faces[0]))  # storage.write_bytes' temp name: too long
    rels = [f"face_{i:02d}.jpg" for i in range(10)]
    for rel, face in zip(rels, faces[1:], strict=True):
        (inp / rel).write_bytes(_jpeg(face))
    args = [
        "translate",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--model-store",
        random_model_store,
    ]
    args += ["--batch-size", "4", "--work-dir", str(tmp_path / "work")]

    assert _bounded(lambda: main([*args, "--max-failure-rate", "0.5"])) == 0  # 1/11 <= 50 %
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["counts"]["ok"] == 10 and summary["counts"]["failed"] == 1
    lines = _manifest_of(summary)
    assert len(lines) == 11
    assert sorted(line["key"] for line in lines) == sorted([long_name, *rels])
    status = {line["key"]: line for line in lines}
    assert all(status[rel]["status"] == "ok" for rel in rels)
    assert status[long_name]["status"] == "failed"
    assert "File name too long" in status[long_name]["reason"], status[long_name]
    assert not [p for p in out.rglob("*") if "long_" in p.name]  # no partial output, no temp

    # Rerun under a stricter threshold: the 10 are up to date, the long one fails again
    # (1 of 11 image inputs > 5 %): exit 1, and it is still in the manifest exactly once.
    assert _bounded(lambda: main([*args, "--max-failure-rate", "0.05"])) == 1
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert again["counts"] == {"total": 11, "ok": 0, "skipped": 10, "failed": 1, "pending": 0}
    lines = _manifest_of(again)
    assert [line["key"] for line in lines if line["status"] == "failed"] == [long_name]
    assert len(lines) == 11
    assert "cyclegan-jobs translate: failed:" in captured.err


@pytest.mark.parametrize(
    ("error", "root", "victim"),
    [
        (KeyError("gremlin"), "stylized", "people/face_002.jpg"),
        (RuntimeError("disk gremlin"), "reconstructed", "people/face_005.jpg"),
    ],
    ids=["KeyError-on-stylized", "RuntimeError-on-reconstructed"],
)
def test_a_write_raising_an_unexpected_type_fails_that_input_alone(
    error: Exception,
    root: str,
    victim: str,
    random_model_store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rels = _put_faces(inp, 8)
    target = storage.join(out, root, victim.rsplit(".", 1)[0] + ".png")
    real_write, raised = storage.write_bytes, []

    def gremlin(uri: str, data: bytes, **kwargs: Any) -> str:
        if uri == target:
            raised.append(uri)
            raise error
        return real_write(uri, data, **kwargs)

    monkeypatch.setattr(storage, "write_bytes", gremlin)
    cfg = TranslateConfig(
        input=inp, output=out, model=random_model_store, batch_size=4, max_failure_rate=0.5,
        work_dir=str(tmp_path / "work"),
    )  # fmt: skip
    summary = _bounded(lambda: translate(cfg))
    assert raised == [target]
    assert summary["status"] == "ok"  # 1 of 8 under 50 %
    assert summary["counts"] == {"total": 8, "ok": 7, "skipped": 0, "failed": 1, "pending": 0}
    lines = _manifest_of(summary)
    assert sorted(line["key"] for line in lines) == sorted(rels)  # each exactly once
    failed = [line for line in lines if line["status"] == "failed"]
    assert [line["key"] for line in failed] == [victim]
    assert type(error).__name__ in failed[0]["reason"] and "gremlin" in failed[0]["reason"]

    # Without the gremlin, a rerun does that one input (even where half its outputs exist).
    monkeypatch.setattr(storage, "write_bytes", real_write)
    again = _bounded(lambda: translate(cfg))
    assert again["counts"]["ok"] == 1 and again["counts"]["skipped"] == 7
    assert [line["key"] for line in _manifest_of(again) if line["status"] == "ok"] == [victim]
    assert _listed(f"{out}/{root}") == _pngs(rels)


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Generators.load made to fail the test: the run must stop before any model work."""
    from cyclegan_jobs.inference import Generators

    calls: list[str] = []

    def load(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[:1]))
        raise AssertionError("the model was loaded although the output cannot be written")

    monkeypatch.setattr(Generators, "load", classmethod(lambda cls, *a, **k: load(*a, **k)))
    return calls


def _unwritable_outputs(tmp_path: Path, bucket: str) -> dict[str, tuple[str, str]]:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder\n")
    return {
        "below-a-file": (str(blocker / "out"), "cannot write to the output"),
        "missing-bucket": (f"s3://{bucket}/out", "does not exist"),
    }


@pytest.mark.parametrize("case", ["below-a-file", "missing-bucket"])
def test_unwritable_output_is_systemic_before_any_model_work(
    case: str,
    random_model_store: str,
    s3_server: local_s3.LocalS3,
    s3_bucket: str,
    tmp_path: Path,
    no_model_load: list[str],
) -> None:
    inp = str(tmp_path / "in")
    _put_faces(inp, 3)
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    out, reason = _unwritable_outputs(tmp_path, missing)[case]

    # In process: a TranslateError, and Generators.load never called.
    cfg = TranslateConfig(input=inp, output=out, model=random_model_store, batch_size=4)
    with pytest.raises(TranslateError, match=reason):
        _bounded(lambda: translate(cfg))
    assert no_model_load == []

    # The command line: exit 2, one line, quickly, and no "loading model" in its log.
    args = ["--input", inp, "--output", out, "--model-store", random_model_store]
    args += ["--endpoint-url", s3_server.endpoint_url, "--work-dir", str(tmp_path / "work")]
    started = time.monotonic()
    job = Job(_cli(*args), tmp_path / "cli")
    rc = job.wait(60)
    took = time.monotonic() - started
    print(f"\n[2c {case}] exit {rc} in {took:.1f} s")
    assert rc == 2, job.stderr[-3000:]
    line = _assert_one_error_line(job.stderr)
    assert reason in line, line
    assert "loading model" not in job.stderr
    assert job.stdout == ""  # no summary: nothing ran
    assert (tmp_path / "file.txt").read_text() == "a regular file, not a folder\n"
    bucket_names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert missing not in bucket_names  # the job did not create it


# 3. triage's own requests (outputs without a ledger line are asked directly) --------------


def _ledgerless_rerun_setup(store: str, tmp_path: Path) -> TranslateConfig:
    inp, out = tmp_path / "in", tmp_path / "out"
    for i, face in enumerate(synthetic_faces(6, SIZE, seed=4)):
        storage.write_bytes(str(inp / f"face_{i:02d}.jpg"), _jpeg(face))
    cfg = TranslateConfig(input=str(inp), output=str(out), model=store, batch_size=2)
    assert translate(cfg)["counts"]["ok"] == 6
    storage.delete_prefix(str(out / "_ledger"))  # so the rerun asks each output (HEAD)
    return cfg


def test_a_stall_in_triage_requests_stops_the_run_at_the_deadline(
    random_model_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _ledgerless_rerun_setup(random_model_store, tmp_path)
    release, real_head = threading.Event(), storage.head

    def head(uri: str) -> dict:
        if "face_03" in uri:
            release.wait(120)  # an endpoint that stopped answering
        return real_head(uri)

    monkeypatch.setattr(storage, "head", head)
    started = time.monotonic()
    try:
        with pytest.raises(TranslateError, match="no progress") as caught:
            _bounded(lambda: translate(dataclasses.replace(cfg, stall_timeout=2)), 60)
    finally:
        release.set()
    assert time.monotonic() - started < 2 + 15, "the deadline did not stop the run"
    assert "3 input(s) settled" in str(caught.value)  # face_00-02: up to date, recorded


def test_a_dead_store_in_triage_requests_takes_the_normal_stop_path(
    random_model_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _ledgerless_rerun_setup(random_model_store, tmp_path)
    real_head = storage.head

    def head(uri: str) -> dict:
        if "face_02" in uri:
            raise storage.SystemicError(f"S3 endpoint unreachable for {uri}: injected")
        return real_head(uri)

    monkeypatch.setattr(storage, "head", head)
    with pytest.raises(TranslateError, match="stopped: .*unreachable.*a rerun does the rest"):
        translate(cfg)
    runs = sorted(Path(cfg.output, "_runs").glob("*/summary.json"))
    stopped = [json.loads(p.read_text()) for p in runs]
    stopped = [s for s in stopped if s["status"] == "aborted"]
    assert len(stopped) == 1 and stopped[0]["counts"]["skipped"] == 2
    assert "unreachable" in stopped[0]["error"]

"""The translate job's records: what it reads back from the store, and what it writes.

1. The ledger: a line that is not a whole ledger line (valid JSON without "model", a field of
   the wrong type) or a segment that can't be read costs its inputs a HEAD, never the run; a
   compacting --no-reconstruct run keeps the lines of full runs.
2. The records: a run whose records are not all stored is "incomplete" (exit 1), names only
   what exists, and a rerun still recognises its outputs; the ledger segment is stored first,
   whatever happens to the manifest.
3. Triage: a check (HEAD) failing for good fails that input alone.
4. --limit: the inputs past the limit are in the manifest, so the summary counts them all.
5. Other records read back (a shard's manifest and summary, a version's config.json) give a
   clear error or a warning, never a traceback.

moto in process, faults injected by botocore before-send hooks (raised, so not retried: a fault
is "for good" at once); random-weight tiny generators at 32 px.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from cyclegan_jobs import cli, images, registry, storage
from cyclegan_jobs.config import ModelConfig, TranslateConfig
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.translation import ledger
from cyclegan_jobs.translation.shards import merge_runs
from cyclegan_jobs.translation.translate import TranslateError, translate

SIZE = 32


# helpers ----------------------------------------------------------------------------------


def _put_faces(prefix: str, n: int) -> list[str]:
    rels = [f"face_{i}.jpg" for i in range(n)]
    for rel, face in zip(rels, synthetic_faces(n, SIZE, seed=11), strict=True):
        storage.write_bytes(storage.join(prefix, rel), images.encode_jpeg(face))
    return rels


def _cfg(moto: str, store: str, **changes: Any) -> TranslateConfig:
    # 4 workers: the client's connection pool never grows, so it is not rebuilt (hooks stay).
    base = {"input": f"{moto}/in", "output": f"{moto}/out", "model": store, "batch_size": 4}
    return TranslateConfig(**{**base, "workers": 4, **changes})


def _jsonl(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def _listed(prefix: str) -> list[str]:
    return sorted(info.rel for info in storage.list_objects(prefix, missing_ok=True))


class Fault:
    """Fails the S3 requests `hit(operation, url)` picks with an S3 error, while `on`.

    Raised from the hook rather than answered (helpers.s3_error): botocore runs every
    before-send handler, moto's too, so an answered PUT would still be stored."""

    def __init__(self, hit: Callable[[str, str], bool], status: int, code: str) -> None:
        self.hit, self.status, self.code = hit, status, code
        self.on, self.injected = True, 0
        storage.get_client().meta.events.register_first("before-send.s3.*", self)

    def __call__(self, request: Any, **kwargs: Any) -> None:
        operation = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        if self.on and self.hit(operation, request.url):
            self.injected += 1
            error = {"Code": self.code, "Message": "injected"}
            meta = {"HTTPStatusCode": self.status}
            raise ClientError({"Error": error, "ResponseMetadata": meta}, operation)


def _store_full(operation: str, url: str) -> bool:
    """The store fills up after the outputs: every record but run.json (written first)."""
    records = "/out/_ledger/" in url or ("/out/_runs/" in url and not url.endswith("/run.json"))
    return operation == "PutObject" and records


# 1. the ledger ----------------------------------------------------------------------------


def test_damaged_or_unreadable_ledger_segments_cost_heads_not_the_run(
    random_model_store: str, moto_s3: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    cfg = _cfg(moto_s3, random_model_store)
    _put_faces(cfg.input, 4)
    assert translate(cfg)["counts"]["ok"] == 4
    [first] = _listed(f"{cfg.output}/_ledger")
    segment = f"{cfg.output}/_ledger/{first}"
    good = sorted(_jsonl(storage.read_bytes(segment)), key=lambda line: line["key"])
    damaged = [
        {k: v for k, v in good[0].items() if k != "model"},  # the probe's line: no "model"
        {**good[1], "etag": 7},  # a field of the wrong type
        {**good[2], "outputs": {k: None for k in good[2]["outputs"]}},
        ["not", "an", "object"],
    ]
    body = "".join(json.dumps(line) + "\n" for line in [*damaged, good[3]]) + "{not json\n"
    storage.write_bytes(segment, body.encode())

    with caplog.at_level(logging.WARNING, logger="cyclegan_jobs"):
        again = translate(cfg)
    assert again["status"] == "ok"
    assert again["counts"] == {"total": 4, "ok": 0, "skipped": 4, "failed": 0, "pending": 0}
    assert again["head_requests"] == 6  # faces 0-2 asked again (2 outputs each), face 3 not
    warned = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert warned == [f"ledger: ignored 5 damaged line(s) in {segment}"]  # once a segment

    # The rerun's segment (faces 0-2 adopted) can't be read: those inputs are asked again, and
    # compaction, which merges what it read into its own segment, leaves that one alone.
    [name] = [n for n in _listed(f"{cfg.output}/_ledger") if n != first]
    adopted = f"{cfg.output}/_ledger/{name}"
    unreadable = Fault(lambda op, url: op == "GetObject" and url.endswith(f"/{name}"), 400, "X")
    monkeypatch.setattr(ledger, "COMPACT_AFTER", 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cyclegan_jobs"):
        third = translate(cfg)
    assert unreadable.injected >= 1
    assert third["counts"]["skipped"] == 4 and third["head_requests"] == 6
    assert any(f"cannot read {adopted}" in r.getMessage() for r in caplog.records)
    left = _listed(f"{cfg.output}/_ledger")
    assert first not in left and name in left and len(left) == 2

    unreadable.on = False
    assert translate(cfg)["head_requests"] == 0


def test_a_no_reconstruct_run_compacting_the_ledger_keeps_the_full_runs_lines(
    random_model_store: str, moto_s3: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(ledger, "COMPACT_AFTER", 1)
    cfg = _cfg(moto_s3, random_model_store)
    _put_faces(cfg.input, 4)
    assert translate(cfg)["counts"]["ok"] == 4

    stylized_only = translate(replace(cfg, reconstruct=False))
    assert stylized_only["counts"]["skipped"] == 4
    assert stylized_only["head_requests"] == 0  # the full run's lines vouch for stylized/
    [segment] = _listed(f"{cfg.output}/_ledger")  # compacted into the run's own
    lines = _jsonl(storage.read_bytes(f"{cfg.output}/_ledger/{segment}"))
    assert len(lines) == 4 and all(len(line["outputs"]) == 2 for line in lines)

    full = translate(cfg)
    assert full["counts"]["skipped"] == 4 and full["head_requests"] == 0


# 2. the run's own records -----------------------------------------------------------------


def test_a_run_whose_records_are_not_stored_is_incomplete_and_its_outputs_still_count(
    random_model_store: str, moto_s3: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(moto_s3, random_model_store)
    _put_faces(cfg.input, 4)
    full = Fault(_store_full, 507, "XMinioStorageFull")
    args = ["translate", "--input", cfg.input, "--output", cfg.output, "--workers", "4"]
    args += ["--model-store", random_model_store, "--work-dir", str(tmp_path / "work")]

    rc = cli.main(args)
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert rc == 1, captured.err[-3000:]
    assert result["status"] == "incomplete" and result["counts"]["ok"] == 4
    for record in ("the ledger segment", "manifest.jsonl", "contact_sheet.png", "summary.json"):
        assert record in result["records_error"]
    assert "XMinioStorageFull" in result["records_error"]
    assert not {"manifest", "summary", "contact_sheet"} & set(result)  # none of them exists
    assert len(_jsonl(Path(result["manifest_local"]).read_bytes())) == 4
    assert Path(result["contact_sheet_local"]).is_file()
    assert "cyclegan-jobs translate: incomplete: the run's records were not stored:" in (
        captured.err
    )
    assert "Traceback" not in captured.err
    assert _listed(f"{cfg.output}/_runs") == [f"{result['run_id']}/run.json"]
    assert _listed(f"{cfg.output}/_ledger") == []

    full.on = False  # the rerun recognises the outputs by their metadata (2 HEADs an input)
    again = translate(cfg)
    assert again["status"] == "ok" and again["counts"]["skipped"] == 4
    assert again["head_requests"] == 8
    assert storage.read_json(again["summary"])["status"] == "ok"


def test_the_ledger_segment_is_stored_even_when_the_manifest_is_not(
    random_model_store: str, moto_s3: str
) -> None:
    cfg = _cfg(moto_s3, random_model_store)
    _put_faces(cfg.input, 4)
    Fault(lambda op, url: op == "PutObject" and url.endswith("/manifest.jsonl"), 507, "Full")

    summary = translate(cfg)
    assert summary["status"] == "incomplete" and "manifest" not in summary
    assert summary["records_error"].startswith("not stored: manifest.jsonl (")
    assert len(summary["records_error"].split("; ")) == 1  # only the manifest
    stored = storage.read_json(summary["summary"])  # the stored summary says so too
    assert stored["status"] == "incomplete" and "manifest" not in stored
    [segment] = _listed(f"{cfg.output}/_ledger")
    assert len(_jsonl(storage.read_bytes(f"{cfg.output}/_ledger/{segment}"))) == 4

    again = translate(cfg)  # still failing the manifest: no HEADs, the ledger had it all
    assert again["counts"]["skipped"] == 4 and again["head_requests"] == 0


# 3. triage --------------------------------------------------------------------------------


def test_a_check_that_fails_for_good_fails_that_input_alone(
    random_model_store: str, moto_s3: str
) -> None:
    cfg = _cfg(moto_s3, random_model_store, max_failure_rate=0.5)
    rels = _put_faces(cfg.input, 4)
    assert translate(cfg)["counts"]["ok"] == 4
    storage.delete_prefix(f"{cfg.output}/_ledger")  # so the rerun asks each output (HEAD)
    broken = Fault(lambda op, url: op == "HeadObject" and "/face_1.png" in url, 400, "Bad")

    summary = translate(cfg)
    assert broken.injected == 1
    assert summary["status"] == "ok"  # 1 of 4 under 50 %
    assert summary["counts"] == {"total": 4, "ok": 0, "skipped": 3, "failed": 1, "pending": 0}
    lines = {line["key"]: line for line in _jsonl(storage.read_bytes(summary["manifest"]))}
    assert sorted(lines) == rels
    assert lines["face_1.jpg"]["status"] == "failed"
    assert lines["face_1.jpg"]["reason"].startswith("could not check whether it is up to date")
    [segment] = _listed(f"{cfg.output}/_ledger")  # what it did check is saved
    checked = _jsonl(storage.read_bytes(f"{cfg.output}/_ledger/{segment}"))
    assert sorted(line["key"] for line in checked) == ["face_0.jpg", "face_2.jpg", "face_3.jpg"]

    broken.on = False
    again = translate(cfg)
    assert again["counts"]["skipped"] == 4 and again["head_requests"] == 2  # face_1 alone


# 4. --limit -------------------------------------------------------------------------------


def test_inputs_past_the_limit_are_in_the_manifest(random_model_store: str, moto_s3: str) -> None:
    cfg = _cfg(moto_s3, random_model_store)
    rels = _put_faces(cfg.input, 6)

    first = translate(replace(cfg, limit=2))
    assert first["status"] == "ok"
    assert first["counts"] == {"total": 6, "ok": 2, "skipped": 0, "failed": 0, "pending": 4}
    lines = _jsonl(storage.read_bytes(first["manifest"]))
    assert sorted(line["key"] for line in lines) == rels  # every input, once
    later = [line for line in lines if line["status"] == "pending"]
    assert len(later) == 4 and {line["reason"] for line in later} == {"over --limit"}

    second = translate(replace(cfg, limit=4))  # the done ones are skipped, not counted
    assert second["counts"] == {"total": 6, "ok": 4, "skipped": 2, "failed": 0, "pending": 0}
    rerun = translate(cfg)["counts"]  # what the CI check of `make run` asks of a rerun
    assert rerun["skipped"] == rerun["total"] == 6 and rerun["ok"] == rerun["pending"] == 0


# 5. other records read back ---------------------------------------------------------------


def _shard(out: str, run_id: str, manifest: str, summary: bytes, sheet: bytes) -> None:
    storage.write_bytes(f"{out}_runs/{run_id}/manifest.jsonl", manifest.encode())
    storage.write_bytes(f"{out}_runs/{run_id}/summary.json", summary)
    storage.write_bytes(f"{out}_runs/{run_id}/contact_sheet.png", sheet)


def test_merge_reads_damaged_shard_records_without_a_traceback(
    moto_s3: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = f"{moto_s3}/out/"
    storage.write_bytes(f"{out}_runs/run/plan.jsonl", b'{"key": "a.txt", "status": "skipped"}\n')
    sheet = images.encode_png(np.full((8, 8, 3), 90, np.uint8))
    good = json.dumps({"model_version": "v1", "contact_sheet": f"{out}_runs/s0/contact_sheet.png"})
    ok_line = '{"key": "b.jpg", "status": "ok", "reason": ""}\n'
    _shard(out, "s0", ok_line + '{"key": "c.jpg"}\n', good.encode(), sheet)
    args = ["merge", "--output", out, "--run-id", "run", "--shard-run-id", "s0"]

    assert cli.main(args) == 2  # a line without "status" cannot be counted: one clear error
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{out}_runs/s0/manifest.jsonl is damaged at line 2" in err

    # Damaged summaries and pictures only cost the merged sheet: counted, with warnings.
    _shard(out, "s0", ok_line, b'["not", "a summary"]', sheet)
    bad_sheet = json.dumps(
        {"model_version": "v1", "contact_sheet": f"{out}_runs/s1/contact_sheet.png"}
    )
    _shard(out, "s1", '{"key": "d.jpg", "status": "failed"}\n', bad_sheet.encode(), b"not a png")
    with caplog.at_level(logging.WARNING, logger="cyclegan_jobs"):
        summary = merge_runs(out, "run", ["s0", "s1"], max_failure_rate=0.5)
    assert summary["counts"] == {"total": 3, "ok": 1, "skipped": 1, "failed": 1}
    assert summary["model_version"] == "v1" and summary["contact_sheet"] is None
    assert summary["failures"] == [{"key": "d.jpg", "reason": ""}]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "s0/summary.json is damaged" in warned and "s1/contact_sheet.png left out" in warned

    # A result file (a pod's XCom) that cannot be written: one line and exit 2, not a traceback.
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder\n")
    result_file = ["--result-file", str(blocker / "result.json")]
    assert cli.main([*args, "--shard-run-id", "s1", "--max-failure-rate", "0.5", *result_file]) == 2
    err = capsys.readouterr().err
    assert "cyclegan-jobs merge: error: cannot write the result file" in err
    assert "Traceback" not in err


def test_a_damaged_model_config_is_a_clear_error(moto_s3: str, tmp_path: Path) -> None:
    folder = tmp_path / "version"
    folder.mkdir()
    model = asdict(ModelConfig(preset="tiny", image_size=SIZE, gen_filters=8, disc_filters=8))
    (folder / "config.json").write_text(json.dumps({"model": list(model)}))  # names only
    store = f"{moto_s3}/models"
    registry.write_version(store, "v1", folder)
    registry.promote(store, "v1")
    cfg = _cfg(moto_s3, store)
    with pytest.raises(TranslateError, match="config.json is not a model config"):
        translate(cfg)

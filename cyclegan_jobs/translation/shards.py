"""Planned runs, as the nightly DAG makes them: what a translate run would do, cut into shard
files (`plan_shards`), and the shards' records merged back into one run (`merge_runs`)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from cyclegan_jobs import images, storage
from cyclegan_jobs.config import TranslateConfig
from cyclegan_jobs.errors import SystemicError, TranslateError
from cyclegan_jobs.translation import ledger
from cyclegan_jobs.translation.stages import UP_TO_DATE, Triage, failed_share, sources
from cyclegan_jobs.translation.translate import checked_listing, new_run_id, open_run, triage_one

log = logging.getLogger(__name__)


def plan_shards(cfg: TranslateConfig, shard_size: int) -> dict[str, Any]:
    """What a run would translate (sources + triage, no pixels), cut into shard files of at most
    `shard_size` keys.

    Shard files go to <output>/_runs/<run_id>/shards/NNNN.json (keys and ETags); `translate
    --keys URI` runs one of them as run `<run_id>-shardNNNN`. Keys that need no work (up to date,
    not images, unsafe, colliding) are recorded in <output>/_runs/<run_id>/plan.jsonl for
    merge_runs. Returns only URIs, run ids and counts: small enough for an Airflow XCom.
    """
    if shard_size < 1:
        raise TranslateError(f"shard size must be >= 1, got {shard_size}")
    cfg = replace(cfg, dry_run=True, keys=None, shard=(0, 1), run_id=cfg.run_id or new_run_id())
    listing = checked_listing(sources(cfg), cfg.input)
    with tempfile.TemporaryDirectory(prefix=f"cyclegan-plan-{cfg.run_id}-") as work:
        run = open_run(replace(cfg, work_dir=work))
        triage = Triage(cfg, run.index)
        try:
            entries = [triage_one(triage, info).record() for info in listing]
        except SystemicError as err:
            raise TranslateError(f"plan {cfg.run_id} stopped: {err}") from err
        run.manifest.close()
    pending = [{"key": e["key"], "etag": e["etag"]} for e in entries if e["status"] == "pending"]
    settled = [e for e in entries if e["status"] != "pending"]
    run_root = run.run_root
    _write_jsonl(storage.join(run_root, "plan.jsonl"), settled)
    shards = []
    for i, start in enumerate(range(0, len(pending), shard_size)):
        uri = storage.join(run_root, "shards", f"{i:04d}.json")
        storage.write_json(uri, pending[start : start + shard_size])
        shards.append({"keys": uri, "run_id": f"{cfg.run_id}-shard{i:04d}"})
    ledger.write_segment(cfg.output, cfg.run_id, run.index.adopted, run.index)
    counts = Counter(e["status"] for e in entries)
    log.info(
        "plan %s: %d to translate in %d shard(s), %d skipped, %d failed",
        cfg.run_id,
        len(pending),
        len(shards),
        counts["skipped"],
        counts["failed"],
    )
    return {
        "run_id": cfg.run_id,
        "model_uri": run.version_uri,
        "shards": shards,
        "counts": {
            "pending": len(pending),
            "skipped": counts["skipped"],
            "failed": counts["failed"],
        },
    }


def merge_runs(
    output: str, run_id: str, shard_run_ids: list[str], *, max_failure_rate: float
) -> dict[str, Any]:
    """Merge a planned run's plan.jsonl and its shards' manifests into one manifest and summary.

    Writes <output>/_runs/<run_id>/manifest.jsonl and summary.json; the summary's status is
    "failed" when the share of failed images exceeds `max_failure_rate`.
    """
    run_root = storage.join(output, "_runs", run_id)
    parts = [storage.join(run_root, "plan.jsonl")]
    parts += [storage.join(output, "_runs", r, "manifest.jsonl") for r in shard_run_ids]
    entries = [entry for uri in parts for entry in _read_manifest(uri)]
    counts = Counter(e["status"] for e in entries)
    ok, failed = counts["ok"], counts["failed"]
    share = failed_share(ok, failed, sum(e.get("reason") == UP_TO_DATE for e in entries))
    shard_summaries = [
        _read_shard_summary(storage.join(output, "_runs", r, "summary.json")) for r in shard_run_ids
    ]
    sheets = _strings(shard_summaries, "contact_sheet")
    sheet = _merge_contact_sheets(sheets, storage.join(run_root, "contact_sheet.png"))
    versions = _strings(shard_summaries, "model_version")
    summary = {
        "run_id": run_id,
        "status": "failed" if share > max_failure_rate else "ok",
        "shards": shard_run_ids,
        "model_version": versions[0] if versions else None,
        "counts": {"total": len(entries), "ok": ok, "skipped": counts["skipped"], "failed": failed},
        "failed_share": round(share, 4),
        "max_failure_rate": max_failure_rate,
        "failures": [  # the first few, to read in the summary; all are in the manifest
            {"key": e["key"], "reason": e.get("reason", "")}
            for e in entries
            if e["status"] == "failed"
        ][:100],
        "contact_sheet": sheet,
        "manifest": storage.join(run_root, "manifest.jsonl"),
        "summary": storage.join(run_root, "summary.json"),
    }
    _write_jsonl(summary["manifest"], entries)
    storage.write_json(summary["summary"], summary)
    c = summary["counts"]
    log.info(
        "run %s: %d translated, %d skipped, %d failed (%.1f%%, max %.1f%%) in %d shard(s)",
        run_id,
        c["ok"],
        c["skipped"],
        c["failed"],
        100 * share,
        100 * max_failure_rate,
        len(shard_run_ids),
    )
    return summary


def _read_manifest(uri: str) -> list[dict]:
    """The lines of a plan.jsonl or a shard's manifest. Each counts in the merged summary, so a
    damaged one is an error naming it (the step that wrote it, rerun, writes it again)."""
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except storage.NotFoundError as err:
        raise TranslateError(f"{uri} is missing: did that shard finish?") from err
    except UnicodeDecodeError as err:
        raise TranslateError(f"{uri} is damaged: not UTF-8 text ({err})") from err
    entries = []
    for number, entry in ledger.json_lines(text):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("key", "status")
        ):
            raise TranslateError(
                f"{uri} is damaged at line {number}: not a manifest line "
                '({"key": ..., "status": ...}); rerun the step that wrote it'
            )
        entries.append(entry)
    return entries


def _read_shard_summary(uri: str) -> dict:
    """A shard's summary.json, for its model version and contact sheet only: a damaged one
    costs those (with a warning), not the merge; a missing one means the shard did not end."""
    try:
        data = storage.read_bytes(uri)
    except storage.NotFoundError as err:
        raise TranslateError(f"{uri} is missing: did that shard finish?") from err
    try:
        summary = json.loads(data)
    except (ValueError, RecursionError):
        summary = None
    if not isinstance(summary, dict):
        log.warning("%s is damaged (not a JSON object); its contact sheet is left out", uri)
        return {}
    return summary


def _strings(records: list[dict], key: str) -> list[str]:
    return [r[key] for r in records if isinstance(r.get(key), str)]


# A merged contact sheet shows the first shards' sheets, one under the other.
MERGED_SHEET_SHARDS = 4


def _merge_contact_sheets(sheets: list[str], uri: str) -> str | None:
    """Stack the first shards' contact sheets into the run's own sheet at `uri`; None when no
    shard made one (nothing was translated)."""
    parts = []
    for sheet in sheets[:MERGED_SHEET_SHARDS]:
        try:
            parts.append(images.decode_image(storage.read_bytes(sheet)))
        except storage.SystemicError:
            raise
        except (storage.StorageError, images.ImageDecodeError) as err:
            # A picture is not worth failing the run for.
            log.warning("contact sheet %s left out of the run's sheet: %s", sheet, err)
    if not parts:
        return None
    width = max(p.shape[1] for p in parts)
    padded = [
        np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in parts
    ]
    storage.write_bytes(uri, images.encode_png(np.concatenate(padded)), content_type="image/png")
    return uri


def _write_jsonl(uri: str, entries: list[dict]) -> None:
    body = "".join(json.dumps(e) + "\n" for e in entries).encode("utf-8")
    storage.write_bytes(uri, body, content_type="application/x-ndjson")

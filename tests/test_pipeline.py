"""The library steps the DAGs call: plan_shards, translate --keys errors, merge_runs, new_data.

Fast (moto, no model weights): planning is a dry run, which reads only the version's config.
The same steps run end to end, with a trained model on SeaweedFS, in tests/test_dags.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cyclegan_jobs import cli, images, registry, storage
from cyclegan_jobs.config import ModelConfig, TranslateConfig
from cyclegan_jobs.retrain import new_data
from cyclegan_jobs.translation.shards import merge_runs, plan_shards
from cyclegan_jobs.translation.translate import TranslateError, translate


def _version(store: str, tmp_path: Path, snapshot: dict | None = None) -> str:
    """A registered version with only what planning and new-data detection read."""
    folder = tmp_path / "version"
    folder.mkdir()
    model = asdict(ModelConfig(preset="tiny", image_size=32, gen_filters=8, disc_filters=8))
    (folder / "config.json").write_text(json.dumps({"model": model}))
    (folder / "metrics.json").write_text(json.dumps({"snapshot": snapshot or {}}))
    registry.write_version(store, "v20260101-000000-aaaaaa", folder)
    registry.promote(store, "v20260101-000000-aaaaaa")
    return registry.version_uri(store, "v20260101-000000-aaaaaa")


def _put(uri: str, data: bytes = b"jpeg bytes") -> None:
    storage.write_bytes(uri, data)


def test_plan_cuts_pending_inputs_into_shard_files_and_records_the_rest(
    moto_s3: str, tmp_path: Path
) -> None:
    model = _version(f"{moto_s3}/models", tmp_path)
    for i in range(5):
        _put(f"{moto_s3}/in/face_{i}.jpg")
    _put(f"{moto_s3}/in/notes.txt")
    _put(f"{moto_s3}/in/x/../escape.jpg")
    cfg = TranslateConfig(
        input=f"{moto_s3}/in/", output=f"{moto_s3}/out/", model=model, run_id="r1"
    )
    plan = plan_shards(cfg, shard_size=2)

    assert plan["run_id"] == "r1" and plan["model_uri"] == model
    assert plan["counts"] == {"pending": 5, "skipped": 1, "failed": 1}
    assert [s["run_id"] for s in plan["shards"]] == ["r1-shard0000", "r1-shard0001", "r1-shard0002"]
    shards = [storage.read_json(s["keys"]) for s in plan["shards"]]
    assert [len(s) for s in shards] == [2, 2, 1]
    keys = [e["key"] for shard in shards for e in shard]
    assert sorted(keys) == [f"face_{i}.jpg" for i in range(5)]  # disjoint and complete
    etag = storage.head(f"{moto_s3}/in/face_0.jpg")["etag"]
    assert {"key": "face_0.jpg", "etag": etag} in shards[0] + shards[1] + shards[2]
    settled = storage.read_bytes(f"{moto_s3}/out/_runs/r1/plan.jsonl").decode().splitlines()
    statuses = {json.loads(line)["key"]: json.loads(line)["status"] for line in settled}
    assert statuses == {"notes.txt": "skipped", "x/../escape.jpg": "failed"}
    assert plan_shards(cfg, shard_size=10)["shards"][0]["keys"].endswith("shards/0000.json")


def test_plan_of_nothing_pending_has_no_shards(moto_s3: str, tmp_path: Path) -> None:
    model = _version(f"{moto_s3}/models", tmp_path)
    storage.get_client().put_object(Bucket=moto_s3[5:], Key="empty/.keep", Body=b"")
    cfg = TranslateConfig(input=f"{moto_s3}/empty/", output=f"{moto_s3}/out/", model=model)
    plan = plan_shards(cfg, shard_size=3)
    assert plan["shards"] == [] and plan["counts"]["pending"] == 0
    with pytest.raises(TranslateError, match="shard size"):
        plan_shards(cfg, shard_size=0)


def test_translate_refuses_a_bad_shard_file_before_any_work(moto_s3: str, tmp_path: Path) -> None:
    model = _version(f"{moto_s3}/models", tmp_path)
    storage.write_json(f"{moto_s3}/bad.json", {"not": "a list"})
    base = {"input": f"{moto_s3}/in/", "output": f"{moto_s3}/out/", "model": model}
    with pytest.raises(TranslateError, match="not a shard file"):
        translate(TranslateConfig(**base, keys=f"{moto_s3}/bad.json"))
    with pytest.raises(TranslateError, match="cannot read the shard file"):
        translate(TranslateConfig(**base, keys=f"{moto_s3}/missing.json"))
    assert list(storage.list_objects(f"{moto_s3}/out/")) == []


def _sheet_picture(run_id: str) -> np.ndarray:
    """A shard's stand-in contact sheet: its own size and colour, so a merge shows its order."""
    shard = int(run_id[-4:])
    picture = np.zeros((20 + 10 * shard, 30 + 5 * shard, 3), np.uint8)
    picture[..., shard % 3] = 50 + 60 * shard
    return picture


def _shard(output: str, run_id: str, statuses: list[str], version: str = "v1") -> None:
    lines = [
        json.dumps(
            {"key": f"{run_id}-{i}.jpg", "status": s, "reason": "bad" if s == "failed" else ""}
        )
        for i, s in enumerate(statuses)
    ]
    storage.write_bytes(
        f"{output}_runs/{run_id}/manifest.jsonl", ("\n".join(lines) + "\n").encode()
    )
    sheet = f"{output}_runs/{run_id}/contact_sheet.png"
    storage.write_bytes(sheet, images.encode_png(_sheet_picture(run_id)))
    storage.write_json(
        f"{output}_runs/{run_id}/summary.json", {"model_version": version, "contact_sheet": sheet}
    )


def test_merge_runs_counts_every_shard_and_applies_the_failure_threshold(moto_s3: str) -> None:
    out = f"{moto_s3}/out/"
    plan = [{"key": "old.jpg", "status": "skipped", "reason": "up to date"}]
    plan.append({"key": "readme.txt", "status": "skipped", "reason": "not an image file extension"})
    storage.write_bytes(
        f"{out}_runs/run/plan.jsonl", "".join(json.dumps(e) + "\n" for e in plan).encode()
    )
    _shard(out, "run-shard0000", ["ok", "ok", "failed"])
    _shard(out, "run-shard0001", ["ok"])
    shards = ["run-shard0000", "run-shard0001"]

    summary = merge_runs(out, "run", shards, max_failure_rate=0.25)
    assert summary["counts"] == {"total": 6, "ok": 3, "skipped": 2, "failed": 1}
    # 1 failed of 5 images (3 ok + 1 failed + 1 up to date); the text file is not an image.
    assert summary["failed_share"] == 0.2 and summary["status"] == "ok"
    assert summary["failures"] == [{"key": "run-shard0000-2.jpg", "reason": "bad"}]
    assert summary["model_version"] == "v1"
    # The run's own sheet: the shards' sheets one under the other, padded white to one width.
    assert summary["contact_sheet"] == f"{out}_runs/run/contact_sheet.png"
    merged_sheet = images.decode_image(storage.read_bytes(summary["contact_sheet"]))
    first, second = _sheet_picture("run-shard0000"), _sheet_picture("run-shard0001")
    assert merged_sheet.shape == (first.shape[0] + second.shape[0], second.shape[1], 3)
    assert (merged_sheet[: first.shape[0], : first.shape[1]] == first).all()
    assert (merged_sheet[: first.shape[0], first.shape[1] :] == 255).all()
    assert (merged_sheet[first.shape[0] :] == second).all()
    assert storage.read_json(summary["summary"]) == summary
    merged = storage.read_bytes(summary["manifest"]).decode().splitlines()
    assert len(merged) == 6

    assert merge_runs(out, "run", shards, max_failure_rate=0.1)["status"] == "failed"
    with pytest.raises(TranslateError, match="run-shard0009/manifest.jsonl is missing"):
        merge_runs(out, "run", [*shards, "run-shard0009"], max_failure_rate=0.5)


def test_new_data_compares_keys_and_etags_with_the_promoted_snapshot(
    moto_s3: str, tmp_path: Path
) -> None:
    faces = f"{moto_s3}/faces/"
    for name in ("a.jpg", "b.jpg", "c.png"):
        _put(faces + name, name.encode())
    _put(faces + "notes.txt")  # not an image: never counted
    store = f"{moto_s3}/models"
    assert new_data(faces, store) == {
        "domain": "b",
        "uri": faces,
        "promoted": None,
        "total": 3,
        "new": 3,
        "examples": ["a.jpg", "b.jpg", "c.png"],
    }
    etag = storage.head(faces + "a.jpg")["etag"]
    snapshot = {"b": [{"key": "a.jpg", "etag": etag}, {"key": "b.jpg", "etag": "old-etag"}]}
    _version(store, tmp_path, snapshot)
    found = new_data(faces, store)
    assert found["promoted"] == "v20260101-000000-aaaaaa"
    assert (found["total"], found["new"]) == (3, 2)  # c.png is new, b.jpg changed
    assert found["examples"] == ["b.jpg", "c.png"]


def test_cli_writes_the_result_file_for_pods(moto_s3: str, tmp_path: Path) -> None:
    faces = f"{moto_s3}/faces/"
    _put(faces + "a.jpg")
    result_file = tmp_path / "xcom" / "return.json"
    code, result = cli.run(
        ["new-data", "--domain-b", faces, "--model-store", f"{moto_s3}/m", "--result-file",
         str(result_file)]
    )  # fmt: skip
    assert code == 0 and result["new"] == 1
    assert json.loads(result_file.read_text()) == result

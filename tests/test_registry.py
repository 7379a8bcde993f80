"""Tests for cyclegan_jobs.registry on a local store and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cyclegan_jobs import registry, storage


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty model store: a local folder, or a prefix in a fresh SeaweedFS bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return storage.join(request.getfixturevalue("s3_bucket"), "models")


def _model_dir(root: Path, loss: float) -> Path:
    """What a training run leaves behind, in miniature."""
    root.mkdir(parents=True)
    (root / "generator_AB.keras").write_bytes(b"fake keras zip AB")
    (root / "generator_BA.keras").write_bytes(b"fake keras zip BA")
    (root / "config.json").write_text(json.dumps({"preset": "tiny", "image_size": 64}))
    (root / "metrics.json").write_text(json.dumps({"cycle_loss": loss}))
    (root / "samples").mkdir()
    (root / "samples" / "0.png").write_bytes(b"png")
    return root


def _write(store: str, tmp_path: Path, name: str, loss: float = 0.5) -> str:
    version = f"v20260101-00000{name}-abcdef"
    registry.write_version(store, version, _model_dir(tmp_path / name, loss), run_id=f"run-{name}")
    return version


def test_new_version_id_is_sortable_and_utc() -> None:
    when = datetime(2026, 11, 29, 8, 25, 0, tzinfo=UTC)
    vid = registry.new_version_id(when)
    assert re.fullmatch(r"v20261129-082500-[0-9a-f]{6}", vid)
    # Same instant in another zone, and a naive (taken as UTC) time, give the same prefix.
    plus_two = when.astimezone(timezone(timedelta(hours=2)))
    assert registry.new_version_id(plus_two)[:16] == vid[:16]
    assert registry.new_version_id(when.replace(tzinfo=None))[:16] == vid[:16]
    later = registry.new_version_id(when + timedelta(seconds=1))
    assert later > vid
    assert registry.new_version_id(when) != vid


def test_uris() -> None:
    assert registry.version_uri("s3://m/store/", "v1") == "s3://m/store/versions/v1"
    assert registry.runs_uri("/data/store", "r7") == "/data/store/runs/r7"
    with pytest.raises(registry.RegistryError, match="invalid version"):
        registry.version_uri("s3://m", "../etc")


def test_write_list_get(store: str, tmp_path: Path) -> None:
    assert registry.list_versions(store) == []
    v1 = _write(store, tmp_path, "1", loss=0.9)
    v2 = _write(store, tmp_path, "2", loss=0.4)

    versions = registry.list_versions(store)
    assert [v["version"] for v in versions] == [v1, v2]
    assert versions[0]["uri"] == registry.version_uri(store, v1)
    assert not any(v["promoted"] for v in versions)
    assert versions[0]["created_at"] <= versions[1]["created_at"]

    info = registry.get_version(store, v2)
    assert info["version"] == v2
    assert info["run_id"] == "run-2"
    assert info["config"] == {"preset": "tiny", "image_size": 64}
    assert info["metrics"] == {"cycle_loss": 0.4}
    assert info["files"] == [
        "config.json",
        "generator_AB.keras",
        "generator_BA.keras",
        "metrics.json",
        "samples/0.png",
    ]
    marker = storage.read_json(storage.join(info["uri"], "VERSION.json"))
    assert datetime.fromisoformat(marker["created_at"]).tzinfo is not None

    with pytest.raises(registry.RegistryError, match="already exists"):
        registry.write_version(store, v1, _model_dir(tmp_path / "again", 0.1))
    with pytest.raises(registry.RegistryError, match="no such version v9"):
        registry.get_version(store, "v9")


def test_version_without_metrics(store: str, tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "m", 0.1)
    (src / "metrics.json").unlink()
    registry.write_version(store, "v1", src)
    assert registry.get_version(store, "v1")["metrics"] == {}


def test_refuses_bad_inputs(store: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(registry.RegistryError, match="no files"):
        registry.write_version(store, "v1", empty)
    with_marker = _model_dir(tmp_path / "m", 0.1)
    (with_marker / "VERSION.json").write_text("{}")
    with pytest.raises(registry.RegistryError, match="must not contain VERSION.json"):
        registry.write_version(store, "v2", with_marker)
    assert registry.list_versions(store) == []


def test_incomplete_version_is_invisible(store: str, tmp_path: Path) -> None:
    # A writer that died before VERSION.json: the files are there, the marker is not.
    partial = registry.version_uri(store, "v-partial")
    storage.upload_dir(_model_dir(tmp_path / "p", 0.1), partial)
    complete = _write(store, tmp_path, "1")

    assert [v["version"] for v in registry.list_versions(store)] == [complete]
    with pytest.raises(registry.RegistryError, match="cannot promote v-partial"):
        registry.promote(store, "v-partial")
    with pytest.raises(registry.RegistryError, match="no such version"):
        registry.get_version(store, "v-partial")
    with pytest.raises(registry.RegistryError, match="not a complete model version"):
        registry.resolve(partial)
    assert registry.promoted(store) is None

    # Rerunning the writer completes it.
    registry.write_version(store, "v-partial", tmp_path / "p")
    assert len(registry.list_versions(store)) == 2


def test_promote_rollback_history(store: str, tmp_path: Path) -> None:
    v1, v2, v3 = (_write(store, tmp_path, n) for n in "123")
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(store)

    first = registry.promote(store, v1, reason="first model")
    assert first["version"] == v1
    assert first["previous"] is None
    assert first["uri"] == registry.version_uri(store, v1)
    assert registry.promoted(store) == first
    with pytest.raises(registry.RegistryError, match=f"{v1} is the first promoted version"):
        registry.rollback(store)

    registry.promote(store, v2, reason="better")
    pointer = registry.promote(store, v3, reason="best")
    assert pointer["previous"] == v2
    # Promoting the current version again (a rerun) changes nothing.
    assert registry.promote(store, v3, reason="rerun") == pointer
    assert [v["promoted"] for v in registry.list_versions(store)] == [False, False, True]

    back = registry.rollback(store)
    assert (back["version"], back["previous"]) == (v2, v1)
    assert registry.promoted(store) == back
    # A second rollback walks further back, rather than toggling between two versions.
    back = registry.rollback(store)
    assert (back["version"], back["previous"]) == (v1, None)
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(store)

    events = registry.history(store)
    assert [(e["action"], e["version"]) for e in events] == [
        ("promote", v1),
        ("promote", v2),
        ("promote", v3),
        ("rollback", v2),
        ("rollback", v1),
    ]
    assert events[3]["rolled_back_from"] == v3
    assert events[0]["reason"] == "first model"
    times = [e["at"] for e in events]
    assert times == sorted(times)

    with pytest.raises(registry.RegistryError, match="cannot promote v-unknown"):
        registry.promote(store, "v-unknown")
    assert registry.promoted(store)["version"] == v1


def test_resolve(store: str, tmp_path: Path) -> None:
    with pytest.raises(registry.RegistryError, match="no promoted version in .*train one"):
        registry.resolve(store)
    v1 = _write(store, tmp_path, "1")
    uri = registry.version_uri(store, v1)
    assert registry.resolve(uri) == uri
    assert registry.resolve(uri + "/") == uri
    registry.promote(store, v1)
    assert registry.resolve(store) == uri
    assert registry.resolve(store + "/") == uri


def test_registry_imports_no_tensorflow_or_airflow() -> None:
    code = (
        "import sys, cyclegan_jobs.registry; "
        "bad = [m for m in ('tensorflow', 'keras', 'airflow') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr

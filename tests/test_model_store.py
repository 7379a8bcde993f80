"""A damaged model store gives one line and exit code 2 naming the object and what is wrong."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cyclegan_jobs import registry, storage
from cyclegan_jobs.cli import main

GENERATORS = ("generator_AB", "generator_BA")
LOG_PREFIX = "[cyclegan_jobs."  # what the CLI's log handler puts before a log record on stderr


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real version's files: two tiny 32 px generators and config.json (built once)."""
    from cyclegan_jobs.config import preset
    from cyclegan_jobs.training.networks import build_generator

    model_cfg = preset("tiny", 32)[0]
    folder = tmp_path_factory.mktemp("model")
    for name in GENERATORS:
        build_generator(model_cfg, name=name).save(folder / f"{name}.keras")
    (folder / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model_cfg)}))
    return folder


@pytest.fixture
def store(model_files: Path, tmp_path: Path) -> str:
    """A local store with versions v1 and v2, v1 then v2 promoted."""
    uri = str(tmp_path / "store")
    for version in ("v1", "v2"):
        registry.write_version(uri, version, model_files)
        registry.promote(uri, version)
    return uri


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err.splitlines()


def _one_error(argv: list[str], capsys: pytest.CaptureFixture, *parts: str) -> str:
    """Run a command that must fail with exit 2 and one stderr line containing every part.

    The translate job also logs its progress on stderr; other commands print the error alone.
    """
    code, err = _cli(argv, capsys)
    assert not any("Traceback" in line for line in err), err
    lines = [x for x in err if not x.startswith(LOG_PREFIX)] if argv[0] == "translate" else err
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"cyclegan-jobs {argv[0]}: error: ")
    for part in parts:
        assert part in lines[0]
    return lines[0]


# --- PROMOTED.json ----------------------------------------------------------------------------

DAMAGED_POINTERS = [
    (b'{"uri": "somewhere", "previous": null}', 'no "version" field'),
    (b"\x89PNG\r\n\x1a\n\x00garbage", "not valid JSON"),
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'["v1"]', "expected a JSON object, got an array"),
    (b'"v1"', "expected a JSON object, got a string"),
    (b'{"version": 42}', '"version" is a number, not a version name'),
    (b'{"version": null}', 'no "version" field'),
    (b'{"version": "../v1"}', "invalid version"),
    (b'{"version": "v1", "previous": ["v0"]}', '"previous" is an array'),
    (b'{"version": "v9"}', "points at version v9, which is not a complete version"),
]


@pytest.mark.parametrize(("content", "problem"), DAMAGED_POINTERS)
def test_a_damaged_pointer_is_one_line(
    content: bytes, problem: str, store: str, capsys: pytest.CaptureFixture
) -> None:
    pointer = storage.join(store, registry.POINTER_FILE)
    storage.write_bytes(pointer, content)
    with pytest.raises(registry.RegistryError, match=problem.replace("[", r"\[")):
        registry.promoted(store)
    for argv in (
        ["models", "list", "--model-store", store],
        ["models", "rollback", "--model-store", store],
        ["new-data", "--domain-b", "tfds:cycle_gan", "--model-store", store],
    ):
        _one_error(argv, capsys, pointer, problem)
    assert storage.read_bytes(pointer) == content  # refused, not rewritten


def test_a_pointer_to_an_incomplete_version(
    store: str, model_files: Path, capsys: pytest.CaptureFixture
) -> None:
    # Files uploaded, VERSION.json never written (the writer died), yet the pointer names it.
    storage.upload_dir(model_files, registry.version_uri(store, "v3"))
    storage.write_json(storage.join(store, registry.POINTER_FILE), {"version": "v3"})
    _one_error(
        ["models", "list", "--model-store", store],
        capsys,
        f"{store}/PROMOTED.json is damaged: it points at version v3",
        "VERSION.json missing",
    )
    with pytest.raises(registry.RegistryError, match="points at version v3"):
        registry.resolve(store)


def test_promoting_a_good_version_repairs_a_damaged_pointer(
    store: str, capsys: pytest.CaptureFixture
) -> None:
    pointer = storage.join(store, registry.POINTER_FILE)
    storage.write_bytes(pointer, b"{garbage")
    code, err = _cli(["models", "promote", "v1", "--model-store", store], capsys)
    assert code == 0 and len(err) == 1
    assert err[0].startswith(f"{LOG_PREFIX}registry] WARNING replacing a damaged pointer: ")
    assert f"{pointer} is damaged: not valid JSON" in err[0]
    assert registry.promoted(store)["version"] == "v1"
    assert [v["promoted"] for v in registry.list_versions(store)] == [True, False]


def test_translate_with_a_damaged_pointer(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    pointer = storage.join(store, registry.POINTER_FILE)
    storage.write_json(pointer, {"uri": "no version here"})
    (tmp_path / "in").mkdir()
    argv = ["translate", "--input", "in", "--output", "out", "--model-store", store]
    _one_error(argv, capsys, pointer, 'no "version" field')
    assert not (tmp_path / "out").exists()


def test_a_damaged_pointer_in_s3(moto_s3: str, model_files: Path, capsys) -> None:
    store = f"{moto_s3}/models"
    registry.write_version(store, "v1", model_files)
    storage.write_bytes(f"{store}/PROMOTED.json", b'{"previous": null}')
    _one_error(
        ["models", "list", "--model-store", store],
        capsys,
        "s3://moto-bucket/models/PROMOTED.json",
        'no "version" field',
    )


# --- VERSION.json and the history ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\x01 not json", "not valid JSON"),
        (b"[]", "expected a JSON object, got an array"),
        (b'{"created_at": "2026-01-01T00:00:00+00:00"}', 'no "version" field'),
        (b'{"version": "v7", "created_at": "2026-01-01T00:00:00+00:00"}', "names version v7"),
        (b'{"version": "v2"}', '"created_at" is missing'),
    ],
)
def test_a_damaged_version_record(
    content: bytes,
    problem: str,
    store: str,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage.write_json(storage.join(store, registry.POINTER_FILE), {"version": "v1"})
    record = storage.join(registry.version_uri(store, "v2"), registry.VERSION_FILE)
    storage.write_bytes(record, content)
    # Listing skips it, with a warning naming the file; the other versions are still listed.
    with caplog.at_level(logging.WARNING, logger="cyclegan_jobs.registry"):
        assert [v["version"] for v in registry.list_versions(store)] == ["v1"]
    assert record in caplog.text and problem in caplog.text
    for action in ("show", "promote"):
        _one_error(["models", action, "v2", "--model-store", store], capsys, record, problem)
    # Promoted, it damages the pointer too: one line naming VERSION.json.
    storage.write_json(storage.join(store, registry.POINTER_FILE), {"version": "v2"})
    _one_error(["models", "list", "--model-store", store], capsys, record, problem)


def test_damaged_history_events_are_skipped(
    store: str, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    history = storage.join(store, "history")
    storage.write_bytes(storage.join(history, "20990101T000000000000Z-promote-v2.json"), b"\xff")
    storage.write_json(storage.join(history, "20990101T000000000001Z-promote-x.json"), [1])
    storage.write_json(
        storage.join(history, "20990101T000000000002Z-promote-v1.json"),
        {"version": "v1", "previous": 5},
    )
    with caplog.at_level(logging.WARNING, logger="cyclegan_jobs.registry"):
        assert [e["version"] for e in registry.history(store)] == ["v1", "v2"]
    assert caplog.text.count("skipping a damaged history event") == 3
    assert _cli(["models", "list", "--model-store", store], capsys) == (0, [])
    # Rolling back reads the history: one warning line per damaged event, naming it.
    code, err = _cli(["models", "rollback", "--model-store", store], capsys)
    assert code == 0 and len(err) == 3
    warning = f"{LOG_PREFIX}registry] WARNING skipping a damaged history event: {history}/"
    assert all(line.startswith(warning) for line in err)
    assert registry.promoted(store)["version"] == "v1"


# --- model files -------------------------------------------------------------------------------


def _rewrite_config(path: Path, edit) -> None:
    """Rewrite config.json inside a .keras zip with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _os_system(marker: Path):
    def edit(config: dict) -> None:
        layer = config["config"]["layers"][1]
        layer.update(module="os", class_name="system", registered_name=None)
        layer["config"] = {"command": f"touch {marker}"}

    return edit


def _lambda_layer(config: dict) -> None:
    layer = config["config"]["layers"][1]
    layer.update(module="keras.layers", class_name="Lambda", registered_name=None)
    code = {"code": "4wEAAAAAAAAAAAAAAAEAAAAB", "defaults": None, "closure": None}
    layer["config"] = {
        "name": layer["name"],
        "function": {"class_name": "__lambda__", "config": code},
    }


def _unknown_layer(config: dict) -> None:
    config["config"]["layers"][1]["class_name"] = "NoSuchLayer"


def _builtin_function(config: dict) -> None:
    activation = {"module": "builtins", "class_name": "function", "config": "eval"}
    config["config"]["layers"][1]["config"]["activation"] = activation


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("missing", "missing model file"),
        ("truncated", "is damaged: not a readable .keras archive"),
        ("garbage", "is damaged: not a readable .keras archive"),
        ("no config", "is damaged: no config.json"),
        ("os.system", "is refused: its config names os.system"),
        ("lambda", "is refused: its config names a Python lambda"),
        ("builtins.eval", "is refused: its config names builtins.eval"),
        ("unknown layer", "cannot load model"),
    ],
)
def test_load_model_failures_are_one_line(
    damage: str, problem: str, store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    version = registry.version_uri(store, "v2")
    path = Path(version) / "generator_BA.keras"
    marker = tmp_path / "executed"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"definitely not a zip file")
    elif damage == "no config":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("metadata.json", "{}")
    else:
        edits = {
            "os.system": _os_system(marker),
            "lambda": _lambda_layer,
            "builtins.eval": _builtin_function,
            "unknown layer": _unknown_layer,
        }
        _rewrite_config(path, edits[damage])

    with pytest.raises(registry.RegistryError) as info:
        registry.load_model(version, "generator_BA")
    message = str(info.value)
    assert str(path) in message and problem in message and "\n" not in message
    assert not marker.exists()
    # End to end: the translate job, through the CLI, on the promoted (damaged) version.
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 30), (200, 90, 20)).save(tmp_path / "in" / "face.png")
    argv = ["translate", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    _one_error([*argv, "--model-store", store], capsys, str(path))
    assert not marker.exists()


def test_load_model_loads_a_good_version(store: str) -> None:
    net = registry.load_model(registry.version_uri(store, "v1"), "generator_AB")
    assert net.name == "generator_AB"


def test_a_copied_store_keeps_working(store: str, tmp_path: Path) -> None:
    # The pointer's "uri" is not trusted: a store moved elsewhere still resolves and loads.
    moved = str(tmp_path / "moved")
    shutil.copytree(store, moved)
    shutil.rmtree(store)
    assert registry.resolve(moved) == registry.version_uri(moved, "v2")
    assert registry.load_model(registry.resolve(moved), "generator_AB").name == "generator_AB"

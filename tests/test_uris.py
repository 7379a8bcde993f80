"""URIs are checked before any work: storage.check_uri, the storage functions and every command."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from cyclegan_jobs import storage
from cyclegan_jobs.cli import main

VALID = [
    "s3://my-bucket",
    "s3://my-bucket/",
    "s3://my.bucket-2/some/prefix/",
    "relative/folder",
    "/absolute/folder/file.json",
    "./s3:/x",  # a local folder really named "s3:" must be written like this
    "data/a.npy",
]

INVALID = [
    ("", "empty URI"),
    ("   ", "empty URI"),
    ("s3://", "has no bucket name"),
    ("s3:///key", "has no bucket name"),
    ("s3:/x", "malformed s3 URI"),
    ("s3:x", "malformed s3 URI"),
    ("s3:", "malformed s3 URI"),
    ("S3://bucket/x", "malformed s3 URI"),
    ("s3://Bad_Bucket/x", "invalid s3 bucket name 'Bad_Bucket'"),
    ("s3://ab/x", "invalid s3 bucket name 'ab'"),
    ("s3://bad bucket/x", "invalid s3 bucket name"),
    ("s3://a..b/x", "invalid s3 bucket name"),
    ("s3://-bucket/x", "invalid s3 bucket name"),
    ("s3://192.168.1.10/x", "invalid s3 bucket name"),
    ("gs://bucket/x", "unsupported URI scheme 'gs'"),
    ("http://host/x", "unsupported URI scheme 'http'"),
    ("https://host/x", "unsupported URI scheme 'https'"),
    ("file:///tmp/x", "unsupported URI scheme 'file'"),
    ("folder/s3://bucket", "'://' inside a local path"),
]


@pytest.mark.parametrize("uri", VALID)
def test_check_uri_accepts(uri: str) -> None:
    assert storage.check_uri(uri) == uri


@pytest.mark.parametrize(("uri", "problem"), INVALID)
def test_check_uri_refuses_in_one_line(uri: str, problem: str) -> None:
    with pytest.raises(storage.InvalidURIError) as info:
        storage.check_uri(uri)
    message = str(info.value)
    assert problem in message and "\n" not in message
    if uri.strip():
        assert repr(uri) in message
    # One error type for both conventions: storage failures and bad values.
    assert isinstance(info.value, storage.StorageError) and isinstance(info.value, ValueError)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("uri", ["s3:/x/y.png", "s3:x/y.png", "S3://bucket/y.png", "gs://b/y"])
def test_storage_functions_never_write_a_scheme_folder(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    with pytest.raises(storage.InvalidURIError):
        storage.write_bytes(uri, b"x")
    with pytest.raises(storage.InvalidURIError):
        storage.write_json(uri, {"a": 1})
    with pytest.raises(storage.InvalidURIError):
        storage.upload_dir(src, uri.rsplit("/", 1)[0])
    with pytest.raises(storage.InvalidURIError):
        storage.read_bytes(uri)
    with pytest.raises(storage.InvalidURIError):
        list(storage.list_objects(uri.rsplit("/", 1)[0], missing_ok=True))
    with pytest.raises(storage.InvalidURIError):
        storage.delete_prefix(uri.rsplit("/", 1)[0])
    with pytest.raises(storage.InvalidURIError):
        storage.download_dir(str(src), uri.rsplit("/", 1)[0])
    assert _tree(tmp_path) == ["src", "src/a.txt"]


def test_an_explicit_local_path_may_contain_a_colon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage.write_bytes("./s3:/x/y.txt", b"ok", metadata={"k": "v"})
    assert (tmp_path / "s3:" / "x" / "y.txt").read_bytes() == b"ok"
    assert storage.head("./s3:/x/y.txt")["metadata"] == {"k": "v"}
    assert [o.rel for o in storage.list_objects("./s3:")] == ["x/y.txt"]


def test_split_s3_uses_the_same_rules() -> None:
    assert storage.split_s3("s3://my-bucket/k/p") == ("my-bucket", "k/p")
    with pytest.raises(storage.InvalidURIError, match="invalid s3 bucket name 'UPPER'"):
        storage.split_s3("s3://UPPER/k")


# --- the command line -----------------------------------------------------------------------

STORE, DATA = "store", "data"
CASES = [
    (["translate", "--input", DATA, "--output", "s3:/x", "--model-store", STORE], "--output"),
    (["translate", "--input", "gs://b/in", "--output", "out", "--model-store", STORE], "--input"),
    (["translate", "--input", DATA, "--output", "out", "--model", "s3:x/versions/v1"], "--model"),
    (
        ["translate", "--input", DATA, "--output", "out", "--model-store", "S3://models"],
        "--model-store",
    ),
    (
        ["translate", "--input", DATA, "--output", "o", "--model-store", STORE, "--keys", "s3:k"],
        "--keys",
    ),  # fmt: skip
    (
        [
            "translate",
            "--input",
            DATA,
            "--output",
            "o",
            "--model-store",
            STORE,
            "--work-dir",
            "s3://my-bucket/w",
        ],
        "--work-dir",
    ),  # fmt: skip
    (["train", "--domain-a", DATA, "--domain-b", DATA, "--model-store", "s3://"], "--model-store"),
    (["train", "--domain-a", "s3:/a", "--domain-b", DATA, "--model-store", STORE], "--domain-a"),
    (["train", "--domain-a", DATA, "--domain-b", "tfds:", "--model-store", STORE], "--domain-b"),
    (
        ["train", "--domain-a", "http://x/a.npy", "--domain-b", DATA, "--model-store", STORE],
        "--domain-a",
    ),  # fmt: skip
    (["models", "list", "--model-store", "s3:/x"], "--model-store"),
    (["models", "show", "v1", "--model-store", "gs://models"], "--model-store"),
    (["models", "promote", "v1", "--model-store", "s3://Models"], "--model-store"),
    (["models", "rollback", "--model-store", ""], "--model-store"),
    (["models", "list", "--model-store", STORE, "--result-file", "s3:r.json"], "--result-file"),
    (["plan", "--input", DATA, "--output", "out", "--model", "file:///m"], "--model"),
    (["merge", "--output", "S3://bucket/out", "--run-id", "r1"], "--output"),
    (["new-data", "--domain-b", DATA, "--model-store", "s3://Bad_Bucket"], "--model-store"),
    (["gate", "--candidate", "s3:/m/versions/v1", "--model-store", STORE], "--candidate"),
    (
        ["gate", "--candidate", "m/versions/v1", "--model-store", STORE, "--domain-a", "s3:a"],
        "--domain-a",
    ),  # fmt: skip
    (
        ["evaluate", "--model", "m/versions/v1", "--domain-a", DATA, "--domain-b", "gs://d"],
        "--domain-b",
    ),  # fmt: skip
    (["sample-data", "--out", "s3:"], "--out"),
]


@pytest.mark.parametrize(("argv", "flag"), CASES, ids=[f"{a[0]} {f}" for a, f in CASES])
def test_every_command_refuses_a_bad_uri_before_any_work(
    argv: list[str],
    flag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CYCLEGAN_RESULT_FILE", raising=False)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    bad = argv[argv.index(flag) + 1]
    assert lines[0].startswith(f"cyclegan-jobs {argv[0]}: error: {flag}: ")
    assert repr(bad) in lines[0] or (not bad and "empty URI" in lines[0])
    assert captured.out == ""
    assert os.listdir(tmp_path) == []  # nothing written: no ./s3: folder, no store, no output


def test_a_bad_result_file_from_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CYCLEGAN_RESULT_FILE", "s3:/xcom/return.json")
    assert main(["models", "list", "--model-store", STORE]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "cyclegan-jobs models: error: --result-file: 's3:/xcom/return.json' is a malformed s3 "
        "URI (expected s3://bucket/prefix; for a local path write './s3:/xcom/return.json')"
    ]
    assert os.listdir(tmp_path) == []


def test_tfds_and_npy_domains_stay_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CYCLEGAN_RESULT_FILE", raising=False)
    assert (
        main(["new-data", "--domain-b", "tfds:cycle_gan/vangogh2photo", "--model-store", STORE])
        == 0
    )
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 8, 8, 3), np.uint8))
    Path("b.npy").write_bytes(buffer.getvalue())
    assert main(["new-data", "--domain-b", "b.npy", "--model-store", STORE]) == 0
    assert capsys.readouterr().err == ""


def test_s3_uris_with_a_real_bucket(
    moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CYCLEGAN_RESULT_FILE", raising=False)
    bucket = moto_s3[len("s3://") :]
    args = ["--n-a", "2", "--n-b", "2", "--size", "16"]
    # The right bucket in the wrong spelling: refused, nothing written anywhere.
    for bad in (f"s3:/{bucket}/sample", f"S3://{bucket}/sample", f"s3://{bucket.upper()}/s"):
        assert main(["sample-data", "--out", bad, *args]) == 2
        assert len(capsys.readouterr().err.splitlines()) == 1
    assert list(storage.list_objects(moto_s3)) == []
    assert os.listdir(tmp_path) == []
    # The right spelling works.
    assert main(["sample-data", "--out", f"{moto_s3}/sample", *args]) == 0
    assert len(list(storage.list_objects(f"{moto_s3}/sample"))) == 4

"""The `cyclegan-jobs` command line: subcommands, outputs, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyclegan_jobs import registry
from cyclegan_jobs.cli import main


def _last_json(capsys: pytest.CaptureFixture) -> object:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _fake_version(store: str, tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "generator_AB.keras").write_bytes(b"x")
    registry.write_version(store, name, folder)


def test_models_list_show_promote_rollback(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    store = str(tmp_path / "store")
    for name in ("v1", "v2"):
        _fake_version(store, tmp_path, name)
    assert main(["models", "list", "--model-store", store]) == 0
    assert [v["version"] for v in _last_json(capsys)] == ["v1", "v2"]
    assert main(["models", "promote", "v1", "--model-store", store, "--reason", "first"]) == 0
    assert main(["models", "promote", "v2", "--model-store", store]) == 0
    capsys.readouterr()
    assert main(["models", "show", "v2", "--model-store", store]) == 0
    assert _last_json(capsys)["version"] == "v2"
    assert main(["models", "rollback", "--model-store", store]) == 0
    assert _last_json(capsys)["version"] == "v1"
    assert registry.promoted(store)["version"] == "v1"


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    store = str(tmp_path / "store")
    assert main(["models", "promote", "v9", "--model-store", store]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cyclegan-jobs models: error:") and "v9" in err and "\n" not in err
    assert main(["models", "rollback", "--model-store", store]) == 2
    missing = str(tmp_path / "nowhere")
    code = main(
        ["train", "--domain-a", missing, "--domain-b", missing, "--model-store", store]
        + ["--preset", "tiny", "--image-size", "32"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in err and "nowhere" in err
    assert not (tmp_path / "store" / "versions").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--domain-a", "a", "--domain-b", "b", "--model-store", "m", "--preset", "huge"],
        ["train", "--domain-a", "a", "--domain-b", "b", "--model-store", "m", "--epochs", "0"],
        ["train", "--domain-a", "a", "--domain-b", "b", "--model-store", "m", "--image-size", "40"],
    ],
)
def test_bad_arguments_are_refused_before_any_work(args: list[str], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse refuses choices and types itself
        code = exit_.code
    assert code == 2
    assert capsys.readouterr().err.strip()


def test_sample_data_command(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = str(tmp_path / "data")
    assert main(["sample-data", "--out", out, "--n-a", "3", "--n-b", "2", "--size", "16"]) == 0
    summary = _last_json(capsys)
    assert summary["n_a"] == 3 and summary["n_b"] == 2
    assert len(list(Path(summary["domain_a"]).iterdir())) == 3
    assert len(list(Path(summary["domain_b"]).iterdir())) == 2

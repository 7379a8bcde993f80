"""The `cyclegan-jobs` command line: subcommands, outputs, exit codes and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest

from cyclegan_jobs import cli, registry, runtime
from cyclegan_jobs.cli import main
from cyclegan_jobs.config import PRESET_BATCH_SIZE, PRESET_SELECT_EVERY, TrainConfig, preset


def _last_json(capsys: pytest.CaptureFixture) -> object:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _fake_version(store: str, tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "generator_AB.keras").write_bytes(b"x")
    registry.write_version(store, name, folder)


def test_models_list_show_promote_rollback(tmp_path: Path, capsys) -> None:
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


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
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
        ["translate", "--input", "i", "--output", "o", "--model", "m", "--size", "big"],
        ["translate", "--input", "i", "--output", "o", "--model", "m", "--size", "0"],
        ["translate", "--input=i", "--output=o", "--model=m", "--size=9", "--keep-size"],
        ["translate", "--input", "i", "--output", "o", "--model", "m", "--tile", "100"],
    ],
)
def test_bad_arguments_are_refused_before_any_work(args: list[str], tmp_path: Path, capsys) -> None:
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse refuses choices and types itself
        code = exit_.code
    assert code == 2
    assert capsys.readouterr().err.strip()


def test_size_is_read_as_users_and_the_nightly_form_write_it() -> None:
    from cyclegan_jobs.config import parse_size

    assert [parse_size(v) for v in (None, "", "default", "native", "1024", 512)] == [
        None, None, None, "native", 1024, 512,
    ]  # fmt: skip
    for bad in ("0", "-5", "12px", "1e3", "064", "Native"):
        with pytest.raises(ValueError, match="native"):
            parse_size(bad)


def test_sample_data_command(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "data")
    assert main(["sample-data", "--out", out, "--n-a", "3", "--n-b", "2", "--size", "16"]) == 0
    summary = _last_json(capsys)
    assert summary["n_a"] == 3 and summary["n_b"] == 2
    assert len(list(Path(summary["domain_a"]).iterdir())) == 3
    assert len(list(Path(summary["domain_b"]).iterdir())) == 2


TRAIN = ["train", "--domain-a", "a", "--domain-b", "b", "--model-store", "m"]
TINY_EVERY, TINY_BATCH = PRESET_SELECT_EVERY["tiny"], PRESET_BATCH_SIZE["tiny"]


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """`train` commands run up to the job, which only records the TrainConfig it was given (a
    stand-in cyclegan_jobs.training.train module: no TensorFlow, whatever state train.py is in)."""
    configs: list[TrainConfig] = []
    fake = types.ModuleType("cyclegan_jobs.training.train")
    fake.train = lambda cfg: configs.append(cfg) or {"trained": cfg.run_id}
    monkeypatch.setitem(sys.modules, "cyclegan_jobs.training.train", fake)
    monkeypatch.setattr(runtime, "start_tensorflow", lambda: None)
    return configs


@pytest.mark.parametrize(
    ("flags", "select_every", "upsample", "batch_size"),
    [
        ([], 0, None, 1),  # the seed preset: the notebook, no model selection, batch 1
        (["--preset", "seed"], 0, None, 1),
        (["--preset", "tiny"], TINY_EVERY, None, TINY_BATCH),
        (["--preset", "paper"], PRESET_SELECT_EVERY["paper"], None, 1),
        (["--preset", "seed", "--select-every", "50"], 50, None, 1),
        (["--preset", "tiny", "--select-every", "0", "--batch-size", "3"], 0, None, 3),
        (["--preset", "tiny", "--upsample", "transpose"], TINY_EVERY, "transpose", TINY_BATCH),
        (["--upsample", "resize", "--select-every", "7"], 7, "resize", 1),
    ],
)
def test_train_flags_map_onto_the_training_config(
    flags: list[str],
    select_every: int,
    upsample: str | None,
    batch_size: int,
    trained: list[TrainConfig],
) -> None:
    code, result = cli.run([*TRAIN, *flags, "--run-id", "r1"], log_to_stderr=False)
    assert (code, result) == (0, {"trained": "r1"})
    (cfg,) = trained
    assert (cfg.select_every, cfg.batch_size) == (select_every, batch_size)
    # Everything else in the model and the loss is the preset's.
    name = flags[flags.index("--preset") + 1] if "--preset" in flags else "seed"
    model, loss = preset(name)
    assert cfg.model == dataclasses.replace(model, upsample=upsample or model.upsample)
    assert cfg.loss == loss


@pytest.mark.parametrize(
    ("name", "flags", "model_fields", "loss_fields"),
    [
        ("tiny", [], {"residual": True}, {"disc_augment": True}),
        (
            "tiny",
            ["--disc-augment", "preset", "--residual", "preset"],
            {"residual": True},
            {"disc_augment": True},
        ),
        ("tiny", ["--disc-augment", "off"], {"residual": True}, {"disc_augment": False}),
        ("tiny", ["--residual", "off"], {"residual": False}, {"disc_augment": True}),
        ("seed", [], {"residual": False}, {"disc_augment": False}),
        ("seed", ["--disc-augment", "on"], {"residual": False}, {"disc_augment": True}),
        ("seed", ["--residual", "on"], {"residual": True}, {"disc_augment": False}),
        ("paper", ["--disc-augment", "off"], {}, {"disc_augment": False}),
    ],
)
def test_switches_turn_the_presets_choice_on_or_off(
    name: str,
    flags: list[str],
    model_fields: dict,
    loss_fields: dict,
    trained: list[TrainConfig],
) -> None:
    """--disc-augment (LossConfig) and --residual (ModelConfig): preset, on or off."""
    code, _ = cli.run([*TRAIN, "--preset", name, *flags, "--run-id", "r1"], log_to_stderr=False)
    assert code == 0
    (cfg,) = trained
    # Only those fields differ from the preset's model and loss.
    assert cfg.model == dataclasses.replace(preset(name)[0], **model_fields)
    assert cfg.loss == dataclasses.replace(preset(name)[1], **loss_fields)


def test_residual_on_a_resnet_preset_is_a_usage_error(
    trained: list[TrainConfig], capsys: pytest.CaptureFixture
) -> None:
    code = main([*TRAIN, "--preset", "paper", "--residual", "on", "--run-id", "r1"])
    assert code == 2 and not trained
    assert "U-Net option" in capsys.readouterr().err


def test_the_presets_select_differently() -> None:
    # Else the cases above could not tell the preset's default from a fixed one.
    assert PRESET_SELECT_EVERY["seed"] == 0 and PRESET_SELECT_EVERY["tiny"] > 0
    assert PRESET_BATCH_SIZE["seed"] == 1 and PRESET_BATCH_SIZE["tiny"] not in (1, 3)
    assert preset("tiny")[0].upsample != "transpose"
    assert preset("tiny")[1].disc_augment and not preset("seed")[1].disc_augment
    assert preset("tiny")[0].residual and not preset("seed")[0].residual


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--select-every", "-1"], "must be >= 0"),
        (["--select-every", "often"], "--select-every"),
        (["--upsample", "bilinear"], "invalid choice"),
        (["--disc-augment", "yes"], "invalid choice"),
        (["--residual", "true"], "invalid choice"),
    ],
)
def test_bad_train_flags_are_usage_errors(
    flags: list[str], message: str, trained: list[TrainConfig], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.run([*TRAIN, *flags], log_to_stderr=False)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert trained == []

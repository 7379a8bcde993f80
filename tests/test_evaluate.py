"""Evaluation metrics of real (tiny) models and the quality gate's decisions."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config

from cyclegan_jobs import images, registry, storage
from cyclegan_jobs.cli import main
from cyclegan_jobs.config import preset
from cyclegan_jobs.evaluation.evaluate import Thresholds, evaluate, gate, load_style, score_outputs
from cyclegan_jobs.sample_data import paint, synthetic_faces, write_sample_domains
from cyclegan_jobs.training.networks import build_generator
from cyclegan_jobs.training.train import train

SIZE = 64
PAINT = "cyclegan_jobs.sample_data:paint"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Sample data, a model trained for 600 steps, and versions that do nothing or emit NaN."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_sample_domains(str(root / "data"), n_a=48, n_b=48, size=SIZE, seed=0)
    # The versions that learned nothing: fresh networks without the residual start (which
    # would make them the identity), so their outputs are noise.
    model_cfg = dataclasses.replace(preset("tiny", SIZE)[0], residual=False)
    store = str(root / "store")
    trained = train(tiny_config(data, store, SIZE, steps_per_epoch=150, epochs=4, log_every=75))
    config = {"model": asdict(model_cfg), "train": {"domain_a": data["domain_a"],
              "domain_b": data["domain_b"], "holdout": 0.3}}  # fmt: skip

    def version(name: str, poison: bool = False) -> str:
        folder = root / name
        folder.mkdir()
        for net_name in ("generator_AB", "generator_BA"):
            net = build_generator(model_cfg, name=net_name)  # fresh init: learned nothing
            if poison:
                net.set_weights([np.full_like(w, np.nan) for w in net.get_weights()])
            net.save(folder / f"{net_name}.keras")
        (folder / "config.json").write_text(json.dumps(config))
        return registry.write_version(store, name, folder)

    return {
        "data": data,
        "store": store,
        "trained": trained["version_uri"],
        "untrained": version("v-untrained"),
        "nan": version("v-nan", poison=True),
    }


def test_a_short_run_keeps_the_cycle_whole(world: dict) -> None:
    # The tiny preset, 600 steps: the residual start begins at the identity, and the cycle
    # stays whole while the translation moves (measured: cycle loss 0.019-0.034; a generator
    # that starts from noise begins near 0.25).
    rows = storage.read_bytes(storage.join(world["trained"], "history.jsonl")).splitlines()
    curve = [round(json.loads(row)["cycle_loss"], 4) for row in rows]
    assert len(curve) == 8
    assert max(curve) < 0.05, curve  # MSE in [-1, 1]: above 19 dB PSNR at every log


def test_trained_model_beats_doing_nothing(world: dict) -> None:
    data = world["data"]
    good = evaluate(world["trained"], data["domain_a"], data["domain_b"], paired_b_to_a=PAINT)
    bad = evaluate(world["untrained"], data["domain_a"], data["domain_b"], paired_b_to_a=PAINT)
    assert good["non_finite"] == [] and bad["non_finite"] == []
    assert good["images"]["a"] > 5 and good["images"]["b"] > 5  # held-out images only
    assert good["cycle_psnr"] > bad["cycle_psnr"] + 1.0
    # Distribution match: translated images are closer to the real target domain than the
    # untranslated inputs (measured at this setting: SWD 312 vs 338, colour 0.054 vs 0.088).
    swd = good["swd"]
    assert good["swd_mean"] < (swd["a2b_untranslated"] + swd["b2a_untranslated"]) / 2
    assert good["swd_mean"] < bad["swd_mean"]
    assert good["color"]["b2a"] < 0.8 * good["color"]["b2a_untranslated"]
    assert good["paired"]["psnr"] > bad["paired"]["psnr"]


def test_non_finite_outputs_are_reported_as_such(world: dict, tmp_path: Path) -> None:
    data = world["data"]
    result = evaluate(world["nan"], data["domain_a"], data["domain_b"], write=True)
    assert result["cycle_psnr"] is None and "cycle.a.psnr" in result["non_finite"]
    stored = storage.read_json(storage.join(world["nan"], "evaluation.json"))
    assert stored["cycle"]["a"]["psnr"] is None  # JSON null, never NaN


def test_gate_decisions(world: dict) -> None:
    store = world["store"]
    lenient = Thresholds(min_cycle_psnr=5.0)
    # NaN candidate: refused, nothing promoted.
    nan = gate(world["nan"], store, thresholds=lenient, promote=True)
    assert not nan["passed"] and "non-finite" in nan["reasons"][0]
    assert registry.promoted(store) is None
    # First candidate: judged on the floor only.
    floor = gate(world["untrained"], store, thresholds=Thresholds(min_cycle_psnr=60.0))
    assert not floor["passed"] and "floor 60.0 dB" in floor["reasons"][0]
    first = gate(world["untrained"], store, thresholds=lenient, promote=True)
    assert first["passed"] and first["compared_with"] is None and first["promoted"]
    # A better candidate passes and is promoted.
    better = gate(world["trained"], store, thresholds=lenient, promote=True)
    assert better["passed"] and better["compared_with"] == "v-untrained"
    trained_name = registry.promoted(store)["version"]
    assert world["trained"].endswith(trained_name)
    # A worse one is refused with the reason, and the promoted version stays.
    worse = gate(world["untrained"], store, thresholds=lenient, promote=True)
    assert not worse["passed"] and any("worse than the promoted" in r for r in worse["reasons"])
    assert registry.promoted(store)["version"] == trained_name
    # Every decision is recorded with the candidate.
    recorded = storage.read_json(storage.join(world["untrained"], "gate.json"))
    assert recorded["passed"] is False and recorded["reasons"] == worse["reasons"]


def test_evaluate_and_gate_on_s3(world: dict, s3_bucket: str, capsys) -> None:
    store = f"{s3_bucket}/models"
    local = Path(world["trained"])
    registry.write_version(store, "v-s3", _without_marker(local))
    data = write_sample_domains(f"{s3_bucket}/data", n_a=16, n_b=16, size=SIZE, seed=4)
    vuri = registry.version_uri(store, "v-s3")
    args = ["evaluate", "--model", vuri, "--domain-a", data["domain_a"]]
    args += ["--domain-b", data["domain_b"], "--write"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["version"] == "v-s3" and result["cycle_psnr"] > 10
    assert storage.exists(storage.join(vuri, "evaluation.json"))
    args = ["gate", "--candidate", vuri, "--model-store", store, "--min-cycle-psnr", "99"]
    args += ["--domain-a", data["domain_a"], "--domain-b", data["domain_b"]]
    assert main(args) == 1  # refused: exit code tells the decision
    assert "refused" in capsys.readouterr().err
    assert main([*args[:-6], "--min-cycle-psnr", "5", "--promote", *args[-4:]]) == 0
    assert registry.promoted(store)["version"] == "v-s3"


def _without_marker(version_dir: Path) -> Path:
    """A copy of a local version's files minus VERSION.json, ready to be written elsewhere."""
    import shutil

    copy = version_dir.parent / f"{version_dir.name}-copy"
    if not copy.exists():
        shutil.copytree(version_dir, copy)
        (copy / "VERSION.json").unlink()
    return copy


def test_load_style_from_module_and_file(tmp_path: Path) -> None:
    assert load_style(PAINT).__name__ == "paint"
    (tmp_path / "mystyle.py").write_text("def invert(x):\n    return 255 - x\n")
    fn = load_style(f"{tmp_path / 'mystyle.py'}:invert")
    assert fn(np.zeros((1, 2, 2, 3), np.uint8)).max() == 255
    with pytest.raises(ValueError, match="no function"):
        load_style("cyclegan_jobs.sample_data:nope")


def test_score_outputs_measures_a_job_against_the_known_mapping(tmp_path: Path) -> None:
    faces = synthetic_faces(5, 32, seed=7)
    rng = np.random.default_rng(0)
    for i, face in enumerate(faces):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"f{i}.png").write_bytes(images.encode_png(face))
        if i == 4:
            continue  # no outputs: counted as unscored
        noisy = np.clip(paint(face).astype(int) + rng.integers(-6, 7, face.shape), 0, 255)
        for root, image in (("stylized", noisy.astype(np.uint8)), ("reconstructed", face)):
            (tmp_path / "out" / root).mkdir(parents=True, exist_ok=True)
            (tmp_path / "out" / root / f"f{i}.png").write_bytes(images.encode_png(image))
    s = score_outputs(
        str(tmp_path / "in"), str(tmp_path / "out"), "cyclegan_jobs.sample_data:paint"
    )
    assert s["scored"] == 4 and len(s["unscored"]) == 1 and "f4.png" in s["unscored"][0]
    assert 30 < s["psnr_true"] < 40  # +-6 levels of noise: about 33 dB
    assert s["psnr_do_nothing"] < 25 and s["gain_db"] == s["psnr_true"] - s["psnr_do_nothing"]
    assert s["cycle_psnr"] >= 99  # the reconstructions are the inputs (metrics.psnr caps)
    assert s["checkerboard_db"] < 2.0
    # Stylized outputs that are the inputs score exactly the do-nothing PSNR.
    for i in range(4):
        (tmp_path / "out" / "stylized" / f"f{i}.png").write_bytes(images.encode_png(faces[i]))
    again = score_outputs(
        str(tmp_path / "in"), str(tmp_path / "out"), "cyclegan_jobs.sample_data:paint"
    )
    assert again["gain_db"] == 0.0


class _MapGenerators:
    """inference.Generators' apply(): both generators one fixed function of the image."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def apply(self, name: str, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return self.fn(images.to_unit(x))


def test_selection_sees_texture_that_no_colour_map_explains() -> None:
    """fit_residual: ~0 for a global colour transform (channels mixed, contrast), large for
    the same transform with a texture over it; the other scores are there too."""
    from cyclegan_jobs.evaluation.evaluate import selection_metrics

    faces = synthetic_faces(8, 32, seed=4)
    mix = np.array([[0.6, 0.3, 0.0], [0.1, 0.7, 0.1], [0.0, 0.2, 0.7]], np.float32)
    texture = 0.15 * np.sin(np.arange(32) * 2.1)[None, :, None, None].astype(np.float32)
    colour = selection_metrics(_MapGenerators(lambda x: x @ mix.T + 0.05), faces, faces)
    textured = selection_metrics(
        _MapGenerators(lambda x: np.clip(x @ mix.T + 0.05 + texture, -1, 1)), faces, faces
    )
    assert colour["fit_residual"] < 0.01 < 0.05 < textured["fit_residual"]
    assert {"swd_mean", "cycle_psnr", "color_mean", "identity_psnr"} <= set(colour)

"""The training job end to end on the tiny preset: learning, exact resume, versions, failures."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config

from cyclegan_jobs import registry, storage
from cyclegan_jobs.config import TrainConfig, preset
from cyclegan_jobs.inference import load_generators
from cyclegan_jobs.sample_data import write_npy, write_sample_domains
from cyclegan_jobs.training import hooks, losses
from cyclegan_jobs.training.datasets import DataError
from cyclegan_jobs.training.networks import build_generator
from cyclegan_jobs.training.train import Trainer, TrainingError, train

SIZE = 32


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_sample_domains(
        str(tmp_path_factory.mktemp("sample")), n_a=24, n_b=24, size=SIZE, seed=3
    )


def _cfg(sample: dict, store: str, **changes) -> TrainConfig:
    """This module's short runs: float32, frequent logs and checkpoints."""
    base = dict(precision="float32", log_every=2, checkpoint_every=3)
    return tiny_config(sample, store, SIZE, **{**base, **changes})


def _weights(version_uri: str, tmp: Path) -> dict[str, np.ndarray]:
    """Every array of the four .weights.h5 files of a version, keyed by file and dataset path."""
    out = {}
    for name in ("generator_AB", "generator_BA", "discriminator_A", "discriminator_B"):
        local = tmp / f"{name}.weights.h5"
        local.write_bytes(storage.read_bytes(storage.join(version_uri, f"{name}.weights.h5")))
        with h5py.File(local, "r") as f:
            f.visititems(
                lambda path, obj, n=name: (
                    out.__setitem__(f"{n}/{path}", obj[()])
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
    return out


def _iterations(store: str, run_id: str, tmp: Path) -> dict[str, int]:
    """Step counter and optimizer iterations stored in a run's last mirrored checkpoint."""
    local = tmp / f"ckpt-{run_id}"
    storage.download_dir(registry.runs_uri(store, run_id) + "/checkpoints", local)
    reader = tf.train.load_checkpoint(str(local))
    names = reader.get_variable_to_shape_map()
    wanted = [n for n in names if "iterations" in n or n.startswith("step")]
    picked = {n: int(reader.get_tensor(n)) for n in wanted}
    assert len(picked) == 3, picked  # step, g_optimizer and d_optimizer iterations
    return picked


@pytest.fixture(scope="module")
def uninterrupted(sample: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """2N = 8 steps in one go, deterministic: the reference for the resume tests."""
    store = str(tmp_path_factory.mktemp("store_full"))
    cfg = _cfg(sample, store, epochs=2, steps_per_epoch=4, deterministic=True, run_id="full")
    summary = train(cfg)
    return {"store": store, "summary": summary}


def _assert_same_training(reference: dict, summary: dict, store: str, run_id: str, tmp: Path):
    assert summary["steps"] == reference["summary"]["steps"] == 8
    ref_w = _weights(reference["summary"]["version_uri"], tmp / "ref")
    got_w = _weights(summary["version_uri"], tmp / "got")
    assert ref_w.keys() == got_w.keys() and len(ref_w) > 50
    worst = max(float(np.max(np.abs(ref_w[k] - got_w[k]))) for k in ref_w)
    assert worst <= 1e-5, f"resumed weights differ by up to {worst}"
    assert sorted(_iterations(store, run_id, tmp).values()) == [8, 8, 8]
    assert sorted(_iterations(reference["store"], "full", tmp).values()) == [8, 8, 8]


def test_exact_resume_from_local_checkpoint(sample, uninterrupted, tmp_path) -> None:
    store, work = str(tmp_path / "store"), str(tmp_path / "work")
    (tmp_path / "ref").mkdir(), (tmp_path / "got").mkdir()
    cfg = _cfg(sample, store, epochs=2, steps_per_epoch=4, deterministic=True, run_id="r1")
    # Stop mid-epoch 2 (step 5 of 8): the resume must skip exactly the batches already seen.
    first = train(dataclasses.replace(cfg, stop_after=5, work_dir=work))
    assert first["status"] == "stopped" and first["step"] == 5
    assert registry.list_versions(store) == []
    second = train(dataclasses.replace(cfg, work_dir=work))
    assert second["resumed_from"] == 5
    _assert_same_training(uninterrupted, second, store, "r1", tmp_path)


def test_exact_resume_from_s3_into_an_empty_work_dir(sample, uninterrupted, s3_bucket, tmp_path):
    store = f"{s3_bucket}/models"
    (tmp_path / "ref").mkdir(), (tmp_path / "got").mkdir()
    cfg = _cfg(sample, store, epochs=2, steps_per_epoch=4, deterministic=True, run_id="r2")
    first = train(dataclasses.replace(cfg, stop_after=4, work_dir=str(tmp_path / "machine1")))
    assert first["step"] == 4
    # A fresh machine: nothing local, everything comes from the mirror in the model store.
    second = train(dataclasses.replace(cfg, work_dir=str(tmp_path / "machine2")))
    assert second["resumed_from"] == 4
    _assert_same_training(uninterrupted, second, store, "r2", tmp_path)
    # A finished run is not trained again and makes no second version.
    again = train(dataclasses.replace(cfg, work_dir=str(tmp_path / "machine3")))
    assert again["version"] == second["version"]
    assert len(registry.list_versions(store)) == 1


def test_the_moving_average_is_exported_not_trained(sample, uninterrupted, tmp_path) -> None:
    """The tiny preset's ema_momentum changes what is exported, not what is trained: the
    discriminators are those of the run without it to the bit, the generators are not. (The
    exact-resume tests above resume the average: `uninterrupted` keeps one.)"""
    assert uninterrupted["summary"]["steps"] == 8
    (tmp_path / "plain").mkdir(), (tmp_path / "averaged").mkdir()
    cfg = _cfg(sample, str(tmp_path / "store"), epochs=2, steps_per_epoch=4, deterministic=True)
    assert cfg.loss.ema_momentum > 0  # the preset's: `uninterrupted` trained with it
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, ema_momentum=0.0))
    plain = _weights(train(cfg)["version_uri"], tmp_path / "plain")
    averaged = _weights(uninterrupted["summary"]["version_uri"], tmp_path / "averaged")
    assert plain.keys() == averaged.keys()
    differ = {k for k in plain if not np.allclose(plain[k], averaged[k], rtol=0, atol=1e-6)}
    assert {k.split("/")[0] for k in differ} == {"generator_AB", "generator_BA"}


class _LearningRates(hooks.Hook):
    """After each step, the rate each optimizer applies next: (generators, discriminators)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    def after_step(self, t, logs) -> None:
        self.rows.append(
            (float(t.cg.g_optimizer.learning_rate), float(t.cg.d_optimizer.learning_rate))
        )


def test_the_discriminators_learn_at_their_share_of_the_rate(sample, tmp_path) -> None:
    """tiny's discriminators step at disc_lr_scale of the generators' rate at every step, the
    linear decay included."""
    cfg = _cfg(sample, str(tmp_path / "store"), epochs=1, steps_per_epoch=6)
    rates = _LearningRates()
    Trainer(cfg, extra_hooks=(rates,)).run()
    gen, disc = np.array(rates.rows).T
    assert len(gen) == 6 and gen[0] == pytest.approx(cfg.loss.learning_rate)
    assert gen[-1] < gen[3] < gen[0]  # the decay runs over the second half of the steps
    np.testing.assert_allclose(disc, cfg.loss.disc_lr_scale * gen, rtol=1e-6)


def test_version_contents_and_reload(uninterrupted, tmp_path) -> None:
    summary, store = uninterrupted["summary"], uninterrupted["store"]
    version = registry.get_version(store, summary["version"])
    files = set(version["files"])
    assert {
        "generator_AB.keras", "generator_BA.keras", "config.json", "metrics.json",
        "generator_AB.weights.h5", "generator_BA.weights.h5",
        "discriminator_A.weights.h5", "discriminator_B.weights.h5",
        "samples/final.png", "samples/loss_curve.png", "history.jsonl",
    } <= files  # fmt: skip
    assert version["config"]["model"]["preset"] == "tiny"
    metrics = version["metrics"]
    assert metrics["steps"] == 8 and np.isfinite(metrics["final_losses"]["g_loss"])
    assert metrics["data"]["a"]["train"] + metrics["data"]["a"]["held_out"] == 24
    assert len(metrics["snapshot"]["b"]) == 24 and all(s["etag"] for s in metrics["snapshot"]["b"])
    # The safe-mode .keras generators and the raw weights give identical outputs.
    gens = load_generators(summary["version_uri"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    for name, g in gens.items():
        fresh = build_generator(preset("tiny", SIZE)[0], name=name)
        fresh.load_weights(Path(summary["version_uri"]) / f"{name}.weights.h5")
        np.testing.assert_array_equal(g(x).numpy(), fresh(x).numpy())
    assert not np.allclose(gens["generator_AB"](x).numpy(), gens["generator_BA"](x).numpy())


def test_sample_pictures_are_written(uninterrupted) -> None:
    from cyclegan_jobs.images import decode_image

    vuri = uninterrupted["summary"]["version_uri"]
    grid = decode_image(storage.read_bytes(storage.join(vuri, "samples", "final.png")))
    curve = decode_image(storage.read_bytes(storage.join(vuri, "samples", "loss_curve.png")))
    assert grid.shape[1] > grid.shape[0] > 2 * SIZE  # 2 rows x 3 columns of pictures
    assert curve.shape[0] > 100 and curve.std() > 10
    history = storage.read_bytes(storage.join(vuri, "history.jsonl")).decode().splitlines()
    assert [json.loads(line)["step"] for line in history] == [2, 4, 6, 8]


def test_non_finite_loss_stops_without_a_version(sample, tmp_path, monkeypatch) -> None:
    mse = losses.mse
    monkeypatch.setattr(losses, "mse", lambda a, b: mse(a, b) * float("nan"))
    store = str(tmp_path / "store")
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1 .*no version written"):
        train(_cfg(sample, store, epochs=1, steps_per_epoch=3))
    assert registry.list_versions(store) == []
    assert not (tmp_path / "store" / "versions").exists()


def test_clear_errors_for_bad_data(sample, tmp_path) -> None:
    store = str(tmp_path / "store")
    with pytest.raises(DataError, match="no-such-folder"):
        train(_cfg(sample, store, domain_a=str(tmp_path / "no-such-folder")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        train(_cfg(sample, store, domain_b=str(tmp_path / "empty")))
    bad = write_npy(str(tmp_path / "faces.npy"), np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"N x H x W x 3"):
        train(_cfg(sample, store, domain_b=bad))
    assert registry.list_versions(store) == []


def test_resume_with_other_settings_is_refused(sample, tmp_path) -> None:
    store = str(tmp_path / "store")
    cfg = _cfg(sample, store, epochs=1, steps_per_epoch=2, run_id="same", stop_after=1)
    train(cfg)
    with pytest.raises(TrainingError, match="different batch_size"):
        train(dataclasses.replace(cfg, batch_size=2))


MIRRORED = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)  # the library's progress, on stderr
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cyclegan_jobs.config import TrainConfig, preset
from cyclegan_jobs.training.train import train
model_cfg, loss_cfg = preset("tiny", 32)
cfg = TrainConfig(
    domain_a=sys.argv[1], domain_b=sys.argv[2], model_store=sys.argv[3], model=model_cfg,
    loss=loss_cfg, precision="float32", epochs=1, steps_per_epoch=3, log_every=1, select_every=2,
)
print(json.dumps(train(cfg, strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))))
"""


def test_mirrored_strategy_over_two_devices(sample, tmp_path) -> None:
    # No GPUs here: two logical CPU devices exercise the same replica code path.
    import subprocess
    import sys

    store = str(tmp_path / "store")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED, sample["domain_a"], sample["domain_b"], store],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["steps"] == 3
    assert "2 replica(s)" in proc.stderr and "batch 2" in proc.stderr
    assert summary["selected"]["step"] in (2, 3)  # model selection scores mirrored weights too
    assert np.isfinite(summary["final_losses"]["g_loss"])


def test_time_budget_finishes_early_with_a_version(sample, tmp_path, caplog) -> None:
    # A budget of 0.6 s is spent by the first step (it includes compiling the step).
    cfg = _cfg(sample, str(tmp_path / "store"), epochs=50, steps_per_epoch=10, max_minutes=0.01)
    caplog.set_level(logging.INFO, logger="cyclegan_jobs")
    summary = train(cfg)
    # Progress is logged at INFO through `logging` (Airflow shows it as INFO, not as errors),
    # each slow stage announced before it starts; a healthy run logs no warning.
    ours = [r for r in caplog.records if r.name.startswith("cyclegan_jobs")]
    assert {r.levelno for r in ours} == {logging.INFO}, [r.getMessage() for r in ours]
    said = [r.getMessage() for r in ours if r.name == "cyclegan_jobs.training.train"]
    for stage in ("loading domain a", "loading domain b", "building the tiny model"):
        assert any(m.startswith(stage) for m in said), (stage, said)
    assert any("compiling the training step" in m for m in said)
    assert any(m.startswith("wrote version") for m in said)
    assert summary["status"] == "finished" and summary["stopped_by_time_budget"] is True
    assert 1 <= summary["steps"] < 500
    assert registry.list_versions(str(tmp_path / "store"))[0]["version"] == summary["version"]


# --- model selection -------------------------------------------------------------------------

SABOTAGE_AT, SELECT_EVERY = 8, 4


class _Sabotage(hooks.Hook):
    """From step SABOTAGE_AT on, a learning rate 50x too high: every later step is worse."""

    def after_step(self, t, logs) -> None:
        if t.state.step >= SABOTAGE_AT:
            t.cg.g_optimizer.learning_rate = 0.05
            t.cg.d_optimizer.learning_rate = 0.05


def _selection_cfg(sample: dict, store: str, run_id: str, **changes) -> TrainConfig:
    cfg = _cfg(
        sample, store, epochs=2, steps_per_epoch=12, select_every=SELECT_EVERY, log_every=4,
        deterministic=True, run_id=run_id, **changes,
    )  # fmt: skip
    # A constant LR, which _Sabotage can set (a decaying schedule cannot be overwritten).
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, linear_decay=False))


def _selection_rows(vuri: str) -> list[dict]:
    lines = storage.read_bytes(storage.join(vuri, "history.jsonl")).decode().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "selection"]


@pytest.fixture(scope="module")
def selected(sample: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 steps, sabotaged from step 8, scored every 4: the reference for the selection tests."""
    store = str(tmp_path_factory.mktemp("store_selected"))
    summary = Trainer(_selection_cfg(sample, store, "sel"), extra_hooks=(_Sabotage(),)).run()
    return {"store": store, "summary": summary}


def test_selection_exports_the_earlier_better_weights(selected, sample, tmp_path) -> None:
    from cyclegan_jobs.evaluation.evaluate import selection_metrics
    from cyclegan_jobs.inference import Generators
    from cyclegan_jobs.training.datasets import load_domain

    summary, vuri = selected["summary"], selected["summary"]["version_uri"]
    assert summary["steps"] == 24
    rows = _selection_rows(vuri)
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20, 24]
    # The sabotage made every later score worse, and the version is an earlier step's.
    best_step = summary["selected"]["step"]
    assert best_step <= SABOTAGE_AT
    floor = summary["selected"]["cycle_psnr_floor"]
    keys = {r["step"]: hooks.selection_key(r, floor) for r in rows}
    kept = None
    for row in rows:  # the pick is what the rule, replayed over the recorded scores, keeps
        kept = row if hooks.replaces(row, kept, floor) else kept
    assert kept["step"] == best_step
    assert all(keys[s] > keys[best_step] for s in keys if s > SABOTAGE_AT)
    metrics = registry.get_version(selected["store"], summary["version"])["metrics"]
    assert metrics["selected"] == summary["selected"] and metrics["steps"] == 24
    # The recorded score is the exported model's: score the version again, on the same images.
    model_cfg = preset("tiny", SIZE)[0]
    gens = Generators.load(vuri, model_cfg, precision="float32")
    held = hooks.held_out_for_selection(
        {d: load_domain(sample[f"domain_{d}"], SIZE, domain=d) for d in "ab"}
    )
    again = selection_metrics(gens, held["a"], held["b"])
    assert again["swd_mean"] == pytest.approx(summary["selected"]["swd_mean"], rel=1e-4)
    assert again["cycle_psnr"] == pytest.approx(summary["selected"]["cycle_psnr"], abs=1e-3)
    # ... and not the last step's: the last checkpoint holds other weights.
    (tmp_path / "v").mkdir()
    exported = _weights(vuri, tmp_path / "v")
    storage.download_dir(
        registry.runs_uri(selected["store"], "sel") + "/checkpoints", tmp_path / "c"
    )
    last = tf.train.load_checkpoint(str(tmp_path / "c"))
    in_ckpt = [
        last.get_tensor(n)
        for n in last.get_variable_to_shape_map()
        if n.startswith("generator_BA/")
    ]
    ours = [w for k, w in exported.items() if k.startswith("generator_BA/")]
    same = [any(a.shape == w.shape and np.array_equal(a, w) for w in ours) for a in in_ckpt]
    assert len(in_ckpt) > 20 and sum(same) < len(in_ckpt) / 2, (sum(same), len(in_ckpt))


def test_resume_keeps_the_best_so_far(selected, sample, tmp_path) -> None:
    store = str(tmp_path / "store")
    cfg = _selection_cfg(sample, store, "sel2")
    sabotage = (_Sabotage(),)
    first = Trainer(
        dataclasses.replace(cfg, stop_after=14, work_dir=str(tmp_path / "m1")), extra_hooks=sabotage
    ).run()
    assert first["status"] == "stopped" and first["step"] == 14
    best_json = json.loads(storage.read_bytes(registry.runs_uri(store, "sel2") + "/best/best.json"))
    assert best_json["step"] == selected["summary"]["selected"]["step"]
    # A fresh machine: the best-so-far comes back from the mirror with the checkpoint.
    second = Trainer(
        dataclasses.replace(cfg, work_dir=str(tmp_path / "m2")), extra_hooks=sabotage
    ).run()
    assert second["resumed_from"] == 14
    assert second["selected"] == selected["summary"]["selected"]
    (tmp_path / "ref").mkdir(), (tmp_path / "got").mkdir()
    ref_w = _weights(selected["summary"]["version_uri"], tmp_path / "ref")
    got_w = _weights(second["version_uri"], tmp_path / "got")
    worst = max(float(np.max(np.abs(ref_w[k] - got_w[k]))) for k in ref_w)
    assert worst <= 1e-5, f"the resumed run exported other weights (up to {worst} apart)"

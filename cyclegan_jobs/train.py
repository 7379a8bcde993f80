"""The retraining job: data -> resumable CycleGAN training -> a new version in the model store."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import secrets
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from . import datasets, images, registry, storage
from .config import TrainConfig
from .model import (
    CycleGAN,
    distribution_strategy,
    float32_copy,
    make_optimizer,
    resolve_precision,
    set_determinism,
)

log = logging.getLogger(__name__)

LOSS_CURVES = ("d_loss", "g_loss", "adv_loss", "cycle_loss", "identity_loss")
LOAD_THREADS = 16  # parallel GETs and decodes while loading the training images
# Settings that must not change when a run resumes: they define the data order and the model.
RESUME_KEYS = ("model", "loss", "batch_size", "seed", "jitter", "shuffle_buffer", "holdout")


class TrainingError(RuntimeError):
    """The job cannot go on (diverged, incompatible resume, ...); no version is written."""


def new_run_id(now: datetime | None = None) -> str:
    # The random suffix keeps two runs started in the same second apart.
    return "run-" + (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class RunFiles:
    """A run's scratch folder, mirrored to `<store>/runs/<run_id>/` so any machine can resume.

    checkpoints/ (TF checkpoints: 4 networks, 2 optimizers with their LR schedule state, step),
    history.jsonl, run.json, samples/, loss_curve.png, tensorboard/.
    """

    def __init__(self, work: Path, remote: str):
        self.work, self.remote = work, remote
        self.ckpt_dir = work / "checkpoints"
        self.history = work / "history.jsonl"
        self.samples = work / "samples"
        self.tensorboard = work / "tensorboard"
        for d in (self.ckpt_dir, self.samples, self.tensorboard):
            d.mkdir(parents=True, exist_ok=True)

    def fetch(self) -> None:
        """Bring the mirrored checkpoint and history into an empty work dir (a fresh machine)."""
        if tf.train.latest_checkpoint(str(self.ckpt_dir)):
            return
        remote_ckpt = storage.join(self.remote, "checkpoints")
        got = storage.download_dir(remote_ckpt, self.ckpt_dir)
        if got:
            log.info(f"fetched {len(got)} checkpoint files from {remote_ckpt}")
        if storage.exists(storage.join(self.remote, "history.jsonl")):
            self.history.write_bytes(storage.read_bytes(storage.join(self.remote, "history.jsonl")))

    def push(self, path: Path) -> None:
        rel = path.relative_to(self.work).as_posix()
        storage.write_bytes(storage.join(self.remote, rel), path.read_bytes())

    def push_checkpoint(self, ckpt_prefix: str) -> None:
        """Upload one checkpoint, then the index file naming it, then forget older ones.

        The `checkpoint` index goes last, so a mirror read at any moment names a complete set.
        """
        remote = storage.join(self.remote, "checkpoints")
        name = Path(ckpt_prefix).name
        for f in sorted(self.ckpt_dir.glob(f"{name}.*")):
            self.push(f)
        self.push(self.history)
        self.push(self.ckpt_dir / "checkpoint")
        keep = {f.name for f in self.ckpt_dir.iterdir()}
        for obj in list(storage.list_objects(remote)):
            if obj.rel not in keep:
                storage.delete(obj.uri)
        if self.tensorboard.exists():
            storage.upload_dir(self.tensorboard, storage.join(self.remote, "tensorboard"))


def read_history(path: Path, upto_step: int) -> list[dict]:
    """History lines up to the restored step (lines after a crash's last checkpoint are redone)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto_step]


def _check_resume_compatible(run_json: str, cfg: TrainConfig) -> None:
    current = {k: v for k, v in cfg.to_dict().items() if k in RESUME_KEYS}
    if not storage.exists(run_json):
        storage.write_json(run_json, {"config": cfg.to_dict(), "resume_keys": current})
        return
    before = storage.read_json(run_json)["resume_keys"]
    changed = sorted(k for k in RESUME_KEYS if _canon(before.get(k)) != _canon(current[k]))
    if changed:
        raise TrainingError(
            f"run {cfg.run_id} was started with different {', '.join(changed)}; "
            "resume with the same settings or use a new --run-id"
        )


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _to_uint8(x: tf.Tensor) -> np.ndarray:
    return images.to_uint8(np.asarray(x, dtype=np.float32))


def sample_figure(cg: CycleGAN, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The seed's 2x2 figure grown by a reconstruction column: input | translated | cycled back."""
    fake_b, rec_a, fake_a, rec_b = cg.translate(images.to_unit(a), images.to_unit(b))
    rows = [
        [a[0], _to_uint8(fake_b)[0], _to_uint8(rec_a)[0]],
        [b[0], _to_uint8(fake_a)[0], _to_uint8(rec_b)[0]],
    ]
    return images.sample_grid(
        rows,
        col_titles=["input", "translated", "reconstructed"],
        row_titles=["A (painting) -> B", "B (photo) -> A"],
        cell=max(128, cg.model_cfg.image_size),
    )


def loss_curve(history: list[dict]) -> np.ndarray:
    series = {k: [(r["step"], r[k]) for r in history if k in r] for k in LOSS_CURVES}
    return images.line_chart(series, title="training losses (interval means)", log_y=True)


def _write_png(path: Path, picture: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(images.encode_png(picture))
    return path


def train(cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
    """Run (or resume) one training job; returns the JSON-able summary.

    `strategy` defaults to MirroredStrategy over all GPUs when there are several.
    """
    t_start = time.time()
    run_id = cfg.run_id or new_run_id()
    cfg = dataclasses.replace(cfg, run_id=run_id)
    run_remote = registry.runs_uri(cfg.model_store, run_id)
    result_uri = storage.join(run_remote, "result.json")
    if storage.exists(result_uri):  # a finished run: rerunning it is a no-op, not a new version
        summary = storage.read_json(result_uri)
        log.info(f"run {run_id} already finished as version {summary['version']}; nothing to do")
        return summary

    precision = resolve_precision(cfg.precision)
    set_determinism(cfg.seed, cfg.deterministic)
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix=f"cyclegan-{run_id}-"))
    files = RunFiles(work, run_remote)

    # 1. Data: both domains decoded once into uint8 arrays, held-out images kept apart.
    size = cfg.model.image_size
    storage.ensure_pool(LOAD_THREADS + storage.MAX_WORKERS)  # loading, then mirroring
    data = {}
    for d, uri in (("a", cfg.domain_a), ("b", cfg.domain_b)):
        log.info("loading domain %s from %s at %dpx", d, uri, size)
        data[d] = datasets.load_domain(
            uri, size, domain=d, holdout=cfg.holdout, limit=cfg.limit, workers=LOAD_THREADS
        )
    for d, dd in data.items():
        log.info(
            f"domain {d}: {len(dd.train)} train, {len(dd.test)} held out, {len(dd.skipped)} skipped"
        )

    _check_resume_compatible(storage.join(run_remote, "run.json"), cfg)

    # 2. Model, optimizers and the checkpoint (the step counter drives epochs and the LR).
    strategy = strategy or distribution_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    smallest = min(len(dd.train) for dd in data.values())
    if smallest < global_batch:
        raise TrainingError(f"only {smallest} training images for a batch of {global_batch}")
    steps_per_epoch = cfg.steps_per_epoch or smallest // global_batch
    total_steps = cfg.epochs * steps_per_epoch
    # The share of the time budget used so far: drives the LR decay of time-budgeted runs.
    progress = (
        tf.Variable(0.0, trainable=False, name="budget_progress") if cfg.max_minutes else None
    )
    log.info("building the %s model (%s) and its optimizers", cfg.model.preset, precision)
    with strategy.scope():
        cg = CycleGAN(cfg.model, cfg.loss, precision=precision, seed=cfg.seed)
        cg.compile(
            make_optimizer(cfg.loss, total_steps, precision, "g_optimizer", progress),
            make_optimizer(cfg.loss, total_steps, precision, "d_optimizer", progress),
        )
        # Create optimizer slots now so a restore fills them instead of deferring.
        cg.g_optimizer.build(cg.gen_ab.trainable_variables + cg.gen_ba.trainable_variables)
        cg.d_optimizer.build(cg.disc_a.trainable_variables + cg.disc_b.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    extra = {f"pool_{d}": p for d, p in (cg.pools or {}).items()}
    ckpt = tf.train.Checkpoint(
        **cg.networks,
        g_optimizer=cg.g_optimizer,
        d_optimizer=cg.d_optimizer,
        step=step_var,
        **extra,
    )
    files.fetch()  # before the manager, which reads the checkpoint index when it is created
    manager = tf.train.CheckpointManager(ckpt, str(files.ckpt_dir), max_to_keep=2)
    resumed_from = 0
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        resumed_from = int(step_var.numpy())
        log.info(f"resumed run {run_id} at step {resumed_from} from {manager.latest_checkpoint}")
    history = read_history(files.history, resumed_from)
    files.history.write_text("".join(json.dumps(r) + "\n" for r in history))

    # 3. The compiled step (strategy.run is a plain call under the default strategy).
    @tf.function
    def train_step(batch):  # noqa: ANN001
        per_replica = strategy.run(cg.train_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in per_replica.items()}

    def epoch_batches(epoch: int, skip: int):
        # Deterministic per (seed, epoch): resuming mid-epoch skips what was already seen.
        streams = [
            datasets.training_dataset(
                data[d].train,
                batch_size=global_batch,
                seed=cfg.seed + offset,
                epoch=epoch,
                jitter=cfg.jitter,
                shuffle_buffer=cfg.shuffle_buffer,
            ).repeat()
            for d, offset in (("a", 0), ("b", 7919))
        ]
        ds = tf.data.Dataset.zip(tuple(streams)).skip(skip).take(steps_per_epoch - skip)
        return strategy.experimental_distribute_dataset(ds) if replicas > 1 else ds

    preview = {d: (dd.test if len(dd.test) else dd.train)[:1] for d, dd in data.items()}
    writer = tf.summary.create_file_writer(str(files.tensorboard))

    def save_samples(step: int) -> None:
        grid = sample_figure(cg, preview["a"], preview["b"])
        files.push(_write_png(files.samples / f"step_{step:07d}.png", grid))
        files.push(_write_png(work / "loss_curve.png", loss_curve(history)))
        with writer.as_default(step=step):
            tf.summary.image("samples", grid[None], max_outputs=1)

    # 4. Train. Every step's losses are checked: a diverged model must not become a version.
    step = resumed_from
    stop_at = total_steps if cfg.stop_after is None else min(total_steps, step + cfg.stop_after)
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    log.info(
        f"run {run_id}: {cfg.model.preset} preset at {size}px on {device}, {precision}, "
        f"{replicas} replica(s), {cfg.epochs} epoch(s) x {steps_per_epoch} steps, "
        f"batch {global_batch}; compiling the training step"
    )
    t_loop, images_done, last_log = time.time(), 0, (time.time(), 0)
    while step < stop_at:
        epoch = step // steps_per_epoch
        for batch in epoch_batches(epoch, step % steps_per_epoch):
            logs = {k: float(v) for k, v in train_step(batch).items()}
            step += 1
            images_done += 2 * global_batch  # one image of each domain per batch element
            step_var.assign(step)
            bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
            if bad:
                losses_text = ", ".join(f"{k}={v}" for k, v in bad.items())
                raise TrainingError(
                    f"non-finite loss at step {step} ({losses_text}); "
                    "no version written - lower the learning rate or check the data"
                )
            if step % cfg.log_every == 0 or step == stop_at:
                row = {k: float(t.result()) for k, t in cg.trackers.items()}
                for t in cg.trackers.values():
                    t.reset_state()
                now = time.time()
                rate = 2 * global_batch * (step - last_log[1]) / max(now - last_log[0], 1e-9)
                last_log = (now, step)
                row.update(step=step, epoch=epoch + 1, images_per_sec=rate, time=now)
                history.append(row)
                with files.history.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                with writer.as_default(step=step):
                    for k in LOSS_CURVES:
                        tf.summary.scalar(k, row[k])
                eta = (stop_at - step) * 2 * global_batch / max(rate, 1e-9)
                if cfg.max_minutes:  # the time budget may end the run first
                    eta = min(eta, max(0.0, 60 * cfg.max_minutes - (now - t_loop)))
                log.info(
                    f"epoch {epoch + 1}/{cfg.epochs} step {step}/{total_steps} "
                    f"d={row['d_loss']:.3f} g={row['g_loss']:.3f} cycle={row['cycle_loss']:.4f} "
                    f"| {rate:.1f} img/s | eta {eta:.0f}s"
                )
            if step % cfg.sample_every == 0:
                save_samples(step)
            if progress is not None:
                progress.assign((time.time() - t_loop) / (60 * cfg.max_minutes))
            out_of_time = bool(cfg.max_minutes) and time.time() - t_loop > 60 * cfg.max_minutes
            if out_of_time:  # the time budget ends training here: this step is the last
                stop_at = total_steps = step
            if step % cfg.checkpoint_every == 0 or step == stop_at:
                writer.flush()
                files.push_checkpoint(manager.save(checkpoint_number=step))
            if step >= stop_at:
                break

    loop_seconds = time.time() - t_loop
    throughput = images_done / loop_seconds if images_done else 0.0
    if step < total_steps:  # stopped early on purpose (stop_after): resumable, no version yet
        summary = {
            "run_id": run_id,
            "status": "stopped",
            "step": step,
            "total_steps": total_steps,
            "resumed_from": resumed_from,
            "checkpoints": storage.join(run_remote, "checkpoints"),
            "images_per_sec": throughput,
        }
        log.info(f"stopped at step {step}/{total_steps}; rerun with --run-id {run_id} to continue")
        return summary

    # 5. The new version: float32 generators (.keras), the four weight files, config, metrics.
    save_samples(step)
    writer.flush()
    version = registry.new_version_id()
    vdir = work / "version"
    (vdir / "samples").mkdir(parents=True, exist_ok=True)
    for name, net in cg.networks.items():
        copy = float32_copy(net, cfg.model)
        copy.save_weights(vdir / f"{name}.weights.h5")
        if name.startswith("generator"):
            copy.save(vdir / f"{name}.keras")
    last = history[-1] if history else {}
    metrics = {
        "final_losses": {k: last.get(k) for k in (*LOSS_CURVES, "d_a_loss", "d_b_loss")},
        "steps": step,
        "epochs": cfg.epochs,
        "steps_per_epoch": steps_per_epoch,
        "images_per_sec": throughput,
        "data": {
            d: {"train": len(dd.train), "held_out": len(dd.test), "skipped": dd.skipped}
            for d, dd in data.items()
        },
        "snapshot": {d: dd.snapshot for d, dd in data.items()},
    }
    config = {
        "model": asdict(cfg.model),
        "loss": asdict(cfg.loss),
        "train": cfg.to_dict(),
        "precision": precision,
        "run_id": run_id,
    }
    (vdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (vdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (vdir / "history.jsonl").write_bytes(files.history.read_bytes())
    last_sample = sorted(files.samples.glob("step_*.png"))[-1]
    (vdir / "samples" / "final.png").write_bytes(last_sample.read_bytes())
    (vdir / "samples" / "loss_curve.png").write_bytes((work / "loss_curve.png").read_bytes())
    version_uri = registry.write_version(cfg.model_store, version, vdir, run_id=run_id)
    if cfg.promote:
        registry.promote(cfg.model_store, version, reason=f"trained by run {run_id}")

    summary = {
        "run_id": run_id,
        "status": "finished",
        "version": version,
        "version_uri": version_uri,
        "promoted": cfg.promote,
        "steps": step,
        "stopped_by_time_budget": bool(cfg.max_minutes) and step < cfg.epochs * steps_per_epoch,
        "resumed_from": resumed_from,
        "precision": precision,
        "images_per_sec": round(throughput, 3),
        "final_losses": metrics["final_losses"],
        "skipped": {d: len(dd.skipped) for d, dd in data.items()},
        "samples": storage.join(version_uri, "samples", "final.png"),
        "loss_curve": storage.join(version_uri, "samples", "loss_curve.png"),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    storage.write_json(result_uri, summary)
    log.info(f"wrote version {version} to {version_uri}")
    return summary

"""The retraining job: data -> resumable CycleGAN training -> a new version in the model store."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cyclegan_jobs import images, plots, registry, storage
from cyclegan_jobs.config import TrainConfig
from cyclegan_jobs.errors import TrainingError
from cyclegan_jobs.runtime import distribution_strategy, resolve_precision
from cyclegan_jobs.training import datasets, hooks
from cyclegan_jobs.training.model import (
    CycleGAN,
    ema_momentum_for,
    float32_copy,
    make_optimizer,
    set_determinism,
)

log = logging.getLogger(__name__)

LOSS_CURVES = hooks.LOSS_CURVES
LOAD_THREADS = 16  # parallel GETs and decodes while loading the training images
# Settings that must not change when a run resumes: they define the data order and the model.
RESUME_KEYS = ("model", "loss", "batch_size", "seed", "jitter", "shuffle_buffer", "holdout")


def new_run_id(now: datetime | None = None) -> str:
    # The random suffix keeps two runs started in the same second apart.
    return "run-" + (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class RunFiles:
    """A run's scratch folder, mirrored to `<store>/runs/<run_id>/` so any machine can resume.

    checkpoints/ (TF checkpoints: 4 networks, 2 optimizers with their LR schedule state, step),
    history.jsonl, run.json, samples/, loss_curve.png, tensorboard/, best/ (model selection's
    best-so-far weights and best.json).
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
        storage.download_dir(storage.join(self.remote, "best"), self.work / "best")

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
    return plots.line_chart(series, title="training losses (interval means)", log_y=True)


def _write_png(path: Path, picture: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(images.encode_png(picture))
    return path


class Trainer:
    """One training job (or its resumption): `run()` reads in order

        finished already? -> load data -> build or restore -> fit -> export (or stop)

    The loop itself only steps; every other concern is a `hooks.Hook` in `self.hooks`.
    `extra_hooks` (tests, benchmarks) run after model selection, before the checkpoint.
    """

    # What each stage of run() sets, declared in one place (the loop's own counters are in
    # `state`, which hooks read).
    precision: str  # run()
    files: RunFiles
    data: dict[str, datasets.DomainData]  # load_data()
    preview: dict[str, np.ndarray]
    replicas: int  # build_or_restore()
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    progress: tf.Variable | None  # the time budget's share used: the LR decay of timed runs
    cg: CycleGAN
    step_var: tf.Variable
    manager: tf.train.CheckpointManager
    resumed_from: int
    history: list[dict]
    writer: Any  # tf.summary's file writer
    state: hooks.LoopState  # fit()
    images_done: int
    loop_seconds: float

    def __init__(
        self,
        cfg: TrainConfig,
        strategy: tf.distribute.Strategy | None = None,
        extra_hooks: tuple[hooks.Hook, ...] = (),
    ):
        self.t_start = time.time()
        self.cfg = dataclasses.replace(cfg, run_id=cfg.run_id or new_run_id())
        self.run_id = self.cfg.run_id
        self.remote = registry.runs_uri(cfg.model_store, self.run_id)
        self.strategy = strategy
        self.selection = hooks.ModelSelection(cfg.select_every)
        self.hooks: list[hooks.Hook] = [
            hooks.NonFiniteGuard(),
            hooks.IntervalLog(),
            hooks.Samples(),
            hooks.TimeBudget(),
            self.selection,
            *extra_hooks,
            hooks.CheckpointMirror(),
        ]

    def run(self) -> dict[str, Any]:
        result_uri = storage.join(self.remote, "result.json")
        if storage.exists(result_uri):  # a finished run: rerunning it is a no-op, not a version
            summary = storage.read_json(result_uri)
            log.info(f"run {self.run_id} already finished as version {summary['version']}")
            return summary
        self.precision = resolve_precision(self.cfg.precision)
        set_determinism(self.cfg.seed, self.cfg.deterministic)
        work = self.cfg.work_dir or tempfile.mkdtemp(prefix=f"cyclegan-{self.run_id}-")
        self.files = RunFiles(Path(work), self.remote)
        self.load_data()
        _check_resume_compatible(storage.join(self.remote, "run.json"), self.cfg)
        self.build_or_restore()
        self.fit()
        if not self.state.last_of_training:  # stopped early on purpose (stop_after): resumable
            return self.stopped()
        summary = self.export()
        storage.write_json(result_uri, summary)
        log.info(f"wrote version {summary['version']} to {summary['version_uri']}")
        return summary

    # -- 1. data ---------------------------------------------------------------------------
    def load_data(self) -> None:
        """Both domains decoded once into uint8 arrays, held-out images kept apart."""
        size = self.cfg.model.image_size
        storage.ensure_pool(LOAD_THREADS + storage.MAX_WORKERS)  # loading, then mirroring
        self.data = {}
        for d, uri in (("a", self.cfg.domain_a), ("b", self.cfg.domain_b)):
            log.info("loading domain %s from %s at %dpx", d, uri, size)
            self.data[d] = datasets.load_domain(
                uri, size, domain=d, holdout=self.cfg.holdout, limit=self.cfg.limit,
                workers=LOAD_THREADS,
            )  # fmt: skip
        for d, dd in self.data.items():
            log.info(
                f"domain {d}: {len(dd.train)} train, {len(dd.test)} held out, "
                f"{len(dd.skipped)} skipped"
            )
        self.preview = {
            d: (dd.test if len(dd.test) else dd.train)[:1] for d, dd in self.data.items()
        }

    # -- 2. model, optimizers, checkpoint ----------------------------------------------------
    def build_or_restore(self) -> None:
        """The model and its optimizers; the checkpoint's step drives epochs and the LR."""
        cfg = self.cfg
        self.strategy = self.strategy or distribution_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = cfg.batch_size * self.replicas
        smallest = min(len(dd.train) for dd in self.data.values())
        if smallest < self.global_batch:
            raise TrainingError(
                f"only {smallest} training images for a batch of {self.global_batch}"
            )
        self.steps_per_epoch = cfg.steps_per_epoch or smallest // self.global_batch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        # The share of the time budget used so far: drives the LR decay of time-budgeted runs.
        self.progress = (
            tf.Variable(0.0, trainable=False, name="budget_progress") if cfg.max_minutes else None
        )
        ema = ema_momentum_for(cfg.loss.ema_momentum, self.total_steps)
        log.info(
            f"building the {cfg.model.preset} model ({self.precision}) and its optimizers"
            + (f"; the generators' moving average: momentum {ema:.4f}" if ema else "")
        )
        with self.strategy.scope():
            self.cg = CycleGAN(cfg.model, cfg.loss, precision=self.precision, seed=cfg.seed)
            steps, precision, progress = self.total_steps, self.precision, self.progress
            self.cg.compile(
                make_optimizer(cfg.loss, steps, precision, "g_optimizer", progress, ema),
                make_optimizer(
                    cfg.loss, steps, precision, "d_optimizer", progress,
                    lr_scale=cfg.loss.disc_lr_scale,
                ),
            )  # fmt: skip
            # Create optimizer slots now so a restore fills them instead of deferring.
            self.cg.g_optimizer.build(
                self.cg.gen_ab.trainable_variables + self.cg.gen_ba.trainable_variables
            )
            self.cg.d_optimizer.build(
                self.cg.disc_a.trainable_variables + self.cg.disc_b.trainable_variables
            )
            self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        ckpt = tf.train.Checkpoint(
            **self.cg.networks, g_optimizer=self.cg.g_optimizer,
            d_optimizer=self.cg.d_optimizer, step=self.step_var, **self.cg.random_state,
        )  # fmt: skip
        self.files.fetch()  # before the manager, which reads the checkpoint index when created
        self.manager = tf.train.CheckpointManager(ckpt, str(self.files.ckpt_dir), max_to_keep=2)
        self.resumed_from = 0
        if self.manager.latest_checkpoint:
            ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.resumed_from = int(self.step_var.numpy())
            log.info(f"resumed run {self.run_id} at step {self.resumed_from}")
        self.history = read_history(self.files.history, self.resumed_from)
        self.files.history.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.writer = tf.summary.create_file_writer(str(self.files.tensorboard))

    # -- 3. batches and the loop -------------------------------------------------------------
    def epoch_batches(self, epoch: int, skip: int) -> tf.data.Dataset:
        """Deterministic per (seed, epoch): resuming mid-epoch skips what was already seen."""
        streams = [
            datasets.training_dataset(
                self.data[d].train, batch_size=self.global_batch, seed=self.cfg.seed + offset,
                epoch=epoch, jitter=self.cfg.jitter, shuffle_buffer=self.cfg.shuffle_buffer,
            ).repeat()
            for d, offset in (("a", 0), ("b", 7919))
        ]  # fmt: skip
        ds = tf.data.Dataset.zip(tuple(streams)).skip(skip).take(self.steps_per_epoch - skip)
        return self.strategy.experimental_distribute_dataset(ds) if self.replicas > 1 else ds

    def fit(self) -> None:
        """Step until `stop_at` (the end, `stop_after`, or the time budget); hooks do the rest."""
        strategy, cg = self.strategy, self.cg

        @tf.function
        def train_step(batch):  # strategy.run is a plain call by default
            per_replica = strategy.run(cg.train_step, args=(batch,))
            return {k: strategy.reduce("MEAN", v, axis=None) for k, v in per_replica.items()}

        cfg, start = self.cfg, self.resumed_from
        stop_at = self.total_steps
        if cfg.stop_after is not None:
            stop_at = min(self.total_steps, start + cfg.stop_after)
        s = self.state = hooks.LoopState(
            step=start, stop_at=stop_at, total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch, global_batch=self.global_batch,
            started=time.time(),
        )  # fmt: skip
        device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        log.info(
            f"run {self.run_id}: {cfg.model.preset} preset at {cfg.model.image_size}px on "
            f"{device}, {self.precision}, {self.replicas} replica(s), {cfg.epochs} epoch(s) x "
            f"{self.steps_per_epoch} steps, batch {self.global_batch}; compiling the training step"
        )
        for hook in self.hooks:
            hook.start(self)
        s.started, self.images_done = time.time(), 0
        while not s.last_of_run:
            s.epoch = s.step // s.steps_per_epoch
            for batch in self.epoch_batches(s.epoch, s.step % s.steps_per_epoch):
                logs = {k: float(v) for k, v in train_step(batch).items()}
                s.step += 1
                self.images_done += 2 * s.global_batch  # one image per domain and example
                self.step_var.assign(s.step)
                for hook in self.hooks:
                    hook.after_step(self, logs)
                if s.last_of_run:  # the end, --stop-after, or a hook asked to finish
                    break
        self.loop_seconds = time.time() - s.started

    # -- what hooks call -----------------------------------------------------------------------
    def record(self, row: dict[str, Any], scalars: dict[str, float]) -> None:
        """One history line (history.jsonl, mirrored with each checkpoint) and its scalars."""
        self.history.append(row)
        with self.files.history.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with self.writer.as_default(step=self.state.step):
            for name, value in scalars.items():
                if value is not None:
                    tf.summary.scalar(name, value)

    def save_samples(self, name: str | None = None) -> Path:
        """The sample grid of the current weights (samples/step_N.png or `name`) and the loss
        curve, mirrored; the grid also goes to TensorBoard."""
        grid = sample_figure(self.cg, self.preview["a"], self.preview["b"])
        path = _write_png(self.files.samples / (name or f"step_{self.state.step:07d}.png"), grid)
        self.files.push(path)
        self.files.push(_write_png(self.files.work / "loss_curve.png", loss_curve(self.history)))
        with self.writer.as_default(step=self.state.step):
            tf.summary.image("samples", grid[None], max_outputs=1)
        return path

    def write_weights(self, folder: Path, weights: dict[str, list[np.ndarray]]) -> list[Path]:
        """The four networks' weights as float32 `<name>.weights.h5` files in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, net in self.cg.networks.items():
            copy = float32_copy(net, self.cfg.model, weights[name])
            copy.save_weights(folder / f"{name}.weights.h5")
            written.append(folder / f"{name}.weights.h5")
        return written

    def read_weights(self, folder: Path) -> dict[str, list[np.ndarray]]:
        out = {}
        for name, net in self.cg.networks.items():
            copy = float32_copy(net, self.cfg.model)
            copy.load_weights(folder / f"{name}.weights.h5")
            out[name] = copy.get_weights()
        return out

    # -- 4. the end: stopped, or a new version -------------------------------------------------
    def throughput(self) -> float:
        return self.images_done / self.loop_seconds if self.images_done else 0.0

    def stopped(self) -> dict[str, Any]:
        log.info(
            f"stopped at step {self.state.step}/{self.total_steps}; "
            f"rerun with --run-id {self.run_id} to continue"
        )
        return {
            "run_id": self.run_id,
            "status": "stopped",
            "step": self.state.step,
            "total_steps": self.total_steps,
            "resumed_from": self.resumed_from,
            "checkpoints": storage.join(self.remote, "checkpoints"),
            "images_per_sec": self.throughput(),
        }

    def export(self) -> dict[str, Any]:
        """The version: float32 generators (.keras), the four weight files, config, metrics,
        samples; made from the selected weights when model selection ran, else from the last
        (the generators' moving average with `ema_momentum`)."""
        picture = None
        picked = self.state.selected_weights  # model selection's pick, through the loop's state
        if picked is not None:
            picture = f"selected_step_{self.state.selected['step']:07d}.png"
        else:  # the last weights (the generators' moving average, when the run keeps one)
            picked = self.cg.version_weights()
        for name, weights in picked.items():
            self.cg.networks[name].set_weights(weights)
        final_sample = self.save_samples(picture)
        self.writer.flush()
        vdir = self.files.work / "version"
        (vdir / "samples").mkdir(parents=True, exist_ok=True)
        for name, net in self.cg.networks.items():
            copy = float32_copy(net, self.cfg.model)
            copy.save_weights(vdir / f"{name}.weights.h5")
            if name.startswith("generator"):
                copy.save(vdir / f"{name}.keras")
        metrics = self.version_metrics()
        config = {
            "model": asdict(self.cfg.model), "loss": asdict(self.cfg.loss),
            "train": self.cfg.to_dict(), "precision": self.precision, "run_id": self.run_id,
        }  # fmt: skip
        (vdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (vdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (vdir / "history.jsonl").write_bytes(self.files.history.read_bytes())
        (vdir / "samples" / "final.png").write_bytes(final_sample.read_bytes())
        curve = (self.files.work / "loss_curve.png").read_bytes()
        (vdir / "samples" / "loss_curve.png").write_bytes(curve)
        version = registry.new_version_id()
        version_uri = registry.write_version(
            self.cfg.model_store, version, vdir, run_id=self.run_id
        )
        if self.cfg.promote:
            registry.promote(self.cfg.model_store, version, reason=f"trained by run {self.run_id}")
        return self.finished(version, version_uri, metrics)

    def version_metrics(self) -> dict[str, Any]:
        losses = [r for r in self.history if "g_loss" in r]
        last = losses[-1] if losses else {}
        return {
            "final_losses": {k: last.get(k) for k in (*LOSS_CURVES, "d_a_loss", "d_b_loss")},
            "steps": self.state.step,
            "selected": self.state.selected,
            "epochs": self.cfg.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "images_per_sec": self.throughput(),
            "data": {
                d: {"train": len(dd.train), "held_out": len(dd.test), "skipped": dd.skipped}
                for d, dd in self.data.items()
            },
            "snapshot": {d: dd.snapshot for d, dd in self.data.items()},
        }

    def finished(self, version: str, version_uri: str, metrics: dict) -> dict[str, Any]:
        planned = self.cfg.epochs * self.steps_per_epoch
        return {
            "run_id": self.run_id,
            "status": "finished",
            "version": version,
            "version_uri": version_uri,
            "promoted": self.cfg.promote,
            "steps": self.state.step,
            "selected": metrics["selected"],
            "stopped_by_time_budget": bool(self.cfg.max_minutes) and self.state.step < planned,
            "resumed_from": self.resumed_from,
            "precision": self.precision,
            "images_per_sec": round(self.throughput(), 3),
            "final_losses": metrics["final_losses"],
            "skipped": {d: len(dd.skipped) for d, dd in self.data.items()},
            "samples": storage.join(version_uri, "samples", "final.png"),
            "loss_curve": storage.join(version_uri, "samples", "loss_curve.png"),
            "wall_seconds": round(time.time() - self.t_start, 1),
        }


def train(cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
    """Run (or resume) one training job; returns the JSON-able summary (see `Trainer`).

    `strategy` defaults to MirroredStrategy over all GPUs when there are several.
    """
    return Trainer(cfg, strategy).run()

"""The training loop's concerns, one small hook each; `train.Trainer` calls them after every step.

Order matters and is the Trainer's `hooks` list: the guard first (a diverged step must reach
nothing else), the time budget before model selection (so the last step is scored) and the
checkpoint mirror last (so what it saves includes every other hook's state).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:  # pragma: no cover
    from .train import Trainer

log = logging.getLogger(__name__)

LOSS_CURVES = ("d_loss", "g_loss", "adv_loss", "cycle_loss", "identity_loss")
SELECT_IMAGES = 64  # held-out images per domain that model selection scores


class Hook:
    """One concern of the loop. Every method is optional; `t` is the running Trainer."""

    def start(self, t: Trainer) -> None:
        """Before the first step (after a restore, so `t.step` may be > 0)."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        """After each step; `t.step` is the step just done, `logs` its losses."""

    def before_checkpoint(self, t: Trainer) -> list[Path]:
        """Write this hook's own state into the work dir; return the files to mirror."""
        return []


class NonFiniteGuard(Hook):
    """A diverged model must not become a version: stop at the first non-finite loss."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
        if bad:
            from .errors import TrainingError

            losses_text = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise TrainingError(
                f"non-finite loss at step {t.step} ({losses_text}); "
                "no version written - lower the learning rate or check the data"
            )


class IntervalLog(Hook):
    """Every `log_every` steps: interval means of the losses to history, TensorBoard and the log."""

    def start(self, t: Trainer) -> None:
        self.last = (time.time(), t.step)

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if t.step % t.cfg.log_every and t.step != t.stop_at:
            return
        row = {k: float(m.result()) for k, m in t.cg.trackers.items()}
        for m in t.cg.trackers.values():
            m.reset_state()
        now = time.time()
        rate = 2 * t.global_batch * (t.step - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, t.step)
        row.update(step=t.step, epoch=t.epoch + 1, images_per_sec=rate, time=now)
        t.record(row, {k: row[k] for k in LOSS_CURVES})
        eta = (t.stop_at - t.step) * 2 * t.global_batch / max(rate, 1e-9)
        if t.cfg.max_minutes:  # the time budget may end the run first
            eta = min(eta, max(0.0, 60 * t.cfg.max_minutes - (now - t.t_loop)))
        log.info(
            f"epoch {t.epoch + 1}/{t.cfg.epochs} step {t.step}/{t.total_steps} "
            f"d={row['d_loss']:.3f} g={row['g_loss']:.3f} cycle={row['cycle_loss']:.4f} "
            f"| {rate:.1f} img/s | eta {eta:.0f}s"
        )


class Samples(Hook):
    """Every `sample_every` steps: the sample grid and the loss curve, mirrored."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if t.step % t.cfg.sample_every == 0:
            t.save_samples()


class TimeBudget(Hook):
    """`max_minutes`: drives the LR decay of budgeted runs and ends training when spent."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if not t.cfg.max_minutes:
            return
        used = (time.time() - t.t_loop) / (60 * t.cfg.max_minutes)
        if t.progress is not None:
            t.progress.assign(used)
        if used > 1.0:  # this step is the last; the run finishes and writes its version
            t.stop_at = t.total_steps = t.step


def selection_key(scores: dict[str, Any], floor: float) -> tuple:
    """Lower is better: the lowest SWD among scores whose cycle PSNR clears `floor` (the gate's);
    until one does, the highest cycle PSNR; non-finite scores last."""
    swd, psnr = scores.get("swd_mean"), scores.get("cycle_psnr")
    if swd is None or psnr is None or not (math.isfinite(swd) and math.isfinite(psnr)):
        return (2, 0.0)
    return (0, swd) if psnr >= floor else (1, -psnr)


def held_out_for_selection(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The first held-out images of each domain (DomainData), as many of each (one shape, so
    the scoring function is traced once per generator), at most SELECT_IMAGES."""
    n = min(SELECT_IMAGES, *(len(dd.test) for dd in data.values()))
    return {d: dd.test[:n] for d, dd in data.items()}


class ModelSelection(Hook):
    """Every `select_every` steps and at the last step, score the generators on held-out images
    (SWD of G(x) against real targets, cycle PSNR: evaluate's own code, float32) and keep the
    best weights of all four networks. The version is made from them (`Trainer.export`).

    State (`best/`: best.json and the four weight files) is written at each checkpoint and
    mirrored with it, so a resumed run keeps its best-so-far.
    """

    def __init__(self, every: int, floor: float | None = None):
        from .config import Thresholds

        self.every = every
        self.floor = Thresholds().min_cycle_psnr if floor is None else floor
        self.best: dict[str, Any] | None = None
        self.best_weights: dict[str, list[np.ndarray]] | None = None
        self.dirty = False
        self.held: dict[str, np.ndarray] = {}

    def start(self, t: Trainer) -> None:
        from .inference import GENERATORS, Generators

        if not self.every:  # off: no scoring, no copies of the generators
            return
        self.held = held_out_for_selection(t.data)
        if len(self.held["a"]) == 0:
            log.warning("model selection is off: no held-out images (holdout 0)")
            self.every = 0
            return
        nets = {name: t.cg.networks[name] for name in GENERATORS}
        default = tf.distribute.get_strategy()  # scoring runs on one device, whatever trains
        self.gens = Generators(nets, t.cg.model_cfg, precision="float32", strategy=default)
        self._restore(t)
        log.info(
            f"model selection: every {self.every} steps on {len(self.held['a'])} held-out "
            "images of each domain"
            + (f"; best so far: step {self.best['step']}" if self.best else "")
        )

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if not self.every or (t.step % self.every and t.step != t.total_steps):
            return
        from .evaluate import selection_metrics

        for name, net in self.gens.nets.items():
            net.set_weights(t.cg.networks[name].get_weights())
        scores = selection_metrics(self.gens, self.held["a"], self.held["b"])
        improved = self.best is None or selection_key(scores, self.floor) < selection_key(
            self.best, self.floor
        )
        if improved:
            self.best = {"step": t.step, **scores}
            self.best_weights = {n: net.get_weights() for n, net in t.cg.networks.items()}
            self.dirty = True
        row = {"kind": "selection", "step": t.step, **scores, "best_step": self.best["step"]}
        t.record(row, {f"selection/{k}": v for k, v in scores.items()})
        log.info(
            f"step {t.step}: held-out SWD {scores['swd_mean']:.1f}, cycle PSNR "
            f"{scores['cycle_psnr']:.2f} dB; best: step {self.best['step']}"
            + (" (this one)" if improved else "")
        )

    def before_checkpoint(self, t: Trainer) -> list[Path]:
        if not self.dirty or self.best_weights is None:
            return []
        folder = t.files.work / "best"
        written = t.write_weights(folder, self.best_weights)
        (folder / "best.json").write_text(json.dumps(self.best, sort_keys=True))
        self.dirty = False
        return [*written, folder / "best.json"]

    def _restore(self, t: Trainer) -> None:
        folder = t.files.work / "best"
        if not (folder / "best.json").exists():
            return
        self.best = json.loads((folder / "best.json").read_text())
        self.best_weights = t.read_weights(folder)

    def summary(self) -> dict[str, Any] | None:
        if not self.every or self.best is None:
            return None
        return {"every": self.every, "cycle_psnr_floor": self.floor, **self.best}


class CheckpointMirror(Hook):
    """Every `checkpoint_every` steps and at the stop: save a checkpoint and mirror it (with the
    other hooks' state and the history) to the model store."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if t.step % t.cfg.checkpoint_every and t.step != t.stop_at:
            return
        extra = [f for hook in t.hooks for f in hook.before_checkpoint(t)]
        t.writer.flush()
        for f in extra:  # before the checkpoint: its index then names a state that has them
            t.files.push(f)
        t.files.push_checkpoint(t.manager.save(checkpoint_number=t.step))

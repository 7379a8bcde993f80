"""The training loop's concerns, one small hook each; `train.Trainer` calls them after every step.

The loop owns a `LoopState` (the step, where this process stops, where training ends, the
epoch, when the loop began); hooks read it. A hook that wants training to end asks the state
(`finish`) and the loop ends after the step's hooks; model selection hands its pick to the loop
through the state (`selected`, `selected_weights`). What else a hook needs of the run (the loss
trackers, the history, the files) it gets from the Trainer's methods and attributes, read only.

Order matters and is the Trainer's `hooks` list: the guard first (a diverged step must reach
nothing else), the time budget before model selection (so the last step is scored) and the
checkpoint mirror last (so what it saves includes every other hook's state).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:  # pragma: no cover
    from cyclegan_jobs.training.train import Trainer

log = logging.getLogger(__name__)

LOSS_CURVES = ("d_loss", "g_loss", "adv_loss", "cycle_loss", "identity_loss")
SELECT_IMAGES = 64  # held-out images per domain that model selection scores
# A later step replaces the kept one only if its SWD is lower by more than this share: on a
# plateau the SWD of 64 held-out images jitters by a few per cent while the translations drift
# (README, "The discriminators' rate and the selection margin": over 32 benchmark curves the
# mean shortfall below the best scored step fell from 1.12 to 0.77 dB).
SELECT_MARGIN = 0.03


@dataclass
class LoopState:
    """What the training loop owns and its hooks read. Hooks do not change the schedule: a hook
    that wants training to end here calls `finish`; model selection sets `selected`."""

    step: int  # the last step done (the restored one before the first)
    stop_at: int  # this process stops after this step: the end, or --stop-after
    total_steps: int  # training ends after this step (the version is written)
    steps_per_epoch: int
    global_batch: int  # images of each domain per step, over all replicas
    started: float  # time.time() when the loop began
    epoch: int = 0  # 0-based
    finish_reason: str | None = None  # a hook asked training to end after this step
    selected: dict[str, Any] | None = None  # model selection's pick: step, scores, its rule
    selected_weights: dict[str, list[np.ndarray]] | None = None  # the pick's four networks

    def finish(self, reason: str) -> None:
        """End training after this step, as if it were the last: the version is written."""
        self.finish_reason = reason

    @property
    def last_of_run(self) -> bool:
        """This step is the last this process does (the end, --stop-after, or a finish)."""
        return self.step >= self.stop_at or self.finish_reason is not None

    @property
    def last_of_training(self) -> bool:
        """This step is the last of training: a version follows."""
        return self.step >= self.total_steps or self.finish_reason is not None


class Hook:
    """One concern of the loop. Every method is optional; `t` is the running Trainer, whose
    `state` is the LoopState."""

    def start(self, t: Trainer) -> None:
        """Before the first step (after a restore, so `t.state.step` may be > 0)."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        """After each step; `t.state.step` is the step just done, `logs` its losses."""

    def before_checkpoint(self, t: Trainer) -> list[Path]:
        """Write this hook's own state into the work dir; return the files to mirror."""
        return []


class NonFiniteGuard(Hook):
    """A diverged model must not become a version: stop at the first non-finite loss."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
        if bad:
            from cyclegan_jobs.errors import TrainingError

            losses_text = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise TrainingError(
                f"non-finite loss at step {t.state.step} ({losses_text}); "
                "no version written - lower the learning rate or check the data"
            )


class IntervalLog(Hook):
    """Every `log_every` steps: interval means of the losses to history, TensorBoard and the log."""

    def start(self, t: Trainer) -> None:
        self.last = (time.time(), t.state.step)

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        s = t.state
        if s.step % t.cfg.log_every and not s.last_of_run:
            return
        row = {k: float(m.result()) for k, m in t.cg.trackers.items()}
        for m in t.cg.trackers.values():
            m.reset_state()
        now = time.time()
        rate = 2 * s.global_batch * (s.step - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, s.step)
        row.update(step=s.step, epoch=s.epoch + 1, images_per_sec=rate, time=now)
        t.record(row, {k: row[k] for k in LOSS_CURVES})
        eta = (s.stop_at - s.step) * 2 * s.global_batch / max(rate, 1e-9)
        if t.cfg.max_minutes:  # the time budget may end the run first
            eta = min(eta, max(0.0, 60 * t.cfg.max_minutes - (now - s.started)))
        log.info(
            f"epoch {s.epoch + 1}/{t.cfg.epochs} step {s.step}/{s.total_steps} "
            f"d={row['d_loss']:.3f} g={row['g_loss']:.3f} cycle={row['cycle_loss']:.4f} "
            f"| {rate:.1f} img/s | eta {eta:.0f}s"
        )


class Samples(Hook):
    """Every `sample_every` steps: the sample grid and the loss curve, mirrored."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if t.state.step % t.cfg.sample_every == 0:
            t.save_samples()


class TimeBudget(Hook):
    """`max_minutes`: drives the LR decay of budgeted runs (the share of the budget used, in
    the schedule's `progress` variable) and ends training when it is spent."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if not t.cfg.max_minutes:
            return
        used = (time.time() - t.state.started) / (60 * t.cfg.max_minutes)
        if t.progress is not None:
            t.progress.assign(used)
        if used > 1.0:  # this step is the last; the run finishes and writes its version
            t.state.finish(f"the time budget ({t.cfg.max_minutes:g} min) is spent")


def selection_key(scores: dict[str, Any], floor: float) -> tuple:
    """Lower is better: the lowest SWD among scores whose cycle PSNR clears `floor` (the gate's);
    until one does, the highest cycle PSNR; non-finite scores last."""
    swd, psnr = scores.get("swd_mean"), scores.get("cycle_psnr")
    if swd is None or psnr is None or not (math.isfinite(swd) and math.isfinite(psnr)):
        return (2, 0.0)
    return (0, swd) if psnr >= floor else (1, -psnr)


def replaces(scores: dict[str, Any], best: dict[str, Any] | None, floor: float) -> bool:
    """Whether a new step's scores replace the kept `best`: a lower selection_key, and where
    both clear the floor, an SWD lower by more than SELECT_MARGIN (ties go to the earlier step)."""
    if best is None:
        return True
    new, old = selection_key(scores, floor), selection_key(best, floor)
    if new[0] == old[0] == 0:
        return new[1] < old[1] * (1.0 - SELECT_MARGIN)
    return new < old


def held_out_for_selection(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The first held-out images of each domain (DomainData), as many of each (one shape, so
    the scoring function is traced once per generator), at most SELECT_IMAGES."""
    n = min(SELECT_IMAGES, *(len(dd.test) for dd in data.values()))
    return {d: dd.test[:n] for d, dd in data.items()}


class ModelSelection(Hook):
    """Every `select_every` steps and at the last step, score the generators on held-out images
    (SWD of G(x) against real targets, cycle PSNR: evaluate's own code, float32) and keep the
    best weights of all four networks (the generators' moving average when the run keeps one).
    The version is made from them (`Trainer.export`).

    State (`best/`: best.json and the four weight files) is written at each checkpoint and
    mirrored with it, so a resumed run keeps its best-so-far.
    """

    def __init__(self, every: int, floor: float | None = None):
        from cyclegan_jobs.config import Thresholds

        self.every = every
        self.floor = Thresholds().min_cycle_psnr if floor is None else floor
        self.best: dict[str, Any] | None = None
        self.best_weights: dict[str, list[np.ndarray]] | None = None
        self.dirty = False
        self.held: dict[str, np.ndarray] = {}

    def start(self, t: Trainer) -> None:
        from cyclegan_jobs.inference import GENERATORS, Generators

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
        step = t.state.step
        if not self.every or (step % self.every and not t.state.last_of_training):
            return
        from cyclegan_jobs.evaluation.evaluate import selection_metrics

        weights = t.cg.version_weights()  # the generators' moving average, when the run keeps one
        for name, net in self.gens.nets.items():
            net.set_weights(weights[name])
        scores = selection_metrics(self.gens, self.held["a"], self.held["b"])
        improved = replaces(scores, self.best, self.floor)
        if improved:
            self.best = {"step": step, **scores}
            self.best_weights = weights
            self.dirty = True
            self._hand_over(t)
        row = {"kind": "selection", "step": step, **scores, "best_step": self.best["step"]}
        t.record(row, {f"selection/{k}": v for k, v in scores.items()})
        log.info(
            f"step {step}: held-out SWD {scores['swd_mean']:.1f}, cycle PSNR "
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
        self._hand_over(t)

    def _hand_over(self, t: Trainer) -> None:
        """The pick, for the loop to make the version from (and to report)."""
        t.state.selected = {"every": self.every, "cycle_psnr_floor": self.floor, **self.best}
        t.state.selected_weights = self.best_weights


class CheckpointMirror(Hook):
    """Every `checkpoint_every` steps and at the stop: save a checkpoint and mirror it (with the
    other hooks' state and the history) to the model store."""

    def after_step(self, t: Trainer, logs: dict[str, float]) -> None:
        if t.state.step % t.cfg.checkpoint_every and not t.state.last_of_run:
            return
        extra = [f for hook in t.hooks for f in hook.before_checkpoint(t)]
        t.writer.flush()
        for f in extra:  # before the checkpoint: its index then names a state that has them
            t.files.push(f)
        t.files.push_checkpoint(t.manager.save(checkpoint_number=t.state.step))

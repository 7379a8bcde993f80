"""Each training hook on its own, against a LoopState and a stand-in for the Trainer: no model
is built and no step is trained (the hooks inside real training runs: test_train.py)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from cyclegan_jobs.errors import TrainingError
from cyclegan_jobs.evaluation import evaluate
from cyclegan_jobs.training import hooks


class _Tracker:
    def __init__(self, value: float) -> None:
        self.value, self.resets = value, 0

    def result(self) -> float:
        return self.value

    def reset_state(self) -> None:
        self.resets += 1


class _Net:
    """A network whose weights say at which step they were taken."""

    def __init__(self, run: SimpleNamespace | None = None) -> None:
        self.run, self.weights = run, None

    def get_weights(self) -> list[np.ndarray]:
        return [np.full(2, self.run.state.step)]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.weights = weights


def _run(step: int = 0, total: int = 100, stop_at: int | None = None, **cfg) -> SimpleNamespace:
    """A stand-in for the running Trainer: its state, settings and the methods hooks call."""
    settings = {"log_every": 10, "sample_every": 50, "checkpoint_every": 40, "max_minutes": None,
                "epochs": 2, **cfg}  # fmt: skip
    state = hooks.LoopState(
        step=step, stop_at=total if stop_at is None else stop_at, total_steps=total,
        steps_per_epoch=total // 2, global_batch=4, started=time.time(),
    )  # fmt: skip
    run = SimpleNamespace(state=state, cfg=SimpleNamespace(**settings), rows=[], samples=[],
                          pushed=[], checkpoints=[], progress=None, hooks=[])  # fmt: skip
    run.record = lambda row, scalars: run.rows.append(row)
    run.save_samples = lambda: run.samples.append(run.state.step)
    names = ("generator_AB", "generator_BA", "discriminator_A", "discriminator_B")
    run.cg = SimpleNamespace(
        trackers={k: _Tracker(0.5) for k in hooks.LOSS_CURVES},
        networks={name: _Net(run) for name in names},
        # The generators' moving average: told apart from the live weights by its sign.
        version_weights=lambda: {
            n: [np.full(2, -run.state.step if n.startswith("gen") else run.state.step)]
            for n in names
        },
    )
    run.writer = SimpleNamespace(flush=lambda: None)
    run.files = SimpleNamespace(push=run.pushed.append, push_checkpoint=run.checkpoints.append)
    run.manager = SimpleNamespace(save=lambda checkpoint_number: f"ckpt-{checkpoint_number}")
    return run


def _steps(run: SimpleNamespace, hook: hooks.Hook, to: int) -> None:
    """The loop's part: step, call the hook, stop where the state says."""
    hook.start(run)
    while not run.state.last_of_run and run.state.step < to:
        run.state.step += 1
        hook.after_step(run, {"g_loss": 1.0})


def test_the_guard_stops_at_a_non_finite_loss_and_names_the_step() -> None:
    run = _run(step=7)
    hooks.NonFiniteGuard().after_step(run, {"g_loss": 1.0, "d_loss": 0.5})
    with pytest.raises(TrainingError, match=r"step 7 \(g_loss=nan\)"):
        hooks.NonFiniteGuard().after_step(run, {"g_loss": math.nan, "d_loss": 0.5})


def test_the_interval_log_records_every_n_steps_and_the_last() -> None:
    run = _run(total=25)
    _steps(run, hooks.IntervalLog(), 25)
    assert [r["step"] for r in run.rows] == [10, 20, 25]
    assert all(r["g_loss"] == 0.5 and r["images_per_sec"] > 0 for r in run.rows)
    assert [r["epoch"] for r in run.rows] == [1, 1, 1]  # the loop sets the epoch, not the hook
    assert run.cg.trackers["g_loss"].resets == 3  # interval means: reset after each row


def test_samples_are_drawn_every_n_steps() -> None:
    run = _run(total=120)
    _steps(run, hooks.Samples(), 120)
    assert run.samples == [50, 100]


def test_the_time_budget_asks_to_finish_and_does_not_rewrite_the_schedule() -> None:
    run = _run(total=100, max_minutes=1.0)
    run.progress = SimpleNamespace(assign=lambda used: setattr(run, "used", used))
    hook = hooks.TimeBudget()
    hook.after_step(run, {})
    assert not run.state.last_of_run and run.used < 0.1  # budget unspent: on it goes
    run.state.started -= 61  # a minute and a second ago
    run.state.step = 30
    hook.after_step(run, {})
    assert run.used > 1.0 and "time budget" in run.state.finish_reason
    assert run.state.last_of_run and run.state.last_of_training  # a version follows
    assert (run.state.stop_at, run.state.total_steps) == (100, 100)  # the plan is the loop's


def test_selection_hands_the_best_scored_weights_to_the_loop(monkeypatch) -> None:
    # Scripted scores by step: 20 has the lowest SWD above the floor; 30 is lower still but
    # its cycle PSNR is under the floor.
    scores = {10: (50.0, 22.0), 20: (30.0, 21.0), 30: (20.0, 9.0), 35: (40.0, 25.0)}
    run = _run(total=35)
    names = ("swd_mean", "cycle_psnr")
    monkeypatch.setattr(
        evaluate, "selection_metrics",
        lambda gens, a, b: dict(zip(names, scores[run.state.step], strict=True)),
    )  # fmt: skip
    hook = hooks.ModelSelection(every=10, floor=15.0)
    hook.gens = SimpleNamespace(nets={"generator_AB": _Net(), "generator_BA": _Net()})
    hook.held = {"a": np.zeros((2, 8, 8, 3)), "b": np.zeros((2, 8, 8, 3))}
    hook.start = lambda t: None  # no generators to build: they are stand-ins here
    _steps(run, hook, 35)
    assert [r["step"] for r in run.rows] == [10, 20, 30, 35]  # every 10 and the last step
    assert [r["best_step"] for r in run.rows] == [10, 20, 20, 20]
    picked = run.state.selected
    assert picked == {"every": 10, "cycle_psnr_floor": 15.0, "step": 20, "swd_mean": 30.0,
                      "cycle_psnr": 21.0}  # fmt: skip
    # Picked and scored: the generators' moving average (negative here), the live discriminators.
    assert {n: w[0][0] for n, w in run.state.selected_weights.items()} == {
        "generator_AB": -20, "generator_BA": -20, "discriminator_A": 20, "discriminator_B": 20
    }  # fmt: skip
    assert hook.gens.nets["generator_BA"].weights[0][0] == -35  # scored: the last step's


def test_a_later_step_must_beat_the_kept_swd_by_the_margin() -> None:
    """Ties (within the SWD's jitter) go to the earlier step; the floor and non-finite scores
    rank as before, whatever the margin."""
    kept = {"swd_mean": 100.0, "cycle_psnr": 30.0}
    just_inside = 100.0 * (1 - hooks.SELECT_MARGIN) * 1.001
    just_outside = 100.0 * (1 - hooks.SELECT_MARGIN) * 0.999
    assert hooks.replaces(kept, None, 15.0)
    assert not hooks.replaces({"swd_mean": just_inside, "cycle_psnr": 40.0}, kept, 15.0)
    assert hooks.replaces({"swd_mean": just_outside, "cycle_psnr": 20.0}, kept, 15.0)
    below_floor = {"swd_mean": 10.0, "cycle_psnr": 12.0}
    assert not hooks.replaces(below_floor, kept, 15.0)
    assert hooks.replaces({"swd_mean": 500.0, "cycle_psnr": 15.0}, below_floor, 15.0)
    assert hooks.replaces({"swd_mean": 99.0, "cycle_psnr": 13.0}, below_floor, 15.0)
    assert not hooks.replaces({"swd_mean": math.nan, "cycle_psnr": 30.0}, kept, 15.0)
    assert 0.0 < hooks.SELECT_MARGIN < 0.1


def test_off_selection_picks_nothing() -> None:
    run = _run(total=20)
    _steps(run, hooks.ModelSelection(every=0), 20)
    assert run.state.selected is None and run.state.selected_weights is None and not run.rows


def test_the_checkpoint_mirror_saves_every_n_steps_and_at_a_stop_with_the_hooks_state() -> None:
    run = _run(total=100, stop_at=90)

    class Stateful(hooks.Hook):
        def before_checkpoint(self, t):
            return [f"state-{t.state.step}.json"]

    run.hooks = [Stateful(), hooks.CheckpointMirror()]
    _steps(run, run.hooks[1], 100)
    assert run.state.step == 90  # --stop-after: this process stops early
    assert run.checkpoints == ["ckpt-40", "ckpt-80", "ckpt-90"]
    assert run.pushed == ["state-40.json", "state-80.json", "state-90.json"]
    assert not run.state.last_of_training  # stopped, not finished: no version

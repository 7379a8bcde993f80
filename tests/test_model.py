"""The train step, precision choice, LR schedule and image pool of cyclegan_jobs.training.model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cyclegan_jobs import runtime
from cyclegan_jobs.config import ConfigError, LossConfig, preset
from cyclegan_jobs.training.model import (
    CycleGAN,
    DiffAugment,
    ImagePool,
    LinearDecay,
    ema_momentum_for,
    make_optimizer,
)


def _batch(size: int, seed: int) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (1, size, size, 3)), tf.float32)


def _compiled(preset_name: str, precision: str = "float32", **model_changes) -> CycleGAN:
    model_cfg, loss_cfg = preset(preset_name, 32)
    model_cfg = dataclasses.replace(model_cfg, **model_changes)
    cg = CycleGAN(model_cfg, loss_cfg, precision=precision)
    cg.compile(
        make_optimizer(loss_cfg, 10, precision, "g_opt"),
        make_optimizer(loss_cfg, 10, precision, "d_opt"),
    )
    return cg


@pytest.mark.parametrize(
    ("preset_name", "precision", "changes"),
    [
        ("tiny", "float32", {}),
        ("tiny", "bfloat16", {}),
        ("paper", "float32", {"gen_filters": 4, "disc_filters": 4, "res_blocks": 2}),
    ],
)
def test_one_step_changes_every_trainable_weight(preset_name, precision, changes) -> None:
    cg = _compiled(preset_name, precision, **changes)
    a, b = _batch(32, 0), _batch(32, 1)
    cg.gen_ab(a), cg.gen_ba(b), cg.disc_a(a), cg.disc_b(b)  # build
    before = {v.path: v.numpy().copy() for v in cg.trainable_variables}
    logs = cg.train_step((a, b))  # eagerly: the compiled step is what training tests run
    colour = {"colour_fit_loss", "colour_match_loss"} if preset_name == "tiny" else set()
    assert set(logs) == {
        "d_a_loss", "d_b_loss", "d_loss", "g_loss", "adv_loss", "cycle_loss", "identity_loss",
        *colour,
    }  # fmt: skip
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert float(logs["d_loss"]) == pytest.approx(
        (float(logs["d_a_loss"]) + float(logs["d_b_loss"])) / 2, rel=1e-5
    )
    unchanged = [p for p, v in before.items() if np.array_equal(v, _var(cg, p).numpy())]
    assert unchanged == []
    assert int(cg.g_optimizer.iterations) == 1 and int(cg.d_optimizer.iterations) == 1


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_version_weights_hold_the_moving_average_of_the_steps(precision) -> None:
    """With ema_momentum m the version's generators are m-weighted averages of the weights after
    each step (the first step's weights start it); the live weights are left as they were, and
    the discriminators' optimizer keeps no average."""
    m = 0.6
    model_cfg, loss_cfg = preset("tiny", 32)
    loss_cfg = dataclasses.replace(loss_cfg, ema_momentum=m)
    cg = CycleGAN(model_cfg, loss_cfg, precision=precision)
    cg.compile(
        make_optimizer(loss_cfg, 10, precision, "g_opt", ema_momentum=m),
        make_optimizer(loss_cfg, 10, precision, "d_opt"),
    )
    start = cg.version_weights()
    before = {n: start[n] for n in cg.generators}
    assert all(  # before any step: the live weights (Keras's average starts at zero)
        np.array_equal(w, v) for n, ws in before.items()
        for w, v in zip(ws, cg.generators[n].get_weights(), strict=True)
    )  # fmt: skip
    after_steps = []  # the weights after each applied step (float16 skips overflowing ones)
    for seed in range(30):
        cg.train_step((_batch(32, 2 * seed), _batch(32, 2 * seed + 1)))
        if int(cg.g_optimizer.iterations) > len(after_steps):
            after_steps.append({n: g.get_weights() for n, g in cg.generators.items()})
        if len(after_steps) == 3:
            break
    assert len(after_steps) == 3
    averaged = cg.version_weights()
    for name, net in cg.generators.items():
        trainable = {id(v) for v in net.trainable_variables}
        kinds = [id(v) in trainable for v in net.weights]
        live = net.get_weights()
        for i, is_trainable in enumerate(kinds):
            w1, w2, w3 = (step[name][i] for step in after_steps)
            assert np.array_equal(live[i], w3)  # read out, then put back
            # Trainable: (w1 m + w2 (1 - m)) m + w3 (1 - m); BatchNorm's statistics: live.
            expected = (w1 * m + w2 * (1 - m)) * m + w3 * (1 - m) if is_trainable else w3
            np.testing.assert_allclose(averaged[name][i], expected, rtol=1e-5, atol=1e-6)
        assert any(not np.allclose(averaged[name][i], live[i]) for i, t in enumerate(kinds) if t)
    assert not getattr(cg.d_optimizer, "inner_optimizer", cg.d_optimizer).use_ema


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_a_moving_average_momentum_outside_0_1_is_refused(momentum) -> None:
    with pytest.raises(ConfigError, match=r"EMA momentum must be in \[0, 1\)"):
        LossConfig(ema_momentum=momentum)


@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_a_discriminator_rate_scale_of_zero_or_less_is_refused(scale) -> None:
    with pytest.raises(ConfigError, match="discriminator LR scale must be > 0"):
        LossConfig(disc_lr_scale=scale)


def test_only_the_tiny_preset_slows_its_discriminators() -> None:
    """The seed and the paper train all four networks at one rate, as they did."""
    assert [preset(name)[1].disc_lr_scale for name in ("seed", "paper")] == [1.0, 1.0]
    assert 0.0 < preset("tiny")[1].disc_lr_scale < 1.0


def test_only_the_tiny_preset_augments_what_its_discriminators_see() -> None:
    assert [preset(name)[1].disc_augment for name in ("seed", "paper", "tiny")] == [
        False, False, True
    ]  # fmt: skip
    model_cfg, loss_cfg = preset("tiny", 32)
    assert isinstance(CycleGAN(model_cfg, loss_cfg).augment, DiffAugment)
    plain = dataclasses.replace(loss_cfg, disc_augment=False)
    assert CycleGAN(model_cfg, plain).augment is None


def test_only_the_tiny_preset_keeps_a_moving_average() -> None:
    """The seed and the paper train and export their last weights, as they did."""
    assert {name: preset(name)[1].ema_momentum for name in ("seed", "paper")} == {
        "seed": 0.0, "paper": 0.0
    }  # fmt: skip
    assert 0.0 < preset("tiny")[1].ema_momentum < 1.0


def test_a_short_run_averages_over_its_own_last_steps() -> None:
    """The momentum is capped so that the average of a run of N steps spans about its last N/9
    (make run: 308 steps); a long or time-budgeted run gets the configured one; 0 stays off."""
    horizon = {n: 1 / (1 - ema_momentum_for(0.995, n)) for n in (308, 3000)}
    assert 30 <= horizon[308] <= 308 / 8 and horizon[3000] == pytest.approx(200)
    assert ema_momentum_for(0.995, 100_000 * 32) == 0.995 and ema_momentum_for(0.0, 308) == 0.0


def _var(cg: CycleGAN, path: str) -> tf.Variable:
    return next(v for v in cg.trainable_variables if v.path == path)


def test_float16_uses_loss_scaling_and_stays_finite() -> None:
    cg = _compiled("tiny", "float16")
    assert "LossScaleOptimizer" in type(cg.g_optimizer).__name__
    logs = cg.train_step((_batch(32, 0), _batch(32, 1)))
    assert all(np.isfinite(float(v)) for v in logs.values())


def test_resolve_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision"):
        runtime.resolve_precision("int8")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    assert runtime.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: False)
    assert runtime.resolve_precision("auto") == "float32"
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu"])
    assert runtime.resolve_precision("auto") == "float16"


def test_linear_decay_schedule() -> None:
    lr = LinearDecay(2e-4, total_steps=100, decay_start=50)
    values = [float(lr(tf.constant(s))) for s in (0, 49, 50, 75, 100, 120)]
    assert values == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4, 0.0, 0.0])


def test_image_pool_fills_then_mixes_history() -> None:
    pool = ImagePool(3, (2, 2, 1), seed=0, name="p")
    first = [pool.query(tf.fill((1, 2, 2, 1), float(i))) for i in range(3)]
    # While filling, the pool returns exactly what it gets.
    assert [float(x[0, 0, 0, 0]) for x in first] == [0.0, 1.0, 2.0]
    later = [float(pool.query(tf.fill((1, 2, 2, 1), 10.0 + i))[0, 0, 0, 0]) for i in range(40)]
    old = [v for i, v in enumerate(later) if v != 10.0 + i]
    # About half the answers are older images; every one of them was seen before.
    assert 8 <= len(old) <= 32
    seen = {0.0, 1.0, 2.0, *[10.0 + i for i in range(40)]}
    assert set(old) <= seen


def test_diff_augment_shifts_and_cuts_out_each_image_on_its_own() -> None:
    """Each image comes back moved by at most 1/8 of its size (zeros fill in from the border)
    with one square of at most half its side blanked; images differ in how; gradients flow."""
    x = tf.constant(np.random.default_rng(3).uniform(0.1, 1.0, (6, 32, 32, 3)), tf.float32)
    variable = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = DiffAugment(seed=0)(variable)
        total = tf.reduce_sum(y)
    assert y.shape == x.shape and tape.gradient(total, variable) is not None
    moves = set()
    for orig, out in zip(x.numpy(), y.numpy(), strict=True):
        kept = (out != 0).all(axis=-1)
        padded = np.pad(orig, ((4, 4), (4, 4), (0, 0)))
        (dy, dx), *others = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(padded[dy : dy + 32, dx : dx + 32][kept], out[kept])
        ]
        assert not others
        moves.add((dy, dx))
        # Blanked inside the picture (not the zeros moved in from the border): one square.
        rows, cols = np.nonzero(~kept & (padded[dy : dy + 32, dx : dx + 32] != 0).all(axis=-1))
        assert 0 < len(rows) <= 16 * 16
        assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
    assert len(moves) > 1


def test_the_discriminators_see_augmented_images_real_and_generated() -> None:
    """A train step hands all four discriminator inputs (real A, fake A, real B, fake B) to
    the augmentation, none of the generators' own inputs."""
    cg = _compiled("tiny")
    shapes, augment = [], cg.augment
    cg.augment = lambda images: shapes.append(tuple(images.shape)) or augment(images)
    cg.train_step((_batch(32, 0), _batch(32, 1)))
    assert shapes == [(1, 32, 32, 3)] * 4

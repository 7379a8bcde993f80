"""Losses against values computed by hand on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from cyclegan_jobs.config import ConfigError, LossConfig, preset
from cyclegan_jobs.training import losses


def _t(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, dtype="float32"))


def test_bce_discriminator_loss_by_hand() -> None:
    # BCE(1, z) = log(1 + e^-z); BCE(0, z) = log(1 + e^z).
    got = losses.bce_discriminator_loss(_t([[2.0]]), _t([[-1.0]]))
    assert float(got) == pytest.approx(math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)), 1e-6)
    # Undecided logits (0) cost log 2 for each half.
    assert float(losses.bce_discriminator_loss(_t([0.0, 0.0]), _t([0.0]))) == pytest.approx(
        2 * math.log(2), 1e-6
    )


def test_lsgan_losses_by_hand() -> None:
    real, fake = _t([1.0, 0.0]), _t([0.0, 1.0])
    # ((0 + 1) / 2 + (0 + 1) / 2) / 2
    assert float(losses.lsgan_discriminator_loss(real, fake)) == pytest.approx(0.5)
    # MSE(D(fake), 1) = ((0 - 1)^2 + (1 - 1)^2) / 2
    assert float(losses.generator_adversarial_loss(fake)) == pytest.approx(0.5)


def test_distances_by_hand() -> None:
    a, b = _t([[0.0, 1.0], [2.0, -1.0]]), _t([[1.0, 1.0], [0.0, 0.0]])
    assert float(losses.mse(a, b)) == pytest.approx((1 + 0 + 4 + 1) / 4)
    assert float(losses.l1(a, b)) == pytest.approx((1 + 0 + 2 + 1) / 4)


def test_losses_are_float32_for_bfloat16_inputs() -> None:
    x = tf.cast(_t([0.5, -0.5]), tf.bfloat16)
    assert losses.mse(x, 0.0).dtype == tf.float32


def test_seed_generator_objective_weights() -> None:
    # adversarial 1x, cycle 10x, identity 0.1x, MSE everywhere (the seed's gen_loss).
    real = (_t([[0.0, 0.0]]), _t([[1.0, 1.0]]))
    rec = (_t([[1.0, 1.0]]), _t([[1.0, 1.0]]))  # cycle MSE: 1 and 0
    ident = (_t([[0.0, 2.0]]), _t([[1.0, 1.0]]))  # identity MSE: 2 and 0
    fake_logits = (_t([[1.0]]), _t([[0.0]]))  # adversarial MSE to 1: 0 and 1
    out = losses.generator_loss(
        preset("seed")[1], fake_logits=fake_logits, real=real, reconstructed=rec, identity=ident
    )
    assert float(out["adv_loss"]) == pytest.approx(1.0)
    assert float(out["cycle_loss"]) == pytest.approx(1.0)
    assert float(out["identity_loss"]) == pytest.approx(2.0)
    assert float(out["g_loss"]) == pytest.approx(1.0 + 10 * 1.0 + 0.1 * 2.0)


def test_paper_objective_uses_l1_and_identity_5() -> None:
    cfg = preset("paper")[1]
    real = (_t([0.0]), _t([0.0]))
    rec = (_t([-2.0]), _t([0.0]))  # L1 2, MSE would be 4
    ident = (_t([1.0]), _t([0.0]))
    out = losses.generator_loss(
        cfg, fake_logits=(_t([1.0]), _t([1.0])), real=real, reconstructed=rec, identity=ident
    )
    assert float(out["g_loss"]) == pytest.approx(0 + 10 * 2.0 + 5 * 1.0)


def test_adversarial_weight_scales_the_adversarial_terms_only() -> None:
    real = (_t([0.0]), _t([0.0]))
    rec = (_t([1.0]), _t([0.0]))  # cycle MSE 1
    pairs = {"real": real, "reconstructed": rec, "identity": real}
    logits = (_t([0.0]), _t([-1.0]))  # adversarial MSE to 1: 1 and 4
    half = losses.generator_loss(LossConfig(adversarial_weight=0.5), fake_logits=logits, **pairs)
    assert float(half["adv_loss"]) == pytest.approx(5.0)
    assert float(half["g_loss"]) == pytest.approx(0.5 * 5.0 + 10 * 1.0)
    with pytest.raises(ConfigError, match="adversarial weight"):
        LossConfig(adversarial_weight=-1.0)


def test_discriminator_loss_dispatch() -> None:
    r, f = _t([0.0]), _t([0.0])
    assert float(losses.discriminator_loss(LossConfig(), r, f)) == pytest.approx(2 * math.log(2))
    assert float(losses.discriminator_loss(preset("paper")[1], r, f)) == pytest.approx(0.5)


def test_colour_fit_residual_is_zero_for_colour_maps_and_large_for_texture() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    mix = np.array([[0.5, 0.3, 0.0], [0.1, 0.7, 0.2], [-0.2, 0.1, 0.9]], "float32")
    mapped = x @ mix.T + np.array([0.1, -0.2, 0.05], "float32")  # a global affine colour map
    texture = x + rng.normal(0, 0.2, x.shape).astype("float32")
    assert float(losses.colour_fit_residual(_t(x), _t(mapped))) < 1e-3
    assert float(losses.colour_fit_residual(_t(x), _t(texture))) > 0.1
    # Per image: each image may have its own map.
    both = np.concatenate([mapped[:1], 0.5 * x[1:] - 0.3])
    assert float(losses.colour_fit_residual(_t(x), _t(both))) < 1e-3
    # Gradients flow to the output, and vanish at a colour map.
    y = tf.Variable(texture)
    with tf.GradientTape() as tape:
        loss = losses.colour_fit_residual(_t(x), y)
    grad = tape.gradient(loss, y).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_colour_fit_weight_adds_the_term_only_when_set() -> None:
    x, y = _t(np.zeros((1, 4, 4, 3))), _t(np.random.default_rng(1).uniform(-1, 1, (1, 4, 4, 3)))
    pairs = {
        "fake_logits": (_t([1.0]), _t([1.0])),
        "real": (x, x),
        "reconstructed": (x, x),
        "identity": (x, x),
        "translated": (y, y),
    }
    plain = losses.generator_loss(LossConfig(), **pairs)
    fitted = losses.generator_loss(LossConfig(colour_fit_weight=2.0), **pairs)
    assert "colour_fit_loss" not in plain and float(plain["g_loss"]) == pytest.approx(0.0)
    expected = 2 * float(losses.colour_fit_residual(x, y))
    assert expected > 0 and float(fitted["g_loss"]) == pytest.approx(2 * expected, rel=1e-5)


def test_colour_distribution_distance_compares_colours_not_places() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    shuffled = rng.permutation(x.reshape(-1, 3)).reshape(x.shape)  # the same colours elsewhere
    assert float(losses.colour_distribution_distance(_t(x), _t(shuffled), stride=1)) < 1e-10
    shifted = float(losses.colour_distribution_distance(_t(x), _t(x + 0.2), stride=1))
    assert shifted == pytest.approx(0.2**2 * np.mean([1, 1, 1, 3, 0, 0, 1 / 3]), rel=1e-4)
    y = tf.Variable(x + 0.2)
    with tf.GradientTape() as tape:
        loss = losses.colour_distribution_distance(_t(x), y)
    grad = tape.gradient(loss, y).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    # Only every stride-th pixel counts: the others may be anything.
    other = x.copy()
    other[:, 1::2, :, :] = 1.0
    assert float(losses.colour_distribution_distance(_t(x), _t(other), stride=2)) < 1e-10

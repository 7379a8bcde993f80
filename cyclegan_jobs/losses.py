"""Adversarial, cycle and identity losses as pure functions of float32 tensors."""

from __future__ import annotations

import tensorflow as tf

from .config import LossConfig


def _f32(x: tf.Tensor) -> tf.Tensor:
    # Losses are always computed in float32, whatever precision the networks ran in.
    return tf.cast(x, tf.float32)


def mse(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Mean squared error over every element (the seed's reduce_mean(mean_squared_error))."""
    return tf.reduce_mean(tf.square(_f32(a) - _f32(b)))


def l1(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Mean absolute error over every element."""
    return tf.reduce_mean(tf.abs(_f32(a) - _f32(b)))


def _bce_logits(target: float, logits: tf.Tensor) -> tf.Tensor:
    logits = _f32(logits)
    labels = tf.fill(tf.shape(logits), target)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def bce_discriminator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """The seed's discriminator loss: BCE(real -> 1) + BCE(fake -> 0) on logits."""
    return _bce_logits(1.0, real_logits) + _bce_logits(0.0, fake_logits)


def lsgan_discriminator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """LSGAN discriminator loss, halved as in the paper: (MSE(real, 1) + MSE(fake, 0)) / 2."""
    return 0.5 * (mse(real_logits, 1.0) + mse(fake_logits, 0.0))


def generator_adversarial_loss(fake_logits: tf.Tensor) -> tf.Tensor:
    """MSE(D(fake), 1): the seed's generator term (an LSGAN term) and the paper's alike."""
    return mse(fake_logits, 1.0)


def distance(kind: str, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`mse` or `l1` between two image batches."""
    return mse(a, b) if kind == "mse" else l1(a, b)


def discriminator_loss(cfg: LossConfig, real_logits: tf.Tensor, fake_logits: tf.Tensor):
    """The configured discriminator loss for one domain."""
    if cfg.adversarial == "bce":
        return bce_discriminator_loss(real_logits, fake_logits)
    return lsgan_discriminator_loss(real_logits, fake_logits)


def generator_loss(
    cfg: LossConfig,
    *,
    fake_logits: tuple[tf.Tensor, tf.Tensor],
    real: tuple[tf.Tensor, tf.Tensor],
    reconstructed: tuple[tf.Tensor, tf.Tensor],
    identity: tuple[tf.Tensor, tf.Tensor],
) -> dict[str, tf.Tensor]:
    """The joint generator objective and its parts, each pair ordered (domain A, domain B).

    total = adv_A + adv_B + w_cyc * (cyc_A + cyc_B) + w_id * (id_A + id_B)
    """
    adversarial = sum(generator_adversarial_loss(logits) for logits in fake_logits)
    cycle = sum(
        distance(cfg.cycle_distance, x, x_rec) for x, x_rec in zip(real, reconstructed, strict=True)
    )
    ident = sum(
        distance(cfg.identity_distance, x, x_id) for x, x_id in zip(real, identity, strict=True)
    )
    total = adversarial + cfg.cycle_weight * cycle + cfg.identity_weight * ident
    return {"g_loss": total, "adv_loss": adversarial, "cycle_loss": cycle, "identity_loss": ident}

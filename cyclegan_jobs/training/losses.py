"""Adversarial, cycle and identity losses as pure functions of float32 tensors."""

from __future__ import annotations

import tensorflow as tf

from cyclegan_jobs.config import LossConfig


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


def colour_fit_residual(source: tf.Tensor, output: tf.Tensor, ridge: float = 1e-4) -> tf.Tensor:
    """Mean absolute part of `output` that no per-image affine colour map of `source` explains.

    Per image, the 3x4 map output ~ M @ [r, g, b, 1] is fitted by least squares (closed form,
    a small ridge for flat images) and the residual measured: 0 for any global colour transform
    (channel mixing, brightness, contrast), large for textures and blotches the input does not
    have. Gradients flow through the fit (the residual is a projection of the output)."""
    batch = tf.shape(source)[0]
    x = tf.reshape(_f32(source), [batch, -1, 3])
    y = tf.reshape(_f32(output), [batch, -1, 3])
    pixels = tf.cast(tf.shape(x)[1], tf.float32)
    design = tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)  # N x P x 4
    gram = tf.matmul(design, design, transpose_a=True) / pixels
    rhs = tf.matmul(design, y, transpose_a=True) / pixels
    weights = tf.linalg.solve(gram + ridge * tf.eye(4), rhs)  # N x 4 x 3
    return tf.reduce_mean(tf.abs(y - tf.matmul(design, weights)))


# Directions pixel colours are projected on for colour_distribution_distance: the three channels
# and the four diagonals of the RGB cube, fixed (the loss is the same at every step).
_DIRECTIONS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, -1, 0], [1, 1, -2], [1, -1, 1]]


def colour_distribution_distance(fake: tf.Tensor, real: tf.Tensor, stride: int = 2) -> tf.Tensor:
    """Sliced Wasserstein distance (squared, mean) between the pixel colours of two batches of
    the same shape: every `stride`-th pixel of each row and column (the sort is most of the
    cost) projected on a few colour directions, the projections sorted, and the sorted values
    compared. Unpaired: it asks G(x)'s colours to be distributed as the target domain's,
    whatever the images show."""
    directions = tf.constant(_DIRECTIONS, tf.float32)
    directions /= tf.norm(directions, axis=1, keepdims=True)

    def projected(images: tf.Tensor) -> tf.Tensor:
        pixels = tf.reshape(_f32(images)[:, ::stride, ::stride], [-1, 3])
        return tf.sort(pixels @ tf.transpose(directions), axis=0)

    return mse(projected(fake), projected(real))


def generator_loss(
    cfg: LossConfig,
    *,
    fake_logits: tuple[tf.Tensor, tf.Tensor],
    real: tuple[tf.Tensor, tf.Tensor],
    reconstructed: tuple[tf.Tensor, tf.Tensor],
    identity: tuple[tf.Tensor, tf.Tensor],
    translated: tuple[tf.Tensor, tf.Tensor] | None = None,
) -> dict[str, tf.Tensor]:
    """The joint generator objective and its parts, each pair ordered (domain A, domain B).

    total = w_adv * (adv_A + adv_B) + w_cyc * (cyc_A + cyc_B) + w_id * (id_A + id_B)
            [+ w_match * (match(G(A), B) + match(F(B), A))]   LossConfig.colour_match_weight
            [+ w_fit * (fit(A, G(A)) + fit(B, F(B)))]         LossConfig.colour_fit_weight
    where `translated` is (G(A), F(B)), match is colour_distribution_distance against the real
    batch of the target domain and fit is colour_fit_residual against the input.
    """
    adversarial = sum(generator_adversarial_loss(logits) for logits in fake_logits)
    cycle = sum(
        distance(cfg.cycle_distance, x, x_rec) for x, x_rec in zip(real, reconstructed, strict=True)
    )
    ident = sum(
        distance(cfg.identity_distance, x, x_id) for x, x_id in zip(real, identity, strict=True)
    )
    total = (
        cfg.adversarial_weight * adversarial
        + cfg.cycle_weight * cycle
        + cfg.identity_weight * ident
    )
    parts = {"adv_loss": adversarial, "cycle_loss": cycle, "identity_loss": ident}
    if cfg.colour_match_weight and translated is not None:
        match = sum(
            colour_distribution_distance(fake, target)
            for fake, target in zip(translated, real[::-1], strict=True)
        )  # fmt: skip
        total += cfg.colour_match_weight * match
        parts["colour_match_loss"] = match
    if cfg.colour_fit_weight and translated is not None:
        fit = sum(
            colour_fit_residual(x, y) for x, y in zip(real, translated, strict=True)
        )  # fmt: skip
        total += cfg.colour_fit_weight * fit
        parts["colour_fit_loss"] = fit
    return {"g_loss": total, **parts}

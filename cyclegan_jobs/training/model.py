"""The CycleGAN as a keras.Model: two generators, two discriminators, one custom train step.

Names, ours vs the paper (Zhu et al. 2017):
    gen_ab  = G   : A -> B   (seed: generator_AB; A = Van Gogh paintings, B = face photos)
    gen_ba  = F   : B -> A   (seed: generator_BA)
    disc_a  = D_X : judges domain A (seed: discriminator_A)
    disc_b  = D_Y : judges domain B (seed: discriminator_B)
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from cyclegan_jobs.config import LossConfig, ModelConfig
from cyclegan_jobs.runtime import POLICIES
from cyclegan_jobs.training import losses
from cyclegan_jobs.training.networks import build_discriminator, build_generator


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Constant learning rate until `decay_start`, then linear decay to 0 at `total_steps`."""

    def __init__(self, initial: float, total_steps: int, decay_start: int):
        self.initial = float(initial)
        self.total_steps = int(total_steps)
        self.decay_start = int(decay_start)

    def __call__(self, step):  # a scalar tensor (the optimizer's iterations)
        step = tf.cast(step, tf.float32)
        span = float(max(self.total_steps - self.decay_start, 1))
        frac = tf.clip_by_value((float(self.total_steps) - step) / span, 0.0, 1.0)
        return self.initial * tf.where(step < self.decay_start, 1.0, frac)

    def get_config(self) -> dict:
        return {
            "initial": self.initial,
            "total_steps": self.total_steps,
            "decay_start": self.decay_start,
        }


class BudgetDecay(keras.optimizers.schedules.LearningRateSchedule):
    """LinearDecay for a time budget, where the step count is unknown in advance: constant for
    the first half of the budget, then linear to 0. `progress` is a variable the training loop
    sets to the share of the budget used so far."""

    def __init__(self, initial: float, progress: tf.Variable):
        self.initial = float(initial)
        self.progress = progress

    def __call__(self, step):  # unused: time, not steps, drives the decay
        frac = tf.clip_by_value(2.0 * (1.0 - tf.cast(self.progress, tf.float32)), 0.0, 1.0)
        return self.initial * frac

    def get_config(self) -> dict:
        return {"initial": self.initial}


def ema_momentum_for(momentum: float, total_steps: int) -> float:
    """The moving average's momentum for a run of `total_steps`: `momentum`, at most
    (1 + N) / (10 + N) for N planned steps (tf.train.ExponentialMovingAverage's warm-up rule,
    taken at the run's end), so that a short run averages over its last ~N/9 steps rather than
    lagging behind its own progress. Budgeted runs plan many steps: theirs is `momentum`."""
    return min(momentum, (1 + total_steps) / (10 + total_steps)) if momentum else 0.0


def make_optimizer(
    cfg: LossConfig,
    total_steps: int,
    precision: str,
    name: str,
    budget_progress: tf.Variable | None = None,
    ema_momentum: float = 0.0,
    lr_scale: float = 1.0,
):
    """Adam(lr, beta_1) with the configured schedule; loss scaling for float16.

    With `linear_decay` the LR decays over the second half of the steps or, when a
    `budget_progress` variable is given (a time-budgeted run), over the second half of the time.
    With `ema_momentum` the optimizer also keeps a moving average of the weights it trains
    (Keras's `use_ema`; `CycleGAN.version_weights` reads it). `lr_scale` multiplies the rate
    (the discriminators' `disc_lr_scale`).
    """
    lr = initial = cfg.learning_rate * lr_scale
    if cfg.linear_decay and budget_progress is not None:
        lr = BudgetDecay(initial, budget_progress)
    elif cfg.linear_decay:
        lr = LinearDecay(initial, total_steps, decay_start=total_steps // 2)
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    opt = keras.optimizers.Adam(lr, beta_1=cfg.beta_1, name=name, **ema)
    if precision == "float16":  # bfloat16 has float32's exponent range and needs no scaling
        opt = keras.optimizers.LossScaleOptimizer(opt, name=f"{name}_scaled")
    return opt


class DiffAugment(tf.Module):
    """Differentiable augmentation for the discriminators (Zhao et al. 2020, "translation" and
    "cutout"): every image a discriminator sees, real or generated, in its loss or in the
    generators', is shifted by up to 1/8 of its size (zeros fill) and has a square of half its
    size blanked, at random per image. Colours are left alone (they are what the styles change).
    Against a discriminator memorizing a small training set. State in a variable (checkpoints)."""

    def __init__(self, seed: int, name: str = "diff_augment"):
        super().__init__(name=name)
        self.rng = tf.random.Generator.from_seed(seed)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
        pad_h, pad_w = h // 8, w // 8
        padded = tf.pad(images, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        dy = self.rng.uniform([n, 1], 0, 2 * pad_h + 1, dtype=tf.int32)
        dx = self.rng.uniform([n, 1], 0, 2 * pad_w + 1, dtype=tf.int32)
        rows = tf.gather(padded, dy + tf.range(h)[None], axis=1, batch_dims=1)
        shifted = tf.gather(rows, dx + tf.range(w)[None], axis=2, batch_dims=1)
        cy = self.rng.uniform([n, 1, 1], 0, h, dtype=tf.int32)
        cx = self.rng.uniform([n, 1, 1], 0, w, dtype=tf.int32)
        inside = (tf.abs(tf.range(h)[None, :, None] - cy) < h // 4) & (
            tf.abs(tf.range(w)[None, None, :] - cx) < w // 4
        )
        return shifted * tf.cast(~inside, shifted.dtype)[..., None]


class ImagePool(tf.Module):
    """A history of generated images (Shrivastava et al.): with p=0.5 the discriminator sees an
    older fake instead of the newest one. State lives in variables so checkpoints restore it."""

    def __init__(self, size: int, image_shape: tuple[int, int, int], seed: int, name: str):
        super().__init__(name=name)
        self.size = size
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.images = tf.Variable(
            tf.zeros((size, *image_shape)), trainable=False, aggregation=agg, name="images"
        )
        self.count = tf.Variable(0, trainable=False, aggregation=agg, name="count")
        self.rng = tf.random.Generator.from_seed(seed)

    def query(self, batch: tf.Tensor) -> tf.Tensor:
        batch = tf.stop_gradient(tf.cast(batch, tf.float32))
        out = []
        for i in range(batch.shape[0]):  # the batch size is static (drop_remainder=True)
            image = batch[i]
            slot = self.rng.uniform((), 0, self.size, dtype=tf.int32)
            use_old = self.rng.uniform(()) < 0.5
            filling = self.count < self.size
            old = self.images[slot]
            idx = tf.where(filling, self.count, slot)
            # Filling: store and return the new image. Full: half the time swap with an old one.
            store = tf.logical_or(filling, use_old)
            self.images[idx].assign(tf.where(store, image, self.images[idx]))
            self.count.assign(tf.minimum(self.count + 1, self.size))
            out.append(tf.where(tf.logical_and(tf.logical_not(filling), use_old), old, image))
        return tf.stack(out)


class CycleGAN(keras.Model):
    """Trains G: A->B and F: B->A adversarially with cycle and identity consistency."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        *,
        precision: str = "float32",
        seed: int = 0,
    ):
        super().__init__(name="cyclegan")
        self.model_cfg, self.loss_cfg, self.precision = model_cfg, loss_cfg, precision
        policy = POLICIES[precision]
        self.gen_ab = build_generator(model_cfg, name="generator_AB", dtype=policy)
        self.gen_ba = build_generator(model_cfg, name="generator_BA", dtype=policy)
        self.disc_a = build_discriminator(model_cfg, name="discriminator_A", dtype=policy)
        self.disc_b = build_discriminator(model_cfg, name="discriminator_B", dtype=policy)
        shape = (model_cfg.image_size, model_cfg.image_size, 3)
        self.pools = None
        if loss_cfg.pool_size:
            self.pools = {
                d: ImagePool(loss_cfg.pool_size, shape, seed=seed + i, name=f"pool_{d}")
                for i, d in enumerate("ab")
            }
        self.augment = DiffAugment(seed + 2) if loss_cfg.disc_augment else None
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in (
                "d_a_loss",
                "d_b_loss",
                "d_loss",
                "g_loss",
                "adv_loss",
                "cycle_loss",
                "identity_loss",
                *(["colour_fit_loss"] if loss_cfg.colour_fit_weight else []),
                *(["colour_match_loss"] if loss_cfg.colour_match_weight else []),
            )
        }

    @property
    def networks(self) -> dict[str, keras.Model]:
        return {
            "generator_AB": self.gen_ab,
            "generator_BA": self.gen_ba,
            "discriminator_A": self.disc_a,
            "discriminator_B": self.disc_b,
        }

    @property
    def random_state(self) -> dict[str, tf.Module]:
        """The modules whose random state a checkpoint keeps: image pools, the augmentation."""
        state = {f"pool_{d}": pool for d, pool in (self.pools or {}).items()}
        return state | ({"augment": self.augment} if self.augment is not None else {})

    @property
    def metrics(self) -> list:
        return list(self.trackers.values())

    def compile(self, g_optimizer, d_optimizer) -> None:
        super().compile()
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer

    def call(self, inputs, training: bool = False):
        """A -> B, so that the model is usable like a generator."""
        return self.gen_ab(inputs, training=training)

    def train_step(self, data):  # a (real_a, real_b) pair of batches in [-1, 1]
        real_a, real_b = data
        cfg = self.loss_cfg
        # Under MirroredStrategy the optimizers sum gradients over replicas.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync

        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            # 1. Translate each domain into the other (the seed's call order, which matters for
            #    BatchNorm's moving statistics).
            fake_b = self.gen_ab(real_a, training=True)
            fake_a = self.gen_ba(real_b, training=True)

            # 2. Discriminators on real and generated images (augmented alike, if asked).
            seen = self.augment or tf.identity
            logits_real_a = self.disc_a(seen(real_a), training=True)
            logits_fake_a = self.disc_a(seen(fake_a), training=True)
            logits_real_b = self.disc_b(seen(real_b), training=True)
            logits_fake_b = self.disc_b(seen(fake_b), training=True)

            # 3. Cycle back to the original domain, and identity mappings.
            rec_a = self.gen_ba(fake_b, training=True)
            rec_b = self.gen_ab(fake_a, training=True)
            id_a = self.gen_ba(real_a, training=True)
            id_b = self.gen_ab(real_b, training=True)

            # 4. Generator objective: fool both discriminators, cycle back, keep identities.
            g = losses.generator_loss(
                cfg,
                fake_logits=(logits_fake_a, logits_fake_b),
                real=(real_a, real_b),
                reconstructed=(rec_a, rec_b),
                identity=(id_a, id_b),
                translated=(fake_b, fake_a),
            )

            # 5. Discriminator objective, on a history of fakes when the preset keeps one.
            d_fake_a, d_fake_b = logits_fake_a, logits_fake_b
            if self.pools is not None:
                d_fake_a = self.disc_a(seen(self.pools["a"].query(fake_a)), training=True)
                d_fake_b = self.disc_b(seen(self.pools["b"].query(fake_b)), training=True)
            d_a = losses.discriminator_loss(cfg, logits_real_a, d_fake_a)
            d_b = losses.discriminator_loss(cfg, logits_real_b, d_fake_b)
            d_loss = (d_a + d_b) / 2
            d_scaled = self.d_optimizer.scale_loss(d_loss / replicas)
            g_scaled = self.g_optimizer.scale_loss(g["g_loss"] / replicas)

        # 6. Update the discriminators, then the generators (the seed's order).
        d_vars = self.disc_a.trainable_variables + self.disc_b.trainable_variables
        self.d_optimizer.apply_gradients(
            zip(d_tape.gradient(d_scaled, d_vars), d_vars, strict=True)
        )
        g_vars = self.gen_ab.trainable_variables + self.gen_ba.trainable_variables
        self.g_optimizer.apply_gradients(
            zip(g_tape.gradient(g_scaled, g_vars), g_vars, strict=True)
        )

        # 7. Report this step's losses; the trackers keep running means.
        logs = {"d_a_loss": d_a, "d_b_loss": d_b, "d_loss": d_loss, **g}
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return logs

    @property
    def generators(self) -> dict[str, keras.Model]:
        return {"generator_AB": self.gen_ab, "generator_BA": self.gen_ba}

    def version_weights(self) -> dict[str, list[np.ndarray]]:
        """The four networks' weights as a version gets them: the discriminators' live ones; the
        generators' moving average when their optimizer keeps one (`make_optimizer`'s
        `ema_momentum`) and has stepped, with the live BatchNorm statistics; else live."""
        weights = {name: net.get_weights() for name, net in self.networks.items()}
        opt = getattr(self.g_optimizer, "inner_optimizer", self.g_optimizer)  # under loss scaling
        if not opt.use_ema or int(opt.iterations.numpy()) == 0:
            return weights
        # Keras reads the average out only by writing it into the variables: write, read, undo.
        opt.finalize_variable_values(
            self.gen_ab.trainable_variables + self.gen_ba.trainable_variables
        )
        for name, net in self.generators.items():
            averaged = net.get_weights()
            net.set_weights(weights[name])
            weights[name] = averaged
        return weights

    def translate(self, a, b):
        """Inference both ways: (A->B, A->B->A, B->A, B->A->B), float in [-1, 1]."""
        from cyclegan_jobs.inference import cycle

        return (*cycle(self.gen_ab, self.gen_ba, a), *cycle(self.gen_ba, self.gen_ab, b))


def float32_copy(network: keras.Model, model_cfg: ModelConfig, weights: list | None = None):
    """The same network rebuilt in float32 with its weights (or `weights`): the form we save."""
    kind = build_generator if network.name.startswith("generator") else build_discriminator
    copy = kind(model_cfg, name=network.name)
    copy.set_weights(network.get_weights() if weights is None else weights)
    return copy


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops deterministic (for exact resume)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
        tf.config.experimental.enable_op_determinism()

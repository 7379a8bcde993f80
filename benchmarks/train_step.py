"""Training-step throughput: the seed's step as written in the notebook vs ours, side by side.

Measures images/s (2 images per step: one of each domain) at 256x256, batch 1, for
  seed      the notebook's networks and @tf.function train_batch, float32, written as it is there
  ours-f32  cyclegan_jobs.training.model.CycleGAN.train_step, float32
  ours-auto the same at --precision auto (bfloat16 on CPUs with AVX512-BF16/AMX)
Rounds are interleaved so that machine noise hits every configuration alike; the median round
counts. Run: `.venv/bin/python benchmarks/train_step.py [--steps 10 --rounds 3 --size 256]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from keras import Input, Model, Sequential
from keras.layers import (
    BatchNormalization,
    Concatenate,
    Conv2D,
    Conv2DTranspose,
    LeakyReLU,
)
from keras.losses import BinaryCrossentropy, mean_squared_error
from keras.optimizers import Adam

from cyclegan_jobs.config import preset
from cyclegan_jobs.runtime import resolve_precision
from cyclegan_jobs.training.model import CycleGAN, make_optimizer

# The seed notebook's code, kept as close to it as Keras 3 allows (shared residual blocks
# too), in its own pieces: downsample, upsample, ResnetIdentityBlock, generator,
# discriminator, train_batch.


def downsample(filters, size=3, apply_batchnorm=True):
    init = tf.random_normal_initializer(0.0, 0.02)
    result = Sequential()
    result.add(
        Conv2D(
            filters,
            size,
            strides=2,
            padding="same",
            activation=LeakyReLU(),
            kernel_initializer=init,
            use_bias=False,
        )
    )
    if apply_batchnorm:
        result.add(BatchNormalization())
    return result


def upsample(filters, size=3):
    init = tf.random_normal_initializer(0.0, 0.02)
    result = Sequential()
    result.add(
        Conv2DTranspose(
            filters,
            size,
            strides=2,
            padding="same",
            activation="relu",
            kernel_initializer=init,
            use_bias=False,
        )
    )
    result.add(BatchNormalization())
    return result


class ResnetIdentityBlock(Model):
    def __init__(self, kernel_size, filters):
        super().__init__()
        f1, f2, f3 = filters
        self.conv2a, self.bn2a = Conv2D(f1, (1, 1)), BatchNormalization()
        self.conv2b, self.bn2b = Conv2D(f2, kernel_size, padding="same"), BatchNormalization()
        self.conv2c, self.bn2c = Conv2D(f3, (1, 1)), BatchNormalization()

    def call(self, x_in, training=False):
        x = tf.nn.relu(self.bn2a(self.conv2a(x_in), training=training))
        x = tf.nn.relu(self.bn2b(self.conv2b(x), training=training))
        x = self.bn2c(self.conv2c(x), training=training)
        return tf.nn.relu(x + x_in)


def generator(size: int, resnet: list):
    down = [
        downsample(64, 4, False),
        downsample(128, 4),
        downsample(256, 4),
        downsample(512, 4),
    ]
    up = [upsample(256, 4), upsample(128, 4), upsample(64, 4)]
    last = Conv2DTranspose(
        3, 4, strides=2, padding="same", activation="tanh",
        kernel_initializer=tf.random_normal_initializer(0.0, 0.02),
    )  # fmt: skip
    inputs = Input(shape=[size, size, 3])
    x, skips = inputs, []
    for d in down:
        x = d(x)
        skips.append(x)
    for block in resnet:
        x = block(x)
    for u, skip in zip(up, reversed(skips[:-1]), strict=True):
        x = Concatenate()([u(x), skip])
    return Model(inputs=inputs, outputs=last(x))


def discriminator():
    inputs = Input(shape=[None, None, 3])
    x = inputs
    for f in (64, 128, 256, 512):
        x = downsample(f)(x)
    return Model(inputs=inputs, outputs=Conv2D(1, 4, strides=1, padding="same")(x))


def seed_train_batch(size: int, nets: tuple) -> object:
    """The notebook's @tf.function train_batch over its four networks and losses."""
    d_a, d_b, g_ab, g_ba = nets
    loss_object = BinaryCrossentropy(from_logits=True)
    optimizer, d_optimizer = Adam(1e-4, beta_1=0.5), Adam(1e-4, beta_1=0.5)
    grid = size // 16
    valid = np.ones((1, grid, grid, 1), "float32")

    def discriminator_loss(real, generated):
        return loss_object(tf.ones_like(real), real) + loss_object(
            tf.zeros_like(generated), generated
        )

    @tf.function
    def train_batch(imgs_a, imgs_b):
        with tf.GradientTape() as g, tf.GradientTape() as d_tape:
            fake_b = g_ab(imgs_a, training=True)
            fake_a = g_ba(imgs_b, training=True)
            logits_real_a = d_a(imgs_a, training=True)
            logits_fake_a = d_a(fake_a, training=True)
            da_loss = discriminator_loss(logits_real_a, logits_fake_a)
            logits_real_b = d_b(imgs_b, training=True)
            logits_fake_b = d_b(fake_b, training=True)
            db_loss = discriminator_loss(logits_real_b, logits_fake_b)
            d_loss = (da_loss + db_loss) / 2
            reconstr_a = g_ba(fake_b, training=True)
            reconstr_b = g_ab(fake_a, training=True)
            id_a = g_ba(imgs_a, training=True)
            id_b = g_ab(imgs_b, training=True)
            gen_loss = tf.math.reduce_sum(
                [
                    tf.math.reduce_mean(mean_squared_error(logits_fake_a, valid)),
                    tf.math.reduce_mean(mean_squared_error(logits_fake_b, valid)),
                    10 * tf.math.reduce_mean(mean_squared_error(reconstr_a, imgs_a)),
                    10 * tf.math.reduce_mean(mean_squared_error(reconstr_b, imgs_b)),
                    0.1 * tf.math.reduce_mean(mean_squared_error(id_a, imgs_a)),
                    0.1 * tf.math.reduce_mean(mean_squared_error(id_b, imgs_b)),
                ]
            )
        d_vars = d_a.trainable_variables + d_b.trainable_variables
        d_optimizer.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars, strict=True))
        g_vars = g_ab.trainable_variables + g_ba.trainable_variables
        optimizer.apply_gradients(zip(g.gradient(gen_loss, g_vars), g_vars, strict=True))
        return da_loss, db_loss, gen_loss

    return train_batch


def seed_step(size: int):
    """The notebook's step: its networks (one set of residual blocks shared by both
    generators, as there) and its train_batch."""
    resnet = [ResnetIdentityBlock(3, [512, 512, 512]) for _ in range(3)]
    nets = discriminator(), discriminator(), generator(size, resnet), generator(size, resnet)
    train_batch = seed_train_batch(size, nets)
    return lambda a, b: train_batch(a, b)


def our_step(size: int, precision: str):
    model_cfg, loss_cfg = preset("seed", size)
    cg = CycleGAN(model_cfg, loss_cfg, precision=precision)
    cg.compile(
        make_optimizer(loss_cfg, 1000, precision, "g_optimizer"),
        make_optimizer(loss_cfg, 1000, precision, "d_optimizer"),
    )
    step = tf.function(cg.train_step)
    return lambda a, b: step((a, b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    auto = resolve_precision("auto")
    rng = np.random.default_rng(0)
    a = tf.constant(rng.uniform(-1, 1, (1, args.size, args.size, 3)).astype("float32"))
    b = tf.constant(rng.uniform(-1, 1, (1, args.size, args.size, 3)).astype("float32"))
    configs = {
        "seed (float32)": seed_step(args.size),
        "ours (float32)": our_step(args.size, "float32"),
        f"ours (auto = {auto})": our_step(args.size, auto),
    }
    for name, fn in configs.items():  # tracing and first-call costs stay out of the timing
        t = time.perf_counter()
        for _ in range(args.warmup):
            tf.nest.map_structure(lambda x: x.numpy(), fn(a, b))
        print(f"warm-up {name}: {time.perf_counter() - t:.1f}s", flush=True)

    rates: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, fn in configs.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                out = fn(a, b)
            tf.nest.map_structure(lambda x: x.numpy(), out)  # wait for the last step
            rates[name].append(2 * args.steps / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in rates.items()))

    median = {name: statistics.median(v) for name, v in rates.items()}
    base = median["seed (float32)"]
    print(f"\ntrain step at {args.size}x{args.size}, batch 1, {os.cpu_count()} CPU cores")
    print(f"{'configuration':<28}{'images/s':>10}{'vs seed':>10}")
    for name, value in median.items():
        print(f"{name:<28}{value:>10.2f}{value / base:>9.2f}x")
    goal = median[f"ours (auto = {auto})"] / base
    verdict = "MET" if goal >= 1.6 else "MISSED"
    print(f"\ngoal: ours (auto) >= 1.6x seed float32 -> {goal:.2f}x {verdict}")


if __name__ == "__main__":
    main()

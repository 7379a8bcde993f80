"""The one inference path: a generator, then (optionally) the way back, for every caller.

`cycle()` is the maths (used by the model's training samples); `Generators` holds a stored
version's generators compiled for uint8 batches (used by the translate job and evaluation).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from . import registry

log = logging.getLogger(__name__)

GENERATORS = ("generator_AB", "generator_BA")
# The generator that translates each direction, and the one that goes back.
DIRECTION_NETS = {"a2b": ("generator_AB", "generator_BA"), "b2a": ("generator_BA", "generator_AB")}


def cycle(forward, backward, x, *, training: bool = False):  # noqa: ANN001, ANN201
    """forward(x) and, when `backward` is given, backward(forward(x)); float tensors in [-1, 1].

    The way back is fed the un-quantized translation, as in training.
    """
    y = forward(x, training=training)
    return y, (backward(y, training=training) if backward is not None else None)


def _to_uint8(y: tf.Tensor) -> tf.Tensor:
    y = tf.cast(y, tf.float32)
    return tf.cast(tf.round(tf.clip_by_value((y + 1.0) * 127.5, 0.0, 255.0)), tf.uint8)


class Generators:
    """A version's generators at one precision, compiled for uint8 batches in.

    `translate()` gives uint8 translations (and reconstructions) for the batch job;
    `apply()` gives one generator's float output, for metrics that must see NaNs.
    """

    def __init__(
        self,
        nets: dict[str, Any],
        model_cfg: Any,  # a ModelConfig
        precision: str = "auto",
        strategy: tf.distribute.Strategy | None = None,
    ):
        from .model import POLICIES, distribution_strategy, resolve_precision
        from .networks import build_generator

        self.precision = resolve_precision(precision)
        self.strategy = strategy or distribution_strategy()
        with self.strategy.scope():  # rebuilt at the chosen precision, weights copied
            self.nets = {}
            for name, net in nets.items():
                copy = build_generator(model_cfg, name=name, dtype=POLICIES[self.precision])
                copy.set_weights(net.get_weights())
                self.nets[name] = copy
        self.image_size = model_cfg.image_size
        self._run = tf.function(self._chain, reduce_retracing=True)
        log.info("inference: %s precision, %d replica(s)", self.precision, self.replicas)

    @classmethod
    def load(
        cls,
        version_uri: str,
        model_cfg: Any,
        precision: str = "auto",
        names: tuple[str, ...] = GENERATORS,
        strategy: tf.distribute.Strategy | None = None,
    ) -> Generators:
        """The named generators of a stored version (checked, loaded with safe_mode=True)."""
        return cls(load_generators(version_uri, names), model_cfg, precision, strategy)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def _chain(self, batch: tf.Tensor, names: tuple[str, ...], quantize: bool) -> list:
        x = tf.cast(batch, tf.float32) / 127.5 - 1.0  # the seed's normalize()
        backward = self.nets[names[1]] if len(names) > 1 else None
        outs = [o for o in cycle(self.nets[names[0]], backward, x) if o is not None]
        return [_to_uint8(o) if quantize else tf.cast(o, tf.float32) for o in outs]

    def _call(self, batch: np.ndarray, names: tuple[str, ...], quantize: bool) -> list:
        if self.replicas == 1:
            return [o.numpy() for o in self._run(batch, names, quantize)]
        # Each replica gets its own contiguous slice; results come back in replica order.
        per = -(-len(batch) // self.replicas)
        shards = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: batch[ctx.replica_id_in_sync_group * per :][:per]
        )
        per_replica = self.strategy.run(self._run, args=(shards, names, quantize))
        return [
            np.concatenate([t.numpy() for t in self.strategy.experimental_local_results(o)])
            for o in per_replica
        ]

    def translate(
        self, batch: np.ndarray, direction: str, reconstruct: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 N x H x W x 3 -> (translated, reconstructed or None), uint8."""
        forward, backward = DIRECTION_NETS[direction]
        outs = self._call(batch, (forward, backward) if reconstruct else (forward,), True)
        return outs[0], (outs[1] if reconstruct else None)

    def apply(self, name: str, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """One generator over uint8 images, in batches -> float32 outputs in [-1, 1]."""
        outs = [
            self._call(images[i : i + batch_size], (name,), False)[0]
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(outs).astype(np.float32)


def load_generators(version_uri: str, names: tuple[str, ...] = GENERATORS) -> dict[str, Any]:
    """The named generators of a stored version as keras Models (see registry.load_model)."""
    return {name: registry.load_model(version_uri, name) for name in names}

"""The one inference path: a generator, then (optionally) the way back, for every caller.

`cycle()` is the maths (used by the model's training samples); `Generators` holds a stored
version's generators compiled for uint8 batches (used by the translate job and evaluation).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from cyclegan_jobs import registry
from cyclegan_jobs.translation import norm_stats

log = logging.getLogger(__name__)

GENERATORS = ("generator_AB", "generator_BA")
# The generator that translates each direction, and the one that goes back.
DIRECTION_NETS = {"a2b": ("generator_AB", "generator_BA"), "b2a": ("generator_BA", "generator_AB")}


def cycle(forward, backward, x, *, training: bool = False):
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

    Generators with instance norm (`per_image_norm`: the paper preset) also take a row of
    statistics per image for tiles (cyclegan_jobs/translation/norm_stats.py): `stats()` of a
    downscaled copy of the whole picture, or `own_stats()` for a tile that is a whole picture.
    """

    def __init__(
        self,
        nets: dict[str, Any],
        model_cfg: Any,  # a ModelConfig
        precision: str = "auto",
        strategy: tf.distribute.Strategy | None = None,
    ):
        from cyclegan_jobs.runtime import POLICIES, distribution_strategy, resolve_precision
        from cyclegan_jobs.training.networks import build_generator

        self.precision = resolve_precision(precision)
        self.strategy = strategy or distribution_strategy()
        self.per_image_norm = model_cfg.per_image_norm
        with self.strategy.scope():  # rebuilt at the chosen precision, weights copied
            self.nets = {}
            for name, net in nets.items():
                copy = build_generator(
                    model_cfg, name=name, dtype=POLICIES[self.precision],
                    any_size=self.per_image_norm,  # the stats pass sees whole pictures
                )  # fmt: skip
                copy.set_weights(net.get_weights())
                self.nets[name] = copy
            self._tiled, self._stats = {}, {}
            if self.per_image_norm:
                for name, net in self.nets.items():
                    self._tiled[name] = norm_stats.tiled_model(net)
                    self._stats[name] = norm_stats.stats_model(net, with_output=True)
        self.image_size = model_cfg.image_size
        # No AutoGraph: no tensor-dependent Python control flow here to convert (and it cannot
        # convert the tiled model's lambda: a warning in every run's log).
        self._run = tf.function(self._chain, reduce_retracing=True, autograph=False)
        self._traced: set[tuple] = set()  # see _trace_for_any_batch
        self._stats_run = tf.function(self._stats_chain, reduce_retracing=True, autograph=False)
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

    def _net(self, names: tuple[str, ...], part: int, stats: tf.Tensor | None):
        """Generator names[part], or its tiled model given its part of the stats rows."""
        if stats is None:
            return self.nets[names[part]]
        split = norm_stats.stats_size(self.nets[names[0]])
        rows = stats[:, :split] if part == 0 else stats[:, split:]
        return lambda x, training: self._tiled[names[part]]([x, rows], training=training)

    def _chain(
        self, batch: tf.Tensor, names: tuple[str, ...], quantize: bool, stats: tf.Tensor | None
    ) -> list:
        x = tf.cast(batch, tf.float32) / 127.5 - 1.0  # the seed's normalize()
        backward = self._net(names, 1, stats) if len(names) > 1 else None
        outs = [o for o in cycle(self._net(names, 0, stats), backward, x) if o is not None]
        return [_to_uint8(o) if quantize else tf.cast(o, tf.float32) for o in outs]

    def _call(
        self,
        batch: np.ndarray,
        names: tuple[str, ...],
        quantize: bool,
        stats: np.ndarray | None = None,
    ) -> list:
        if self.replicas == 1:
            self._trace_for_any_batch(batch, names, quantize, stats)
            return [o.numpy() for o in self._run(batch, names, quantize, stats)]
        # Each replica gets its own contiguous slice; results come back in replica order.
        per = -(-len(batch) // self.replicas)

        def part(values: np.ndarray | None, ctx: tf.distribute.ReplicaContext) -> Any:
            start = ctx.replica_id_in_sync_group * per
            return None if values is None else values[start:][:per]

        shards = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: (part(batch, ctx), part(stats, ctx))
        )
        per_replica = self.strategy.run(lambda b, s: self._run(b, names, quantize, s), args=shards)
        return [
            np.concatenate([t.numpy() for t in self.strategy.experimental_local_results(o)])
            for o in per_replica
        ]

    def _trace_for_any_batch(
        self, batch: np.ndarray, names: tuple[str, ...], quantize: bool, stats: Any
    ) -> None:
        """Trace a chain once for every batch size of its picture shape, before its first call.
        Traced at the first batch's size, a chain was traced again for the last, smaller batch
        of the same images; with model selection's and evaluation's Generators in one process
        (make run), TF logged a retracing WARNING (5 traces within 10 calls of the method)."""
        key = (names, quantize, batch.shape[1:], batch.dtype, stats is None)
        if key in self._traced:
            return
        rows = None if stats is None else tf.TensorSpec([None, *np.shape(stats)[1:]], tf.float32)
        spec = tf.TensorSpec([None, *batch.shape[1:]], batch.dtype)
        self._run.get_concrete_function(spec, names, quantize, rows)
        self._traced.add(key)

    def translate(
        self,
        batch: np.ndarray,
        direction: str,
        reconstruct: bool = True,
        stats: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 N x H x W x 3 -> (translated, reconstructed or None), uint8. With
        `per_image_norm`, `stats` gives each tile's row (`stats()` or `own_stats()`)."""
        forward, backward = DIRECTION_NETS[direction]
        names = (forward, backward) if reconstruct else (forward,)
        outs = self._call(batch, names, True, stats)
        return outs[0], (outs[1] if reconstruct else None)

    def stats(self, picture: np.ndarray, direction: str, reconstruct: bool = True) -> np.ndarray:
        """A uint8 H x W x 3 picture (a downscaled copy of the whole one) -> its row of
        statistics for `translate`: the forward generator's and, with `reconstruct`, those of
        the way back on the forward one's output (float32)."""
        forward, backward = DIRECTION_NETS[direction]
        rows = self._stats_run(picture[None], forward, backward if reconstruct else None)
        return rows.numpy()[0]

    def _stats_chain(self, picture: tf.Tensor, forward: str, backward: str | None) -> tf.Tensor:
        # Traced, not eager: Keras' eager graph walk keeps every layer's output until the end
        # (6.4 GB for the paper's generator on 1024x768), a traced function frees each one
        # after its last use. reduce_retracing: one trace serves the copies' many shapes.
        x = tf.cast(picture, tf.float32) / 127.5 - 1.0
        fake, rows = self._stats[forward](x, training=False)
        if backward is not None:
            rows = tf.concat([rows, self._stats[backward](fake, training=False)[1]], axis=1)
        return rows

    def own_stats(self, direction: str, reconstruct: bool = True) -> np.ndarray:
        """The row for a tile that is a whole picture: each generator its own statistics."""
        names = DIRECTION_NETS[direction][: 2 if reconstruct else 1]
        return np.concatenate([norm_stats.own_stats(self.nets[n], 1)[0] for n in names])

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

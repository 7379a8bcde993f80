"""Instance normalization with whole-image statistics, for tiled inference (issue 20).

The paper preset's generator (networks._resnet_generator) normalizes every feature map with its
own per-image, per-channel mean and variance (GroupNormalization with one group per channel).
Run in tiles, each tile would normalize with its own statistics, and neighbouring tiles would
differ in colour. Here the statistics come from the whole image instead:

- `stats_model(net)` runs the generator on a copy of the whole image (downscaled:
  `tiles.downscale`; the translate job's `--stats-side`) and returns,
  per image, the mean and variance of the input of every instance-norm layer, as one float32
  vector of `stats_size(net)` values.
- `tiled_model(net)` is the same generator (the very same layers and weights, shared, not
  copied) with every instance norm replaced by `GivenStatsNorm`, which normalizes with those
  statistics: inputs `[tiles, stats]`, one stats row per tile (repeat the image's row for each
  of its tiles).
- For the reconstruction chain backward(forward(x)), backward's statistics are those of
  forward's output on the copy (`inference.Generators.stats`).
- `own_stats(net, n)`: rows that tell `tiled_model` to normalize each tile with its own
  statistics, as the generator does: for a tile that is a whole (padded) image.

The stats vector's layout, fixed and documented: the instance-norm layers in the order of
`norm_layers(net)` (the functional graph's order, which for the ResNet generator is the order
in which the data meets them: c7s1, d128, d256, res0a, res0b, ..., u128, u64); for each layer
its C channel means, then its C variances (biased, as the layer computes them); last one flag,
1 for "each tile its own statistics" (`own_stats`), else 0. `stats_layout` returns (name,
offset, channels) per layer. Networks without instance norm (the U-Net presets,
whose BatchNorm at inference is a per-pixel affine map) need no statistics: `needs_stats`.

With the whole image's own statistics, tiles whose margin covers the reach (84 px for the
paper's ResNet-9, tests/test_norm_stats.py) equal whole-image inference to float rounding
(benchmarks/seams.py, 768x1024, tile 512, margin 96: 88.7 dB). Statistics of a downscaled copy
leave no seam (every tile uses the same ones) but shift the whole output: the copy lacks the
fine detail that the variances, of the early layers above all, are made of. Random weights
magnify this (768x1024: 17.3 dB from a 256 px copy, 23.0 dB from 512 px, 13.8 dB with each
tile's own statistics; tile 256, margin 48: 23.0 dB from 512 px, but 64.1 dB in the seam
band against whole-image inference with the same statistics, 12.4 dB per tile, 70.8 dB
exact). A trained paper model (weakly: 12 min at 64 px) on a 12 MP photo, tiles of 1088,
statistics from a 1024 px copy (the translate job's default): 40.2 dB at margin 48 and at
margin 96 (README, "Output size and tiles"). Two refinements were tried
and dropped. Passes over the full-resolution tiles pooling each norm's input moments (each
tile normalized with the previous pass's statistics) fix one more layer per pass but mix the
rest: with 9 norms (256x384, tiles of 128, stats from a half-size copy) the interior PSNR went
28.0, 24.1, 12.1, 20.2, 11.2, 21.3, 20.7, 37.2, 53.4, 127 dB over passes 0..9, so exactness
costs as many passes as norms (23 in the paper's generator). Rescaling the copy's variances by
the ratio measured on full-resolution crops against their downscaled selves did not help.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import layers, ops

log = logging.getLogger(__name__)


def _is_instance_norm(layer: keras.layers.Layer) -> bool:
    if not isinstance(layer, layers.GroupNormalization):
        return False
    channels = layer.input.shape[layer.axis]
    return layer.groups in (-1, channels)


def norm_layers(net: keras.Model) -> list[layers.GroupNormalization]:
    """The instance-norm layers of `net` in the stats vector's order (net.layers' order)."""
    return [layer for layer in net.layers if _is_instance_norm(layer)]


def needs_stats(net: keras.Model) -> bool:
    """Whether `net` normalizes with per-image statistics (then tiles need `tiled_model`)."""
    return bool(norm_layers(net))


def stats_layout(net: keras.Model) -> list[tuple[str, int, int]]:
    """(layer name, offset in the stats vector, channels) per instance-norm layer: the layer's
    means are stats[offset : offset + channels], its variances the next `channels` values."""
    layout, offset = [], 0
    for layer in norm_layers(net):
        channels = int(layer.input.shape[layer.axis])
        layout.append((layer.name, offset, channels))
        offset += 2 * channels
    return layout


def stats_size(net: keras.Model) -> int:
    """S, the length of one image's stats vector, its flag included (0 for a network without
    instance norm)."""
    size = sum(2 * channels for _, _, channels in stats_layout(net))
    return size + 1 if size else 0


def own_stats(net: keras.Model, n: int) -> np.ndarray:
    """n stats rows (float32) that make `tiled_model` normalize each tile with its own
    statistics: the generator itself, for a tile that is a whole image."""
    rows = np.zeros((n, stats_size(net)), np.float32)
    rows[:, -1] = 1.0
    return rows


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class InstanceMoments(layers.Layer):
    """(N, H, W, C) -> (N, 2C) float32: per image, the channel means then the variances, as
    GroupNormalization(groups=-1) computes them (in float32 whatever the input's dtype)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.autocast = False

    def call(self, x):
        mean, variance = ops.moments(ops.cast(x, "float32"), axes=[1, 2])
        return ops.concatenate([mean, variance], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])

    def compute_output_spec(self, x):
        return keras.KerasTensor(self.compute_output_shape(x.shape), dtype="float32")


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class GivenFlag(layers.Layer):
    """(N, M) float32 -> (N, M + 1): the stats rows with their flag, 0 ("these statistics")."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.autocast = False

    def call(self, x):
        return ops.concatenate([x, ops.zeros_like(x[:, :1])], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1)


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class GivenStatsNorm(layers.Layer):
    """Instance normalization with given statistics: inputs [x (N, H, W, C), stats (N, S)];
    normalizes x with mean stats[:, offset : offset + C] and variance the next C values,
    (x - mean) / sqrt(variance + epsilon) in float32, as GroupNormalization(groups=-1,
    center=False, scale=False) does with its own statistics; with its own statistics where the
    row's last value (the flag) is 1."""

    def __init__(self, offset: int, channels: int, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.offset, self.channels, self.epsilon = int(offset), int(channels), float(epsilon)
        self.autocast = False

    def call(self, inputs):
        x, stats = inputs
        dtype = x.dtype
        x = ops.cast(x, "float32")
        stats = ops.cast(stats, "float32")
        c = self.channels
        mean = stats[:, None, None, self.offset : self.offset + c]
        variance = stats[:, None, None, self.offset + c : self.offset + 2 * c]
        own = stats[:, None, None, -1:] > 0.5
        own_mean, own_variance = ops.moments(x, axes=[1, 2], keepdims=True)
        mean = ops.where(own, own_mean, mean)
        variance = ops.where(own, own_variance, variance)
        return ops.cast((x - mean) * ops.rsqrt(variance + self.epsilon), dtype)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self) -> dict:
        config = {"offset": self.offset, "channels": self.channels, "epsilon": self.epsilon}
        return {**super().get_config(), **config}


def _require_norms(net: keras.Model) -> None:
    if not needs_stats(net):
        raise ValueError(f"{net.name} has no instance normalization: run it on tiles as it is")
    affine = [layer.name for layer in norm_layers(net) if layer.center or layer.scale]
    if affine:  # GivenStatsNorm has no gamma/beta (the paper's InstanceNorm2d has none either)
        raise ValueError(f"instance norms with learned gamma/beta are not supported: {affine}")


def stats_model(net: keras.Model, *, with_output: bool = False) -> keras.Model:
    """A model of `net`'s own layers: images (N, H, W, 3) in [-1, 1] -> stats (N, S) float32
    (see the module's docstring for the layout); with `with_output`, [output, stats]. Run it
    on a downscaled copy of the whole image (`tiles.downscale`); feed the stats to
    `tiled_model`."""
    _require_norms(net)
    moments = [
        InstanceMoments(name=f"{layer.name}_moments")(layer.input) for layer in norm_layers(net)
    ]
    stats = GivenFlag(name="stats")(layers.Concatenate(name="moments", dtype="float32")(moments))
    outputs = [net.output, stats] if with_output else stats
    return keras.Model(net.input, outputs, name=f"{net.name}_stats")


def tiled_model(net: keras.Model) -> keras.Model:
    """`net` with each instance norm normalizing with given statistics: inputs [tiles (N, H, W,
    3) in [-1, 1], stats (N, S)], output as `net`'s. Every other layer is `net`'s own (shared
    weights), called in the same functional graph."""
    _require_norms(net)
    layout = {name: (offset, channels) for name, offset, channels in stats_layout(net)}
    image = keras.Input(shape=net.input.shape[1:], dtype=net.input.dtype, name="image")
    stats = keras.Input(shape=(stats_size(net),), dtype="float32", name="stats")

    def call(layer: keras.layers.Layer, *args, **kwargs):
        if layer.name not in layout:
            return layer(*args, **kwargs)
        offset, channels = layout[layer.name]
        norm = GivenStatsNorm(offset, channels, layer.epsilon, name=f"{layer.name}_given")
        return norm([args[0], stats])

    # The graph walk Keras' own clone_model uses, with the layers shared instead of cloned.
    outputs = net._run_through_graph([image], operation_fn=lambda op: op, call_fn=call)
    return keras.Model([image, stats], outputs, name=f"{net.name}_tiled")

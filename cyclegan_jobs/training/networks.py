"""Generator and discriminator builders: the seed's U-Net/PatchGAN and the paper's ResNet-9.

Every builder is a plain function that returns a functional `keras.Model` made only of stock
Keras layers (plus one registered padding layer for the paper preset), so saved generators load
with `keras.saving.load_model(path, safe_mode=True)` and need no code of ours beyond an import.
Both generators upsample x2 with the seed's stride-2 transposed convolutions or, with
`ModelConfig.upsample = "resize"`, with resize-convolutions (up_conv), which leave no
checkerboard texture.

Deliberate deviation from the seed: the notebook creates its three residual blocks once at module
level and calls them from `Generator()`, so its generator_AB and generator_BA *share* the
bottleneck weights. Here each generator owns its blocks, as CycleGAN intends (two independent
mappings G: A->B and F: B->A).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from cyclegan_jobs.config import ModelConfig

# The seed's LeakyReLU() uses the Keras default slope, 0.3.
SEED_LEAKY_SLOPE = 0.3


def _init() -> keras.initializers.Initializer:
    # The seed's tf.random_normal_initializer(0., 0.02), as in pix2pix.
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class FusedBatchNorm(layers.BatchNormalization):
    """Keras BatchNormalization whose training pass runs TF's fused kernel.

    Same weights, same maths (batch statistics in training, moving averages updated with the
    biased variance, as Keras does; moving statistics in inference), but one fused op (and its
    fused gradient) instead of Keras' separate moments/normalize ops and float32 round trips:
    training and inference are markedly faster on CPU (benchmarks/). Masks and inputs that are
    not 4-D channels-last use the stock implementation.
    """

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        if not (self.center and self.scale) or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, self.compute_dtype)  # float32, or bfloat16/float16 under mixed
        batch_stats = bool(training and self.trainable)
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=tf.cast(self.gamma, tf.float32),
            offset=tf.cast(self.beta, tf.float32),
            mean=tf.constant([], tf.float32) if batch_stats else self.moving_mean,
            variance=tf.constant([], tf.float32) if batch_stats else self.moving_variance,
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=batch_stats,
        )
        if not batch_stats:  # inference: the moving statistics, in the same single kernel
            return y
        # The fused op reports the unbiased (Bessel-corrected) variance; Keras tracks the biased.
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        return y


def _conv(conv: type[layers.Layer], x, filters: int, size: int, *, strides: int,
          name: str, dtype, use_bias: bool = False):  # fmt: skip
    # The seed's pix2pix-style convs: 'same' padding, N(0, 0.02) init, no bias unless asked.
    return conv(
        filters,
        size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=_init(),
        name=name,
        dtype=dtype,
    )(x)


# x: a keras tensor (here and below)
def downsample(x, filters: int, size: int = 3, *, batchnorm: bool = True, name: str, dtype=None):
    """Conv2D stride 2 with LeakyReLU (inside the conv, as the seed), no bias, then BatchNorm."""
    x = _conv(layers.Conv2D, x, filters, size, strides=2, name=f"{name}_conv", dtype=dtype)
    x = layers.LeakyReLU(SEED_LEAKY_SLOPE, name=f"{name}_lrelu", dtype=dtype)(x)
    if batchnorm:
        x = FusedBatchNorm(name=f"{name}_bn", dtype=dtype)(x)
    return x


def upsample(
    x,  # a keras tensor
    filters: int,
    size: int = 3,
    *,
    name: str,
    dtype=None,
    mode: str = "transpose",
):
    """Upsampling x2 (see up_conv) with ReLU (inside the conv), no bias, then BatchNorm."""
    x = up_conv(x, filters, size, mode=mode, name=name, conv_name=f"{name}_convT", dtype=dtype)
    x = layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)
    return FusedBatchNorm(name=f"{name}_bn", dtype=dtype)(x)


# Resize-convolution (ModelConfig.upsample == "resize"): the interpolation and the kernel of the
# stride-1 conv that replaces each stride-2 transposed conv (None: the transposed conv's size).
# Measured with metrics.checkerboard_db (benchmarks/checkerboard.py; tiny preset, 64 px): with
# nearest or bilinear, 3x3 or 4x4, no resize variant has texture (-2.8..+0.7 dB at init and
# after 400-1200 training steps, the target paintings +0.1), where transposed convs score +6 at
# init and +5..+11 trained. Nearest: bilinear generators came out blurred, 0.7-2.4 dB PSNR
# further from the targets after 1200 steps (2 seeds; 0.7 on average after 400, 3 seeds).
# Nearest's score is below 0 because it leaves a notch (less power at the period-2 frequencies
# than around them), not a texture. 3x3: 4x4 after nearest left no stride pattern either but
# measured no better, a 3x3 'same' conv is centred (an even one shifts by half a pixel against
# the U-Net skips), and at the doubled resolution it costs 2.25x the transposed conv's
# multiply-adds, not 4x. Stored versions are rebuilt from their config with their weights
# copied in (inference.Generators): a new kernel would break resize-mode versions, a new
# interpolation would silently change their outputs.
RESIZE_INTERPOLATION = "nearest"
RESIZE_KERNEL: int | None = 3


def up_conv(
    x,  # a keras tensor
    filters: int,
    size: int,
    *,
    mode: str,
    name: str,
    conv_name: str | None = None,
    use_bias: bool = False,
    dtype=None,
):
    """A x2 upsampling convolution: N(0, 0.02) init, 'same' padding, no activation.

    mode "transpose": one stride-2 Conv2DTranspose named `conv_name` (default `name`), the
    seed's. mode "resize": UpSampling2D x2 (`{name}_resize`, RESIZE_INTERPOLATION) then a
    stride-1 Conv2D (`{name}_conv`) with the same filters, bias and initializer, and kernel
    RESIZE_KERNEL (or `size`): no uneven kernel overlap, hence no checkerboard (Odena et al.).
    """
    if mode == "resize":
        x = layers.UpSampling2D(
            2, interpolation=RESIZE_INTERPOLATION, name=f"{name}_resize", dtype=dtype
        )(x)
        conv, strides, size, conv_name = layers.Conv2D, 1, RESIZE_KERNEL or size, f"{name}_conv"
    elif mode == "transpose":
        conv, strides, conv_name = layers.Conv2DTranspose, 2, conv_name or name
    else:
        raise ValueError(f"unknown upsampling mode {mode!r}; choose 'transpose' or 'resize'")
    return _conv(
        conv, x, filters, size, strides=strides, name=conv_name, dtype=dtype, use_bias=use_bias
    )


def residual_block(x, filters: int, kernel_size: int = 3, *, name: str, dtype=None):
    """The seed's ResnetIdentityBlock: 1x1 -> kxk -> 1x1 convs with BN, input added, ReLU."""
    shortcut = x
    for i, (k, last) in enumerate([(1, False), (kernel_size, False), (1, True)]):
        x = layers.Conv2D(filters, k, padding="same", name=f"{name}_conv{i}", dtype=dtype)(x)
        x = FusedBatchNorm(name=f"{name}_bn{i}", dtype=dtype)(x)
        if not last:
            x = layers.ReLU(name=f"{name}_relu{i}", dtype=dtype)(x)
    x = layers.Add(name=f"{name}_add", dtype=dtype)([x, shortcut])
    return layers.ReLU(name=f"{name}_out", dtype=dtype)(x)


def build_generator(
    cfg: ModelConfig,
    *,
    name: str = "generator",
    dtype=None,
    any_size: bool = False,
) -> keras.Model:
    """A generator for `cfg` (image_size x image_size x 3 in [-1, 1] -> same shape, tanh).

    `dtype` is a Keras dtype policy ("mixed_bfloat16", ...); the output is always float32.
    `any_size`: the input is any height x width (multiples of 16), as for tiles; the same
    weights fit either way, the layers being convolutions.
    """
    side = None if any_size else cfg.image_size
    if cfg.architecture == "resnet":
        return _resnet_generator(cfg, side, name=name, dtype=dtype)
    f = cfg.gen_filters
    inputs = keras.Input(shape=(side, side, 3), name="image")
    x = inputs
    skips = []
    for i, filters in enumerate([f, f * 2, f * 4, f * 8]):
        x = downsample(x, filters, 4, batchnorm=i > 0, name=f"down{i}", dtype=dtype)
        skips.append(x)
    for i in range(cfg.res_blocks):
        x = residual_block(x, f * 8, name=f"res{i}", dtype=dtype)
    for i, (filters, skip) in enumerate(zip([f * 4, f * 2, f], reversed(skips[:-1]), strict=True)):
        x = upsample(x, filters, 4, name=f"up{i}", dtype=dtype, mode=cfg.upsample)
        x = layers.Concatenate(name=f"skip{i}", dtype=dtype)([x, skip])
    if cfg.input_skip:
        x = _full_resolution_head(x, inputs, f, cfg.upsample, dtype)
    else:
        x = up_conv(x, 3, 4, mode=cfg.upsample, name="last", use_bias=True, dtype=dtype)
    if cfg.colour_head:  # ModelConfig.colour_head: a per-pixel colour map beside the U-Net
        x = layers.Add(name="colour_add", dtype="float32")(
            [x, _colour_head(inputs, cfg.colour_head, dtype)]
        )
    if cfg.residual:  # ModelConfig.residual: the last conv is a change to the input
        x = layers.Add(name="residual", dtype="float32")([x, Atanh(name="input_atanh")(inputs)])
    # tanh in float32: the image leaves the network at full precision whatever the policy.
    outputs = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs, outputs, name=name)


def _colour_head(inputs, units: int, dtype=None):
    """ModelConfig.colour_head: a per-pixel colour map of the input (two hidden 1x1 layers), the
    same for every image and every place, started near zero like the last conv."""
    x = inputs
    for i in range(2):
        x = layers.Conv2D(units, 1, activation="relu", name=f"colour{i}", dtype=dtype)(x)
    return layers.Conv2D(3, 1, kernel_initializer=_init(), name="colour_out", dtype=dtype)(x)


def _full_resolution_head(x, inputs, filters: int, mode: str, dtype=None):
    """ModelConfig.input_skip: the U-Net's missing top level. Features come up to full size
    (`up3`: up_conv, ReLU), the input image joins them (`skip_input`), and a 3x3 conv (`last`)
    makes the output, so each output pixel sees its own input pixel instead of a /2 summary."""
    x = up_conv(x, filters, 4, mode=mode, name="up3", conv_name="up3_convT", dtype=dtype)
    x = layers.ReLU(name="up3_relu", dtype=dtype)(x)
    x = layers.Concatenate(name="skip_input", dtype=dtype)([x, inputs])
    return layers.Conv2D(
        3, 3, padding="same", kernel_initializer=_init(), name="last", dtype=dtype
    )(x)


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class Atanh(layers.Layer):
    """atanh of an image in [-1, 1], clipped to +-LIMIT first (atanh(+-1) is infinite): what
    the generator's final tanh turns back into the image, for ModelConfig.residual."""

    LIMIT = 0.999  # atanh 3.8: tanh of it is 1 within half a level of 255

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x):
        x = keras.ops.clip(keras.ops.cast(x, "float32"), -self.LIMIT, self.LIMIT)
        return 0.5 * keras.ops.log((1.0 + x) / (1.0 - x))


def build_discriminator(
    cfg: ModelConfig, *, name: str = "discriminator", dtype=None
) -> keras.Model:
    """A PatchGAN discriminator returning float32 logits (seed: 16x16x1 for 256x256 input)."""
    if cfg.architecture == "resnet":
        return _patchgan_70(cfg, name=name, dtype=dtype)
    f = cfg.disc_filters
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for i, filters in enumerate([f, f * 2, f * 4, f * 8]):
        x = downsample(x, filters, cfg.disc_kernel, name=f"down{i}", dtype=dtype)
    x = layers.Conv2D(1, 4, strides=1, padding="same", name="logits", dtype=dtype)(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)


# --- the paper preset (Zhu et al. 2017, appendix 7.2) ----------------------------------------


@keras.saving.register_keras_serializable(package="cyclegan_jobs")
class ReflectionPadding2D(layers.Layer):
    """Reflection padding of the spatial dimensions (the paper pads with reflection)."""

    def __init__(self, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, x):
        p = self.padding
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        grow = 2 * self.padding
        return (b, None if h is None else h + grow, None if w is None else w + grow, c)

    def get_config(self) -> dict:
        return {**super().get_config(), "padding": self.padding}


def _instance_norm(name: str, dtype=None) -> layers.Layer:
    # GroupNormalization with one group per channel is instance normalization; the reference
    # implementation's InstanceNorm2d has no affine parameters.
    return layers.GroupNormalization(
        groups=-1, epsilon=1e-5, center=False, scale=False, name=name, dtype=dtype
    )


def _conv_norm_relu(x, filters, k, stride, *, name, dtype, up=None, pad=0):
    # up: None for a convolution, else the x2 upsampling mode ("transpose" | "resize").
    if pad:
        x = ReflectionPadding2D(pad, name=f"{name}_pad", dtype=dtype)(x)
    if up:
        x = up_conv(
            x, filters, k, mode=up, name=name, conv_name=f"{name}_conv", use_bias=True, dtype=dtype
        )
    else:
        x = layers.Conv2D(
            filters,
            k,
            strides=stride,
            padding="valid" if pad else "same",
            kernel_initializer=_init(),
            name=f"{name}_conv",
            dtype=dtype,
        )(x)
    x = _instance_norm(f"{name}_in", dtype)(x)
    return layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def _resnet_generator(cfg: ModelConfig, side: int | None, *, name: str, dtype=None) -> keras.Model:
    f = cfg.gen_filters
    inputs = keras.Input(shape=(side, side, 3), name="image")
    x = _conv_norm_relu(inputs, f, 7, 1, pad=3, name="c7s1", dtype=dtype)
    x = _conv_norm_relu(x, f * 2, 3, 2, name="d128", dtype=dtype)
    x = _conv_norm_relu(x, f * 4, 3, 2, name="d256", dtype=dtype)
    for i in range(cfg.res_blocks):
        shortcut = x
        y = _conv_norm_relu(x, f * 4, 3, 1, pad=1, name=f"res{i}a", dtype=dtype)
        y = ReflectionPadding2D(1, name=f"res{i}b_pad", dtype=dtype)(y)
        y = layers.Conv2D(f * 4, 3, kernel_initializer=_init(), name=f"res{i}b_conv", dtype=dtype)(
            y
        )
        y = _instance_norm(f"res{i}b_in", dtype)(y)
        x = layers.Add(name=f"res{i}_add", dtype=dtype)([shortcut, y])
    x = _conv_norm_relu(x, f * 2, 3, 2, up=cfg.upsample, name="u128", dtype=dtype)
    x = _conv_norm_relu(x, f, 3, 2, up=cfg.upsample, name="u64", dtype=dtype)
    x = ReflectionPadding2D(3, name="out_pad", dtype=dtype)(x)
    x = layers.Conv2D(3, 7, kernel_initializer=_init(), name="out_conv", dtype=dtype)(x)
    outputs = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs, outputs, name=name)


def _patchgan_70(cfg: ModelConfig, *, name: str, dtype=None) -> keras.Model:
    # C64-C128-C256-C512 with 4x4 convs, LeakyReLU 0.2, no norm on the first layer; padding 1
    # as the reference code, so a 256 input gives 30x30 logits with a 70x70 receptive field.
    f = cfg.disc_filters
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for i, (filters, stride) in enumerate([(f, 2), (f * 2, 2), (f * 4, 2), (f * 8, 1)]):
        x = layers.ZeroPadding2D(1, name=f"c{i}_pad", dtype=dtype)(x)
        x = layers.Conv2D(
            filters, 4, strides=stride, kernel_initializer=_init(), name=f"c{i}_conv", dtype=dtype
        )(x)
        if i > 0:
            x = _instance_norm(f"c{i}_in", dtype)(x)
        x = layers.LeakyReLU(0.2, name=f"c{i}_lrelu", dtype=dtype)(x)
    x = layers.ZeroPadding2D(1, name="logits_pad", dtype=dtype)(x)
    x = layers.Conv2D(1, 4, kernel_initializer=_init(), name="logits", dtype=dtype)(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)

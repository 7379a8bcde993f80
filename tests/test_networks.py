"""Network shapes and parameter counts: the seed's exact architecture, and the other presets."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cyclegan_jobs.config import ConfigError, ModelConfig, preset
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.training import networks
from cyclegan_jobs.training.model import CycleGAN
from cyclegan_jobs.training.networks import build_discriminator, build_generator

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_seed_generator_matches_the_notebook() -> None:
    g = build_generator(preset("seed")[0])
    assert g.count_params() == 14_848_771
    assert _trainable(g) == 14_836_867
    assert g.output_shape == (None, 256, 256, 3)


def test_seed_discriminator_matches_the_notebook() -> None:
    d = build_discriminator(preset("seed")[0])
    assert d.count_params() == 1_562_049
    assert d.output_shape == (None, 16, 16, 1)


def test_seed_layers_are_built_as_specified() -> None:
    g = build_generator(preset("seed")[0])
    convs = [layer for layer in g.layers if isinstance(layer, keras.layers.Conv2D)]
    # Four stride-2 downsampling convs with 4x4 kernels and no bias, then the residual convs.
    downs = [c for c in convs if c.name.startswith("down")]
    assert [c.filters for c in downs] == [64, 128, 256, 512]
    assert all(c.kernel_size == (4, 4) and c.strides == (2, 2) and not c.use_bias for c in downs)
    residual = [c for c in convs if c.name.startswith("res")]
    assert [c.kernel_size[0] for c in residual] == [1, 3, 1] * 3
    assert all(c.filters == 512 for c in residual)
    bn = {layer.name.split("_")[0] for layer in g.layers if "BatchNorm" in type(layer).__name__}
    assert "down0" not in bn and {"down1", "down2", "down3", "up0", "up1", "up2"} <= bn
    assert g.get_layer("tanh").dtype_policy.name == "float32"


def test_each_generator_owns_its_residual_blocks() -> None:
    # The seed shares its module-level residual blocks between both generators; we do not.
    model_cfg, loss_cfg = preset("tiny", 32)
    cg = CycleGAN(model_cfg, loss_cfg)
    ab = {id(v) for v in cg.gen_ab.weights}
    ba = {id(v) for v in cg.gen_ba.weights}
    assert ab.isdisjoint(ba)
    assert len([n for n in (w.path for w in cg.gen_ab.weights) if "res" in n]) > 0


@pytest.mark.parametrize("size", [32, 48, 64])
def test_tiny_preset_works_at_sizes_divisible_by_16(size: int) -> None:
    model_cfg, _ = preset("tiny", size)
    g, d = build_generator(model_cfg), build_discriminator(model_cfg)
    x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    y = g(x).numpy()
    assert y.shape == (2, size, size, 3)
    assert np.abs(y).max() <= 1.0  # tanh
    assert d(x).shape == (2, size // 16, size // 16, 1)
    assert g.count_params() < 500_000  # tiny really is tiny


def test_image_size_not_divisible_by_16_is_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        preset("tiny", 40)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")


def test_paper_preset_shapes() -> None:
    model_cfg, loss_cfg = preset("paper", 128)
    g, d = build_generator(model_cfg), build_discriminator(model_cfg)
    assert g.output_shape == (None, 128, 128, 3)
    # 70x70 PatchGAN with the reference padding: 128 -> 64 -> 32 -> 16 -> 15 -> 14.
    assert d.output_shape == (None, 14, 14, 1)
    assert sum(isinstance(layer, keras.layers.Add) for layer in g.layers) == 9
    assert loss_cfg.adversarial == "lsgan" and loss_cfg.pool_size == 50


def test_mixed_precision_computes_in_bfloat16_and_returns_float32() -> None:
    g = build_generator(preset("tiny", 32)[0], dtype="mixed_bfloat16")
    conv = g.get_layer("down1_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert g(np.zeros((1, 32, 32, 3), "float32")).dtype == "float32"


def test_saved_generators_load_in_safe_mode(tmp_path) -> None:
    small_paper = dataclasses.replace(
        preset("paper", 32)[0], gen_filters=4, disc_filters=4, res_blocks=2
    )
    for cfg in (preset("tiny", 32)[0], small_paper):
        g = build_generator(cfg)
        path = tmp_path / f"{cfg.preset}.keras"
        g.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
        np.testing.assert_array_equal(loaded(x).numpy(), g(x).numpy())


def test_model_config_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        ModelConfig(gen_filters=0)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batchnorm_matches_keras_batchnorm(dtype: str) -> None:
    import tensorflow as tf

    from cyclegan_jobs.training.networks import FusedBatchNorm

    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (2, 8, 8, 5)).astype("float32"))
    ours, ref = FusedBatchNorm(dtype=dtype), keras.layers.BatchNormalization(dtype=dtype)
    ours.build(x.shape), ref.build(x.shape)
    for layer in (ours, ref):
        layer.gamma.assign(np.linspace(0.5, 1.5, 5)), layer.beta.assign(np.linspace(-1, 1, 5))
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") ** 3)
        grads.append([y, *tape.gradient(loss, [x, layer.gamma, layer.beta])])
    tol = 1e-4 if dtype == "float32" else 5e-2
    for a, b in zip(grads[0], grads[1], strict=True):
        a, b = np.asarray(a, "float32"), np.asarray(b, "float32")
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
    np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=1e-4)
    # Inference uses the moving statistics, exactly as the stock layer.
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)


# --- upsampling: stride-2 transposed convolutions or resize-convolutions ----------------------


def _small_paper(image_size: int = 32, **changes: object) -> ModelConfig:
    cfg = preset("paper", image_size)[0]
    return dataclasses.replace(cfg, gen_filters=4, disc_filters=4, res_blocks=2, **changes)


def _configs(mode: str) -> list[ModelConfig]:
    # The seed's topology in small (the tiny preset's residual start and colour head left out).
    tiny = dataclasses.replace(preset("tiny", 32)[0], upsample=mode, residual=False, colour_head=0)
    return [tiny, _small_paper(upsample=mode)]


def _kinds(model: keras.Model) -> dict[str, str]:
    return {layer.name: type(layer).__name__ for layer in model.layers}


def test_transpose_mode_keeps_the_seed_layers() -> None:
    tiny, paper = (build_generator(cfg) for cfg in _configs("transpose"))
    seed_small = dataclasses.replace(preset("seed", 32)[0], gen_filters=8)
    assert build_generator(seed_small).count_params() == tiny.count_params()
    kinds = _kinds(tiny)
    assert [kinds[n] for n in ("up0_convT", "up1_convT", "up2_convT", "last")] == [
        "Conv2DTranspose"
    ] * 4
    assert _kinds(paper)["u128_conv"] == _kinds(paper)["u64_conv"] == "Conv2DTranspose"
    assert "UpSampling2D" not in {*_kinds(tiny).values(), *_kinds(paper).values()}


# The transposed conv each resize-convolution replaces, by block name.
TRANSPOSED = {
    "unet_res": {"up0": "up0_convT", "up1": "up1_convT", "up2": "up2_convT", "last": "last"},
    "resnet": {"u128": "u128_conv", "u64": "u64_conv"},
}


def _not_conv(names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(("_resize", "_conv", "_convT")) and n != "last"]


def test_resize_mode_replaces_every_transposed_conv() -> None:
    for cfg in _configs("resize"):
        g, ref = (
            build_generator(cfg),
            build_generator(dataclasses.replace(cfg, upsample="transpose")),
        )
        kinds = _kinds(g)
        assert "Conv2DTranspose" not in kinds.values()
        for name, transposed in TRANSPOSED[cfg.architecture].items():
            resize, conv, before = (
                g.get_layer(f"{name}_resize"),
                g.get_layer(f"{name}_conv"),
                ref.get_layer(transposed),
            )
            assert type(resize) is keras.layers.UpSampling2D and resize.size == (2, 2)
            assert resize.interpolation == networks.RESIZE_INTERPOLATION
            assert type(conv) is keras.layers.Conv2D and conv.strides == (1, 1)
            # Same filters, bias setting and initializer as the transposed conv it replaces.
            assert (conv.filters, conv.use_bias) == (before.filters, before.use_bias)
            assert conv.kernel_initializer.get_config() == before.kernel_initializer.get_config()
        # Then what followed before: the same other layers, in the same order.
        assert _not_conv(list(kinds)) == _not_conv(list(_kinds(ref)))
        x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
        y = g(x).numpy()
        assert y.shape == x.shape and np.abs(y).max() <= 1.0


def test_resize_mode_has_the_parameter_count_of_the_same_kernel(monkeypatch) -> None:
    # A conv kernel and a transposed conv kernel of one size hold the same weights.
    monkeypatch.setattr(networks, "RESIZE_KERNEL", None)  # keep each transposed conv's size
    for cfg in [*_configs("resize"), dataclasses.replace(preset("seed")[0], upsample="resize")]:
        transpose = build_generator(dataclasses.replace(cfg, upsample="transpose"))
        resize = build_generator(cfg)
        assert resize.count_params() == transpose.count_params()
        assert _trainable(resize) == _trainable(transpose)
    # The chosen kernel, 3x3: the paper's transposed convs are 3x3 already, so its counts do not
    # change; the U-Net's four 4x4 ones lose 16 - 9 = 7 weights per input-output channel pair.
    monkeypatch.setattr(networks, "RESIZE_KERNEL", 3)
    tiny, paper = _configs("resize")
    counts = {
        mode: [build_generator(dataclasses.replace(c, upsample=mode)) for c in (tiny, paper)]
        for mode in ("transpose", "resize")
    }
    assert counts["resize"][1].count_params() == counts["transpose"][1].count_params()
    resize_tiny = counts["resize"][0]
    kernels = [
        resize_tiny.get_layer(f"{name}_conv").kernel.shape for name in TRANSPOSED["unet_res"]
    ]
    assert all(k[:2] == (3, 3) for k in kernels)
    fewer = sum(7 * c_in * c_out for _, _, c_in, c_out in kernels)
    assert resize_tiny.count_params() == counts["transpose"][0].count_params() - fewer


def test_saved_resize_generators_load_in_safe_mode(tmp_path) -> None:
    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    for cfg in _configs("resize"):
        g = build_generator(cfg)
        path = tmp_path / f"{cfg.architecture}-resize.keras"
        g.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        assert "UpSampling2D" in _kinds(loaded).values()
        np.testing.assert_array_equal(loaded(x).numpy(), g(x).numpy())


def test_resize_mode_under_mixed_precision_returns_float32() -> None:
    g = build_generator(_configs("resize")[0], dtype="mixed_bfloat16")
    assert g.get_layer("up0_conv").compute_dtype == "bfloat16"
    assert g(np.zeros((1, 32, 32, 3), "float32")).dtype == "float32"


def test_transposed_convs_leave_a_checkerboard_at_init_and_resize_convs_do_not() -> None:
    # benchmarks/checkerboard.py part (a), small. Measured with these 8 faces at 64 px, seeds
    # 0-4: transpose +7.4..+8.8 dB, resize -2.0..-1.1 dB, inputs +0.3 dB (32 faces: +6.0..+7.2
    # and -1.5..-1.3; at 32 px: +7.1..+8.4 and -2.6..-1.9): a gap of 8 dB or more every time.
    sys.path.insert(0, str(BENCHMARKS))
    import checkerboard

    report = checkerboard.run(n=8, seeds=(0, 1), out=None)["at_init"]
    assert report["transpose"]["min"] > report["resize"]["max"] + 5.0, report
    assert report["transpose"]["min"] > 4.0 and abs(report["inputs_db"]) < 2.0, report


def test_checkerboard_benchmark_scores_stored_versions_and_draws(tmp_path) -> None:
    # Part (b) on two stored (untrained) versions: each is loaded, identified and scored.
    sys.path.insert(0, str(BENCHMARKS))
    import checkerboard

    uris = []
    for mode in checkerboard.MODES:
        version = tmp_path / mode
        version.mkdir()
        g = build_generator(dataclasses.replace(preset("tiny", 32)[0], upsample=mode))
        g.save(version / "generator_BA.keras")
        uris.append(str(version))
    inputs = tmp_path / "faces.npy"
    np.save(inputs, synthetic_faces(4, 32, seed=3))
    report = checkerboard.run(
        seeds=(0,), inputs=inputs, versions=tuple(uris), out=tmp_path / "s.png"
    )
    assert report["at_init"]["image_size"] == 32
    for mode, uri in zip(checkerboard.MODES, uris, strict=True):
        part = report["trained"][mode]
        assert (part["version"], part["detected"]) == (uri, mode) and np.isfinite(part["db"])
    assert (tmp_path / "s.png").stat().st_size > 10_000


# --- the input skip: a full-resolution top level for the U-Net ---------------------------------


@pytest.mark.parametrize("mode", ["transpose", "resize"])
def test_input_skip_feeds_the_input_image_to_a_full_resolution_last_conv(
    mode: str, tmp_path
) -> None:
    cfg = dataclasses.replace(preset("tiny", 32)[0], upsample=mode, input_skip=True)
    g, plain = build_generator(cfg), build_generator(dataclasses.replace(cfg, input_skip=False))
    skip = g.get_layer("skip_input")
    assert g.inputs[0] in skip.input  # the image itself, not a feature map of it
    last = g.get_layer("last")
    assert type(last) is keras.layers.Conv2D and last.strides == (1, 1)
    assert last.input.shape[1:] == (32, 32, cfg.gen_filters + 3)
    assert g.count_params() > plain.count_params()  # up3 and a wider last conv
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "skip.keras"
    g.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x).numpy(), g(x).numpy())
    # The seed keeps its topology: no input skip unless asked for, and not for the ResNet.
    assert preset("seed")[0].input_skip is False and preset("tiny")[0].input_skip is False
    with pytest.raises(ConfigError, match="unet_res"):
        dataclasses.replace(preset("paper", 32)[0], input_skip=True)


# --- the residual output: the generator starts as the identity ---------------------------------


@pytest.mark.parametrize("skip", [False, True])
def test_a_residual_generator_starts_near_the_identity(skip: bool, tmp_path) -> None:
    cfg = dataclasses.replace(preset("tiny", 32)[0], residual=True, input_skip=skip)
    g = build_generator(cfg)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    plain = build_generator(dataclasses.replace(cfg, residual=False))
    plain.set_weights(g.get_weights())  # the same layers and weights, no residual
    start, without = g(x, training=False).numpy(), plain(x, training=False).numpy()
    assert np.abs(start - x).mean() < 0.1 * np.abs(without - x).mean()
    # A change to the last conv moves the output; the saved model loads in safe mode.
    last = g.get_layer("last_conv" if cfg.upsample == "resize" and not skip else "last")
    last.set_weights([w + 0.05 for w in last.get_weights()])
    moved = g(x, training=False).numpy()
    assert np.abs(moved - x).mean() > 0.05 and np.abs(moved).max() <= 1.0
    g.save(tmp_path / "r.keras")
    loaded = keras.saving.load_model(tmp_path / "r.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded(x).numpy(), moved)
    bf16 = build_generator(cfg, dtype="mixed_bfloat16")
    bf16.set_weights(g.get_weights())
    assert bf16(x).dtype == "float32" and np.abs(bf16(x).numpy() - moved).mean() < 0.02
    with pytest.raises(ConfigError, match="residual"):
        dataclasses.replace(preset("paper", 32)[0], residual=True)


def test_the_colour_head_is_one_per_pixel_map_for_every_image_and_place(tmp_path) -> None:
    cfg = dataclasses.replace(preset("tiny", 32)[0], residual=True, colour_head=4)
    g = build_generator(cfg)
    head = [g.get_layer(n) for n in ("colour0", "colour1", "colour_out")]
    assert [layer.kernel_size for layer in head] == [(1, 1)] * 3
    # With the U-Net's change zeroed, the output is a function of each pixel's colour alone:
    # shuffling the pixels (across places and images) shuffles the output the same way.
    last = g.get_layer("last_conv")
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    rng = np.random.default_rng(5)
    for layer in head:
        layer.set_weights(
            [rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()]
        )
    x = rng.uniform(-0.9, 0.9, (2, 32, 32, 3)).astype("float32")
    order = rng.permutation(2 * 32 * 32)
    shuffled = x.reshape(-1, 3)[order].reshape(x.shape)
    y, y_shuffled = g(x, training=False).numpy(), g(shuffled, training=False).numpy()
    np.testing.assert_allclose(y_shuffled, y.reshape(-1, 3)[order].reshape(x.shape), atol=1e-5)
    assert np.abs(y - x).mean() > 0.05  # the head changes the colours
    g.save(tmp_path / "h.keras")
    loaded = keras.saving.load_model(tmp_path / "h.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded(x).numpy(), g(x).numpy())
    with pytest.raises(ConfigError, match="colour_head is a U-Net option"):
        dataclasses.replace(preset("paper", 32)[0], colour_head=4)
    with pytest.raises(ConfigError, match="colour head units"):
        dataclasses.replace(cfg, colour_head=-1)


# The seed's U-Net (tiny: the same topology) reaches 79 px from an output pixel: 4x4 convs at
# /2../16 and the transposed ones back up. Tiles need at least this margin to match whole images.
UNET_REACH = 79


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_any_size_generators_take_the_same_weights_and_rectangles(name: str) -> None:
    cfg = preset(name, 32)[0]
    fixed = build_generator(cfg)
    free = build_generator(cfg, any_size=True)
    free.set_weights(fixed.get_weights())
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(free(x, training=False), fixed(x, training=False))
    assert free(np.zeros((1, 48, 80, 3), np.float32)).shape == (1, 48, 80, 3)


def test_the_unet_reaches_exactly_its_receptive_field() -> None:
    """One input pixel changed moves outputs up to UNET_REACH px away, and none further: the
    margin tiles need (cyclegan_jobs/translation/tiles.py)."""
    keras.utils.set_random_seed(0)
    # Either upsampling reaches 79 px. (Without the residual start, whose zero last conv
    # would move only the changed pixel.)
    for upsample in ("transpose", "resize"):
        cfg = dataclasses.replace(preset("tiny")[0], upsample=upsample, residual=False)
        _assert_reach(build_generator(cfg, any_size=True), UNET_REACH)


def _assert_reach(net: keras.Model, reach: int) -> None:
    n = 2 * reach + 34  # a multiple of 16, wide enough to see past the reach
    x = np.random.default_rng(0).uniform(-1, 1, (1, n, n, 3)).astype(np.float32)
    before = net(x, training=False).numpy()
    x[0, n // 2, n // 2] += 0.5
    moved = np.abs(net(x, training=False).numpy() - before).max(axis=-1)[0] > 0
    rows, cols = np.nonzero(moved)
    assert max(abs(rows - n // 2).max(), abs(cols - n // 2).max()) == reach

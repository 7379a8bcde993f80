"""Instance norm with whole-image statistics (cyclegan_jobs/translation/norm_stats.py): the paper
preset's generator run in tiles, each tile normalized with the statistics of the whole image
instead of its own, equals whole-image inference; per-tile statistics leave seams."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from cyclegan_jobs.config import preset
from cyclegan_jobs.training.networks import build_generator
from cyclegan_jobs.translation import norm_stats
from cyclegan_jobs.translation.tiles import Grid, cut, downscale, paste, small_size

# The reach of the paper generator with fixed statistics (test below): 28 px with the 2
# residual blocks of the small one used here, 84 px with the paper's 9 (tiles need a margin of
# at least that, e.g. 96, where the translate job's default is 48). MARGIN covers the small
# one's, and keeps the tiles' cores (128 - 2 * MARGIN) a multiple of the total stride, 4.
SMALL_RESNET_REACH = 28
PAPER_REACH = 84
MARGIN = 32


def _paper_generator(seed: int = 0, name: str = "generator", res_blocks: int = 2) -> keras.Model:
    keras.utils.set_random_seed(seed)
    cfg = dataclasses.replace(preset("paper")[0], gen_filters=8, res_blocks=res_blocks)
    return build_generator(cfg, name=name, any_size=True)


@pytest.mark.parametrize(("res_blocks", "reach"), [(2, SMALL_RESNET_REACH), (9, PAPER_REACH)])
def test_with_given_stats_the_resnet_reaches_exactly_its_receptive_field(
    res_blocks: int, reach: int
) -> None:
    """One input pixel changed moves outputs up to `reach` px away and none further (with its
    own statistics every output pixel would move); the reach depends on the pixel's position
    modulo the total stride, 4: the largest over the 4 phases."""
    net = _paper_generator(res_blocks=res_blocks)
    n = 2 * reach + 40  # wide enough to see past the reach
    assert n % 4 == 0  # else the output is not the input's size
    x = np.random.default_rng(0).uniform(-1, 1, (1, n, n, 3)).astype(np.float32)
    stats = norm_stats.stats_model(net)(x).numpy()
    tiled = norm_stats.tiled_model(net)
    before = tiled([x, stats]).numpy()[0]
    c, reaches = n // 2 - n // 2 % 4, []
    for phase in range(4):  # one image a call: batched convs may round differently
        moved = x.copy()
        moved[0, c + phase, c + phase] += 0.5
        out = tiled([moved, stats]).numpy()[0]
        rows, cols = np.nonzero(np.abs(out - before).max(axis=-1) > 0)
        reaches.append(max(abs(rows - c - phase).max(), abs(cols - c - phase).max()))
    assert max(reaches) == reach, reaches


def _image(height: int, width: int) -> np.ndarray:
    """A float32 1 x H x W x 3 image in [-1, 1] whose colour drifts across it (so tiles have
    different statistics), with mild noise (random weights magnify fine detail: the downscaled
    copy's stats, which lack it, get worse with more noise; see norm_stats' docstring)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    ramp = np.stack([xx - 0.5, yy - 0.5, 0.6 * np.sin(6 * xx * yy)], axis=-1)
    x = ramp + 0.05 * rng.standard_normal((height, width, 3))
    return np.clip(x, -1, 1).astype(np.float32)[None]


def _stitched(run, image: np.ndarray, grid: Grid) -> np.ndarray:
    tiles = np.stack(list(cut(image[0], grid)))
    out = np.zeros(image.shape[1:], np.float32)
    for i, t in enumerate(np.asarray(run(tiles))):
        paste(out, t, grid, i)
    return out[None]


def test_the_stats_vector_follows_the_documented_layout() -> None:
    net = _paper_generator()
    layout = norm_stats.stats_layout(net)
    names = [name for name, _, _ in layout]
    assert names == ["c7s1_in", "d128_in", "d256_in", "res0a_in", "res0b_in", "res1a_in",
                     "res1b_in", "u128_in", "u64_in"]  # fmt: skip
    assert [c for _, _, c in layout] == [8, 16, 32, 32, 32, 32, 32, 16, 8]
    size = norm_stats.stats_size(net)
    assert size == 2 * sum(c for _, _, c in layout) + 1 == layout[-1][1] + 2 * 8 + 1
    x = _image(64, 96)
    stats = norm_stats.stats_model(net)(x).numpy()
    assert stats.shape == (1, size) and stats.dtype == np.float32
    assert stats[0, -1] == 0.0  # the flag: "these statistics", not each tile's own
    # The first norm's input is c7s1_conv's output: check its means and variances directly.
    conv = keras.Model(net.input, net.get_layer("c7s1_conv").output)(x).numpy()
    np.testing.assert_allclose(stats[0, :8], conv.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(stats[0, 8:16], conv.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-6)


def test_given_own_stats_the_tiled_model_is_the_generator() -> None:
    net = _paper_generator()
    x = np.concatenate([_image(64, 96), -_image(64, 96)])  # two images, two stats rows
    stats = norm_stats.stats_model(net)(x).numpy()
    tiled = norm_stats.tiled_model(net)
    expected = net(x, training=False).numpy()
    got = tiled([x, stats], training=False).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # The layers are shared, not copied: new weights in net are the tiled model's too.
    net.get_layer("out_conv").kernel.assign(net.get_layer("out_conv").kernel * 2.0)
    np.testing.assert_allclose(tiled([x, stats]).numpy(), net(x).numpy(), atol=1e-4)
    # Another image's stats give another output.
    assert np.abs(tiled([x, stats[::-1]]).numpy() - net(x).numpy()).max() > 0.05


def test_own_stats_rows_give_each_tile_the_generator_beside_rows_of_given_stats() -> None:
    net = _paper_generator()
    x = np.concatenate([_image(64, 96), -_image(64, 96)])
    given = norm_stats.stats_model(net)(x[1:]).numpy()
    rows = np.concatenate([norm_stats.own_stats(net, 1), given])
    got = norm_stats.tiled_model(net)([x, rows], training=False).numpy()
    np.testing.assert_allclose(got, net(x, training=False).numpy(), atol=1e-4)
    other = norm_stats.tiled_model(net)([x[:1], given], training=False).numpy()
    assert np.abs(other - got[:1]).max() > 0.05  # the first row did use its own statistics


def test_tiles_with_whole_image_stats_equal_the_whole_image_and_per_tile_stats_do_not() -> None:
    net = _paper_generator()
    image = _image(256, 384)
    whole = net(image, training=False).numpy()
    assert MARGIN >= SMALL_RESNET_REACH
    grid = Grid(256, 384, 128, MARGIN)
    assert len(grid) == 15
    tiled = norm_stats.tiled_model(net)
    full = norm_stats.stats_model(net)(image).numpy()
    small = downscale(_uint8(image[0]), 288)[None] / 127.5 - 1.0  # 3/4 size
    downscaled = norm_stats.stats_model(net)(small.astype(np.float32)).numpy()

    def with_stats(stats: np.ndarray):
        return lambda tiles: tiled([tiles, np.repeat(stats, len(tiles), 0)], training=False)

    errors = {
        "whole-image stats": np.abs(_stitched(with_stats(full), image, grid) - whole),
        "3/4-size stats": np.abs(_stitched(with_stats(downscaled), image, grid) - whole),
        "per-tile stats": np.abs(_stitched(lambda t: net(t, training=False), image, grid) - whole),
    }
    worst = {k: float(e.max()) for k, e in errors.items()}
    mean = {k: float(e.mean()) for k, e in errors.items()}
    assert worst["whole-image stats"] < 1e-4, worst
    # Measured: mean 0.043 with 3/4-size stats (0.067 at 1/2 size), 0.16 per tile (outputs in
    # [-1, 1]); without the noise 0.0097 (0.026), per tile 0.15.
    assert 0.1 < mean["per-tile stats"], mean
    assert 1e-3 < mean["3/4-size stats"] < mean["per-tile stats"] / 2, mean


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip((x + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def test_the_jobs_generators_tile_the_chain_with_the_whole_pictures_stats() -> None:
    """inference.Generators, as the translate job calls it: one row per picture from
    `stats()` (forward's statistics, then the way back's on forward's output), tiles through
    forward and back with that row equal the whole picture through the plain generators
    (uint8, within a level) when the margin covers the chain's reach (2 x 28 px)."""
    from cyclegan_jobs.inference import Generators

    cfg = dataclasses.replace(preset("paper")[0], gen_filters=8, res_blocks=2)
    nets = {"generator_AB": _paper_generator(0, "generator_AB"),
            "generator_BA": _paper_generator(1, "generator_BA")}  # fmt: skip
    gens = Generators(nets, cfg, precision="float32")
    assert gens.per_image_norm
    picture = _uint8(_image(192, 256)[0])
    row = gens.stats(picture, "a2b", reconstruct=True)
    x = picture[None].astype(np.float32) / 127.5 - 1.0
    fake = nets["generator_AB"](x, training=False)
    expected = np.concatenate(
        [
            norm_stats.stats_model(nets["generator_AB"])(x),
            norm_stats.stats_model(nets["generator_BA"])(fake),
        ],
        axis=1,
    )[0]
    np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-5)
    whole = gens.translate(picture[None], "a2b", reconstruct=True)  # the plain generators
    grid = Grid(192, 256, 128, 2 * SMALL_RESNET_REACH)
    tiles = np.stack(list(cut(picture, grid)))
    outs = gens.translate(tiles, "a2b", True, stats=np.repeat(row[None], len(tiles), 0))
    for got_tiles, want in zip(outs, whole, strict=True):
        got = np.zeros_like(picture)
        for i, t in enumerate(got_tiles):
            paste(got, t, grid, i)
        assert np.abs(got.astype(int) - want[0]).max() <= 1
    # A whole picture with the "own statistics" row is the plain generators too.
    own = gens.translate(picture[None], "a2b", True, stats=gens.own_stats("a2b", True)[None])
    for got, want in zip(own, whole, strict=True):
        assert np.abs(got.astype(int) - want).max() <= 1


def test_the_model_config_knows_which_generators_need_the_stats() -> None:
    for name in ("tiny", "seed", "paper"):
        cfg = preset(name, 32)[0]
        assert cfg.per_image_norm == norm_stats.needs_stats(build_generator(cfg, any_size=True))


def test_presets_without_instance_norm_need_no_stats() -> None:
    net = build_generator(preset("tiny", 32)[0], any_size=True)
    assert not norm_stats.needs_stats(net) and norm_stats.stats_size(net) == 0
    assert norm_stats.needs_stats(_paper_generator())
    with pytest.raises(ValueError, match="no instance normalization"):
        norm_stats.tiled_model(net)
    with pytest.raises(ValueError, match="no instance normalization"):
        norm_stats.stats_model(net)


def test_the_tiled_model_saves_and_loads_in_safe_mode(tmp_path) -> None:
    net = _paper_generator()
    tiled = norm_stats.tiled_model(net)
    path = tmp_path / "tiled.keras"
    tiled.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _image(32, 48)
    stats = norm_stats.stats_model(net)(x).numpy()
    np.testing.assert_array_equal(loaded([x, stats]).numpy(), tiled([x, stats]).numpy())


@pytest.mark.parametrize(
    ("height", "width", "long_side", "expected"),
    [
        (3024, 4032, 512, (384, 512)),
        (4032, 3024, 1000, (1000, 752)),
        (100, 60, 512, (100, 60)),
        (8, 2000, 256, (4, 256)),
    ],
)
def test_small_size_keeps_the_aspect_in_multiples_of_4(
    height: int, width: int, long_side: int, expected: tuple[int, int]
) -> None:
    assert small_size(height, width, long_side) == expected


def test_under_mixed_precision_own_stats_give_the_generator_exactly() -> None:
    keras.utils.set_random_seed(0)
    cfg = dataclasses.replace(preset("paper")[0], gen_filters=8, res_blocks=2)
    net = build_generator(cfg, any_size=True, dtype="mixed_bfloat16")
    x = _image(64, 96)
    stats = norm_stats.stats_model(net)(x).numpy()
    assert stats.dtype == np.float32  # the moments in float32, as GroupNormalization's
    got = norm_stats.tiled_model(net)([x, stats]).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, net(x).numpy())

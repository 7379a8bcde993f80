"""Tiling (cyclegan_jobs/translation/tiles.py): windows that cover an image once with a margin
from every cut, and a stitched result equal to whole-image processing for any operator whose
reach is within the margin (a stand-in for the generator's receptive field, without
TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from cyclegan_jobs.translation.tiles import Grid, cut, paste, spans


def _box_sum(image: np.ndarray, reach: int) -> np.ndarray:
    """Each pixel: the sum over the (2 * reach + 1)^2 square around it, zeros outside the image
    (a convolution with 'same' zero padding, as the networks' layers pad)."""
    x = np.pad(image.astype(np.int64), ((reach + 1, reach), (reach + 1, reach), (0, 0)))
    c = x.cumsum(0).cumsum(1)
    k = 2 * reach + 1
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def _tiled(image: np.ndarray, grid: Grid, op) -> np.ndarray:
    out = np.zeros(image.shape, np.int64)
    for i, tile in enumerate(cut(image, grid)):
        assert tile.shape[:2] == (grid.tile, grid.tile)
        paste(out, op(tile), grid, i)
    return out


@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 200, 511, 1000, 4032])
@pytest.mark.parametrize(("tile", "margin"), [(64, 8), (64, 0), (256, 48), (100, 49)])
def test_windows_cover_each_pixel_once_at_least_a_margin_from_every_cut(
    length: int, tile: int, margin: int
) -> None:
    windows = spans(length, tile, margin)
    assert windows[0].lo == 0 and windows[-1].hi == length
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.hi == b.lo and a.lo < a.hi  # in order, no gap, no pixel twice
    for w in windows:
        assert w.start <= w.lo and w.hi <= w.start + tile
        if length >= tile:  # no window hangs over the image
            assert 0 <= w.start and w.start + tile <= length
        cut_before, cut_after = w.start > 0, w.start + tile < length
        assert not cut_before or w.lo - w.start >= margin, w
        assert not cut_after or w.start + tile - w.hi >= margin, w


@pytest.mark.parametrize(("height", "width"), [(300, 400), (257, 1000), (64, 64), (130, 70)])
def test_stitched_equals_whole_image_when_the_reach_is_within_the_margin(
    height: int, width: int
) -> None:
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    grid = Grid(height, width, tile=64, margin=8)
    whole = _box_sum(image, 8)
    assert np.array_equal(_tiled(image, grid, lambda t: _box_sum(t, 8)), whole)
    # The control: an operator reaching past the margin shows the seams (where there are any).
    seams = not np.array_equal(_tiled(image, grid, lambda t: _box_sum(t, 12)), _box_sum(image, 12))
    assert seams == (len(grid) > 1)


def test_an_image_smaller_than_a_tile_is_padded_then_cropped_not_stretched() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    grid = Grid(23, 37, tile=64, margin=8)
    [tile] = list(cut(image, grid))
    assert np.array_equal(tile[:23, :37], image)  # the image itself, at its own scale
    assert np.array_equal(tile[23:25, :37], image[21:19:-1])  # then its reflection
    out = np.zeros_like(image)
    paste(out, tile[..., ::-1], grid, 0)
    assert np.array_equal(out, image[..., ::-1])


def test_a_one_pixel_line_is_padded_by_repetition() -> None:
    image = np.arange(30, dtype=np.uint8).reshape(1, 10, 3)
    [tile] = list(cut(image, Grid(1, 10, tile=16, margin=2)))
    assert tile.shape == (16, 16, 3) and np.array_equal(tile[5, :10], image[0])


def test_the_area_ratio_counts_the_overlap() -> None:
    grid = Grid(3024, 4032, tile=1024, margin=64)
    rows, cols = len(grid.rows), len(grid.cols)
    assert (rows, cols) == (4, 5)  # core 896: ceil((3024 - 1024) / 896) + 1, and for 4032
    assert grid.area_ratio() == pytest.approx(rows * cols * 1024**2 / (3024 * 4032))
    with pytest.raises(ValueError, match="no core"):
        spans(100, 64, 32)


def test_the_stitcher_puts_interleaved_tiles_of_many_images_back_together() -> None:
    """Tiles of several images, shuffled across batches as tf.data would mix them, each through
    an operator whose reach is within the margin: every image comes back whole, equal to the
    operator on the whole image, once, and nothing is left pending."""
    from cyclegan_jobs.translation.tiles import Stitcher

    rng = np.random.default_rng(9)
    shapes = [(300, 400), (23, 37), (64, 64), (130, 500), (1, 90)]
    pictures = {
        f"p{i}": rng.integers(0, 256, (*s, 3), dtype=np.uint8) for i, s in enumerate(shapes)
    }
    stitcher = Stitcher(tile=64, margin=8, outputs=2)
    tiles = [t for key, p in pictures.items() for t in stitcher.add(key, p)]
    assert len(stitcher) == len(shapes)
    done = {}
    for i in rng.permutation(len(tiles)):
        ref, tile = tiles[i]
        blurred = np.clip(_box_sum(tile, 8) // 289, 0, 255).astype(np.uint8)
        finished = stitcher.put(ref, [blurred, 255 - tile])
        if finished is not None:
            key, outputs = finished
            assert key not in done
            done[key] = outputs
    assert set(done) == set(pictures) and len(stitcher) == 0
    for key, (blurred, inverted) in done.items():
        picture = pictures[key]
        assert np.array_equal(inverted, 255 - picture)
        if min(picture.shape[:2]) >= 64:  # no reflect padding: exactly the whole-image result
            assert np.array_equal(blurred, np.clip(_box_sum(picture, 8) // 289, 0, 255))
        assert blurred.shape == picture.shape


def test_the_default_tile_covers_a_12_mp_phone_photo_with_little_overlap() -> None:
    """The translate job's default tile and margin cost at most 1.3x the area of a 4032x3024
    photo, either way up (the issue's target for the overlap overhead)."""
    from cyclegan_jobs.config import TranslateConfig

    cfg = TranslateConfig(input="in", output="out", model="m")
    for height, width in ((3024, 4032), (4032, 3024)):
        assert Grid(height, width, cfg.tile, cfg.tile_margin).area_ratio() <= 1.3

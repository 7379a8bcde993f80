"""Cutting an image into overlapping tiles of one shape, and putting the outputs back.

A fully convolutional generator's output pixel depends only on the input within its receptive
field. So an image of any size can go through the network in tiles of one fixed shape (full
batches, one traced function), and each output pixel is taken from the tile in which it lies
at least `margin` pixels from every cut edge: when the margin covers the receptive field that
matters, the stitched output equals whole-image inference, with no seam and no blending.

Along each axis the windows start at multiples of the core (tile - 2 * margin), the last one
moved back to end at the image's edge, so a window never hangs over an edge of an image that is
at least a tile long: the image's own borders are treated exactly as in whole-image inference.
An axis shorter than a tile is padded (reflect) to the tile and cropped afterwards.
Each output pixel is written once, straight into a uint8 result: no float canvas, no weights.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cyclegan_jobs import images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Span:
    """One window along an axis: the input [start, start + tile) (clipped to the image, padded
    when the axis is shorter than a tile) and the output rows [lo, hi) it supplies."""

    start: int
    lo: int
    hi: int


def spans(length: int, tile: int, margin: int) -> list[Span]:
    """The windows along an axis of `length` pixels (see the module's docstring)."""
    if length < 1 or tile < 1 or margin < 0:
        raise ValueError(f"length {length}, tile {tile}, margin {margin}")
    core = tile - 2 * margin
    if core < 1:
        raise ValueError(f"a tile of {tile} has no core with a margin of {margin}")
    if length <= tile:
        return [Span(0, 0, length)]
    starts = [min(i * core, length - tile) for i in range(math.ceil((length - tile) / core) + 1)]
    # Consecutive windows overlap by at least 2 * margin; each takes its half of the overlap.
    cuts = [(a + tile + b) // 2 for a, b in zip(starts, starts[1:], strict=False)]
    bounds = [0, *cuts, length]
    return [Span(s, lo, hi) for s, lo, hi in zip(starts, bounds, bounds[1:], strict=False)]


@dataclass(frozen=True)
class Grid:
    """The tiles of one height x width image."""

    height: int
    width: int
    tile: int
    margin: int

    @property
    def rows(self) -> list[Span]:
        return spans(self.height, self.tile, self.margin)

    @property
    def cols(self) -> list[Span]:
        return spans(self.width, self.tile, self.margin)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def area_ratio(self) -> float:
        """The tiles' pixels over the image's: what tiling costs in model work."""
        return len(self) * self.tile * self.tile / (self.height * self.width)


def cut(image: np.ndarray, grid: Grid) -> Iterator[np.ndarray]:
    """The tiles of `image` (H x W x C) in row-major order, each tile x tile x C (views where
    possible; copies only where an axis shorter than a tile is padded)."""
    for row in grid.rows:
        for col in grid.cols:
            window = image[row.start : row.start + grid.tile, col.start : col.start + grid.tile]
            pad_y, pad_x = grid.tile - window.shape[0], grid.tile - window.shape[1]
            if pad_y or pad_x:
                window = _reflect(window, pad_y, pad_x)
            yield window


def _reflect(window: np.ndarray, pad_y: int, pad_x: int) -> np.ndarray:
    # numpy's reflect needs at least 2 pixels along a padded axis; 1 pixel is repeated instead.
    modes = ["reflect" if n > 1 else "edge" for n in window.shape[:2]]
    out = np.pad(window, ((0, pad_y), (0, 0), (0, 0)), mode=modes[0])
    return np.pad(out, ((0, 0), (0, pad_x), (0, 0)), mode=modes[1])


def paste(out: np.ndarray, tile_out: np.ndarray, grid: Grid, index: int) -> None:
    """Write the part of tile `index`'s output that it supplies into `out` (H x W x C)."""
    cols = grid.cols
    row, col = grid.rows[index // len(cols)], cols[index % len(cols)]
    out[row.lo : row.hi, col.lo : col.hi] = tile_out[
        row.lo - row.start : row.hi - row.start, col.lo - col.start : col.hi - col.start
    ]


@dataclass(frozen=True)
class TileRef:
    """Where a tile came from: the image's slot in the Stitcher and the tile's index in its grid."""

    slot: int
    index: int


@dataclass
class _Pending:
    key: Any
    grid: Grid
    outputs: list[np.ndarray]
    missing: int


class Stitcher:
    """Images in, tiles out; tile outputs in, whole outputs out, for a stream of many images
    whose tiles travel together in the same batches.

    `add(key, image)` gives the image's tiles with their refs and keeps `outputs` uint8 canvases
    of its size; `put(ref, tile_outputs)` pastes them, and returns (key, canvases) when that was
    the image's last tile. (The translate job counts the canvases in the image's pixel budget.)
    """

    def __init__(self, tile: int, margin: int, outputs: int) -> None:
        self.tile, self.margin, self.n_outputs = tile, margin, outputs
        self._lock = threading.Lock()  # add() and put() may run in different threads
        self._pending: dict[int, _Pending] = {}
        self._next_slot = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """A tile's shape."""
        return self.tile, self.tile, 3

    def add(self, key: Any, image: np.ndarray) -> list[tuple[TileRef, np.ndarray]]:
        grid = Grid(image.shape[0], image.shape[1], self.tile, self.margin)
        canvases = [np.empty(image.shape, np.uint8) for _ in range(self.n_outputs)]
        with self._lock:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
            self._pending[slot] = _Pending(key, grid, canvases, len(grid))
        return [(TileRef(slot, i), t) for i, t in enumerate(cut(image, grid))]

    def put(self, ref: TileRef, tile_outputs: list[np.ndarray]) -> tuple[Any, list] | None:
        with self._lock:
            pending = self._pending[ref.slot]
        for canvas, tile_out in zip(pending.outputs, tile_outputs, strict=True):
            paste(canvas, tile_out, pending.grid, ref.index)
        with self._lock:
            pending.missing -= 1
            if pending.missing:
                return None
            del self._pending[ref.slot]
        return pending.key, pending.outputs

    def __len__(self) -> int:
        """Images with tiles still to come back."""
        return len(self._pending)


def small_size(height: int, width: int, long_side: int, multiple: int = 4) -> tuple[int, int]:
    """The size of the downscaled copy: long side `long_side` (never upscaled), aspect kept,
    both sides rounded to a multiple of `multiple` (the generator's total stride)."""
    scale = min(1.0, long_side / max(height, width))

    def side(n: int) -> int:
        return max(multiple, int(round(n * scale / multiple)) * multiple)

    return side(height), side(width)


def downscale(image: np.ndarray, long_side: int) -> np.ndarray:
    """A uint8 H x W x 3 image resized (bicubic, antialiased) to `small_size(..., long_side)`."""
    return images.resize(image, small_size(image.shape[0], image.shape[1], long_side))


class PictureStats:
    """The stats rows of the pictures in flight, for an instance-norm generator's tiles.

    The feed hands over each picture cut into several tiles as a copy downscaled to long side
    `side` (numpy only: no TensorFlow in the feed's thread); the driver turns the copy into the
    picture's row before the picture's first tile runs (`rows`), and drops the row once the
    picture is whole (`forget`). A picture of one tile, and a filler tile, take the tile's own
    statistics, as the generator does.
    """

    def __init__(self, side: int) -> None:
        self.side = side
        self._copies: dict[int, np.ndarray] = {}  # slot -> downscaled copy, until its row
        self._rows: dict[int, np.ndarray] = {}  # slot -> row, until the picture is whole

    def add(self, slot: int, picture: np.ndarray, tiles: int) -> None:
        """A picture entering the stitcher at `slot`, cut into `tiles` tiles."""
        if tiles > 1:
            self._copies[slot] = downscale(picture, self.side)

    def rows(
        self, slots: Iterable[int], stats_of: Callable[[np.ndarray], np.ndarray], own: np.ndarray
    ) -> np.ndarray:
        """One row per tile of a batch (given its pictures' slots): `stats_of(copy)` for a
        picture of several tiles, else `own`."""
        out = []
        for slot in slots:
            copy = self._copies.pop(slot, None)
            if copy is not None:
                self._rows[slot] = stats_of(copy)
                log.debug("statistics of picture %d from a %dx%d copy", slot, *copy.shape[:2])
            out.append(self._rows.get(slot, own))
        return np.stack(out).astype(np.float32)

    def forget(self, slot: int) -> None:
        self._rows.pop(slot, None)

"""Seams: tiled inference (cyclegan_jobs/tiles.py) against whole-image inference, per preset.

    python benchmarks/seams.py [--presets tiny,seed,paper] [--height 768 --width 1024]
                               [--tile 256] [--margins 0,16,32,48,64,96] [--model VERSION_URI]

For each preset: one generator (random weights with a fixed seed, or a stored version's), a
synthetic photo of height x width, whole-image inference in float32 and the same image in
tiles of `tile` with each margin. Prints PSNR (dB) of the stitched output against the whole
one, inside a border of 32 px (the image's own edge is padded differently by the two), the
same within 8 px of the cuts (where seams would be), and the tiles' area over the image's.
The margin that reaches 40 dB near the cuts is what the translate job's default must be.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyclegan_jobs.config import preset  # noqa: E402
from cyclegan_jobs.metrics import psnr  # noqa: E402
from cyclegan_jobs.sample_data import synthetic_faces  # noqa: E402
from cyclegan_jobs.tiles import Grid, cut, paste  # noqa: E402

BORDER = 32


def photo(height: int, width: int) -> np.ndarray:
    """A face-like picture with fine noise, uint8 height x width x 3."""
    from cyclegan_jobs.images import resize

    face = synthetic_faces(1, 256, seed=1)[0]
    big = resize(face, (height, width)).astype(np.int16)
    noise = np.random.default_rng(2).integers(-12, 13, big.shape)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def generator(name: str, height: int, width: int, model: str | None):  # noqa: ANN201
    """A float32 generator taking any height x width (multiples of 16)."""
    import keras

    from cyclegan_jobs.networks import build_generator

    keras.utils.set_random_seed(0)
    net = build_generator(preset(name)[0], name="generator_BA", any_size=True)
    if model:
        from cyclegan_jobs.registry import load_model

        net.set_weights(load_model(model, "generator_BA").get_weights())
    return net


def run(net, batch: np.ndarray) -> np.ndarray:  # noqa: ANN001
    import tensorflow as tf

    x = tf.cast(batch, tf.float32) / 127.5 - 1.0
    y = net(x, training=False)
    return np.clip((y.numpy() + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def tiled(net, image: np.ndarray, tile: int, margin: int) -> tuple[np.ndarray, Grid]:  # noqa: ANN001
    grid = Grid(image.shape[0], image.shape[1], tile, margin)
    out = np.zeros_like(image)
    tiles = np.stack(list(cut(image, grid)))
    for start in range(0, len(tiles), 8):
        for i, t in enumerate(run(net, tiles[start : start + 8]), start):
            paste(out, t, grid, i)
    return out, grid


def measure(name: str, args: argparse.Namespace) -> dict:
    image = photo(args.height, args.width)
    net = generator(name, args.height, args.width, args.model)
    whole = run(net, image[None])[0]
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    rows = {}
    for margin in args.margins:
        out, grid = tiled(net, image, args.tile, margin)
        band = np.zeros(image.shape[:2], bool)  # pixels within 8 px of a cut
        for r in grid.rows[1:]:
            band[max(r.lo - 8, 0) : r.lo + 8] = True
        for c in grid.cols[1:]:
            band[:, max(c.lo - 8, 0) : c.lo + 8] = True
        band[:BORDER], band[-BORDER:], band[:, :BORDER], band[:, -BORDER:] = (False,) * 4
        band |= ~band.any()  # no cut (one tile): score everything
        cuts = [r.lo for r in grid.rows[1:]] + [c.lo for c in grid.cols[1:]]
        rows[margin] = {
            "psnr_db": round(psnr(out[inner], whole[inner]), 2),
            "seam_band_psnr_db": round(psnr(out[band][None], whole[band][None]), 2),
            "tiles": len(grid),
            "area_ratio": round(grid.area_ratio(), 3),
            "cuts": len(cuts),
        }
        print(f"{name:5s} tile {args.tile} margin {margin:3d}: {rows[margin]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,seed,paper")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--margins", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 16, 32, 48, 64, 96])  # fmt: skip
    parser.add_argument("--model", default=None, help="a version URI instead of random weights")
    args = parser.parse_args(argv)
    results = {name: measure(name, args) for name in args.presets.split(",")}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seams: tiled inference (cyclegan_jobs/tiles.py) against whole-image inference, per preset.

    python benchmarks/seams.py [--presets tiny,seed] [--height 768 --width 1024] [--tile 256]
                               [--margins 0,16,32,48,64,96] [--model VERSION_URI] [--reconstruct]

For each preset: generator_BA (random weights with a fixed seed, or a stored version's: random
weights are a poor proxy for seams), a synthetic photo of height x width, whole-image inference
in float32 and the same image in tiles of `tile` with each margin, as the translate job cuts
and pastes them. With --reconstruct also the chain back through generator_AB, tile by tile, as
the job makes reconstructions. Prints PSNR (dB) of the stitched outputs against the whole ones
inside a border of 32 px (the image's own edge is padded differently by the two), the same
within 8 px of the cuts (where seams would be), and the tiles' area over the image's.
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


def generator(name: str, model: str | None, net_name: str = "generator_BA"):  # noqa: ANN201
    """A float32 generator taking any height x width (multiples of 16)."""
    import keras

    from cyclegan_jobs.networks import build_generator

    keras.utils.set_random_seed(0 if net_name == "generator_BA" else 1)
    net = build_generator(preset(name)[0], name=net_name, any_size=True)
    if model:
        from cyclegan_jobs.registry import load_model

        net.set_weights(load_model(model, net_name).get_weights())
    return net


def run(nets: list, batch: np.ndarray) -> list[np.ndarray]:
    """uint8 batch -> uint8 outputs of nets[0] and, with two nets, of the chain back (the
    translate job's reconstruction: the second net gets the first's float output)."""
    import tensorflow as tf

    from cyclegan_jobs.images import to_uint8, to_unit

    x = tf.constant(to_unit(batch))
    outs = []
    for net in nets:
        x = net(x, training=False)
        outs.append(to_uint8(x.numpy()))
    return outs


def tiled(nets: list, image: np.ndarray, tile: int, margin: int) -> tuple[list, Grid]:
    grid = Grid(image.shape[0], image.shape[1], tile, margin)
    outs = [np.zeros_like(image) for _ in nets]
    tiles = np.stack(list(cut(image, grid)))
    for start in range(0, len(tiles), 4):
        for out, tile_outs in zip(outs, run(nets, tiles[start : start + 4]), strict=True):
            for i, t in enumerate(tile_outs, start):
                paste(out, t, grid, i)
    return outs, grid


def seam_band(grid: Grid) -> np.ndarray:
    """Pixels within 8 px of a cut, inside the border (everything when there is no cut)."""
    band = np.zeros((grid.height, grid.width), bool)
    for r in grid.rows[1:]:
        band[max(r.lo - 8, 0) : r.lo + 8] = True
    for c in grid.cols[1:]:
        band[:, max(c.lo - 8, 0) : c.lo + 8] = True
    band[:BORDER], band[-BORDER:], band[:, :BORDER], band[:, -BORDER:] = (False,) * 4
    return band | ~band.any()


def measure(name: str, args: argparse.Namespace) -> dict:
    image = photo(args.height, args.width)
    nets = [generator(name, args.model)]
    if args.reconstruct:
        nets.append(generator(name, args.model, "generator_AB"))
    wholes = [o[0] for o in run(nets, image[None])]
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    rows = {}
    for margin in args.margins:
        outs, grid = tiled(nets, image, args.tile, margin)
        band = seam_band(grid)
        row = {"tiles": len(grid), "area_ratio": round(grid.area_ratio(), 3)}
        for label, out, whole in zip(("stylized", "reconstructed"), outs, wholes, strict=False):
            row[f"{label}_psnr_db"] = round(psnr(out[inner], whole[inner]), 2)
            row[f"{label}_seam_band_psnr_db"] = round(psnr(out[band][None], whole[band][None]), 2)
        rows[margin] = row
        print(f"{name:5s} tile {args.tile} margin {margin:3d}: {row}", flush=True)
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
    parser.add_argument("--reconstruct", action="store_true",
                        help="also the chain back (generator_AB on the stylized tile)")  # fmt: skip
    args = parser.parse_args(argv)
    results = {name: measure(name, args) for name in args.presets.split(",")}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

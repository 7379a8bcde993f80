"""Seams: tiled inference (cyclegan_jobs/translation/tiles.py) against whole-image inference,
per preset.

    python benchmarks/seams.py [--presets tiny,seed] [--height 768 --width 1024] [--tile 256]
                               [--margins 0,16,32,48,64,96] [--model VERSION_URI] [--reconstruct]
                               [--stats-side 1024]

For each preset: generator_BA (random weights with a fixed seed, or a stored version's: random
weights are a poor proxy for seams), a synthetic photo of height x width, whole-image inference
in float32 and the same image in tiles of `tile` with each margin, as the translate job cuts
and pastes them. With --reconstruct also the chain back through generator_AB, tile by tile, as
the job makes reconstructions. The tiles go through inference.Generators as the job's do; an
instance-norm generator (the paper preset) takes the statistics of the picture's copy at
--stats-side, as the job does. Prints PSNR (dB) of the stitched outputs against the whole ones
inside a border of 32 px (the image's own edge is padded differently by the two), the same
within 8 px of the cuts (where seams would be), and the tiles' area over the image's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyclegan_jobs.config import TranslateConfig, preset
from cyclegan_jobs.evaluation.metrics import psnr
from cyclegan_jobs.inference import Generators
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.translation.tiles import Grid, cut, downscale, paste

BORDER = 32


def photo(height: int, width: int) -> np.ndarray:
    """A face-like picture with fine noise, uint8 height x width x 3."""
    from cyclegan_jobs.images import resize

    face = synthetic_faces(1, 256, seed=1)[0]
    big = resize(face, (height, width)).astype(np.int16)
    noise = np.random.default_rng(2).integers(-12, 13, big.shape)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def generator(name: str, model: str | None, net_name: str = "generator_BA"):
    """A float32 generator taking any height x width (multiples of 16)."""
    import keras

    from cyclegan_jobs.training.networks import build_generator

    keras.utils.set_random_seed(0 if net_name == "generator_BA" else 1)
    net = build_generator(preset(name)[0], name=net_name, any_size=True)
    if model:
        from cyclegan_jobs.registry import load_model

        net.set_weights(load_model(model, net_name).get_weights())
    return net


def strips(conv, x, rows: int = 512):
    """A stride-1 'valid' Conv2D over a large input, in strips of output rows (exact: each
    strip takes its kernel's rows of context). TensorFlow's CPU kernel crashes (SIGSEGV) on
    the paper's last 7x7 convolution over a whole 12 MP picture."""
    import tensorflow as tf

    reach = conv.kernel_size[0] - 1
    height = x.shape[1] - reach
    return tf.concat(
        [conv(x[:, a : min(a + rows, height) + reach]) for a in range(0, height, rows)], 1
    )


def _apply(op, args: tuple, kwargs: dict):
    import keras

    shape = getattr(args[0], "shape", ()) if args else ()
    big = len(shape) == 4 and shape[1] * shape[2] > 4_000_000
    if (
        big
        and isinstance(op, keras.layers.Conv2D)
        and op.padding == "valid"
        and op.strides == (1, 1)
    ):
        return strips(op, args[0])
    return op(*args, **kwargs)


def lean(net, x):
    """net(x), eager, layer by layer, each intermediate freed after its last use: Keras' own
    graph walk keeps them all, tens of GB for the paper's ResNet on a 12 MP picture."""
    uses: dict[int, int] = {}
    for nodes in net._nodes_by_depth.values():
        for node in nodes:
            for t in node.input_tensors:
                uses[id(t)] = uses.get(id(t), 0) + 1
    values = {id(net.inputs[0]): x}
    for depth in sorted(net._nodes_by_depth, reverse=True):
        for node in net._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(values)
            outputs = _apply(node.operation, args, kwargs)
            for t, value in zip(node.outputs, [outputs], strict=True):
                values[id(t)] = value
            for t in node.input_tensors:
                uses[id(t)] -= 1
                if not uses[id(t)] and t is not net.outputs[0]:
                    del values[id(t)]
    return values[id(net.outputs[0])]


def run(nets: list, batch: np.ndarray) -> list[np.ndarray]:
    """uint8 batch -> uint8 outputs of nets[0] and, with two nets, of the chain back (the
    translate job's reconstruction: the second net gets the first's float output)."""
    import tensorflow as tf

    from cyclegan_jobs.images import to_uint8, to_unit

    x = tf.constant(to_unit(batch))
    outs = []
    for net in nets:
        x = lean(net, x)
        outs.append(to_uint8(x.numpy()))
    return outs


def tiled(gens, image: np.ndarray, args: argparse.Namespace, margin: int) -> tuple[list, Grid]:
    """The image as the translate job does it: its tiles through inference.Generators, with
    (instance norm) the statistics of its copy downscaled to args.stats_side."""
    grid = Grid(image.shape[0], image.shape[1], args.tile, margin)
    outs = [np.zeros_like(image) for _ in range(1 + args.reconstruct)]
    tiles = np.stack(list(cut(image, grid)))
    row = None
    if gens.per_image_norm:
        row = gens.stats(downscale(image, args.stats_side), "b2a", args.reconstruct)
    for start in range(0, len(tiles), 2):
        batch = tiles[start : start + 2]
        stats = None if row is None else np.repeat(row[None], len(batch), 0)
        tile_outs = gens.translate(batch, "b2a", args.reconstruct, stats=stats)
        for out, made in zip(outs, tile_outs, strict=False):
            for i, t in enumerate(made, start):
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
    t = time.time()
    wholes = [o[0] for o in run(nets, image[None])]
    print(f"{name}: whole picture {time.time() - t:.0f} s", flush=True)
    model_cfg = replace(preset(name)[0], image_size=args.tile)
    gens = Generators({net.name: net for net in nets}, model_cfg, "float32")
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    rows = {}
    for margin in args.margins:
        t = time.time()
        outs, grid = tiled(gens, image, args, margin)
        band = seam_band(grid)
        row = {"tiles": len(grid), "area_ratio": round(grid.area_ratio(), 3),
               "seconds": round(time.time() - t)}  # fmt: skip
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
    parser.add_argument("--stats-side", type=int, default=TranslateConfig.stats_side,
                        help="instance norm: the long side of the copy giving the statistics "
                        "(default: the translate job's, %(default)s)")  # fmt: skip
    parser.add_argument("--reconstruct", action="store_true",
                        help="also the chain back (generator_AB on the stylized tile)")  # fmt: skip
    args = parser.parse_args(argv)
    results = {name: measure(name, args) for name in args.presets.split(",")}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

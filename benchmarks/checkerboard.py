"""Checkerboard texture of the generators' x2 upsampling: transposed vs resize convolutions.

Odena et al. 2016 ("Deconvolution and Checkerboard Artifacts"): a stride-2 transposed
convolution gives even and odd output pixels different sums of kernel taps, leaving a texture
at the stride frequencies; resizing x2 then convolving with stride 1 does not.
`metrics.checkerboard_db` measures it: power at the stride frequencies over the power around
them, in dB (0 for pictures without periodic texture).

(a) At initialization: for each seed, generators of the preset in both modes
    (`ModelConfig.upsample`, built after `keras.utils.set_random_seed(seed)`) translate the
    same images (inference mode); checkerboard_db of their float outputs (they are too faint
    at initialization for uint8), mean and spread over the seeds.
(b) With `--versions TRANSPOSE_URI RESIZE_URI`: two trained model versions' generator_BA on
    the same images, scored on their uint8 outputs (what the translate job writes).

Inputs: `--inputs FILE.npy` (uint8 N x H x W x 3), else synthetic faces (never trained on).
Writes a figure (per mode the mean log power spectrum with the stride frequencies circled, an
example output and a bar chart of checkerboard_db) to `--out`; the JSON report is the last
line of stdout.
Run: `.venv/bin/python benchmarks/checkerboard.py [--preset tiny] [--image-size 64] [--n 32]
[--seeds 0 1 2 3 4] [--inputs FILE.npy] [--versions T_URI R_URI] [--out PNG]`.

Measured on a shared 2-core CPU, tiny preset at 64 px, 32 faces, seeds 0-4, at initialization:
inputs +0.2 dB, transpose +6.4 +- 0.4 dB, resize -1.4 +- 0.1 dB (the paper preset at 64 px,
seeds 0-2: transpose +11.3 +- 0.2, resize -0.3 +- 0.2). Trained (a scratch loop on CycleGAN:
faces vs sample_data.paint, batch 8, LR 3e-3, identity weight 5, 1200 steps, seed 0; its
generator_BA): transpose +5.7 dB, resize -1.8 dB; the grid is visible in the transposed output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from cyclegan_jobs import images
from cyclegan_jobs.config import preset
from cyclegan_jobs.evaluation import metrics
from cyclegan_jobs.sample_data import INPUT_FACES_SEED, synthetic_faces

MODES = ("transpose", "resize")
DEFAULT_OUT = "var/checkerboard/spectrum.png"
GENERATOR = "generator_BA"  # photos (domain B, like the faces) -> paintings


def load_inputs(path: str | Path | None, n: int, image_size: int) -> np.ndarray:
    """uint8 N x H x W x 3 images from a .npy file, or n synthetic faces of image_size px."""
    if path is None:
        return synthetic_faces(n, image_size, seed=INPUT_FACES_SEED)
    array = np.load(path)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{path}: need uint8 N x H x W x 3, got {array.dtype} {array.shape}")
    return array


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "db": [round(v, 2) for v in values],
        "mean": round(float(np.mean(values)), 2),
        "std": round(float(np.std(values)), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def at_init(
    inputs: np.ndarray, *, preset_name: str, seeds: list[int]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Part (a): (report, {mode: the first seed's float outputs})."""
    import keras

    from cyclegan_jobs.training.networks import build_generator

    size = inputs.shape[1]
    if inputs.shape[2] != size:
        raise ValueError(f"generators take square images, got {inputs.shape[1:3]}")
    model_cfg = preset(preset_name, size)[0]
    x = inputs.astype(np.float32) / 127.5 - 1.0
    report: dict[str, Any] = {"preset": preset_name, "image_size": size, "seeds": list(seeds)}
    report["inputs_db"] = round(metrics.checkerboard_db(inputs), 2)
    examples = {}
    for mode in MODES:
        # The network's own output: with the residual start it would be the input at init.
        cfg = dataclasses.replace(model_cfg, upsample=mode, residual=False)
        scores = []
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            generator = build_generator(cfg)
            out = generator(x, training=False).numpy()
            scores.append(metrics.checkerboard_db(out))
            examples.setdefault(mode, out)
        report[mode] = {**_summary(scores), "params": generator.count_params()}
    report["gap_db"] = round(report["transpose"]["mean"] - report["resize"]["mean"], 2)
    return report, examples


def _detected_upsampling(net: Any) -> str:
    kinds = {type(layer).__name__ for layer in net.layers}
    if "Conv2DTranspose" in kinds:
        return "transpose"
    return "resize" if "UpSampling2D" in kinds else "unknown"


def trained(
    inputs: np.ndarray, versions: dict[str, str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Part (b): each version's generator_BA on the inputs -> (report, {mode: uint8 outputs})."""
    from cyclegan_jobs.inference import load_generators

    report: dict[str, Any] = {"inputs_db": round(metrics.checkerboard_db(inputs), 2)}
    outputs = {}
    for mode, uri in versions.items():
        net = load_generators(uri, (GENERATOR,))[GENERATOR]
        size = int(net.input_shape[1])
        batch = inputs
        if inputs.shape[1:3] != (size, size):
            batch = np.stack([images.resize(image, size) for image in inputs])
        x = batch.astype(np.float32) / 127.5 - 1.0
        out = np.concatenate([net(x[i : i + 16], training=False) for i in range(0, len(x), 16)])
        outputs[mode] = images.to_uint8(out)
        report[mode] = {
            "version": uri,
            "detected": _detected_upsampling(net),
            "db": round(metrics.checkerboard_db(outputs[mode]), 2),
        }
    return report, outputs


def _log_spectrum(batch: np.ndarray) -> np.ndarray:
    power = metrics.mean_power_spectrum(batch)
    return np.fft.fftshift(10.0 * np.log10(power / power.max() + 1e-12))


def _spectrum_panel(ax: Any, batch: np.ndarray, title: str) -> None:
    height, width = batch.shape[1:3]
    extent = (-0.5 - 0.5 / width, 0.5 - 0.5 / width, 0.5 - 0.5 / height, -0.5 - 0.5 / height)
    shown = ax.imshow(_log_spectrum(batch), cmap="magma", vmin=-80, vmax=0, extent=extent)
    for u, v in metrics.stride_bins(height, width, conjugates=True):
        ax.plot(_cycles(v, width), _cycles(u, height), "o", mfc="none", mec="cyan", ms=7, mew=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cycles/px (x)", fontsize=8)
    ax.set_ylabel("cycles/px (y)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)


def _cycles(index: int, size: int) -> float:
    """An fft2 index as a signed frequency in cycles/px, as fftshift places it."""
    return ((index + size // 2) % size - size // 2) / size


def _image_panel(ax: Any, image: np.ndarray, title: str) -> None:
    if image.dtype != np.uint8:
        # Float outputs of an untrained generator are a faint texture around mid-grey: shown
        # contrast-stretched to their own range.
        image = np.asarray(image, np.float64)
        image = (image - image.min()) / max(float(np.ptp(image)), 1e-12)
        title = f"{title} (contrast stretched)"
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _bar_panel(ax: Any, part: dict[str, Any], title: str) -> None:
    labels = ["inputs", *MODES]
    values = [part["inputs_db"], *(_mean_db(part[m]) for m in MODES)]
    errors = [0.0, *(part[m].get("std", 0.0) for m in MODES)]
    ax.bar(labels, values, yerr=errors, color=["grey", "tab:red", "tab:blue"], capsize=4)
    ax.axhline(0.0, color="black", lw=0.6)
    for i, value in enumerate(values):
        below = value < 0
        ax.annotate(
            f"{value:+.1f}",
            (i + 0.2, value),
            xytext=(0, -3 if below else 3),
            textcoords="offset points",
            ha="left",
            va="top" if below else "bottom",
            fontsize=8,
        )
    ax.set_ylabel("checkerboard_db (dB)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)


def _mean_db(mode_report: dict[str, Any]) -> float:
    return float(mode_report.get("mean", mode_report["db"]))


def draw(parts: list[tuple[str, dict[str, Any], np.ndarray, dict]], out: str | Path) -> Path:
    """One block of rows per part: spectra (inputs + modes), example images, a bar chart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 7.2 * len(parts)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 * len(parts), 4)
    for row, (name, part, inputs, outputs) in enumerate(parts):
        batches = {"inputs": inputs, **outputs}
        for col, (label, batch) in enumerate(batches.items()):
            score = part["inputs_db"] if label == "inputs" else _mean_db(part[label])
            title = f"{name}: {label}, mean power spectrum (dB)\ncheckerboard_db {score:+.1f}"
            _spectrum_panel(fig.add_subplot(grid[2 * row, col]), batch, title)
            _image_panel(fig.add_subplot(grid[2 * row + 1, col]), batch[0], f"{label}, image 0")
        _bar_panel(fig.add_subplot(grid[2 * row : 2 * row + 2, 3]), part, f"{name}: per mode")
    fig.suptitle("Stride frequencies (circles): transposed vs resize convolutions", fontsize=11)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def run(
    *,
    preset_name: str = "tiny",
    image_size: int = 64,
    n: int = 32,
    seeds: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4),
    inputs: str | Path | None = None,
    versions: tuple[str, str] | None = None,
    out: str | Path | None = DEFAULT_OUT,
) -> dict[str, Any]:
    """Parts (a) and, with `versions` (transpose URI, resize URI), (b); the figure unless
    `out` is None. Returns the report."""
    batch = load_inputs(inputs, n, image_size)
    init_report, init_outputs = at_init(batch, preset_name=preset_name, seeds=list(seeds))
    report: dict[str, Any] = {"at_init": init_report}
    parts = [("at init", init_report, batch, init_outputs)]
    if versions is not None:
        trained_report, trained_outputs = trained(batch, dict(zip(MODES, versions, strict=True)))
        report["trained"] = trained_report
        parts.append(("trained", trained_report, batch, trained_outputs))
    if out is not None:
        report["figure"] = str(draw(parts, out))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=32, help="synthetic faces (without --inputs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--inputs", help="uint8 N x H x W x 3 .npy (default: synthetic faces)")
    parser.add_argument("--versions", nargs=2, metavar=("TRANSPOSE_URI", "RESIZE_URI"))
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run(
        preset_name=args.preset,
        image_size=args.image_size,
        n=args.n,
        seeds=args.seeds,
        inputs=args.inputs,
        versions=tuple(args.versions) if args.versions else None,
        out=args.out,
    )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

"""Two more known styles for the known-mapping benchmark, of different kinds than `paint`.

Each takes and returns uint8 (N x) H x W x 3 arrays, like `cyclegan_jobs.sample_data.paint`:
    --style benchmarks/styles.py:colour_remap      a global, pixel-wise colour transform
    --style benchmarks/styles.py:blur_posterize    a spatial filter plus a lossy quantization
"""

from __future__ import annotations

import numpy as np

# A cross-processed film look: channels mixed (red <- green, blue lifted in the shadows), an
# S-curve per channel. Invertible, so both directions of the cycle are learnable.
_MIX = np.array(
    [
        [0.55, 0.45, 0.00],
        [0.10, 0.80, 0.10],
        [0.15, 0.05, 0.80],
    ]
)
_LIFT = np.array([0.02, 0.0, 0.12])
_CURVE = np.array([0.9, 0.5, 0.8])  # per-channel S-curve strength (<= 1: monotonic)


def _check(images: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"{name} expects uint8 (N x) H x W x 3, got {array.dtype} {array.shape}")
    return array


def colour_remap(images: np.ndarray) -> np.ndarray:
    """Channel mixing, a blue lift in the shadows and per-channel contrast curves."""
    x = _check(images, "colour_remap").astype(np.float64) / 255.0
    x = np.clip(x @ _MIX.T + _LIFT * (1.0 - x), 0.0, 1.0)
    # S-curve: blend of identity and smoothstep, per channel.
    smooth = x * x * (3.0 - 2.0 * x)
    x = x + (_CURVE - 1.0) * (smooth - x)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def blur_posterize(images: np.ndarray, levels: int = 6) -> np.ndarray:
    """A 5x5 binomial blur, then each channel quantized to `levels` flat tones."""
    array = _check(images, "blur_posterize")
    batch = array[None] if array.ndim == 3 else array
    x = batch.astype(np.float64) / 255.0
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    rows = sum(k * pad[:, i : i + x.shape[1], :, :] for i, k in enumerate(kernel))
    x = sum(k * rows[:, :, i : i + x.shape[2], :] for i, k in enumerate(kernel))
    x = np.round(x * (levels - 1)) / (levels - 1)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return out[0] if array.ndim == 3 else out

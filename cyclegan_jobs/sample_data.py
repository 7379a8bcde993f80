"""Deterministic sample data: synthetic face photos (domain B) and a fixed painting style (A)."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from cyclegan_jobs import storage
from cyclegan_jobs.images import encode_jpeg, encode_png

# Palettes the random draws pick from, so faces stay plausible (RGB, 0-255).
_SKIN_LIGHT = np.array([255, 222, 196], dtype=np.float32)
_SKIN_DARK = np.array([96, 62, 42], dtype=np.float32)
_HAIR = np.array(
    [[20, 15, 12], [62, 40, 24], [112, 74, 40], [205, 165, 95], [150, 62, 28], [125, 125, 125]],
    dtype=np.float32,
)
_IRIS = np.array([[72, 46, 26], [60, 100, 150], [72, 112, 60], [40, 30, 22]], dtype=np.float32)
_LIPS = np.array([176, 72, 70], dtype=np.float32)

_CHUNK = 64  # images rendered at a time: bounds memory for large n at 256 px
# The demo inputs' seed: not the training faces' (0), so the job translates faces never seen.
INPUT_FACES_SEED = 7


def synthetic_faces(n: int, size: int, seed: int) -> np.ndarray:
    """n simple face-like pictures, uint8 (n, size, size, 3); same arguments, same bytes.

    Each has a gradient background, shoulders, a skin-toned head, hair, eyes, brows, a nose and a
    mouth, with position, scale and colours drawn from np.random.default_rng(seed).
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    p = _face_params(rng, n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = {key: value[start : start + _CHUNK] for key, value in p.items()}
        picture = _render_faces(part, size)
        # Noise is drawn chunk by chunk in a fixed order, so the result does not depend on memory.
        picture += rng.normal(0.0, 3.0, picture.shape).astype(np.float32)
        out[start : start + _CHUNK] = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return out


def _face_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    def u(low: float, high: float, shape: tuple[int, ...] = ()) -> np.ndarray:
        return rng.uniform(low, high, (n, *shape)).astype(np.float32)

    skin_t = u(0.0, 1.0, (1,))
    rx = u(0.19, 0.26)
    return {
        "bg0": u(25, 235, (3,)),
        "bg1": u(25, 235, (3,)),
        "bg_angle": u(0.0, 2 * np.pi),
        "cx": u(0.42, 0.58),
        "cy": u(0.40, 0.52),
        "rx": rx,
        "ry": rx * u(1.15, 1.4),
        "skin": _SKIN_LIGHT * (1 - skin_t) + _SKIN_DARK * skin_t + u(-10, 10, (3,)),
        "hair": _HAIR[rng.integers(0, len(_HAIR), n)] + u(-12, 12, (3,)),
        "long_hair": (rng.random(n) < 0.4).astype(np.float32),
        "fringe": u(0.35, 0.7),
        "clothes": u(20, 230, (3,)),
        "iris": _IRIS[rng.integers(0, len(_IRIS), n)],
        "eye_gap": u(0.33, 0.42),
        "mouth_w": u(0.25, 0.4),
        "mouth_h": u(0.035, 0.075),
        "lips": _LIPS * u(0.75, 1.1, (1,)),
    }


def _render_faces(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = coords[None, :, None], coords[None, None, :]

    def col(name: str) -> np.ndarray:  # per-image scalar -> broadcastable against (n, S, S)
        return p[name][:, None, None]

    def ellipse(cx, cy, rx, ry) -> np.ndarray:
        # Soft edge about one pixel wide, so shapes are antialiased at any size.
        dist = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
        return np.clip((1.0 - dist) * np.minimum(rx, ry) * size + 0.5, 0.0, 1.0)

    def paint_over(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
        canvas += (colour[:, None, None, :] - canvas) * alpha[..., None]

    cx, cy, rx, ry = col("cx"), col("cy"), col("rx"), col("ry")
    angle = col("bg_angle")
    ramp = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0.0, 1.0)
    bg0, bg1 = p["bg0"][:, None, None, :], p["bg1"][:, None, None, :]
    canvas = (bg0 + (bg1 - bg0) * ramp[..., None]).astype(np.float32)

    skin, hair = p["skin"], p["hair"]
    paint_over(canvas, ellipse(cx, cy + 0.2 * ry, rx * 1.2, ry * 1.05) * col("long_hair"), hair)
    paint_over(canvas, ellipse(cx, 1.08, rx * 2.3, ry * 0.6), p["clothes"])
    paint_over(canvas, ellipse(cx, cy + 0.95 * ry, rx * 0.42, ry * 0.5), skin * 0.88)
    paint_over(canvas, ellipse(cx, cy - 0.12 * ry, rx * 1.12, ry * 0.98), hair)
    head = ellipse(cx, cy, rx, ry)
    paint_over(canvas, head, skin)
    # The fringe: hair over the top of the head, down to a per-face line.
    fringe_line = cy - col("fringe") * ry
    paint_over(canvas, head * np.clip((fringe_line - yy) * size + 0.5, 0.0, 1.0), hair)

    eye_y = cy - 0.08 * ry
    for side in (-1.0, 1.0):
        eye_x = cx + side * col("eye_gap") * rx
        paint_over(canvas, ellipse(eye_x, eye_y - 0.14 * ry, rx * 0.2, ry * 0.028), hair * 0.8)
        paint_over(canvas, ellipse(eye_x, eye_y, rx * 0.17, ry * 0.07), np.full_like(skin, 245))
        paint_over(canvas, ellipse(eye_x, eye_y, ry * 0.058, ry * 0.058), p["iris"])
        paint_over(canvas, ellipse(eye_x, eye_y, ry * 0.028, ry * 0.028), np.zeros_like(skin))
    paint_over(canvas, ellipse(cx, cy + 0.16 * ry, rx * 0.09, ry * 0.14), skin * 0.82)
    mouth = ellipse(cx, cy + 0.47 * ry, rx * col("mouth_w"), ry * col("mouth_h"))
    paint_over(canvas, mouth, p["lips"])
    return canvas


# The painting style, a fixed ground truth for what A looks like given B (never random):
# 1. a colour matrix + bias pulling colours toward a yellow (light) / blue (shadow) palette and
#    boosting saturation - invertible, so a generator can learn both directions;
# 2. a gamma and a soft, monotonic "posterize" curve that makes slight tonal terraces;
# 3. a fixed brush-stroke texture that changes brightness by at most 5%, tied to pixel position.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_YELLOW = np.array([0.98, 0.84, 0.25])
_BLUE = np.array([0.10, 0.20, 0.52])
_DUOTONE = 0.5 * np.eye(3) + 0.5 * np.outer(_YELLOW - _BLUE, _LUMA)
_SATURATE = 1.3 * np.eye(3) - 0.3 * np.outer(np.ones(3), _LUMA)
_COLOUR_MATRIX = (_SATURATE @ _DUOTONE).astype(np.float32)
_COLOUR_BIAS = (_SATURATE @ (0.5 * _BLUE)).astype(np.float32)
_GAMMA = 0.9
_LEVELS, _TERRACE = 5, 0.6  # _TERRACE < 1 keeps the tone curve strictly increasing
_STROKE_AMPLITUDE = 0.05


def paint(images: np.ndarray) -> np.ndarray:
    """The fixed "Van Gogh-ish" style: uint8 H x W x 3 or N x H x W x 3 in, same shape out."""
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"paint expects uint8 (N x) H x W x 3, got {array.dtype} {array.shape}")
    x = array.astype(np.float32) / 255.0
    x = x @ _COLOUR_MATRIX.T + _COLOUR_BIAS
    x = np.clip(x, 0.0, 1.0) ** _GAMMA
    x = x - _TERRACE * np.sin(2 * np.pi * _LEVELS * x) / (2 * np.pi * _LEVELS)
    x = x * (1.0 + _STROKE_AMPLITUDE * _strokes(array.shape[-3], array.shape[-2])[..., None])
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _strokes(height: int, width: int) -> np.ndarray:
    """A fixed H x W texture in [-1, 1]: short strokes a few pixels wide along a swirling flow."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    # A smooth direction field (radians), swirly like the skies in Van Gogh's paintings.
    theta = 0.9 * np.sin(x / 11.0) + 0.9 * np.cos(y / 13.0) + 0.4 * np.sin((x + y) / 29.0)
    along = x * np.cos(theta) + y * np.sin(theta)
    across = -x * np.sin(theta) + y * np.cos(theta)
    # A per-cell phase (a classic deterministic shader hash) breaks stripes into separate dabs.
    cell = np.floor(x / 6.0) * 12.9898 + np.floor(y / 6.0) * 78.233
    phase = 2 * np.pi * np.modf(np.abs(np.sin(cell) * 43758.5453))[0]
    ridges = np.sin(2 * np.pi * across / 3.5)
    dabs = 0.4 + 0.6 * (0.5 + 0.5 * np.sin(2 * np.pi * along / 9.0 + phase))
    texture = (ridges * dabs).astype(np.float32)
    texture.setflags(write=False)  # cached and shared between calls
    return texture


def write_npy(uri: str, array: np.ndarray) -> str:
    """Save an array as a .npy file at a local path or s3:// URI; returns the URI."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    storage.write_bytes(uri, buffer.getvalue(), content_type="application/octet-stream")
    return uri


def write_sample_domains(
    out_dir: str, *, n_a: int = 64, n_b: int = 64, size: int = 64, seed: int = 0
) -> dict:
    """Write a painted domain A and a face domain B as PNG files under out_dir (local or s3://).

    domain_a/paint_0000.png ... = paint(synthetic_faces(n_a, size, seed * 2 + 1))
    domain_b/face_0000.png ...  = synthetic_faces(n_b, size, seed * 2)
    The two domains are independent draws, so they are unpaired like real CycleGAN data.
    """
    domain_a = storage.join(out_dir, "domain_a")
    domain_b = storage.join(out_dir, "domain_b")
    jobs = [
        (storage.join(domain_a, f"paint_{i:04d}.png"), picture)
        for i, picture in enumerate(paint(synthetic_faces(n_a, size, seed=seed * 2 + 1)))
    ]
    jobs += [
        (storage.join(domain_b, f"face_{i:04d}.png"), picture)
        for i, picture in enumerate(synthetic_faces(n_b, size, seed=seed * 2))
    ]
    _put_images(jobs, encode_png, "image/png")
    return {"domain_a": domain_a, "domain_b": domain_b, "n_a": n_a, "n_b": n_b}


def write_sample_faces(prefix: str, n: int, size: int, seed: int = INPUT_FACES_SEED) -> None:
    """Put n generated faces as `face_0000.jpg ...` (size x size JPEG) under prefix."""
    faces = synthetic_faces(n, size, seed=seed)
    jobs = [(storage.join(prefix, f"face_{i:04d}.jpg"), face) for i, face in enumerate(faces)]
    _put_images(jobs, encode_jpeg, "image/jpeg")


def _put_images(
    jobs: list[tuple[str, np.ndarray]], encode: Callable[[np.ndarray], bytes], content_type: str
) -> None:
    """Encode and write each (uri, picture)."""

    def put(job: tuple[str, np.ndarray]) -> None:
        uri, picture = job
        storage.write_bytes(uri, encode(picture), content_type=content_type)

    # Object stores are latency-bound: a few parallel PUTs make s3:// targets much faster.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, jobs))

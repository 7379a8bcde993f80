"""Benchmark inputs: realistic 1024x768 phone-photo JPEGs and huge smooth-gradient PNGs.

`phone_photos` upscales the synthetic faces to 1024x768 and adds a mid-frequency texture (skin,
fabric, out-of-focus background) and a fine sensor grain, so that a quality-90 JPEG with EXIF
weighs about 130 KB, like a downscaled phone picture; a smooth upscale alone would be ~60 KB and
decode faster than real photos. `gradient_pngs` makes 7000x7000 pictures that decode to 147 MB
of RGB each but are about 64 KB on disk (rows of one colour, or 8-bit gray ramps).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cyclegan_jobs.sample_data import synthetic_faces

PHOTO_SIZE = (1024, 768)  # width, height: a 4:3 landscape phone picture, downscaled
# Tuned so that the JPEGs weigh ~130 KB at quality 90 (measured: 127-135 KB, mean 130).
GRAIN_SIGMA = 2.2
TEXTURE_SIGMA = 4.5


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "BenchPhone"  # Make
    exif[0x0110] = "BenchPhone 12"  # Model
    exif[0x0112] = 1  # Orientation: upright (decode still parses it)
    return exif.tobytes()


def phone_photos(n: int, seed: int = 0, size: tuple[int, int] = PHOTO_SIZE) -> list[np.ndarray]:
    """n distinct RGB uint8 pictures (size: width, height; 1024x768 by default) with photo-like
    texture (the texture and grain are per pixel: a larger picture is as busy, not smoother)."""
    width, height = size
    rng = np.random.default_rng(seed)
    faces = synthetic_faces(n, 384, seed=seed + 7)
    out = []
    for face in faces:
        up = Image.fromarray(face).resize((width, height), Image.Resampling.BICUBIC)
        x = np.asarray(up, np.float32)
        # Mid-frequency texture: noise at 1/4 resolution, upsampled bicubically, per pixel gray.
        coarse = rng.normal(0.0, 1.0, (height // 4, width // 4)).astype(np.float32)
        coarse8 = Image.fromarray(np.uint8(np.clip(coarse * 40 + 128, 0, 255)))
        texture = np.asarray(coarse8.resize((width, height), Image.Resampling.BICUBIC), np.float32)
        x += ((texture - 128.0) * (TEXTURE_SIGMA / 40.0))[:, :, None]
        x += rng.normal(0.0, GRAIN_SIGMA, x.shape).astype(np.float32)
        out.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return out


def photo_jpegs(
    n: int, seed: int = 0, quality: int = 90, size: tuple[int, int] = PHOTO_SIZE
) -> list[bytes]:
    """n distinct phone-photo JPEG files (EXIF, 4:2:0, quality 90), about 130 KB each at
    1024x768 (size: width, height; e.g. (4032, 3024), a phone camera's full resolution)."""
    exif = _exif()
    out = []
    for picture in phone_photos(n, seed, size):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="JPEG", quality=quality, exif=exif)
        out.append(buffer.getvalue())
    return out


def gradient_pngs(size: int = 7000) -> list[bytes]:
    """Four size x size PNGs of smooth gradients (two coloured, two gray), ~64 KB each at 7000.

    Rows of a single colour (vertical gradients) compress to deflate's limit (~1:1000 of the
    8-bit indices); palette images get no PNG row filter in Pillow, hence vertical ones.
    """
    ramp = (np.arange(size, dtype=np.float32) * 255 / (size - 1)).astype(np.uint8)
    t = np.linspace(0.0, 1.0, 256)
    palettes = [
        np.stack([40 + 200 * t, 90 + 120 * np.sin(np.pi * t), 220 - 180 * t], 1),
        np.stack([250 - 120 * t, 60 + 180 * t, 120 + 100 * np.cos(np.pi * t)], 1),
    ]
    files = []
    for palette in palettes:  # coloured: palette index = row
        img = Image.fromarray(np.repeat(ramp[:, None], size, axis=1), "P")
        img.putpalette(np.clip(palette, 0, 255).astype(np.uint8).tobytes())
        files.append(img)
    files.append(Image.fromarray(np.repeat(ramp[None, :], size, axis=0), "L"))  # left-right
    files.append(Image.fromarray(np.repeat(ramp[::-1, None], size, axis=1), "L"))  # bottom-up
    out = []
    for img in files:
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", compress_level=9)
        out.append(buffer.getvalue())
    return out

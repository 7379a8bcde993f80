"""Pixels in and out: decode any image into RGB, resize, scale, encode, draw picture grids.

Charts (loss curves) are drawn with matplotlib in plots.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from cyclegan_jobs.errors import ImageDecodeError

# Decoders we accept. Pillow can open many more (PSD, ICO, EPS via Ghostscript, ...), but every
# extra decoder is attack surface for files dropped into a public input bucket. MPO is how Pillow
# reports the multi-picture JPEGs that many phone cameras write.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
# The file names taken for pictures, in training data and translate inputs alike: the formats
# above (a phone's MPO is a .jpg).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Decoded:
    """A picture shrunk for the model, and the upright size of the original."""

    image: np.ndarray  # uint8 H x W x 3
    height: int  # the original's upright size, full resolution (before any JPEG draft)
    width: int
    held: int = 0  # pixels decode_at_size left held in its budget, for the caller to release


class _NoBudget:
    def acquire(self, pixels: int) -> None:
        pass

    def release(self, pixels: int) -> None:
        pass


def decode_image(
    data: bytes, *, max_pixels: int = 50_000_000, draft_size: int | None = None
) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP/GIF/TIFF bytes into an upright uint8 H x W x 3 RGB array.

    Alpha is composited on white, 16-bit and grayscale images are scaled to 8-bit RGB, EXIF
    orientation is applied, and only the first frame of animations and multi-page files is used.
    `draft_size`: the caller will shrink the image to about draft_size x draft_size, so a JPEG
    may be decoded at 1/2, 1/4 or 1/8 scale, never smaller than that (much faster for photos).
    Raises ImageDecodeError (with a short `reason`) for anything that is not a usable image.
    """
    with _opened(data, max_pixels) as img:
        if draft_size is not None:
            _draft(img, draft_size)
        img.load()  # decodes everything now, so a truncated file fails here and not later
        return _to_rgb_array(_transpose(img, _orientation(img)))


def scaled_size(height: int, width: int, long_side: int | None) -> tuple[int, int]:
    """(height, width) with the long side `long_side` and the aspect kept (None: unchanged)."""
    if long_side is None:
        return height, width
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_at_size(
    data: bytes,
    long_side: int | None,
    *,
    max_pixels: int = 50_000_000,
    budget: Any = None,
    keep: int = 0,
) -> Decoded:
    """Decode as decode_image does, upright, with its long side `long_side` (None: the
    picture's own size) and its aspect kept: never squashed to a square.

    The pixels are decoded only once `budget` (see translate's PixelBudget) grants the decoded
    picture's pixels plus (1 + keep) times the output's: the result and `keep` more pictures of
    its size that the caller will make (a translation, a reconstruction). The decoded pixels
    are given back once every full-size copy is gone; the rest stays held (`Decoded.held`) for
    the caller to release. A JPEG is decoded at the smallest draft scale that is still at least
    the target, and the resize happens before the rotation.
    """
    budget = budget or _NoBudget()
    with _opened(data, max_pixels) as img:
        width, height = img.size  # as stored, before the draft: the real resolution
        target_h, target_w = scaled_size(height, width, long_side)  # as stored
        if long_side is not None and img.format in ("JPEG", "MPO"):
            img.draft(None, (target_w, target_h))
        decoded, kept = img.size[0] * img.size[1], target_h * target_w * (1 + keep)
        budget.acquire(decoded + kept)
        try:
            img.load()  # before the EXIF: Pillow decodes a whole PNG to look for its eXIf chunk
            orientation = _orientation(img)
            upright = _to_rgb_array(_transpose(_shrunk(img, target_w, target_h), orientation))
        except BaseException:
            budget.release(decoded + kept)
            raise
    budget.release(decoded)  # img (the full-size decode) is closed: only `upright` is left
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return Decoded(upright, height, width, held=kept)


def _shrunk(img: Image.Image, width: int, height: int) -> Image.Image:
    """The loaded picture at width x height, in a mode _to_rgb_array takes, with as few
    full-size copies as the mode allows (gray and palette pictures are resized before they
    become RGB where they can be)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("RGB", "RGBA", "L", "LA"):  # CMYK, 16-bit, float...
        img = Image.fromarray(_to_rgb_array(img))
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    return img


@contextmanager
def _opened(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """An image whose header was read and checked; Pillow's errors become ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in SUPPORTED_FORMATS:
                raise ImageDecodeError(f"unsupported format ({img.format})")
            # The header gives the size before any pixel is decoded: refuse decompression bombs
            # here, before they can allocate gigabytes.
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"too many pixels ({width * height / 1e6:.3g} MP > {max_pixels / 1e6:.3g} MP)"
                )
            yield img
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own limit (Image.MAX_IMAGE_PIXELS) only matters if max_pixels is above it.
        raise ImageDecodeError("too many pixels (over Pillow's decompression-bomb limit)") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError("not an image") from err
    except (OSError, SyntaxError, EOFError, ValueError) as err:
        # Pillow reports damaged data with all of these, depending on the codec.
        message = str(err).lower()
        if isinstance(err, EOFError) or "truncated" in message or "end of file" in message:
            raise ImageDecodeError("truncated image") from err
        raise ImageDecodeError(f"corrupt image ({_first_line(err)})") from err


def _draft(img: Image.Image, size: int) -> None:
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size.
    if img.format in ("JPEG", "MPO"):
        img.draft(None, (size, size))


# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # broken EXIF metadata should not reject otherwise good pixels
        return 1


def _transpose(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSES.get(orientation)
    return img.transpose(method) if method is not None else img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert("RGB") clips high-bit-depth values at 255 instead of scaling them.
        gray = np.asarray(img, dtype=np.float64)
        if mode == "F":  # float TIFFs hold either [0, 1] or [0, 255]
            scale = 255.0 if gray.max(initial=0.0) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        gray8 = np.clip(np.rint(gray * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*WHITE, 255))
            background.alpha_composite(rgba)
            rgb = background.convert("RGB")
        else:
            rgb = img.convert("RGB")
    except ValueError as err:
        raise ImageDecodeError(f"unsupported format (mode {mode})") from err
    return np.array(rgb, dtype=np.uint8)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:80] if text else type(err).__name__


def to_unit(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1], exactly the seed's normalize(): x / 127.5 - 1."""
    return np.asarray(images_uint8, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats (e.g. generator tanh outputs) -> uint8, clipped and rounded."""
    scaled = (np.asarray(x, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a uint8 H x W x 3 image to size x size, or to (height, width) for a tuple.

    Bicubic, as PIL's default that the seed used; Pillow widens the filter when shrinking, so
    downscaling is antialiased too.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(_check_uint8(image))
    return np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC))


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode a uint8 H x W x 3 (or H x W) array as PNG, lossless at any compress level.

    libpng through imagecodecs, because Pillow's encoder tries all five PNG row filters at every
    level (8.3 ms for 256x256 RGB here). At level 1 one filter (average) is used: about 4 ms
    for files ~1 % larger; higher levels keep the adaptive choice for the smallest files.
    """
    import imagecodecs

    filters = imagecodecs.PNG.FILTER
    chosen = filters.AVG if compress_level <= 1 else filters.ALL
    pixels = np.ascontiguousarray(_check_uint8(image))
    return bytes(imagecodecs.png_encode(pixels, level=compress_level, filter=chosen))


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 H x W x 3 (or H x W) array as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(_check_uint8(image)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _check_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    ):
        raise ValueError(f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    return image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    # Grids are mostly made from model tensors: floats are taken as [-1, 1] like the seed's plots.
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def sample_grid(
    rows: list[list[np.ndarray]],
    *,
    col_titles: list[str] | None = None,
    row_titles: list[str] | None = None,
    cell: int = 256,
) -> np.ndarray:
    """A labelled picture grid (uint8 H x W x 3) on white, like the seed's 2 x 2 matplotlib figure.

    Each image (uint8, or floats in [-1, 1]) is fitted into a cell x cell square keeping its aspect
    ratio; `col_titles` go above the columns and `row_titles` to the left of the rows.
    """
    if not rows or not any(rows):
        raise ValueError("sample_grid needs at least one image")
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    gap = max(4, cell // 32)
    font = _font(max(12, cell // 14))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _text_size(scratch, "Ag", font)[1]
    top = line_height + 2 * gap if col_titles else gap
    left = gap
    if row_titles:
        left += max(_text_size(scratch, title, font)[0] for title in row_titles) + 2 * gap
    width = left + n_cols * (cell + gap)
    height = top + n_rows * (cell + gap)
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = top + r * (cell + gap)
        for c, image in enumerate(row):
            x = left + c * (cell + gap)
            picture = Image.fromarray(_as_uint8_rgb(image))
            picture = ImageOps.contain(picture, (cell, cell), Image.Resampling.BICUBIC)
            canvas.paste(
                picture, (x + (cell - picture.width) // 2, y + (cell - picture.height) // 2)
            )
        if row_titles and r < len(row_titles):
            text_h = _text_size(draw, row_titles[r], font)[1]
            draw.text((gap, y + (cell - text_h) // 2), row_titles[r], fill=(0, 0, 0), font=font)
    for c, title in enumerate((col_titles or [])[:n_cols]):
        text_w = _text_size(draw, title, font)[0]
        x = left + c * (cell + gap) + (cell - text_w) // 2
        draw.text((x, gap), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)

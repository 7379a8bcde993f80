"""Tests for decoding every supported kind of image, scaling, encoding and the drawn figures."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cyclegan_jobs import images
from cyclegan_jobs.images import ImageDecodeError, decode_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _gradient(height: int = 24, width: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), 255 - x * 255 // width], -1)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png(width: int, height: int, color_type: int, bit_depth: int, raw: bytes) -> bytes:
    """A minimal PNG written by hand, for bit depths and sizes Pillow will not write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    assert str(info.value) == info.value.reason
    return info.value.reason


GRADIENT = _gradient().astype(np.uint8)


@pytest.mark.parametrize(
    ("fmt", "kwargs", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("JPEG", {"quality": 95}, 6),
        ("JPEG", {"quality": 95, "progressive": True}, 6),
    ],
)
def test_rgb_round_trip(fmt: str, kwargs: dict, tolerance: int) -> None:
    decoded = decode_image(_save(Image.fromarray(GRADIENT), fmt, **kwargs))
    assert decoded.dtype == np.uint8 and decoded.shape == GRADIENT.shape
    assert np.abs(decoded.astype(int) - GRADIENT).mean() <= tolerance


def test_progressive_jpeg_is_really_progressive() -> None:
    data = _save(Image.fromarray(GRADIENT), "JPEG", progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    assert decode_image(data).shape == GRADIENT.shape


def test_cmyk_jpeg_comes_back_as_rgb() -> None:
    data = _save(Image.fromarray(GRADIENT).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.shape == GRADIENT.shape
    assert np.abs(decoded.astype(int) - GRADIENT).mean() < 8


def test_palette_png() -> None:
    palette = Image.fromarray(GRADIENT).quantize(colors=8)
    decoded = decode_image(_save(palette, "PNG"))
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))


def test_palette_png_transparency_goes_white() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    decoded = decode_image(_save(palette, "PNG", transparency=0))
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    assert tuple(decoded[3, 3]) == RED


def test_16_bit_grayscale_png_is_scaled_not_clipped() -> None:
    gray = Image.fromarray(np.array([[0, 65535, 128 * 257]], dtype=np.uint16))
    data = _save(gray, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 255, 128])
    np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])


def test_16_bit_rgb_png() -> None:
    raw = b"\x00" + struct.pack(">6H", 0xFFFF, 0x8000, 0x0000, 0, 0x00FF, 0xFFFF)
    decoded = decode_image(_png(2, 1, color_type=2, bit_depth=16, raw=raw))
    np.testing.assert_allclose(decoded[0].astype(int), [[255, 128, 0], [0, 0, 255]], atol=1)


def test_rgba_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue stays blue
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    decoded = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    assert tuple(decoded[0, 1]) == BLUE
    assert all(abs(int(v) - 127) <= 1 for v in decoded[1, 0])


def test_la_png() -> None:
    la = Image.fromarray(np.array([[[0, 0], [0, 255], [200, 255]]], dtype=np.uint8), "LA")
    decoded = decode_image(_save(la, "PNG"))
    assert decoded.shape == (1, 3, 3)
    np.testing.assert_array_equal(decoded[0, :, 1], [255, 0, 200])


def test_grayscale_jpeg_and_png() -> None:
    gray = Image.fromarray(np.full((8, 8), 77, dtype=np.uint8), "L")
    np.testing.assert_array_equal(decode_image(_save(gray, "PNG")), np.full((8, 8, 3), 77))
    assert np.abs(decode_image(_save(gray, "JPEG")).astype(int) - 77).max() <= 1


def test_gif_and_tiff_use_the_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), RED), Image.new("RGB", (6, 6), BLUE)]
    for fmt in ("GIF", "TIFF"):
        data = _save(frames[0], fmt, save_all=True, append_images=frames[1:])
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2, fmt
        decoded = decode_image(data)
        assert decoded.shape == (6, 6, 3)
        assert tuple(decoded[3, 3]) == RED, fmt


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    # Stored 40 wide x 20 high with a red top-left corner. Orientation 6 means "rotate 90
    # degrees clockwise to display": upright it is 20 wide x 40 high, red at the top-right.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:] = BLUE
    stored[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_save(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.shape == (40, 20, 3)
    assert decoded[2, -3, 0] > 200 and decoded[2, -3, 2] < 60  # top-right is red
    assert decoded[2, 2, 0] < 60 and decoded[2, 2, 2] > 200  # top-left is blue


def test_draft_size_decodes_big_jpegs_smaller_but_not_below_the_target() -> None:
    big = np.repeat(np.repeat(GRADIENT, 16, axis=0), 16, axis=1)  # 384 x 512
    decoded = decode_image(_save(Image.fromarray(big), "JPEG"), draft_size=64)
    assert 64 <= min(decoded.shape[:2]) < 384
    assert decode_image(_save(Image.fromarray(big), "PNG"), draft_size=64).shape == big.shape


def test_bad_inputs_have_short_reasons() -> None:
    assert _reason(b"") == "empty file"
    assert _reason(b"this is not a picture at all" * 4) == "not an image"
    jpeg = _save(Image.fromarray(GRADIENT), "JPEG")
    png = _save(Image.fromarray(GRADIENT), "PNG")
    assert _reason(jpeg[: len(jpeg) // 2]) == "truncated image"
    assert _reason(png[: len(png) // 2]) == "truncated image"
    assert _reason(_save(Image.fromarray(GRADIENT), "PPM")) == "unsupported format (PPM)"


def test_pixel_limit_is_checked_before_decoding() -> None:
    # The header claims 10000 x 6000 but there is no pixel data: only a header check can say so.
    claimed = _png(10_000, 6_000, color_type=2, bit_depth=8, raw=b"")
    assert _reason(claimed) == "too many pixels (60 MP > 50 MP)"
    assert _reason(_save(Image.fromarray(GRADIENT), "PNG"), max_pixels=500).startswith(
        "too many pixels"
    )
    # Far beyond Pillow's own decompression-bomb limit, which fires while reading the header.
    assert _reason(_png(100_000, 100_000, 2, 8, b"")).startswith("too many pixels")


def test_to_unit_and_to_uint8_hand_values() -> None:
    unit = images.to_unit(np.array([0, 255, 127, 128], dtype=np.uint8))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [-1.0, 1.0, 127 / 127.5 - 1, 128 / 127.5 - 1], atol=1e-7)
    back = images.to_uint8(np.array([-1.0, 1.0, 0.0, -3.0, 2.0, 0.5], dtype=np.float32))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, [0, 255, 128, 0, 255, 191])
    every = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(images.to_uint8(images.to_unit(every)), every)


def test_resize_square_and_height_width() -> None:
    assert images.resize(GRADIENT, 16).shape == (16, 16, 3)
    assert images.resize(GRADIENT, (10, 20)).shape == (10, 20, 3)
    flat = np.full((30, 30, 3), 90, dtype=np.uint8)
    resized = images.resize(flat, 7)
    assert resized.dtype == np.uint8 and np.all(resized == 90)


def test_encoders_round_trip() -> None:
    np.testing.assert_array_equal(decode_image(images.encode_png(GRADIENT)), GRADIENT)
    jpeg = decode_image(images.encode_jpeg(GRADIENT, quality=90))
    assert jpeg.shape == GRADIENT.shape and np.abs(jpeg.astype(int) - GRADIENT).mean() < 6
    with pytest.raises(ValueError, match="uint8"):
        images.encode_png(GRADIENT.astype(np.float32))


def test_sample_grid_layout_titles_and_cells() -> None:
    red = np.zeros((10, 10, 3), dtype=np.uint8)
    red[:] = RED
    unit_blue = np.full((12, 12, 3), -1.0, dtype=np.float32)
    unit_blue[..., 2] = 1.0  # floats are read as [-1, 1]: this is pure blue
    rows = [[red, red, red], [unit_blue, unit_blue, unit_blue]]
    plain = images.sample_grid(rows, cell=32)
    titled = images.sample_grid(
        rows,
        col_titles=["input", "translated", "reconstructed"],
        row_titles=["A->B", "B->A"],
        cell=32,
    )
    for grid in (plain, titled):
        assert grid.dtype == np.uint8 and grid.ndim == 3
        assert grid.shape[0] >= 2 * 32 and grid.shape[1] >= 3 * 32
        is_red = np.all(grid == RED, axis=-1)
        is_blue = np.all(grid == BLUE, axis=-1)
        assert is_red.sum() == 3 * 32 * 32 and is_blue.sum() == 3 * 32 * 32
    # Titles add room above and to the left, and are drawn in dark ink there.
    assert titled.shape[0] > plain.shape[0] and titled.shape[1] > plain.shape[1]
    first_red_row = np.flatnonzero(np.all(titled == RED, axis=-1).any(axis=1))[0]
    assert (titled[:first_red_row].max(axis=-1) < 100).any()
    assert (plain[: np.flatnonzero(np.all(plain == RED, axis=-1).any(axis=1))[0]] == 255).all()


@pytest.mark.parametrize("level", [1, 6])
def test_png_encoding_is_lossless_for_rgb_gray_and_strided_arrays(level: int) -> None:
    from cyclegan_jobs.images import encode_png

    rgb = np.ascontiguousarray(np.tile(GRADIENT, (4, 4, 1)))
    for picture in (rgb, rgb[:, :, 1], rgb[::2, ::3]):  # a channel and a strided view too
        data = encode_png(picture, compress_level=level)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)
        assert len(data) < picture.nbytes  # compressed, not stored


# decode_at_size: the picture's own shape (issue 20) ----------------------------------------


def _asymmetric(height: int, width: int) -> np.ndarray:
    """Blue, with a red block in the top-left corner: any rotation or flip moves it."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:] = BLUE
    picture[: height // 4, : width // 4] = RED
    return picture


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("long_side", [None, 60])
def test_decode_at_size_is_upright_and_keeps_the_aspect(
    orientation: int, long_side: int | None
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(Image.fromarray(_asymmetric(90, 120)), "PNG", exif=exif.tobytes())
    decoded = images.decode_at_size(data, long_side)
    upright = decode_image(data)  # the same picture, upright at full size (tested above)
    assert (decoded.height, decoded.width) == upright.shape[:2]
    assert decoded.image.shape[:2] == images.scaled_size(*upright.shape[:2], long_side)
    expected = images.resize(upright, decoded.image.shape[:2])
    assert np.abs(decoded.image.astype(int) - expected).mean() < 3


@pytest.mark.parametrize(
    ("shape", "long_side", "out"),
    [((23, 37), None, (23, 37)), ((23, 37), 256, (159, 256)), ((800, 3000), 256, (68, 256)),
     ((3000, 800), 256, (256, 68)), ((4, 1000), 100, (1, 100))],
)  # fmt: skip
def test_tiny_images_and_panoramas_keep_their_shape(
    shape: tuple[int, int], long_side: int | None, out: tuple[int, int]
) -> None:
    data = _save(Image.fromarray(_asymmetric(*shape)), "PNG")
    decoded = images.decode_at_size(data, long_side)
    assert decoded.image.shape == (*out, 3) and (decoded.height, decoded.width) == shape


def test_decode_at_size_handles_16_bit_palette_and_rgba() -> None:
    rows = np.linspace(0, 65535, 64, dtype=">u2").reshape(8, 8)
    sixteen = images.decode_at_size(
        _png(8, 8, 0, 16, b"".join(b"\0" + r.tobytes() for r in rows)), 16
    )
    assert sixteen.image.shape == (16, 16, 3) and sixteen.image.max() > 240  # scaled, not clipped
    palette = Image.fromarray(_asymmetric(30, 50)).convert("P")
    assert images.decode_at_size(_save(palette, "PNG"), None).image.shape == (30, 50, 3)
    rgba = np.zeros((10, 20, 4), np.uint8)  # fully transparent: white
    white = images.decode_at_size(_save(Image.fromarray(rgba), "PNG"), 40).image
    assert white.shape == (20, 40, 3) and white.min() == 255


def test_a_jpeg_is_decoded_at_a_draft_scale_no_smaller_than_the_target() -> None:
    big = np.repeat(np.repeat(GRADIENT, 16, axis=0), 16, axis=1)  # 384 x 512
    held: list[int] = []

    class Budget(images._NoBudget):
        def acquire(self, pixels: int) -> None:
            held.append(pixels)

    decoded = images.decode_at_size(_save(Image.fromarray(big), "JPEG"), 100, budget=Budget())
    assert decoded.image.shape == (75, 100, 3)
    decoded_pixels = held[0] - 75 * 100  # the budget also holds the result
    assert 75 * 100 <= decoded_pixels <= 384 * 512 // 4  # a 1/2 or smaller draft, never below


def test_decoding_holds_the_picture_and_its_outputs_in_the_budget_until_released() -> None:
    """What decode_at_size leaves held is the result and `keep` pictures of its size, and the
    full-size decode is given back; a picture that fails to decode gives everything back."""
    from cyclegan_jobs.translation.workers import PixelBudget

    budget = PixelBudget(10**9)
    big = np.repeat(np.repeat(GRADIENT, 16, axis=0), 16, axis=1)  # 384 x 512
    decoded = images.decode_at_size(_save(Image.fromarray(big), "PNG"), 128, budget=budget, keep=2)
    assert decoded.image.shape == (96, 128, 3)
    assert budget.used == decoded.held == 3 * 96 * 128
    assert budget.peak == 384 * 512 + 3 * 96 * 128
    budget.release(decoded.held)
    truncated = _save(Image.fromarray(big), "PNG")[:-400]
    with pytest.raises(images.ImageDecodeError):
        images.decode_at_size(truncated, None, budget=budget, keep=2)
    assert budget.used == 0


def test_the_sample_grid_shows_a_non_square_picture_at_its_own_aspect() -> None:
    """A 3:1 panorama and a 1:2 portrait in 96 px cells: each fills the cell along its long side
    and keeps its aspect along the other (the contact sheet of a --size native run)."""
    wide = np.zeros((40, 120, 3), np.uint8)
    tall = np.zeros((90, 45, 3), np.uint8)
    grid = images.sample_grid([[wide, tall]], cell=96)
    dark = grid.sum(axis=2) < 60
    ys, xs = np.nonzero(dark)
    left, right = xs < grid.shape[1] // 2, xs >= grid.shape[1] // 2
    boxes = [(np.ptp(ys[side]) + 1, np.ptp(xs[side]) + 1) for side in (left, right)]
    assert boxes == [(32, 96), (96, 48)]

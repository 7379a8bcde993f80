"""Tests for the numpy image metrics against hand-computed values and independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cyclegan_jobs.evaluation.metrics import (
    PSNR_CAP,
    checkerboard_db,
    color_histogram_distance,
    finite_or_none,
    laplacian_pyramid,
    laplacian_reconstruct,
    mean_power_spectrum,
    patch_descriptors,
    psnr,
    psnr_per_image,
    sliced_wasserstein,
    ssim,
    stride_bins,
    swd,
)
from cyclegan_jobs.sample_data import paint, synthetic_faces

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return synthetic_faces(16, 32, seed=1)


@pytest.fixture(scope="module")
def other_faces() -> np.ndarray:
    return synthetic_faces(16, 32, seed=2)


def _checkerboard(shape: tuple[int, ...], amplitude: int) -> np.ndarray:
    y, x = np.indices(shape[-3:-1])
    signs = np.where((y + x) % 2 == 0, 1, -1)[..., None]
    return np.broadcast_to(signs * amplitude, shape).astype(np.int16)


def test_identical_images_score_perfectly(faces: np.ndarray) -> None:
    assert psnr(faces, faces.copy()) == PSNR_CAP
    assert np.array_equal(psnr_per_image(faces, faces), np.full(len(faces), PSNR_CAP))
    assert ssim(faces, faces.copy()) == pytest.approx(1.0, abs=1e-12)
    result = swd(faces, faces.copy())
    assert set(result) == {"32x32", "16x16", "mean"}
    # Same images, same sampled patches, same directions: the sorted projections coincide.
    assert all(value == 0.0 for value in result.values())
    assert color_histogram_distance(faces, faces.copy()) == 0.0


def test_psnr_of_known_noise() -> None:
    rng = np.random.default_rng(0)
    # Values in [5, 250], so +-5 never leaves 0..255 and the error is exactly 5 everywhere.
    base = rng.integers(5, 251, size=(4, 16, 16, 3)).astype(np.uint8)
    noisy = (base.astype(np.int16) + _checkerboard(base.shape, 5)).astype(np.uint8)
    assert np.abs(noisy.astype(int) - base.astype(int)).max() == 5
    expected = 10 * math.log10(255**2 / 25)  # MSE = 25
    assert psnr(base, noisy) == pytest.approx(expected, rel=1e-12)
    assert psnr(noisy, base) == pytest.approx(expected, rel=1e-12)
    assert psnr_per_image(base, noisy) == pytest.approx([expected] * 4, rel=1e-12)
    # Float input on the same 0-255 scale gives the same answer.
    assert psnr(base.astype(np.float32), noisy.astype(np.float64)) == pytest.approx(expected)


def test_psnr_per_image_and_over_the_batch() -> None:
    a = np.full((3, 8, 8, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[1] += 1  # MSE 1
    b[2] = (b[2].astype(np.int16) + _checkerboard(b[2].shape, 5)).astype(np.uint8)  # MSE 25
    expected = [PSNR_CAP, 10 * math.log10(255**2), 10 * math.log10(255**2 / 25)]
    assert psnr_per_image(a, b) == pytest.approx(expected, rel=1e-12)
    # Over the batch the squared errors are pooled first: MSE = (0 + 1 + 25) / 3.
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (26 / 3)), rel=1e-12)
    # A single H x W x 3 image is a batch of one.
    assert psnr_per_image(a[2], b[2]) == pytest.approx(expected[2:], rel=1e-12)


def test_psnr_is_capped_and_checks_shapes() -> None:
    a = np.full((8, 32, 32, 3), 50, dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 51  # one unit of error in 24576 values
    true_value = 10 * math.log10(255**2 * a.size)
    assert true_value == pytest.approx(92.04, abs=0.01)
    assert psnr(a, b) == pytest.approx(true_value, rel=1e-12)
    assert psnr(a, b, cap=40.0) == 40.0
    assert psnr(a, a, cap=40.0) == 40.0
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(a, a[:, :16])
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr_per_image(a, a[:4])


def test_ssim_of_two_constant_images_is_the_luminance_term() -> None:
    a = np.full((2, 16, 16, 3), 100, dtype=np.uint8)
    b = np.full((2, 16, 16, 3), 160, dtype=np.uint8)
    # Zero variances and covariance: the contrast-structure factor is C2 / C2 = 1.
    expected = (2 * 100 * 160 + C1) / (100**2 + 160**2 + C1)
    assert expected == pytest.approx(0.8989, abs=1e-4)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert ssim(b, a) == pytest.approx(expected, rel=1e-9)


def _ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """Direct 2-D windowed SSIM of one H x W x C pair: explicit loops, central moments."""
    offsets = np.arange(11) - 5.0
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for c in range(a.shape[2]):
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                x = a[i : i + 11, j : j + 11, c].astype(np.float64)
                y = b[i : i + 11, j : j + 11, c].astype(np.float64)
                mx, my = (window * x).sum(), (window * y).sum()
                vx = (window * (x - mx) ** 2).sum()
                vy = (window * (y - my) ** 2).sum()
                cov = (window * (x - mx) * (y - my)).sum()
                values.append(
                    (2 * mx * my + C1) * (2 * cov + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
                )
    return float(np.mean(values))


def test_ssim_matches_a_brute_force_window_loop() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(2, 14, 13, 3)).astype(np.uint8)
    noise = rng.normal(0, 30, size=a.shape)
    b = np.clip(a * 0.7 + 40 + noise, 0, 255).astype(np.uint8)
    expected = np.mean([_ssim_brute_force(a[i], b[i]) for i in range(2)])
    assert 0.1 < expected < 0.95  # a non-trivial case
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_decreases_with_noise_strength(faces: np.ndarray) -> None:
    noise = np.random.default_rng(5).standard_normal(faces.shape)
    scores = [
        ssim(faces, np.clip(faces + strength * noise, 0, 255).astype(np.uint8))
        for strength in (1, 3, 10, 30, 60)
    ]
    assert all(later < earlier for earlier, later in zip(scores, scores[1:], strict=False))
    assert scores[0] < 1.0 and scores[-1] > 0.0


def test_ssim_rejects_small_or_mismatched_images() -> None:
    small = np.zeros((2, 10, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(small, small)
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)))


def test_laplacian_pyramid_shapes_and_reconstruction() -> None:
    images = np.random.default_rng(0).uniform(0, 255, size=(3, 33, 20, 3))
    pyramid = laplacian_pyramid(images, 4)
    assert [level.shape for level in pyramid] == [
        (3, 33, 20, 3),
        (3, 17, 10, 3),
        (3, 9, 5, 3),
        (3, 5, 3, 3),
    ]
    assert all(level.dtype == np.float32 for level in pyramid)
    assert np.abs(laplacian_reconstruct(pyramid) - images).max() < 1e-4
    faces = synthetic_faces(2, 64, seed=0)
    face_levels = laplacian_pyramid(faces, 4)
    assert [level.shape[1] for level in face_levels] == [64, 32, 16, 8]
    assert np.abs(laplacian_reconstruct(face_levels) - faces).max() < 1e-4
    # A single image keeps its rank.
    single = laplacian_pyramid(faces[0], 3)
    assert [level.shape for level in single] == [(64, 64, 3), (32, 32, 3), (16, 16, 3)]
    assert np.abs(laplacian_reconstruct(single) - faces[0]).max() < 1e-4
    with pytest.raises(ValueError, match="levels"):
        laplacian_pyramid(faces, 0)


def test_laplacian_pyramid_of_a_constant_image_is_all_low_pass() -> None:
    # The binomial weights sum to 1 and the expansion's to 1 at every output pixel, so a flat
    # image has no band-pass content and its low-pass level is the same constant.
    flat = np.full((1, 24, 18, 3), 77, dtype=np.uint8)
    pyramid = laplacian_pyramid(flat, 3)
    for band in pyramid[:-1]:
        assert np.abs(band).max() < 1e-4
    assert np.abs(pyramid[-1] - 77).max() < 1e-4


def test_patch_descriptors_are_normalised_neighbourhoods() -> None:
    faces = synthetic_faces(4, 64, seed=0)
    levels = patch_descriptors(faces, per_image=32, seed=3)
    assert len(levels) == 3  # 64, 32, 16: the coarsest is still >= 16 px
    for level in levels:
        assert level.shape == (4 * 32, 147) and level.dtype == np.float32
        per_channel = level.reshape(-1, 7, 7, 3)
        assert per_channel.mean(axis=(0, 1, 2)) == pytest.approx([0, 0, 0], abs=1e-5)
        assert per_channel.std(axis=(0, 1, 2)) == pytest.approx([1, 1, 1], rel=1e-4)
    assert len(patch_descriptors(faces[:, :32, :32], per_image=4)) == 2
    again = patch_descriptors(faces, per_image=32, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(levels, again, strict=True))
    other = patch_descriptors(faces, per_image=32, seed=4)
    assert not np.array_equal(levels[0], other[0])


def test_patch_descriptors_take_contiguous_patches_of_each_image() -> None:
    # Channel 0 = row, channel 1 = column, channel 2 = image number: after normalisation a
    # true 7 x 7 neighbourhood steps by a constant down its rows in channel 0, across its
    # columns in channel 1, and is constant in channel 2.
    n, size = 5, 20
    rows, cols = np.indices((size, size))
    images = np.stack(
        [np.stack([rows, cols, np.full_like(rows, k)], axis=-1) for k in range(n)]
    ).astype(np.float64)
    (level,) = patch_descriptors(images, levels=1, per_image=10, seed=0)
    patches = level.reshape(-1, 7, 7, 3).astype(np.float64)
    row_step = np.diff(patches[..., 0], axis=1)
    col_step = np.diff(patches[..., 1], axis=2)
    assert row_step.min() > 0 and np.ptp(row_step) < 1e-5
    assert np.abs(np.diff(patches[..., 0], axis=2)).max() < 1e-5
    assert col_step.min() > 0 and np.ptp(col_step) < 1e-5
    assert np.abs(np.diff(patches[..., 1], axis=1)).max() < 1e-5
    image_code = patches[..., 2].reshape(len(patches), -1)
    assert np.ptp(image_code, axis=1).max() < 1e-5
    # per_image patches from each of the n images, in image order.
    _, counts = np.unique(np.round(image_code[:, 0], 4), return_counts=True)
    assert counts.tolist() == [10] * n
    assert np.all(np.diff(image_code[:, 0]) >= -1e-6)


def test_patch_descriptors_need_room_for_a_patch() -> None:
    images = np.zeros((2, 12, 12, 3), dtype=np.uint8)
    assert len(patch_descriptors(images, per_image=2)) == 1  # 12 px: no level >= 16 below it
    with pytest.raises(ValueError, match="smaller than a 7 x 7 patch"):
        patch_descriptors(images, levels=2, per_image=2)  # coarsest level 6 x 6


def test_sliced_wasserstein_of_a_pure_shift_matches_theory() -> None:
    # b = a + t * e1 moves every projection on unit u by t * u1, so each 1-D distance is
    # t * |u1|; over random unit directions in d dimensions E|u1| = G(d/2) / (sqrt(pi) G((d+1)/2)).
    d, t = 8, 3.0
    a = np.random.default_rng(0).standard_normal((500, d))
    b = a + t * np.eye(d)[0]
    mean_abs_u1 = math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    assert mean_abs_u1 == pytest.approx(0.2910, abs=1e-4)
    # 512 directions: the Monte Carlo error of the mean of |u1| is about 3 %.
    assert sliced_wasserstein(a, b) == pytest.approx(t * mean_abs_u1, rel=0.1)


def test_sliced_wasserstein_grows_with_offset_and_is_symmetric() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 6))
    b = rng.standard_normal((400, 6))
    assert sliced_wasserstein(a, a.copy()) == 0.0
    distances = [sliced_wasserstein(a, b + offset * np.eye(6)[2]) for offset in (0, 0.5, 1, 2, 4)]
    assert all(later > earlier for earlier, later in zip(distances, distances[1:], strict=False))
    assert sliced_wasserstein(a, b) == sliced_wasserstein(b, a)
    # Unequal counts: the larger set is subsampled, whichever side it is on.
    c = rng.standard_normal((650, 6)) + 4 * np.eye(6)[0]
    assert sliced_wasserstein(a, c) == sliced_wasserstein(c, a)
    assert sliced_wasserstein(a, c, seed=2) == sliced_wasserstein(a, c, seed=2)
    assert sliced_wasserstein(a, c) > distances[-2]
    with pytest.raises(ValueError, match="equal d"):
        sliced_wasserstein(a, b[:, :5])


def test_swd_ranks_a_style_and_a_colour_cast_beyond_another_draw(
    faces: np.ndarray, other_faces: np.ndarray
) -> None:
    same_kind = swd(faces, other_faces)
    painted = swd(faces, paint(other_faces))
    cast = np.clip(faces.astype(np.int16) + np.array([40, 0, -40]), 0, 255).astype(np.uint8)
    colour_cast = swd(faces, cast)
    assert list(same_kind) == ["32x32", "16x16", "mean"]
    assert same_kind["mean"] == pytest.approx((same_kind["32x32"] + same_kind["16x16"]) / 2)
    assert all(math.isfinite(value) and value > 0 for value in same_kind.values())
    assert painted["mean"] > 1.5 * same_kind["mean"]
    assert colour_cast["mean"] > 1.5 * same_kind["mean"]
    assert swd(faces, other_faces) == same_kind  # deterministic for a seed
    assert swd(other_faces, faces)["mean"] == pytest.approx(same_kind["mean"], rel=1e-6)


def test_color_histogram_distance_by_hand() -> None:
    black = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    white = np.full((3, 4, 4, 3), 255, dtype=np.uint8)
    # All mass moves from the first bin to the last: bins - 1 bins of 1 / bins each.
    assert color_histogram_distance(black, white) == pytest.approx(31 / 32, rel=1e-12)
    assert color_histogram_distance(white, black, bins=10) == pytest.approx(9 / 10, rel=1e-12)
    # One bin (8 levels at 32 bins) apart, in one of three channels.
    shifted = black.copy()
    shifted[..., 1] = 8
    assert color_histogram_distance(black, shifted) == pytest.approx((1 / 32) / 3, rel=1e-12)
    # Half the pixels white: half the mass moves.
    half = black.copy()
    half[:, :4] = 255
    assert color_histogram_distance(black, half) == pytest.approx(0.5 * 31 / 32, rel=1e-12)
    # Only the distribution counts, not the number or size of the images.
    faces = synthetic_faces(2, 16, seed=0)
    assert color_histogram_distance(faces, np.concatenate([faces, faces, faces])) == 0.0


def test_finite_or_none() -> None:
    assert finite_or_none(float("nan")) is None
    assert finite_or_none(float("inf")) is None
    assert finite_or_none(-math.inf) is None
    assert finite_or_none(None) is None
    assert finite_or_none(np.float32(2.5)) == 2.5
    assert type(finite_or_none(np.float64(1.0))) is float
    assert finite_or_none(0.0) == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_give_nan_not_numbers(bad: float) -> None:
    good = synthetic_faces(2, 16, seed=0).astype(np.float32)
    broken = good.copy()
    broken[1, 3, 4, 0] = bad
    assert math.isnan(psnr(good, broken))
    assert math.isnan(psnr(broken, good))
    per_image = psnr_per_image(good, broken)
    assert per_image[0] == PSNR_CAP and math.isnan(per_image[1])
    assert math.isnan(ssim(good, broken))
    assert all(math.isnan(value) for value in swd(good, broken).values())
    assert math.isnan(color_histogram_distance(broken, good))
    assert math.isnan(sliced_wasserstein(np.array([[0.0], [bad]]), np.zeros((2, 1))))
    assert finite_or_none(ssim(broken, good)) is None
    # The same values without the bad pixel are ordinary finite numbers.
    assert finite_or_none(ssim(good, good)) == pytest.approx(1.0)


# --- checkerboard_db: power at the stride frequencies of stacked stride-2 upsamplings ----------


def _blocks(size: int, period: int) -> np.ndarray:
    """A +-1 checkerboard of period `period` px (squares of period / 2), H x W x 1."""
    y, x = np.indices((size, size))
    half = period // 2
    return np.where((y // half + x // half) % 2 == 0, 1, -1)[..., None]


def _plus(images: np.ndarray, pattern: np.ndarray, amplitude: int) -> np.ndarray:
    return np.clip(images.astype(np.int16) + amplitude * pattern, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def faces64() -> np.ndarray:
    return synthetic_faces(16, 64, seed=1)


@pytest.mark.parametrize(("size", "seed"), [(32, 1), (32, 4), (64, 2), (64, 5), (128, 3)])
def test_checkerboard_db_of_smooth_pictures_is_near_zero(size: int, seed: int) -> None:
    # No periodic texture: each stride bin is about as strong as the bins around it. Spectral
    # slope and the faces' horizontal edges move single bins by up to ~3 dB; the mean over the
    # 19 bins stayed within [-1.3, +1.3] dB for 16-32 faces of 32-256 px, seeds 0-9. 2 dB
    # leaves room for that and is still far below a faint checkerboard (> 8 dB, below).
    assert abs(checkerboard_db(synthetic_faces(16, size, seed))) < 2.0


def test_checkerboard_db_of_white_noise_is_near_zero() -> None:
    noise = np.random.default_rng(0).normal(0.0, 1.0, (16, 64, 64, 3))
    assert abs(checkerboard_db(noise)) < 0.5  # a flat spectrum: bins equal their neighbours


def test_a_faint_2px_checkerboard_scores_far_higher(faces64: np.ndarray) -> None:
    clean = checkerboard_db(faces64)
    one, two = (checkerboard_db(_plus(faces64, _blocks(64, 2), a)) for a in (1, 2))
    # +-2 grey levels: invisible next to the faces' own +-3 noise, and yet ~+14 dB.
    assert two > clean + 10.0 and one > clean + 6.0 and two > one
    # On a single image, too (noisier, but the peak stands out as clearly).
    assert checkerboard_db(_plus(faces64[0], _blocks(64, 2), 2)) > checkerboard_db(faces64[0]) + 8


def test_a_period_4_pattern_is_caught_at_the_second_level(faces64: np.ndarray) -> None:
    # Squares of 2 px: power at (+-H/4, +-W/4) only, none at the period-2 frequencies.
    textured = _plus(faces64, _blocks(64, 4), 4)
    assert checkerboard_db(textured) > checkerboard_db(faces64) + 4.0
    # With levels=1 only period 2 is measured, and this pattern has no power there.
    assert checkerboard_db(textured, levels=1) == pytest.approx(
        checkerboard_db(faces64, levels=1), abs=0.1
    )


def test_checkerboard_db_is_scale_free_and_takes_single_images(faces64: np.ndarray) -> None:
    as_uint8 = checkerboard_db(faces64)
    assert checkerboard_db(faces64.astype(np.float32) / 127.5 - 1.0) == pytest.approx(as_uint8)
    assert checkerboard_db(faces64.astype(np.float64) * 1e3) == pytest.approx(as_uint8)
    assert checkerboard_db(faces64[3]) == pytest.approx(checkerboard_db(faces64[3:4]))
    # A pure checkerboard: all power in one bin, a large but finite number.
    pure = checkerboard_db(np.broadcast_to(_blocks(64, 2), (1, 64, 64, 3)).astype(np.float32))
    assert math.isfinite(pure) and pure > 60.0
    assert checkerboard_db(np.full((2, 32, 32, 3), 7, np.uint8)) == 0.0  # nothing varies


def test_stride_bins_and_spectrum() -> None:
    bins = stride_bins(64, 64, 3)
    # 6 values per axis (0, 32, +-16, +-8): 35 bins without DC, 3 self-conjugate, so 19.
    assert len(bins) == 19 and (32, 32) in bins and (0, 0) not in bins
    assert len(stride_bins(64, 64, 3, conjugates=True)) == 35
    assert stride_bins(32, 64, 1) == [(0, 32), (16, 0), (16, 32)]
    spectrum = mean_power_spectrum(np.broadcast_to(_blocks(32, 2), (2, 32, 32, 1)))
    assert spectrum.shape == (32, 32) and int(np.argmax(spectrum)) == 16 * 32 + 16


def test_checkerboard_db_rejects_bad_input_clearly() -> None:
    with pytest.raises(ValueError, match=r"expected \(N x\) H x W x C images"):
        checkerboard_db(np.zeros((64, 64)))
    with pytest.raises(ValueError, match="numeric"):
        checkerboard_db(np.full((1, 64, 64, 3), "a"))
    with pytest.raises(ValueError, match="multiple of 2\\*\\*levels = 8 and at least 32"):
        checkerboard_db(np.zeros((1, 60, 64, 3)))
    with pytest.raises(ValueError, match="image width 16"):
        checkerboard_db(np.zeros((1, 32, 16, 3)))
    assert checkerboard_db(np.zeros((1, 16, 16, 3)), levels=2) == 0.0  # fewer levels, smaller
    with pytest.raises(ValueError, match="levels and ring must be >= 1"):
        checkerboard_db(np.zeros((1, 32, 32, 3)), levels=0)
    broken = synthetic_faces(2, 32, seed=0).astype(np.float32)
    broken[1, 2, 3, 1] = np.nan
    assert math.isnan(checkerboard_db(broken))

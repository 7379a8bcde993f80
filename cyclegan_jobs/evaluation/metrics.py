"""Image-quality metrics in pure numpy: PSNR, SSIM, Laplacian-pyramid SWD, colour distance and
checkerboard texture (power at the stride frequencies of x2 upsampling layers)."""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP = 100.0
"""dB reported by psnr() for identical images (and the most it ever reports).

The true value is +inf; a finite cap keeps the result valid JSON and keeps comparisons such as
"not worse than the promoted version" meaningful. Any real difference between 8-bit images of
up to ~150k pixels already scores below 100 dB, and results are clipped to the cap so that
identical images always rank at least as high as any non-identical pair.
"""

DATA_RANGE = 255.0  # pixel values are on the 0-255 scale, whatever the dtype

# SSIM constants from Wang et al. 2004 ("Image quality assessment: from error visibility to
# structural similarity"), section III-C.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# Burt & Adelson's 5-tap binomial kernel (the one Karras et al. use for the SWD pyramid).
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0

SWD_MIN_LEVEL_SIZE = 16  # default pyramid depth: the coarsest level is still at least this many px
SWD_SCALE = 1e3  # swd() reports distances x 1e3, as in Karras et al. 2018 ("SWD x 10^3")

_CHUNK = 16  # images processed at a time, so memory stays bounded for large batches


def finite_or_none(value: float | None) -> float | None:
    """value as a plain float, or None for NaN, +-inf or None: JSON null, never a number."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def psnr(a: np.ndarray, b: np.ndarray, *, cap: float = PSNR_CAP) -> float:
    """Peak signal-to-noise ratio in dB over all pixels of two equal-shape image batches.

    Images are (N x) H x W x C on the 0-255 scale (data range 255). Identical images give `cap`
    (see PSNR_CAP) and no result exceeds it. NaN when a float input holds NaN or inf.
    """
    x, y = _pair(a, b)
    if _nonfinite(x) or _nonfinite(y):
        return float("nan")
    mse = float(np.mean(np.square(x.astype(np.float64) - y.astype(np.float64))))
    return _psnr_from_mse(mse, cap)


def psnr_per_image(a: np.ndarray, b: np.ndarray, *, cap: float = PSNR_CAP) -> np.ndarray:
    """PSNR of each image pair as a float64 array of length N (1 for a single H x W x C image).

    Same conventions as psnr(); an image pair with a non-finite value gets NaN, the others are
    unaffected.
    """
    x, y = _pair(a, b)
    out = np.empty(len(x), dtype=np.float64)
    for i in range(len(x)):
        xi, yi = x[i].astype(np.float64), y[i].astype(np.float64)
        if not (np.isfinite(xi).all() and np.isfinite(yi).all()):
            out[i] = np.nan
        else:
            out[i] = _psnr_from_mse(float(np.mean(np.square(xi - yi))), cap)
    return out


def _psnr_from_mse(mse: float, cap: float) -> float:
    if mse == 0.0:
        return float(cap)
    return float(min(cap, 10.0 * math.log10(DATA_RANGE**2 / mse)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004) of two equal-shape image batches.

    11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255; computed per channel in
    float64 with 'valid' filtering (no padding, so only windows fully inside the image count),
    then averaged over positions, channels and images. Identical images give exactly 1.0. NaN
    when a float input holds NaN or inf. Images smaller than 11 px on a side raise ValueError.
    """
    x, y = _pair(a, b)
    height, width = x.shape[1:3]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} px (its window), "
            f"got {height} x {width}"
        )
    if _nonfinite(x) or _nonfinite(y):
        return float("nan")
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    window = _gaussian(SSIM_WINDOW, SSIM_SIGMA)
    total, count = 0.0, 0
    for start in range(0, len(x), _CHUNK):
        xc = x[start : start + _CHUNK].astype(np.float64)
        yc = y[start : start + _CHUNK].astype(np.float64)
        # One stack, one pass of the separable filter for all five local moments.
        moments = np.stack([xc, yc, xc * xc, yc * yc, xc * yc])
        moments = _filter_valid(_filter_valid(moments, window, axis=2), window, axis=3)
        mu_x, mu_y, xx, yy, xy = moments
        var_x = xx - mu_x * mu_x
        var_y = yy - mu_y * mu_y
        cov = xy - mu_x * mu_y
        numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
        denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        ssim_map = numerator / denominator
        total += float(ssim_map.sum())
        count += ssim_map.size
    return total / count


def _gaussian(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """1-D correlation along axis without padding (output shorter by len(taps) - 1)."""
    n = x.shape[axis] - len(taps) + 1

    def part(k: int) -> np.ndarray:
        index = [slice(None)] * x.ndim
        index[axis] = slice(k, k + n)
        return x[tuple(index)]

    # A loop over the taps keeps memory at one output-sized array (no sliding-window copy).
    out = taps[0] * part(0)
    for k in range(1, len(taps)):
        out += taps[k] * part(k)
    return out


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Burt-Adelson Laplacian pyramid of (N x) H x W x C images, float32, finest level first.

    The Gaussian levels are made by blurring with the 5-tap binomial [1, 4, 6, 4, 1] / 16 (mirror
    borders) and keeping every other row and column, so each level has ceil(half) the size; each
    band-pass level is its Gaussian level minus the next one expanded back (zero insertion then
    the same blur, x 4). The last entry is the low-pass residual. laplacian_reconstruct() undoes
    it. A single H x W x C image gives H x W x C levels.
    """
    array = _as_images(images, "images")
    pyramid = _pyramid64(array, levels)
    if np.ndim(images) == 3:
        pyramid = [level[0] for level in pyramid]
    return [level.astype(np.float32) for level in pyramid]


def laplacian_reconstruct(pyramid: list[np.ndarray]) -> np.ndarray:
    """The image(s) a laplacian_pyramid() came from (float32): expand each level and add back."""
    if not pyramid:
        raise ValueError("empty pyramid")
    single = np.ndim(pyramid[0]) == 3
    levels = [np.asarray(level, dtype=np.float64) for level in pyramid]
    if single:
        levels = [level[None] for level in levels]
    image = levels[-1]
    for band in reversed(levels[:-1]):
        image = band + _expand(image, band.shape[1:3])
    return (image[0] if single else image).astype(np.float32)


def _pyramid64(images: np.ndarray, levels: int) -> list[np.ndarray]:
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    gaussian = images.astype(np.float64)
    pyramid = []
    for _ in range(levels - 1):
        smaller = _blur(gaussian)[:, ::2, ::2]
        pyramid.append(gaussian - _expand(smaller, gaussian.shape[1:3]))
        gaussian = smaller
    pyramid.append(gaussian)
    return pyramid


def _blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    # Mirror borders (d c b | a b c d | c b a) keep a constant image constant at the edges.
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    taps = _BINOMIAL * gain
    return _filter_valid(_filter_valid(padded, taps, axis=1), taps, axis=2)


def _expand(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    up = np.zeros((x.shape[0], shape[0], shape[1], x.shape[3]), dtype=np.float64)
    up[:, ::2, ::2] = x
    # Zero insertion leaves a quarter of the samples; gain 2 per axis restores the brightness.
    return _blur(up, gain=2.0)


def _level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    sizes = [(height, width)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def default_levels(height: int, width: int, min_size: int = SWD_MIN_LEVEL_SIZE) -> int:
    """Pyramid depth whose coarsest level is still >= min_size px (at least 1 level)."""
    levels, size = 1, min(height, width)
    while (size + 1) // 2 >= min_size:
        size = (size + 1) // 2
        levels += 1
    return levels


def _raw_descriptors(
    images: np.ndarray, levels: int | None, patch: int, per_image: int, seed: int
) -> list[np.ndarray]:
    """Un-normalised patches per level, each (N * per_image, patch, patch, C) float64."""
    n, height, width, channels = images.shape
    if levels is None:
        levels = default_levels(height, width)
    if patch < 1 or per_image < 1:
        raise ValueError(f"need patch >= 1 and per_image >= 1, got {patch}, {per_image}")
    sizes = _level_sizes(height, width, levels)
    if min(sizes[-1]) < patch:
        raise ValueError(
            f"the coarsest of {levels} pyramid levels of {height} x {width} images is "
            f"{sizes[-1][0]} x {sizes[-1][1]} px, smaller than a {patch} x {patch} patch"
        )
    # Every position is drawn up front, so the result does not depend on the chunk size.
    rng = np.random.default_rng(seed)
    corners = [
        (
            rng.integers(0, h - patch + 1, n * per_image),
            rng.integers(0, w - patch + 1, n * per_image),
        )
        for h, w in sizes
    ]
    out = [np.empty((n * per_image, patch, patch, channels), dtype=np.float64) for _ in sizes]
    offsets = np.arange(patch)
    for start in range(0, n, _CHUNK):
        chunk = images[start : start + _CHUNK]
        rows = slice(start * per_image, (start + len(chunk)) * per_image)
        image_index = np.repeat(np.arange(len(chunk)), per_image)[:, None, None]
        for level, (top, left), target in zip(_pyramid64(chunk, levels), corners, out, strict=True):
            y = (top[rows][:, None] + offsets)[:, :, None]
            x = (left[rows][:, None] + offsets)[:, None, :]
            target[rows] = level[image_index, y, x]
    return out


def _normalise(descriptors: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # A constant channel has std 0: leave it centred rather than dividing by zero.
    scale = np.where(std > 0, std, 1.0)
    return ((descriptors - mean) / scale).reshape(len(descriptors), -1)


def _channel_stats(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return descriptors.mean(axis=(0, 1, 2)), descriptors.std(axis=(0, 1, 2))


def patch_descriptors(
    images: np.ndarray,
    *,
    levels: int | None = None,
    patch: int = 7,
    per_image: int = 64,
    seed: int = 0,
) -> list[np.ndarray]:
    """Laplacian-pyramid patch descriptors (Karras et al. 2018, "Progressive Growing of GANs").

    For each pyramid level (finest first), `per_image` random patch x patch x C neighbourhoods of
    every image, flattened to rows of an (N * per_image, patch * patch * C) float32 array (147
    columns for 7 x 7 RGB). Each level is normalised per colour channel by its own mean and
    standard deviation, so levels are comparable. levels=None: as many as keep the coarsest level
    >= 16 px. Positions come from np.random.default_rng(seed): same arguments, same descriptors.
    """
    array = _as_images(images, "images")
    return [
        _normalise(level, *_channel_stats(level)).astype(np.float32)
        for level in _raw_descriptors(array, levels, patch, per_image, seed)
    ]


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, *, directions: int = 128, repeats: int = 4, seed: int = 0
) -> float:
    """Sliced Wasserstein-1 distance between two descriptor sets (rows = samples, same columns).

    Both sets are projected on `directions` random unit vectors; each projection's sorted values
    are paired up and their mean absolute difference is the 1-D Wasserstein distance; the result
    is averaged over directions and `repeats` fresh draws of directions. With unequal row counts
    the larger set is subsampled without replacement to the smaller size (seeded, so
    deterministic). Symmetric in (a, b); exactly 0 for identical sets; NaN on non-finite input.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or 0 in x.shape or 0 in y.shape:
        raise ValueError(f"need two non-empty (n, d) arrays with equal d, got {x.shape}, {y.shape}")
    if directions < 1 or repeats < 1:
        raise ValueError(f"need directions >= 1 and repeats >= 1, got {directions}, {repeats}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    # Separate streams for the subsample and the directions, independent of argument order.
    if len(x) != len(y):
        subsample = np.random.default_rng([seed, 1])
        keep = min(len(x), len(y))
        if len(x) > keep:
            x = x[np.sort(subsample.choice(len(x), keep, replace=False))]
        else:
            y = y[np.sort(subsample.choice(len(y), keep, replace=False))]
    # float32 like the paper: sorting is most of the cost and runs ~3x faster than in float64,
    # while the rounding (~1e-7 relative) is far below any difference worth reporting.
    x, y = x.astype(np.float32), y.astype(np.float32)
    rng = np.random.default_rng([seed, 0])
    results = []
    for _ in range(repeats):
        dirs = rng.standard_normal((x.shape[1], directions))
        dirs = (dirs / np.sqrt(np.sum(dirs * dirs, axis=0, keepdims=True))).astype(np.float32)
        # (directions, n) rows: sorting contiguous rows is several times faster than columns.
        projected_x = np.sort(dirs.T @ x.T, axis=1)
        projected_y = np.sort(dirs.T @ y.T, axis=1)
        results.append(float(np.mean(np.abs(projected_x - projected_y), dtype=np.float64)))
    return float(np.mean(results))


def swd(
    images_a: np.ndarray,
    images_b: np.ndarray,
    *,
    levels: int | None = None,
    per_image: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Sliced Wasserstein distance x 1e3 between two image sets, per pyramid level and "mean".

    Laplacian-pyramid 7 x 7 patch descriptors as in Karras et al. 2018 (see patch_descriptors),
    128 directions x 4 repeats per level. Keys are "<h>x<w>" of each level (finest first) and
    "mean" (their average). Values are the raw distance between unit-variance descriptors times
    1e3 (SWD_SCALE), the paper's reporting scale; lower is better, 0 for the same images.
    Unlike the paper, both sets of a level are normalised with their pooled per-channel mean and
    std rather than each with its own, so that a global colour cast or contrast change counts as
    a difference. The sets may differ in size but not in image shape. Same inputs and seed, same
    result; every value is NaN when a float input holds NaN or inf.
    """
    x = _as_images(images_a, "images_a")
    y = _as_images(images_b, "images_b")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"image shapes differ: {x.shape[1:]} vs {y.shape[1:]}")
    if levels is None:
        levels = default_levels(*x.shape[1:3])
    keys = [f"{h}x{w}" for h, w in _level_sizes(*x.shape[1:3], levels)]
    if _nonfinite(x) or _nonfinite(y):
        return {**dict.fromkeys(keys, float("nan")), "mean": float("nan")}
    result = {}
    for key, desc_x, desc_y in zip(
        keys,
        _raw_descriptors(x, levels, 7, per_image, seed),
        _raw_descriptors(y, levels, 7, per_image, seed),
        strict=True,
    ):
        stats = _channel_stats(np.concatenate([desc_x, desc_y]))
        distance = sliced_wasserstein(
            _normalise(desc_x, *stats), _normalise(desc_y, *stats), seed=seed
        )
        result[key] = distance * SWD_SCALE
    result["mean"] = float(np.mean(list(result.values())))
    return result


def color_histogram_distance(
    images_a: np.ndarray, images_b: np.ndarray, *, bins: int = 32
) -> float:
    """Earth mover's distance between the per-channel intensity histograms of two image sets.

    Each channel's values (0-255) are counted into `bins` equal bins over [0, 256) and
    normalised; the 1-D Wasserstein distance between the two histograms is measured in units of
    the full intensity range (one bin apart = 1 / bins), so it lies in [0, 1], and is averaged
    over channels. 0 for identical distributions; (bins - 1) / bins for all-black vs all-white.
    The sets may differ in count and size; NaN when a float input holds NaN or inf.
    """
    x = _as_images(images_a, "images_a")
    y = _as_images(images_b, "images_b")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"channel counts differ: {x.shape[-1]} vs {y.shape[-1]}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if _nonfinite(x) or _nonfinite(y):
        return float("nan")
    distances = []
    for channel in range(x.shape[-1]):
        cdf_x = np.cumsum(_histogram(x[..., channel], bins))
        cdf_y = np.cumsum(_histogram(y[..., channel], bins))
        # 1-D EMD = area between the CDFs; each step is one bin = 1 / bins of the range.
        distances.append(float(np.sum(np.abs(cdf_x - cdf_y))) / bins)
    return float(np.mean(distances))


def _histogram(values: np.ndarray, bins: int) -> np.ndarray:
    values = np.clip(values.astype(np.float64).ravel(), 0.0, DATA_RANGE)
    index = np.minimum((values * bins / 256.0).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    return counts / counts.sum()


def _as_images(images: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W, C) view of a batch or of a single H x W x C image; numeric, non-empty."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.size == 0:
        raise ValueError(f"{name}: expected (N x) H x W x C images, got shape {array.shape}")
    if array.dtype.kind not in "uif":
        raise ValueError(f"{name}: expected a numeric image array, got dtype {array.dtype}")
    return array


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_images(a, "a"), _as_images(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {np.shape(a)} vs {np.shape(b)}")
    return x, y


def _nonfinite(array: np.ndarray) -> bool:
    # Integer images are always finite; only float arrays can carry NaN or inf.
    return array.dtype.kind == "f" and not bool(np.isfinite(array).all())


CHECKERBOARD_LEVELS = 3  # stride periods 2, 4 and 8 px: the last three stride-2 upsamplings
CHECKERBOARD_RING = 2  # neighbours: bins at Chebyshev distance 2 (the window spreads a peak +-1)


def checkerboard_db(
    images: np.ndarray, *, levels: int = CHECKERBOARD_LEVELS, ring: int = CHECKERBOARD_RING
) -> float:
    """Spectral power at the stride frequencies over the power around them, in dB.

    Stacked stride-2 upsamplings (transposed convolutions) leave patterns with periods of 2, 4,
    8 ... px, i.e. power at k/2, k/4, k/8 ... cycles/px (Odena et al. 2016). Definition:
    P = mean_power_spectrum(images) (Hann window, windowed mean removed, power summed over
    channels, averaged over images). The stride bins are every (u, v) != (0, 0) with u in
    {0, +-H/2, +-H/4, ... +-H/2^levels} and v likewise from W (stride_bins; one bin of each
    conjugate pair, which have the same power). Each stride bin b is compared with the mean
    power R(b) of the bins at Chebyshev distance `ring` around it (distance 1 would share a
    peak, which the window spreads over +-1 bin), and

        checkerboard_db = 10 * log10(mean over b of P(b) / R(b)).

    Each bin is compared with its own neighbours rather than pooled, so the steep ~1/f^2
    spectrum of pictures near DC cannot drown a faint 2-px pattern; a peak r times its
    neighbours at one of the 19 bins (levels=3) adds 10 * log10(1 + (r - 1) / 19). Pictures
    without periodic texture score near 0 dB: spectral slope, edges along the axes and
    estimation noise move single bins by up to ~+-3 dB, the mean by ~+-1.5 dB (synthetic faces,
    32-256 px); blurred pictures (a spectrum falling fast towards 1/2 cycle/px) score below 0.
    A 2-px checkerboard of amplitude 2/255 on 64 px faces scores +12..+14 dB.

    Inputs: N x H x W x C or H x W x C, uint8 or float on any scale (the ratio is scale-free).
    Constant images score 0; NaN when a float input holds NaN or inf. H and W must be multiples
    of 2^levels and at least 2 * ring * 2^levels (32 px for the defaults).
    """
    x = _as_images(images, "images")
    if levels < 1 or ring < 1:
        raise ValueError(f"levels and ring must be >= 1, got levels={levels}, ring={ring}")
    height, width = x.shape[1:3]
    period = 2**levels
    for name, size in (("height", height), ("width", width)):
        if size % period or size < 2 * ring * period:
            raise ValueError(
                f"image {name} {size} must be a multiple of 2**levels = {period} and at least "
                f"{2 * ring * period} (levels={levels}, ring={ring})"
            )
    if _nonfinite(x):
        return float("nan")
    if (x == x[:, :1, :1, :]).all():  # every channel of every image constant: no texture
        return 0.0
    power = mean_power_spectrum(x)
    floor = 1e-12 * float(power.mean())  # a finite answer for perfectly periodic images
    du, dv = np.meshgrid(np.arange(-ring, ring + 1), np.arange(-ring, ring + 1), indexing="ij")
    on_ring = np.maximum(np.abs(du), np.abs(dv)) == ring
    ratios = []
    for u, v in stride_bins(height, width, levels):
        around = power[(u + du[on_ring]) % height, (v + dv[on_ring]) % width]
        ratios.append(power[u, v] / max(float(around.mean()), floor))
    return float(10.0 * math.log10(max(float(np.mean(ratios)), 1e-30)))


def mean_power_spectrum(images: np.ndarray) -> np.ndarray:
    """H x W float64 power spectrum (np.fft.fft2 order, DC at [0, 0]) of an image batch.

    Each image channel has its Hann-windowed mean removed and is multiplied by a periodic 2-D
    Hann window (whose DFT has three taps per axis: a peak spreads over +-1 bin only, and the
    picture's borders do not leak power along the axes); |FFT|^2 is summed over channels and
    averaged over images. Float inputs must be finite.
    """
    x = _as_images(images, "images")
    if _nonfinite(x):
        raise ValueError("images: NaN or inf in the input")
    height, width = x.shape[1:3]
    window = np.outer(np.hanning(height + 1)[:-1], np.hanning(width + 1)[:-1])[..., None]
    total = np.zeros((height, width), np.float64)
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK].astype(np.float64)
        mean = (chunk * window).sum(axis=(1, 2), keepdims=True) / window.sum()
        spectrum = np.fft.fft2((chunk - mean) * window, axes=(1, 2))
        total += (np.abs(spectrum) ** 2).sum(axis=(0, 3))
    return total / len(x)


def stride_bins(
    height: int, width: int, levels: int = CHECKERBOARD_LEVELS, *, conjugates: bool = False
) -> list[tuple[int, int]]:
    """(u, v) fft2 indices of the stride frequencies of an H x W image (see checkerboard_db).

    u in {0, H/2, +-H/4, ... +-H/2^levels} and v likewise, without DC; one bin of each conjugate
    pair unless `conjugates` (then both, e.g. to mark a plot).
    """

    def axis(size: int) -> list[int]:
        steps = [size >> k for k in range(1, levels + 1)]
        return sorted({0, *steps, *[(size - s) % size for s in steps]})

    bins = []
    for u in axis(height):
        for v in axis(width):
            conjugate = ((height - u) % height, (width - v) % width)
            if (u, v) != (0, 0) and (conjugates or (u, v) <= conjugate):
                bins.append((u, v))
    return bins

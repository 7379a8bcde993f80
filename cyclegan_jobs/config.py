"""Typed, frozen configurations: the model presets (seed | paper | tiny) and the training job."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from cyclegan_jobs.errors import ConfigError

# The choices the CLI and the Airflow forms offer, defined once (this module imports nothing
# heavy, so DAG files can read them when they are parsed).
PRESETS = ("seed", "paper", "tiny")
PRESET_HELP = {
    "seed": "the notebook exactly: U-Net with 3 residual blocks, 256 px",
    "paper": "Zhu et al. 2017: ResNet-9 generator, 70x70 PatchGAN, 256 px",
    "tiny": "the seed's topology with 1/8 of the filters, 64 px: minutes on a CPU",
}
PRESET_IMAGE_SIZE = {"seed": 256, "paper": 256, "tiny": 64}
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PRECISION_HELP = {
    "auto": "float16 on a GPU, bfloat16 on a CPU that has it, else float32",
    "float32": "full precision everywhere",
    "bfloat16": "mixed precision for CPUs with AMX or AVX512-BF16",
    "float16": "mixed precision with loss scaling, for GPUs",
}
# Image sizes a form offers: the generator halves the size four times, so multiples of 16.
IMAGE_SIZES = (32, 64, 128, 256, 512)
# Model selection (score the generators on held-out images every K steps, export the best):
# off for the seed (it stays the notebook exactly) unless asked for.
PRESET_SELECT_EVERY = {"seed": 0, "paper": 500, "tiny": 100}
# Images of each domain per training step: the seed's and the paper's 1; tiny's 8, measured
# (README, "The tiny preset's defaults").
PRESET_BATCH_SIZE = {"seed": 1, "paper": 1, "tiny": 8}
UPSAMPLING = ("transpose", "resize")
UPSAMPLING_HELP = {
    "transpose": "stride-2 transposed convolutions (the seed's; can leave a checkerboard)",
    "resize": "resize x2, then a stride-1 convolution (Odena et al. 2016): no checkerboard",
}

# `--disc-augment` (LossConfig.disc_augment) turns it on or off; left out, the preset's choice.
DISC_AUGMENT_HELP = {
    "on": "DiffAugment: every image the discriminators see shifted and cut out at random; on a "
    "few hundred images per domain it prevents a 4.5-6 dB fall after the early peak",
    "off": "the images as they are; with 1,024 images per domain 0.3-0.4 dB better (tiny; "
    "README, the discriminators' memory)",
}

# `--residual` (ModelConfig.residual, U-Net generators) turns it on or off; left out, the preset's.
RESIDUAL_HELP = {
    "on": "the generator predicts a change to its input, so training starts near the identity map "
    "and the cycle is whole from the first steps (tiny, make run's 2.5 minutes: cycle PSNR 27 "
    "against 23)",
    "off": "the generator makes its output from scratch, as the seed's does; for runs longer than "
    "a few minutes (tiny, 10 minutes: 1.1 / 1.8 dB better on paint / colour_remap; README, the "
    "ablation at the defaults)",
}

Architecture = Literal["unet_res", "resnet"]
Adversarial = Literal["bce", "lsgan"]
Distance = Literal["mse", "l1"]
Upsampling = Literal["transpose", "resize"]


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture. `unet_res` is the seed's U-Net with residual bottleneck blocks."""

    preset: str = "seed"
    image_size: int = 256
    architecture: Architecture = "unet_res"
    gen_filters: int = 64  # filters of the first generator layer; later layers double it
    disc_filters: int = 64
    res_blocks: int = 3
    disc_kernel: int = 3  # the seed's downsample() default, used by its discriminator
    upsample: Upsampling = "transpose"  # the generators' upsampling layers (UPSAMPLING_HELP)
    # unet_res only: a full-resolution top level, the input image concatenated before the last
    # conv (the seed's U-Net makes every output pixel from /2-resolution features).
    input_skip: bool = False
    # unet_res only: the generator predicts a change to its input, output = tanh(atanh(input) +
    # last conv), so training starts near the identity map (at init a photo comes back within
    # about 50 dB of itself, the cycle whole) instead of from noise.
    residual: bool = False
    # unet_res only: hidden units of a per-pixel colour map (1x1 convolutions on the input's
    # colour, no normalization: the same map for every image) added to the U-Net's last conv
    # (with `residual`, to the change it predicts); 0: none.
    colour_head: int = 0

    def __post_init__(self) -> None:
        if self.upsample not in UPSAMPLING:
            raise ConfigError(f"unknown upsampling {self.upsample!r}; choose from {UPSAMPLING}")
        for option in ("input_skip", "residual", "colour_head"):
            if getattr(self, option) and self.architecture != "unet_res":
                raise ConfigError(f"{option} is a U-Net option: only for the unet_res architecture")
        if self.colour_head < 0:
            raise ConfigError(f"colour head units must be >= 0, got {self.colour_head}")
        if self.image_size < 16 or self.image_size % 16:
            raise ConfigError(
                f"image size {self.image_size} must be a positive multiple of 16 "
                "(the generator halves it four times)"
            )
        if self.gen_filters < 1 or self.disc_filters < 1 or self.res_blocks < 1:
            raise ConfigError("filters and residual blocks must be >= 1")

    @property
    def per_image_norm(self) -> bool:
        """Whether the generators normalize with each image's own statistics (the ResNet's
        instance norm; the U-Net's BatchNorm is a fixed per-pixel map at inference). In tiles
        they need the whole picture's statistics: cyclegan_jobs/translation/norm_stats.py."""
        return self.architecture == "resnet"


@dataclass(frozen=True)
class LossConfig:
    """The objective and the optimizers: what the seed (or the paper) trains with."""

    adversarial: Adversarial = "bce"  # seed: BCE-on-logits discriminators, MSE generators
    adversarial_weight: float = 1.0  # of the generators' adversarial terms (seed and paper: 1)
    cycle_distance: Distance = "mse"
    cycle_weight: float = 10.0
    identity_distance: Distance = "mse"
    identity_weight: float = 0.1
    learning_rate: float = 1e-4
    beta_1: float = 0.5
    pool_size: int = 0  # history of generated images shown to the discriminators (paper: 50)
    linear_decay: bool = False  # paper: constant LR, then linear decay to 0 over the 2nd half
    # Weight of a term that keeps the translation a per-image colour map of its input
    # (losses.colour_fit_residual): what no affine colour transform of the input explains.
    colour_fit_weight: float = 0.0
    # Weight of a term that asks the translations' pixel colours to be distributed as the target
    # domain's (losses.colour_distribution_distance; unpaired).
    colour_match_weight: float = 0.0
    # The generators as exported and scored by model selection: an exponential moving average of
    # their weights with this momentum (Keras's optimizer EMA; 0: the last weights, the seed's).
    ema_momentum: float = 0.0
    # The discriminators' learning rate as a multiple of `learning_rate` (the generators'); the
    # same schedule (seed and paper: 1, one rate for all four networks).
    disc_lr_scale: float = 1.0
    # Differentiable augmentation (model.DiffAugment: shifts and cutout) of every image the
    # discriminators see, real and generated alike (seed and paper: off).
    disc_augment: bool = False

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.learning_rate}")
        if not self.disc_lr_scale > 0:
            raise ConfigError(f"discriminator LR scale must be > 0, got {self.disc_lr_scale}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"EMA momentum must be in [0, 1), got {self.ema_momentum}")
        if self.adversarial_weight < 0:
            raise ConfigError(f"adversarial weight must be >= 0, got {self.adversarial_weight}")
        if self.pool_size < 0:
            raise ConfigError(f"pool size must be >= 0, got {self.pool_size}")


@dataclass(frozen=True)
class TrainConfig:
    """One training job: data, schedule, where results go."""

    domain_a: str
    domain_b: str
    model_store: str
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 1
    steps_per_epoch: int | None = None  # None: min(|A|, |B|) // batch, as the seed's zip()
    batch_size: int = 1
    shuffle_buffer: int = 1000
    jitter: bool = False  # paper: resize to 286/256 of the size, random crop, random flip
    holdout: float = 0.3  # the seed's test_size for its face array
    limit: int | None = None  # cap on training images per domain (quick runs)
    precision: str = "auto"
    seed: int = 42
    deterministic: bool = False  # tf op determinism (slower); used by the exact-resume tests
    run_id: str | None = None
    work_dir: str | None = None  # local scratch; default: a temporary folder
    checkpoint_every: int = 200
    sample_every: int = 200
    log_every: int = 10
    stop_after: int | None = None  # stop (with a checkpoint, no version) after this many steps
    max_minutes: float | None = None  # time budget: then finish (write the version) early
    promote: bool = False  # promote the new version right away (before a quality gate exists)
    # Model selection: every N steps (and at the last) score the generators on the held-out
    # images and keep the best weights; the version is made from them. 0: off (last weights).
    select_every: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch size": self.batch_size >= 1,
            "shuffle buffer": self.shuffle_buffer >= 1,
            "checkpoint every": self.checkpoint_every >= 1,
            "sample every": self.sample_every >= 1,
            "log every": self.log_every >= 1,
            "steps per epoch": self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            "stop after": self.stop_after is None or self.stop_after >= 1,
            "max minutes": self.max_minutes is None or self.max_minutes > 0,
            "limit": self.limit is None or self.limit >= 1,
            "holdout": 0.0 <= self.holdout < 1.0,
            "select every": self.select_every >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid {', '.join(bad)} (must be >= 1; select every >= 0; holdout in [0, 1))"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset(name: str, image_size: int | None = None) -> tuple[ModelConfig, LossConfig]:
    """The model and loss configuration of a named preset.

    seed:  the notebook exactly (U-Net + 3 residual blocks at 512, BCE/MSE losses, Adam 1e-4).
    paper: Zhu et al. 2017 (ResNet-9 generator, 70x70 PatchGAN, instance norm, LSGAN, L1, pool).
    tiny:  the seed topology with 1/8 of the filters, a residual start and a per-pixel colour
           head, LSGAN discriminators at 0.3 of the generators' LR 3e-3 that see augmented
           images, and colour terms, so that CPU tests and demos on 32-64 px images show
           learning within minutes (each choice measured, below).
    """
    if name == "seed":
        model, loss = (
            ModelConfig(preset="seed", image_size=image_size or PRESET_IMAGE_SIZE["seed"]),
            LossConfig(),
        )
    elif name == "tiny":
        # The settings the known-mapping benchmark measured best (README, "The tiny preset's
        # defaults": each change's figure): resize upsampling (no checkerboard: -0.1 dB against
        # +4..+10 with transposed convs), the residual start (cycle PSNR 27 against 23).
        model = ModelConfig(
            preset="tiny",
            image_size=image_size or PRESET_IMAGE_SIZE["tiny"],
            gen_filters=8,
            disc_filters=8,
            upsample="resize",
            residual=True,
            # A per-pixel colour map beside the U-Net (the same for every image): at 10 minutes
            # the best scored step rose from 27.6 to 31.5 dB on paint and from 30.2 to 35.8 on
            # colour_remap (README, "The colour head").
            colour_head=16,
        )
        # Least-squares discriminators (matching the generators' MSE-to-1 term): with the
        # seed's BCE discriminators the generators' MSE-on-logits term grows without bound on
        # short CPU runs and the cycle loss does not move (README, "The tiny preset"). With
        # batch 8 (PRESET_BATCH_SIZE), LR 3e-3 and its decay, identity weight 1, and the two
        # colour terms: +5.9 dB over doing nothing in make run's 2.5 minutes, where the former
        # defaults (LR 1e-3, batch 1, identity 0.1, no decay, no colour terms) scored -5.7 dB.
        loss = LossConfig(
            adversarial="lsgan",
            learning_rate=3e-3,
            identity_weight=1.0,
            linear_decay=True,
            colour_fit_weight=10.0,
            colour_match_weight=10.0,
            # Versions (and what selection scores) are the generators' moving average: at 10
            # minutes +7.1 / +10.0 / +0.2 dB on the three benchmark styles where the last weights
            # gave +5.3 / +7.1 / -0.9, selection within 0.3 dB of the best scored step where it
            # was 1.1-2.2 dB short; make run +7.3 dB (+7.0 without). Capped for short runs
            # (model.ema_momentum_for). README, "The generators' moving average".
            ema_momentum=0.995,
            # Discriminators at 0.3 of the rate: at one rate they win (loss 0.3 -> 0.06) and the
            # generators trade fidelity for texture after an early peak. At 10 minutes paint's
            # best scored step rose from 31.5 to 33.1 dB (two runs) and its exported model from
            # +9.1 to +11.5 / +10.1 dB; colour_remap's peak fell from 36.4 to 35.4 / 34.9
            # (README, "The discriminators' rate").
            disc_lr_scale=0.3,
            # DiffAugment: 256 images per domain, memorized, made the runs fall 4.5-6 dB after
            # their peak; now 1.9 (README, "The discriminators' memory").
            disc_augment=True,
        )
    elif name == "paper":
        model = ModelConfig(
            preset="paper",
            image_size=image_size or PRESET_IMAGE_SIZE["paper"],
            architecture="resnet",
            res_blocks=9,
            disc_kernel=4,
        )
        loss = LossConfig(
            adversarial="lsgan",
            cycle_distance="l1",
            identity_distance="l1",
            identity_weight=5.0,
            learning_rate=2e-4,
            pool_size=50,
            linear_decay=True,
        )
    else:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return model, loss


@dataclass(frozen=True)
class Thresholds:
    """The quality gate's rules (evaluate.gate; see README, "The quality gate")."""

    min_cycle_psnr: float = 15.0  # dB, absolute floor on mean cycle PSNR of both domains
    psnr_tolerance: float = 1.0  # dB the candidate may lose against the promoted version
    swd_tolerance: float = 0.10  # relative SWD increase allowed against the promoted version


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from config.json (ignoring keys a newer version may add)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in data.items() if k in names})


# How long each S3 request keeps retrying while S3 cannot be reached or answers 5xx (a restarting
# server, a network blip), so that a batch job rides out a short outage; under the stall deadline.
S3_OUTAGE_WAIT_S = 90.0
STALL_TIMEOUT_S = 120.0
DIRECTIONS = ("b2a", "a2b")
FORMATS = ("png", "jpeg")
SCOPES = ("new", "all")


def parse_size(text: str | int | None) -> int | str | None:
    """A size setting as users write it: "native", a long side in pixels, or None, "" or
    "default" (the model's image size as the long side)."""
    if text in (None, "", "default"):
        return None
    if text == "native":
        return "native"
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or str(text).strip() != str(value):
        raise ValueError(f"size must be 'native' or a long side in pixels >= 1, got {text!r}")
    return value


@dataclass(frozen=True)
class TranslateConfig:
    """One batch translation job: inputs under a prefix -> stylized + reconstructed outputs."""

    input: str
    output: str
    model: str  # a model store (its promoted version is used) or a version URI
    direction: str = "b2a"  # b2a: photos through generator_BA to paintings, as the seed's demo
    batch_size: int = 32
    reconstruct: bool = True
    keep_size: bool = False  # the same as size="native"
    # The outputs' size, the aspect always kept: None, the model's image size as the long side;
    # N, a long side of N pixels; "native", the input's own upright size.
    size: int | str | None = None
    # Larger pictures go through the model in tiles of tile x tile (a multiple of 16), each
    # output pixel from a tile where it lies at least tile_margin from a cut (see tiles.py).
    # 1088 needs the fewest tiles for common photo sizes (12 MP 4032x3024: 12 tiles, 1.17x the
    # picture's area; 1024 needs 20, 1.72x; README "Output size, tiles and memory").
    tile: int = 1088
    # A U-Net output pixel depends on the input within 79 px: 80 is exact; 48 scores 52-68 dB
    # against whole-picture inference on a 12 MP photo, 37-54 dB near the cuts (seams.py).
    tile_margin: int = 48
    # Instance-norm generators (the paper preset) take, in tiles, the statistics of a copy of
    # the whole picture downscaled to this long side (one pass of the model over it; see
    # norm_stats.py): larger is closer to whole-picture inference and costs more memory.
    stats_side: int = 1024
    format: str = "png"
    precision: str = "auto"
    shard: tuple[int, int] = (0, 1)  # (index, count): a stable, disjoint subset of the inputs
    scope: str = "new"  # new: skip outputs of the same source ETag; all: same model and size
    limit: int | None = None
    keys: str | None = None  # a shard file (plan_shards) naming the inputs, instead of listing
    dry_run: bool = False
    max_failure_rate: float = 0.1
    max_pixels: int = 50_000_000  # larger inputs fail (decompression bombs, absurd scans)
    # Pixels in flight over all workers: each picture's decode while it is decoded, then the
    # picture and its outputs until they are written (3-4 bytes a pixel, a few copies while
    # decoding), so a 4 GB worker survives a folder of 49 MP scans at any --size.
    pixel_budget: int = 100_000_000
    stall_timeout: float = STALL_TIMEOUT_S  # no progress for this long: stop (exit 2), keep records
    # Per request (storage.set_outage_wait); the stall deadline still stops a run that waits
    # longer than it without progress.
    s3_outage_wait: float = S3_OUTAGE_WAIT_S
    workers: int = 16  # threads for load and for store (GETs/PUTs in flight, each)
    # Worker processes for load and store instead of threads: past ~1 core of S3 requests a
    # process is GIL-bound; a many-core GPU machine wants about 2 per core. 0: threads only.
    feed_processes: int = 0
    run_id: str | None = None
    work_dir: str | None = None  # local scratch (manifest, contact sheet copy)
    contact_sheet_rows: int = 8

    def __post_init__(self) -> None:
        index, count = self.shard
        problems = [
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}"),
            (self.format in FORMATS, f"format must be one of {FORMATS}"),
            (self.scope in SCOPES, f"scope must be one of {SCOPES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (
                count >= 1 and 0 <= index < count,
                f"shard must be I/N with 0 <= I < N: {index}/{count}",
            ),
            (self.limit is None or self.limit >= 1, "limit must be >= 1"),
            (0.0 <= self.max_failure_rate <= 1.0, "max failure rate must be in [0, 1]"),
            (self.max_pixels >= 1 and self.workers >= 1, "max pixels and workers must be >= 1"),
            (self.pixel_budget >= 1, "pixel budget must be >= 1"),
            (self.feed_processes >= 0, "feed processes must be >= 0"),
            (self.stall_timeout > 0, "stall timeout must be > 0 seconds"),
            (self.s3_outage_wait >= 0, "the S3 outage wait must be >= 0 seconds"),
            (
                self.size in (None, "native") or (isinstance(self.size, int) and self.size >= 1),
                f"size must be 'native' or a long side in pixels >= 1, got {self.size!r}",
            ),
            (self.stats_side >= 16, f"the stats side must be >= 16 px, got {self.stats_side}"),
            (
                self.tile >= 16 and self.tile % 16 == 0 and self.tile > 2 * self.tile_margin >= 0,
                f"tile {self.tile} must be a multiple of 16 larger than twice the margin "
                f"{self.tile_margin} (>= 0)",
            ),
        ]
        bad = [message for ok, message in problems if not ok]
        if self.keep_size and self.size not in (None, "native"):
            bad.append(f"--keep-size is --size native, not {self.size!r}")
        if self.keep_size:
            object.__setattr__(self, "size", "native")
        overlap = _overlap(self.input, self.output)
        if overlap:
            bad.append(overlap)
        if bad:
            raise ConfigError("; ".join(bad))


def _folder(uri: str) -> str:
    """A prefix or path as a folder, for comparisons: an s3 URI with one trailing '/', a local
    path absolute and resolved (symlinks, '..') with a trailing separator."""
    if uri.startswith("s3://"):
        return uri.rstrip("/") + "/"
    return os.path.join(os.path.realpath(uri), "")


def _overlap(input_uri: str, output_uri: str) -> str | None:
    """Why an output cannot go with this input, or None. An output equal to the input, inside
    it or containing it would mix the job's results (and its _runs/ and _ledger/) with the
    images it lists: outputs taken for inputs, or inputs for outputs."""
    inp, out = _folder(input_uri), _folder(output_uri)
    if out == inp:
        where = "is the input"
    elif out.startswith(inp):
        where = "is inside the input"
    elif inp.startswith(out):
        where = "contains the input"
    else:
        return None
    return f"output {output_uri} {where} {input_uri}: choose an output outside the input"

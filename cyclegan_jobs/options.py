"""Every option of the `cyclegan-jobs` commands and of the DAGs' trigger forms, declared once.

An `Option` is one fact sheet: its name, type, default, bounds, choices and help. Where it fills a
config field, its default is that field's (`TranslateConfig.tile`, ...), not a copy. The command
line (`cli.build_parser`), the DAGs' Params (`form_schema`, turned into Params by
`dags/cyclegan_common.form_params`) and the command lines the DAGs render (`command_line`) are
all generated from these declarations: adding an option is one edit here (and the code that
uses its value). tests/test_options.py fails when a flag or a Param is added by hand.

Stdlib only, like config.py: the DAG files read it when they are parsed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cyclegan_jobs.config import (
    DIRECTIONS,
    DISC_AUGMENT_HELP,
    FORMATS,
    IMAGE_SIZES,
    PRECISION_HELP,
    PRECISIONS,
    PRESET_BATCH_SIZE,
    PRESET_HELP,
    PRESET_IMAGE_SIZE,
    PRESET_SELECT_EVERY,
    PRESETS,
    RESIDUAL_HELP,
    S3_OUTAGE_WAIT_S,
    SCOPES,
    UPSAMPLING,
    UPSAMPLING_HELP,
    Thresholds,
    TrainConfig,
    TranslateConfig,
    parse_size,
    preset,
)

REQUIRED = object()  # the default of an option that must be given


@dataclass(frozen=True)
class Option:
    """One option. `kind`: int, float, str, bool (a flag: given or not), or a parser (text ->
    value, raising argparse.ArgumentTypeError on bad text). `minimum` is checked by the command
    line for ints (as argparse types); floats are checked by the configs they fill, and the
    forms check every bound. `positional`: an argument without `--` (`nargs` as argparse takes
    it, or "append" for a repeatable flag)."""

    name: str
    kind: type | Callable[[str], Any] = str
    default: Any = None
    help: str | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    choices: tuple | None = None
    metavar: str | None = None
    positional: bool = False
    nargs: str | None = None
    env: str | None = None  # an environment variable that gives the default when set

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def but(self, **changes: Any) -> Option:
        """The same option with some facts changed (another command's default or help)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Command:
    """A subcommand: its help and options; `exclusive` names options of which exactly one
    must be given."""

    name: str
    help: str
    options: tuple[Option, ...]
    exclusive: tuple[str, ...] = ()

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(f"{self.name} has no option {name!r}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _size(text: str) -> int | str | None:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4; got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text}")
    return index, count


def _choices(help_by_value: dict) -> str:
    return "; ".join(f"{value}: {text}" for value, text in help_by_value.items())


def _by_preset(value: Callable[[str], Any]) -> str:
    return ", ".join(f"{name} {value(name)}" for name in PRESETS)


# --- options several commands share ------------------------------------------------------------

ENDPOINT_URL = Option(
    "endpoint_url", help="S3 endpoint (MinIO, SeaweedFS); default: AWS_ENDPOINT_URL or AWS itself"
)
S3_OUTAGE_WAIT = Option(
    "s3_outage_wait",
    float,
    S3_OUTAGE_WAIT_S,
    metavar="SECONDS",
    help="per request, keep retrying S3 for this long while it cannot be reached or answers "
    "5xx (a restarting server) before giving up (default %(default)g; 0: fail in seconds)",
)
RESULT_FILE = Option(
    "result_file",
    env="CYCLEGAN_RESULT_FILE",  # read when the parser is built, in the command's process
    help="also write the JSON result here (default: $CYCLEGAN_RESULT_FILE; in a pod "
    "/airflow/xcom/return.json, which Airflow turns into the task's XCom)",
)
STORAGE = (ENDPOINT_URL, S3_OUTAGE_WAIT, RESULT_FILE)

DOMAIN_A = Option("domain_a", default=REQUIRED)
DOMAIN_B = Option("domain_b", default=REQUIRED)
MODEL_STORE = Option("model_store", default=REQUIRED)
PRECISION = Option("precision", default="auto", choices=PRECISIONS)
RUN_ID = Option("run_id")
WORK_DIR = Option("work_dir")
LIMIT = Option("limit", int, minimum=1)
HOLDOUT = Option("holdout", float, TrainConfig.holdout)
DIRECTION = Option("direction", default=TranslateConfig.direction, choices=DIRECTIONS)
SCOPE = Option("scope", default=TranslateConfig.scope, choices=SCOPES)
FORMAT = Option("format", default=TranslateConfig.format, choices=FORMATS)
MAX_FAILURE_RATE = Option("max_failure_rate", float, TranslateConfig.max_failure_rate, minimum=0)
OUTPUT = Option("output", default=REQUIRED)
INPUT = Option("input", default=REQUIRED)
PROMOTE = Option("promote", bool)

_UPSAMPLE_HELP = (
    "the generators' upsampling. "
    + "; ".join(f"{name}: {text}" for name, text in UPSAMPLING_HELP.items())
    + " (default: the preset's)"
).replace("%", "%%")  # argparse formats help with %


def _preset_or(is_on: Callable[[str], bool], on_off_help: dict[str, str]) -> dict[str, str]:
    """The choices of a flag that turns a preset's choice on or off: preset (each preset's own,
    derived from the presets), on, off."""
    by_preset = _by_preset(lambda name: "on" if is_on(name) else "off")
    return {"preset": f"the preset's ({by_preset})", **on_off_help}


def _switch(name: str, what: str, choices: dict[str, str]) -> Option:
    """A train flag that overrides one of the preset's choices (the default: keep it)."""
    help_ = f"{what}. {_choices(choices)}".replace("%", "%%")  # argparse formats help with %
    return Option(name, default="preset", choices=tuple(choices), help=help_)


_DISC_AUGMENT_HELP = _preset_or(lambda name: preset(name)[1].disc_augment, DISC_AUGMENT_HELP)
_RESIDUAL_HELP = _preset_or(lambda name: preset(name)[0].residual, RESIDUAL_HELP)

TRAIN = Command(
    "train",
    "train (or resume) a CycleGAN and store a new model version",
    (
        DOMAIN_A.but(help="paintings: folder, s3://prefix, .npy, tfds:"),
        DOMAIN_B.but(help="photos: folder, s3://prefix, .npy, tfds:"),
        MODEL_STORE.but(help="folder or s3:// prefix of the store"),
        Option("preset", default="seed", choices=PRESETS),
        Option("image_size", int, help="default: the preset's"),
        Option("epochs", int, TrainConfig.epochs, minimum=1),
        Option("steps_per_epoch", int, minimum=1),
        Option("batch_size", int, minimum=1, help="default: the preset's"),
        Option("learning_rate", float, exclusive_minimum=0, help="default: the preset's"),
        PRECISION,
        RUN_ID.but(help="reuse to resume an interrupted run"),
        WORK_DIR.but(help="local scratch (default: a temp folder)"),
        Option("checkpoint_every", int, TrainConfig.checkpoint_every, minimum=1),
        Option("sample_every", int, TrainConfig.sample_every, minimum=1),
        Option("log_every", int, TrainConfig.log_every, minimum=1),
        Option("stop_after", int, minimum=1, help="steps, then checkpoint"),
        Option("max_minutes", float, help="time budget, then finish"),
        LIMIT.but(help="max training images per domain"),
        HOLDOUT.but(help="held-out share (seed: 0.3)"),
        Option("jitter", bool, help="random resize-crop-flip (paper)"),
        Option("seed", int, TrainConfig.seed),
        Option("deterministic", bool, help="deterministic TF ops (slower)"),
        PROMOTE.but(help="promote the new version right away"),
        Option(
            "select_every",
            int,
            minimum=0,
            metavar="N",
            help="score the generators on the held-out images every N steps and export the "
            "best weights; 0: off, export the last (default: the preset's)",
        ),
        Option("upsample", choices=UPSAMPLING, help=_UPSAMPLE_HELP),
        _switch("disc_augment", "augment the discriminators' inputs", _DISC_AUGMENT_HELP),
        _switch("residual", "the U-Net generators' residual start", _RESIDUAL_HELP),
        *STORAGE,
    ),
)

MODELS = Command(
    "models",
    "list, show, promote or roll back model versions",
    (
        Option(
            "action",
            default=REQUIRED,
            choices=("list", "show", "promote", "rollback"),
            positional=True,
        ),
        Option("version", positional=True, nargs="?", help="for show and promote"),
        MODEL_STORE,
        Option("reason", default="", help="recorded in the promotion history"),
        *STORAGE,
    ),
)

TRANSLATE = Command(
    "translate",
    "translate every image under a prefix (batch job)",
    (
        INPUT.but(help="s3://bucket/prefix/ or folder of images"),
        OUTPUT.but(help="s3://bucket/prefix/ or folder for results"),
        MODEL_STORE.but(default=None, help="use the promoted version of this store"),
        Option("model", help="a version URI: <store>/versions/<version>"),
        DIRECTION.but(help="b2a: photo -> paint"),
        Option(
            "batch_size",
            int,
            TranslateConfig.batch_size,
            minimum=1,
            help="pictures of the model's size per model call; a larger tile counts as several",
        ),
        Option("no_reconstruct", bool, help="skip the cycle back"),
        Option(
            "size",
            _size,
            help="the outputs' long side in pixels, or native: the input's "
            "own size; the aspect is always kept (default: the model's image size)",
        ),
        Option("keep_size", bool, help="the same as --size native"),
        Option(
            "tile",
            int,
            TranslateConfig.tile,
            minimum=1,
            help="larger pictures go through "
            "the model in tiles of this many pixels square (a multiple of 16; default "
            "%(default)s)",
        ),
        Option(
            "tile_margin",
            int,
            TranslateConfig.tile_margin,
            help="pixels of context each "
            "tile keeps around what it contributes (default %(default)s; see "
            "benchmarks/seams.py)",
        ),
        Option(
            "stats_side",
            int,
            TranslateConfig.stats_side,
            minimum=1,
            help="instance-norm "
            "models (paper preset) in tiles take the statistics of a copy of the whole "
            "picture downscaled to this long side (default %(default)s)",
        ),
        FORMAT,
        PRECISION,
        Option("shard", _shard, TranslateConfig.shard, help="I/N: this job's part of inputs"),
        SCOPE.but(help="new: skip done inputs; all: also redo outputs of other model versions"),
        LIMIT.but(
            help="translate at most N images this run; the rest are in the manifest as pending"
        ),
        Option("keys", help="a shard file from `plan`: translate only these"),
        Option("dry_run", bool, help="list what would be done; no writes"),
        MAX_FAILURE_RATE,
        Option("max_pixels", int, TranslateConfig.max_pixels, minimum=1, help="larger inputs fail"),
        Option(
            "pixel_budget",
            int,
            TranslateConfig.pixel_budget,
            minimum=1,
            help="decoded pixels in flight over all threads (bounds memory)",
        ),
        Option(
            "workers",
            int,
            TranslateConfig.workers,
            minimum=1,
            help="threads for GET/decode "
            "and for encode/PUT, each (S3 latency wants many; 1-2 cores fewer)",
        ),
        Option(
            "feed_processes",
            int,
            TranslateConfig.feed_processes,
            help="worker processes for GET/decode and encode/PUT instead of threads (0: threads)",
        ),
        Option(
            "stall_timeout",
            float,
            TranslateConfig.stall_timeout,
            help="seconds without progress before the run stops (exit 2)",
        ),
        RUN_ID,
        WORK_DIR,
        *STORAGE,
    ),
    exclusive=("model_store", "model"),
)

EVALUATE = Command(
    "evaluate",
    "metrics of a model version on held-out images",
    (
        Option("model", default=REQUIRED, help="a version URI: <store>/versions/<version>"),
        DOMAIN_A,
        DOMAIN_B,
        LIMIT.but(help="images per domain"),
        HOLDOUT,
        Option(
            "paired_b_to_a",
            metavar="MODULE:FUNCTION",
            help="ground-truth style for B->A, e.g. cyclegan_jobs.sample_data:paint",
        ),
        Option("write", bool, help="store <version>/evaluation.json"),
        *STORAGE,
    ),
)

GATE = Command(
    "gate",
    "may this candidate replace the promoted version?",
    (
        Option("candidate", default=REQUIRED, help="a version URI"),
        MODEL_STORE,
        DOMAIN_A.but(default=None, help="default: the candidate's training data"),
        DOMAIN_B.but(default=None),
        LIMIT,
        Option("min_cycle_psnr", float, Thresholds.min_cycle_psnr, minimum=0),
        Option("psnr_tolerance", float, Thresholds.psnr_tolerance),
        Option("swd_tolerance", float, Thresholds.swd_tolerance),
        PROMOTE.but(help="promote when the gate passes"),
        Option("exit_zero", bool, help="exit 0 when refused (report only)"),
        *STORAGE,
    ),
)

PLAN = Command(
    "plan",
    "cut what a translate run would do into shard files",
    (
        INPUT,
        OUTPUT,
        Option("model", default=REQUIRED, help="a model store or a version URI"),
        DIRECTION,
        SCOPE,
        FORMAT,
        Option("shard_size", int, 500, minimum=1),
        RUN_ID,
        *STORAGE,
    ),
)

MERGE = Command(
    "merge",
    "merge a planned run's shard manifests into its summary",
    (
        OUTPUT,
        RUN_ID.but(default=REQUIRED),
        Option("shard_run_id", nargs="append", default=(), help="repeat per shard"),
        MAX_FAILURE_RATE,
        *STORAGE,
    ),
)

NEW_DATA = Command(
    "new-data",
    "count source images new since the promoted version",
    (DOMAIN_B, MODEL_STORE, *STORAGE),
)

SAMPLE_DATA = Command(
    "sample-data",
    "write the deterministic sample domains A and B",
    (
        Option("out", default=REQUIRED, help="folder or s3:// prefix"),
        Option("n_a", int, 64, minimum=1),
        Option("n_b", int, 64, minimum=1),
        Option("size", int, 64, minimum=1),
        Option("seed", int, 0),
        *STORAGE,
    ),
)

COMMANDS = {
    c.name: c
    for c in (TRAIN, MODELS, TRANSLATE, EVALUATE, GATE, PLAN, MERGE, NEW_DATA, SAMPLE_DATA)
}


# --- the command line --------------------------------------------------------------------------


def _argparse_type(option: Option) -> Callable[[str], Any] | None:
    if option.kind is int:
        return {1: _positive, 0: _non_negative}.get(option.minimum, int)
    if option.kind is str:
        return None
    return option.kind


def add_arguments(parser: argparse.ArgumentParser, command: Command) -> None:
    """The command's options as argparse arguments."""
    group = parser.add_mutually_exclusive_group(required=True) if command.exclusive else None
    for option in command.options:
        target = group if option.name in command.exclusive else parser
        kwargs: dict[str, Any] = {"help": option.help}
        if option.kind is bool:
            target.add_argument(option.flag, action="store_true", **kwargs)
            continue
        if option.nargs == "append":
            target.add_argument(option.flag, action="append", default=[], **kwargs)
            continue
        default = None if option.required else option.default
        if option.env:
            default = os.environ.get(option.env) or default
        kwargs.update(type=_argparse_type(option), choices=option.choices, metavar=option.metavar)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if option.positional:
            target.add_argument(option.name, nargs=option.nargs, **kwargs)
        elif option.name in command.exclusive:
            target.add_argument(option.flag, **kwargs)
        else:
            target.add_argument(option.flag, default=default, required=option.required, **kwargs)


def command_line(command: str, values: dict[str, Any]) -> list[str]:
    """A `cyclegan-jobs` argument list from option values, in the command's declaration order:
    domain_a="x" -> --domain-a x, True -> a bare flag, None and False -> left out (the CLI's
    default), a positional argument -> its value. Every name must be one of the command's
    options."""
    options = COMMANDS[command].options
    unknown = set(values) - {o.name for o in options}
    if unknown:
        raise KeyError(f"`cyclegan-jobs {command}` has no option {', '.join(sorted(unknown))}")
    args = [command]
    for option in options:
        value = values.get(option.name)
        if option.positional:
            args += [] if value is None else [str(value)]
        elif isinstance(value, list | tuple) and option.nargs == "append":
            args += [part for item in value for part in (option.flag, str(item))]
        elif value is True:
            args.append(option.flag)
        elif value is not None and value is not False:
            args += [option.flag, str(value)]
    return args


# --- the DAGs' trigger forms -------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """An option as a trigger-form field: its title and text, and what the form adds to the
    option's own facts (an upper bound, a JSON-schema pattern, the values' display names).
    `default`: the form's default when it is not the deployment's (those are passed to
    `form_schema`)."""

    option: Option
    title: str
    description: str
    maximum: float | None = None
    schema: dict[str, Any] = field(default_factory=dict)
    default: Any = REQUIRED


# Options only the retrain DAG has: they steer the DAG, not a command.
MIN_NEW_IMAGES = Option("min_new_images", int, 1, minimum=0)
FORCE = Option("force", bool, False)
PROMOTE_MODE = Option("promote", default="gate", choices=("gate", "never"))
# The nightly's size values (config.parse_size reads them).
SIZE_PATTERN = r"^(default|native|[1-9][0-9]*)$"


def _training_fields() -> tuple[Field, ...]:
    """The retrain form's fields that choose how to train."""
    train = TRAIN.option
    learning_rates = _by_preset(lambda name: f"{preset(name)[1].learning_rate:g}")
    return (
        Field(
            train("preset"), "Preset", "The model and loss configuration. " + _choices(PRESET_HELP)
        ),
        Field(train("epochs"), "Epochs", "Passes over the training images (1 to 1000).", 1000),
        Field(
            train("steps_per_epoch"),
            "Steps per epoch",
            "Empty: every training image once per epoch.",
            1_000_000,
        ),
        Field(
            train("batch_size"),
            "Batch size",
            "Images of each domain per step. Empty: the "
            f"preset's ({_by_preset(PRESET_BATCH_SIZE.get)}).",
            256,
        ),
        Field(
            train("learning_rate"),
            "Learning rate",
            "Adam's learning rate, above 0 and at "
            f"most 0.1, e.g. 0.0002. Empty: the preset's ({learning_rates}).",
            0.1,
        ),
        Field(
            train("select_every"),
            "Model selection every (steps)",
            "Score the generators on held-out images every N steps and at the last, and make "
            "the version from the best-scoring weights (the gate then judges those); 0: off, "
            "the last step's weights. Empty: the preset's ("
            + _by_preset(lambda name: PRESET_SELECT_EVERY[name] or "off")
            + ").",
            1_000_000,
        ),
        Field(
            train("image_size"),
            "Image size",
            "Training images are resized to this square. The presets' own sizes: "
            + ", ".join(f"{name} {size} px" for name, size in PRESET_IMAGE_SIZE.items())
            + ". Larger is slower: 256 px is hours on a CPU.",
            schema={
                "enum": list(IMAGE_SIZES),
                "values_display": {str(size): f"{size} x {size} px" for size in IMAGE_SIZES},
            },
        ),
        Field(PRECISION, "Precision", "Numeric precision of training. " + _choices(PRECISION_HELP)),
        Field(
            train("disc_augment"),
            "Discriminator augmentation",
            "Random shifts and cutout of what the discriminators see. "
            + _choices(_DISC_AUGMENT_HELP),
        ),
        Field(
            train("residual"),
            "Residual start",
            "Whether the generators predict a change to their input (U-Net presets only). "
            + _choices(_RESIDUAL_HELP),
        ),
    )


def _retrain_form() -> tuple[Field, ...]:
    gate = GATE.option
    return (
        *_training_fields(),
        Field(
            DOMAIN_A,
            "Domain A (paintings)",
            "The style to learn: s3://bucket/prefix, a folder, or a .npy file.",
        ),
        Field(
            DOMAIN_B,
            "Domain B (faces)",
            "The photos: s3://bucket/prefix, a folder, or a .npy file.",
        ),
        Field(
            MODEL_STORE,
            "Model store",
            "Where versions, PROMOTED.json and run checkpoints live (s3:// or folder).",
        ),
        Field(
            MIN_NEW_IMAGES,
            "Minimum new images",
            "Train only when at least this many "
            "domain-B images are new since the promoted version.",
            10_000_000,
        ),
        Field(FORCE, "Force", "Train even without new data."),
        Field(
            gate("min_cycle_psnr"),
            "Gate: minimum cycle PSNR (dB)",
            "The quality gate refuses a candidate whose cycle PSNR (photo -> painting -> "
            "photo) is below this. 0 turns the floor off (the comparison with the promoted "
            "version still applies). See README, the quality gate.",
            100,
        ),
        Field(
            PROMOTE_MODE,
            "Promote",
            "gate: promote the new version when it passes the "
            "quality gate; never: train, evaluate and gate only.",
        ),
    )


def _nightly_form() -> tuple[Field, ...]:
    translate = TRANSLATE.option
    return (
        Field(INPUT, "Input", "s3://bucket/prefix/ (or a folder) of the images to translate."),
        Field(
            OUTPUT, "Output", "Where stylized/, reconstructed/ and _runs/ go (s3:// or a folder)."
        ),
        Field(
            MODEL_STORE,
            "Model store",
            "Its promoted version translates (cyclegan_retrain promotes one).",
        ),
        Field(
            SCOPE,
            "Scope",
            "new: skip inputs whose outputs are up to date; all: also redo "
            "outputs made by another model version.",
        ),
        Field(
            DIRECTION,
            "Direction",
            "b2a: photo -> painting (the nightly's job); a2b: painting -> photo.",
        ),
        Field(
            translate("size"),
            "Output size",
            "default: the model's image size as the long side (small, cheap); native: each "
            "input's own size (stylized in tiles: slower, more memory); or a long side in "
            "pixels. The aspect ratio is always kept. With scope all, outputs made at another "
            "size are redone.",
            schema={"type": "string", "pattern": SIZE_PATTERN},
            default="default",
        ),
        Field(
            translate("batch_size"),
            "Batch size",
            "Pictures of the model's size per model "
            "call (1 to 1024; a larger tile counts as several); larger keeps a GPU busier.",
            1024,
        ),
        Field(
            PLAN.option("shard_size"),
            "Shard size",
            "Inputs per mapped translate_shard task; shards run in parallel on the gpu workers.",
            1_000_000,
        ),
        Field(
            MAX_FAILURE_RATE,
            "Maximum failure rate",
            "Fail the run when more than this "
            "share (0 to 1) of the inputs could not be translated (unreadable images, ...).",
            1,
        ),
    )


FORMS: dict[str, Callable[[], tuple[Field, ...]]] = {
    "cyclegan_retrain": _retrain_form,
    "cyclegan_nightly_translate": _nightly_form,
}
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _schema(f: Field, default: Any) -> dict[str, Any]:
    """The field's JSON schema (Airflow's Param keywords), from the option's facts."""
    option = f.option
    if option.choices:
        schema: dict[str, Any] = {"enum": list(option.choices)}
    elif option.kind is str:
        schema = {"type": "string", "minLength": 1}  # a URI, a prefix, a folder
    elif option.kind in _JSON_TYPES:
        kind = _JSON_TYPES[option.kind]  # a number left empty: the command's own default
        schema = {"type": kind if default is not None else ["null", kind]}
    else:
        schema = {}  # a parsed value: the field says what the form takes
    bounds = {
        "minimum": option.minimum,
        "exclusiveMinimum": option.exclusive_minimum,
        "maximum": f.maximum,
    }
    if option.kind in (int, float):
        schema.update({k: v for k, v in bounds.items() if v is not None})
    return {**schema, **f.schema, "title": f.title}


def form_schema(dag_id: str, defaults: dict[str, Any]) -> dict[str, tuple[Any, str, dict]]:
    """A DAG's form, field by field in the form's order: (default, description, schema).
    `defaults`: the deployment's defaults (CYCLEGAN_* settings), by field name; otherwise the
    field's, else the option's."""
    form = {}
    for f in FORMS[dag_id]():
        default = defaults.get(f.option.name, f.default)
        if default is REQUIRED:
            default = None if f.option.required else f.option.default
        form[f.option.name] = (default, f.description, _schema(f, default))
    return form


def form_values(command: str, params: dict[str, Any], *, leave_out: tuple = ()) -> dict:
    """The form's values that are options of `command` (without `leave_out`)."""
    names = {o.name for o in COMMANDS[command].options} - set(leave_out)
    return {k: v for k, v in params.items() if k in names}

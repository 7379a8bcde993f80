"""The `cyclegan-jobs` command line: subcommands -> configs -> jobs. Errors are one clear line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from .config import (
    DIRECTIONS,
    FORMATS,
    PRECISIONS,
    PRESETS,
    S3_OUTAGE_WAIT_S,
    SCOPES,
    STALL_TIMEOUT_S,
    UPSAMPLING,
    UPSAMPLING_HELP,
    TranslateConfig,
    parse_size,
)

log = logging.getLogger(__name__)

# Exit codes: 0 ok, 1 the job failed (diverged, too many inputs failed, its records not all
# stored, ...), 2 bad input or configuration.
EXIT_FAILED, EXIT_USAGE = 1, 2


def _add_storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint (MinIO, SeaweedFS); default: AWS_ENDPOINT_URL or AWS itself",
    )
    p.add_argument(
        "--s3-outage-wait",
        type=float,
        default=S3_OUTAGE_WAIT_S,
        metavar="SECONDS",
        help="per request, keep retrying S3 for this long while it cannot be reached or answers "
        "5xx (a restarting server) before giving up (default %(default)g; 0: fail in seconds)",
    )
    p.add_argument(
        "--result-file",
        default=os.environ.get("CYCLEGAN_RESULT_FILE") or None,
        help="also write the JSON result here (default: $CYCLEGAN_RESULT_FILE; in a pod "
        "/airflow/xcom/return.json, which Airflow turns into the task's XCom)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_UPSAMPLE_HELP = (
    "the generators' upsampling. "
    + "; ".join(f"{name}: {text}" for name, text in UPSAMPLING_HELP.items())
    + " (default: the preset's)"
).replace("%", "%%")  # argparse formats help with %


def _size(text: str) -> int | str | None:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyclegan-jobs", description="Train and run CycleGAN image translation as batch jobs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _models_parser(sub)
    _translate_parser(sub)
    _evaluate_parser(sub)
    _gate_parser(sub)
    _plan_parser(sub)
    _merge_parser(sub)
    _new_data_parser(sub)
    _sample_data_parser(sub)
    return parser


def _train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train (or resume) a CycleGAN and store a new model version")
    t.add_argument("--domain-a", required=True, help="paintings: folder, s3://prefix, .npy, tfds:")
    t.add_argument("--domain-b", required=True, help="photos: folder, s3://prefix, .npy, tfds:")
    t.add_argument("--model-store", required=True, help="folder or s3:// prefix of the store")
    t.add_argument("--preset", default="seed", choices=PRESETS)
    t.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    t.add_argument("--epochs", type=_positive, default=1)
    t.add_argument("--steps-per-epoch", type=_positive, default=None)
    t.add_argument("--batch-size", type=_positive, default=None, help="default: the preset's")
    t.add_argument("--learning-rate", type=float, default=None, help="default: the preset's")
    t.add_argument("--precision", default="auto", choices=PRECISIONS)
    t.add_argument("--run-id", default=None, help="reuse to resume an interrupted run")
    t.add_argument("--work-dir", default=None, help="local scratch (default: a temp folder)")
    t.add_argument("--checkpoint-every", type=_positive, default=200)
    t.add_argument("--sample-every", type=_positive, default=200)
    t.add_argument("--log-every", type=_positive, default=10)
    t.add_argument("--stop-after", type=_positive, default=None, help="steps, then checkpoint")
    t.add_argument("--max-minutes", type=float, default=None, help="time budget, then finish")
    t.add_argument("--limit", type=_positive, default=None, help="max training images per domain")
    t.add_argument("--holdout", type=float, default=0.3, help="held-out share (seed: 0.3)")
    t.add_argument("--jitter", action="store_true", help="random resize-crop-flip (paper)")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--deterministic", action="store_true", help="deterministic TF ops (slower)")
    t.add_argument("--promote", action="store_true", help="promote the new version right away")
    t.add_argument(
        "--select-every",
        type=_non_negative,
        default=None,
        metavar="N",
        help="score the generators on the held-out images every N steps and export the best "
        "weights; 0: off, export the last (default: the preset's)",
    )
    t.add_argument("--upsample", default=None, choices=UPSAMPLING, help=_UPSAMPLE_HELP)
    _add_storage_args(t)


def _models_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list, show, promote or roll back model versions")
    m.add_argument("action", choices=["list", "show", "promote", "rollback"])
    m.add_argument("version", nargs="?", help="for show and promote")
    m.add_argument("--model-store", required=True)
    m.add_argument("--reason", default="", help="recorded in the promotion history")
    _add_storage_args(m)


def _translate_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("translate", help="translate every image under a prefix (batch job)")
    x.add_argument("--input", required=True, help="s3://bucket/prefix/ or folder of images")
    x.add_argument("--output", required=True, help="s3://bucket/prefix/ or folder for results")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-store", help="use the promoted version of this store")
    src.add_argument("--model", help="a version URI: <store>/versions/<version>")
    x.add_argument("--direction", default="b2a", choices=DIRECTIONS, help="b2a: photo -> paint")
    x.add_argument("--batch-size", type=_positive, default=32, help="pictures of the model's "
                   "size per model call; a larger tile counts as several")  # fmt: skip
    x.add_argument("--no-reconstruct", action="store_true", help="skip the cycle back")
    x.add_argument("--size", type=_size, default=None, help="the outputs' long side in pixels, "
                   "or native: the input's own size; the aspect is always kept (default: the "
                   "model's image size)")  # fmt: skip
    x.add_argument("--keep-size", action="store_true", help="the same as --size native")
    x.add_argument("--tile", type=_positive, default=TranslateConfig.tile, help="larger "
                   "pictures go through the model in tiles of this many pixels square (a "
                   "multiple of 16; default %(default)s)")  # fmt: skip
    x.add_argument("--tile-margin", type=int, default=TranslateConfig.tile_margin, help="pixels "
                   "of context each tile keeps around what it contributes (default "
                   "%(default)s; see benchmarks/seams.py)")  # fmt: skip
    x.add_argument("--stats-side", type=_positive, default=TranslateConfig.stats_side,
                   help="instance-norm models (paper preset) in tiles take the statistics of a "
                   "copy of the whole picture downscaled to this long side (default "
                   "%(default)s)")  # fmt: skip
    x.add_argument("--format", default="png", choices=FORMATS)
    x.add_argument("--precision", default="auto", choices=PRECISIONS)
    x.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: this job's part of inputs")
    x.add_argument("--scope", default="new", choices=SCOPES, help="new: skip done inputs; all: "
                   "also redo outputs of other model versions")  # fmt: skip
    x.add_argument("--limit", type=_positive, default=None, help="translate at most N images "
                   "this run; the rest are in the manifest as pending")  # fmt: skip
    x.add_argument("--keys", default=None, help="a shard file from `plan`: translate only these")
    x.add_argument("--dry-run", action="store_true", help="list what would be done; no writes")
    x.add_argument("--max-failure-rate", type=float, default=0.1)
    x.add_argument("--max-pixels", type=_positive, default=50_000_000, help="larger inputs fail")
    x.add_argument("--pixel-budget", type=_positive, default=100_000_000,
                   help="decoded pixels in flight over all threads (bounds memory)")  # fmt: skip
    x.add_argument("--workers", type=_positive, default=16, help="threads for GET/decode and "
                   "for encode/PUT, each (S3 latency wants many; 1-2 cores fewer)")  # fmt: skip
    x.add_argument("--feed-processes", type=int, default=0, help="worker processes for GET/"
                   "decode and encode/PUT instead of threads (0: threads)")  # fmt: skip
    x.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT_S,
                   help="seconds without progress before the run stops (exit 2)")  # fmt: skip
    x.add_argument("--run-id", default=None)
    x.add_argument("--work-dir", default=None)
    _add_storage_args(x)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="metrics of a model version on held-out images")
    e.add_argument("--model", required=True, help="a version URI: <store>/versions/<version>")
    e.add_argument("--domain-a", required=True)
    e.add_argument("--domain-b", required=True)
    e.add_argument("--limit", type=_positive, default=None, help="images per domain")
    e.add_argument("--holdout", type=float, default=0.3)
    e.add_argument(
        "--paired-b-to-a",
        default=None,
        metavar="MODULE:FUNCTION",
        help="ground-truth style for B->A, e.g. cyclegan_jobs.sample_data:paint",
    )
    e.add_argument("--write", action="store_true", help="store <version>/evaluation.json")
    _add_storage_args(e)


def _gate_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gate", help="may this candidate replace the promoted version?")
    g.add_argument("--candidate", required=True, help="a version URI")
    g.add_argument("--model-store", required=True)
    g.add_argument("--domain-a", default=None, help="default: the candidate's training data")
    g.add_argument("--domain-b", default=None)
    g.add_argument("--limit", type=_positive, default=None)
    g.add_argument("--min-cycle-psnr", type=float, default=15.0)
    g.add_argument("--psnr-tolerance", type=float, default=1.0)
    g.add_argument("--swd-tolerance", type=float, default=0.10)
    g.add_argument("--promote", action="store_true", help="promote when the gate passes")
    g.add_argument("--exit-zero", action="store_true", help="exit 0 when refused (report only)")
    _add_storage_args(g)


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plan", help="cut what a translate run would do into shard files")
    pl.add_argument("--input", required=True)
    pl.add_argument("--output", required=True)
    pl.add_argument("--model", required=True, help="a model store or a version URI")
    pl.add_argument("--direction", default="b2a", choices=DIRECTIONS)
    pl.add_argument("--scope", default="new", choices=SCOPES)
    pl.add_argument("--format", default="png", choices=FORMATS)
    pl.add_argument("--shard-size", type=_positive, default=500)
    pl.add_argument("--run-id", default=None)
    _add_storage_args(pl)


def _merge_parser(sub: argparse._SubParsersAction) -> None:
    mg = sub.add_parser("merge", help="merge a planned run's shard manifests into its summary")
    mg.add_argument("--output", required=True)
    mg.add_argument("--run-id", required=True)
    mg.add_argument("--shard-run-id", action="append", default=[], help="repeat per shard")
    mg.add_argument("--max-failure-rate", type=float, default=0.1)
    _add_storage_args(mg)


def _new_data_parser(sub: argparse._SubParsersAction) -> None:
    nd = sub.add_parser("new-data", help="count source images new since the promoted version")
    nd.add_argument("--domain-b", required=True)
    nd.add_argument("--model-store", required=True)
    _add_storage_args(nd)


def _sample_data_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample-data", help="write the deterministic sample domains A and B")
    s.add_argument("--out", required=True, help="folder or s3:// prefix")
    s.add_argument("--n-a", type=_positive, default=64)
    s.add_argument("--n-b", type=_positive, default=64)
    s.add_argument("--size", type=_positive, default=64)
    s.add_argument("--seed", type=int, default=0)
    _add_storage_args(s)


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4; got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text}")
    return index, count


def _config(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """A job config from the flags that share its fields' names, plus `values`."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names and k not in values}
    return cls(**flags, **values)


def _translate(args: argparse.Namespace) -> dict[str, Any]:
    from .translate import translate

    cfg = _config(
        TranslateConfig,
        args,
        model=args.model or args.model_store,
        reconstruct=not args.no_reconstruct,
    )
    return translate(cfg)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate

    return evaluate(
        args.model,
        args.domain_a,
        args.domain_b,
        limit=args.limit,
        holdout=args.holdout,
        paired_b_to_a=args.paired_b_to_a,
        write=args.write,
    )


def _gate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import Thresholds, gate

    thresholds = Thresholds(args.min_cycle_psnr, args.psnr_tolerance, args.swd_tolerance)
    return gate(
        args.candidate,
        args.model_store,
        thresholds=thresholds,
        domain_a=args.domain_a,
        domain_b=args.domain_b,
        limit=args.limit,
        promote=args.promote,
    )


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    from .config import TranslateConfig
    from .translate import plan_shards

    return plan_shards(_config(TranslateConfig, args), args.shard_size)


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    from .translate import merge_runs

    if not 0.0 <= args.max_failure_rate <= 1.0:
        raise ValueError("max failure rate must be in [0, 1]")
    return merge_runs(
        args.output, args.run_id, args.shard_run_id, max_failure_rate=args.max_failure_rate
    )


def _new_data(args: argparse.Namespace) -> dict[str, Any]:
    from .datasets import new_data

    return new_data(args.domain_b, args.model_store)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from .config import PRESET_BATCH_SIZE, PRESET_SELECT_EVERY, TrainConfig, preset
    from .train import train

    # Flags left out (None) mean the preset's choice.
    model_cfg, loss_cfg = preset(args.preset, args.image_size)
    if args.upsample is not None:
        model_cfg = dataclasses.replace(model_cfg, upsample=args.upsample)
    if args.learning_rate is not None:
        loss_cfg = dataclasses.replace(loss_cfg, learning_rate=args.learning_rate)
    select_every = args.select_every
    if select_every is None:
        select_every = PRESET_SELECT_EVERY[args.preset]
    batch_size = args.batch_size or PRESET_BATCH_SIZE[args.preset]
    cfg = _config(
        TrainConfig,
        args,
        model=model_cfg,
        loss=loss_cfg,
        select_every=select_every,
        batch_size=batch_size,
    )
    return train(cfg)


def _models(args: argparse.Namespace) -> Any:
    from . import registry

    store = args.model_store
    if args.action == "list":
        return registry.list_versions(store)
    if args.action == "rollback":
        return registry.rollback(store)
    if not args.version:
        raise registry.RegistryError(f"models {args.action} needs a VERSION")
    if args.action == "show":
        return registry.get_version(store, args.version)
    return registry.promote(store, args.version, reason=args.reason)


def _sample_data(args: argparse.Namespace) -> dict[str, Any]:
    from .sample_data import write_sample_domains

    return write_sample_domains(
        args.out, n_a=args.n_a, n_b=args.n_b, size=args.size, seed=args.seed
    )


# Arguments naming an object, folder or prefix (s3:// or local); domains may also be tfds:NAME.
_URI_ARGS = ("input", "output", "model", "model_store", "candidate", "keys", "out", "result_file")
_DOMAIN_ARGS = ("domain_a", "domain_b")


def _check_uri_args(args: argparse.Namespace) -> None:
    """Refuse a malformed URI argument before any work: InvalidURIError naming the flag."""
    from .storage import InvalidURIError, check_uri, is_s3

    for dest in (*_URI_ARGS, *_DOMAIN_ARGS, "work_dir"):
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        try:
            if dest in _DOMAIN_ARGS and value.startswith("tfds:"):
                if not value[len("tfds:") :].strip(":"):
                    raise InvalidURIError(f"{value!r} names no tfds dataset (e.g. tfds:cycle_gan)")
                continue
            check_uri(value)
            if dest == "work_dir" and is_s3(value):
                raise InvalidURIError(f"{value!r} is not a local folder")
        except InvalidURIError as err:
            raise InvalidURIError(f"{flag}: {err}") from None


def _known_errors() -> tuple[type[BaseException], ...]:
    """Bad input or configuration (ConfigError and DataError are ValueErrors)."""
    from .registry import RegistryError
    from .storage import StorageError
    from .translate import TranslateError

    return (ValueError, RegistryError, StorageError, TranslateError)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (pytest and Airflow replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ sets it
        pass


def _log_to_stderr() -> None:
    """The library logs through `logging`; a command line shows INFO and up on stderr."""
    root = logging.getLogger("cyclegan_jobs")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())


# Commands that run a model: TensorFlow is started (quietly) before they begin.
_TF_COMMANDS = ("train", "translate", "evaluate", "gate")


def run(argv: list[str], *, log_to_stderr: bool = True) -> tuple[int, Any]:
    """Run one command in this process: (exit code, result). Errors are printed, not raised.

    `log_to_stderr`: the command line shows the library's log on stderr. Inside Airflow
    (`dags/cyclegan_common.run_command`) it is False: the records go to the task log through
    Airflow's own logging, with their levels (stderr would show every line as an error).
    """
    args = build_parser().parse_args(argv)
    logging.getLogger("cyclegan_jobs").setLevel(logging.INFO)  # progress is INFO
    if log_to_stderr:
        _log_to_stderr()
    from . import storage

    if args.command in _TF_COMMANDS:
        from .runtime import start_tensorflow

        start_tensorflow()

    if args.endpoint_url:
        storage.configure(endpoint_url=args.endpoint_url)
    try:
        storage.set_outage_wait(args.s3_outage_wait)
    except ValueError as err:
        print(f"cyclegan-jobs {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE, None
    handler = {
        "train": _train,
        "translate": _translate,
        "evaluate": _evaluate,
        "gate": _gate,
        "models": _models,
        "sample-data": _sample_data,
        "plan": _plan,
        "merge": _merge,
        "new-data": _new_data,
    }[args.command]
    try:
        _check_uri_args(args)
        result = handler(args)
    except _known_errors() as err:
        print(f"cyclegan-jobs {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE, None
    except RuntimeError as err:  # TrainingError and other job failures
        print(f"cyclegan-jobs {args.command}: failed: {err}", file=sys.stderr)
        return EXIT_FAILED, None
    print(json.dumps(result, sort_keys=True, default=str))
    if args.result_file:
        try:
            storage.write_bytes(args.result_file, json.dumps(result, default=str).encode("utf-8"))
        except (storage.StorageError, OSError) as err:  # a pod's result is its XCom: say so
            print(f"cyclegan-jobs {args.command}: error: cannot write the result file: "
                  f"{str(err).splitlines()[0]}", file=sys.stderr)  # fmt: skip
            return EXIT_USAGE, result
    if args.command == "gate" and not result["passed"]:
        reasons = "; ".join(result["reasons"])
        if args.exit_zero:  # a decision the caller acts on, not a failure
            log.info("gate: refused: %s", reasons)
            return 0, result
        print(f"cyclegan-jobs gate: refused: {reasons}", file=sys.stderr)
        return EXIT_FAILED, result
    if args.command in ("translate", "merge") and result.get("status") == "failed":
        share, limit = result["failed_share"], result["max_failure_rate"]
        print(f"cyclegan-jobs {args.command}: failed: {share:.1%} of inputs failed "
              f"(max {limit:.1%})", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED, result
    if args.command == "translate" and result.get("status") == "incomplete":
        # The work is done but not all of its records are: not a success to build on.
        missing, kept = result["records_error"], result["manifest_local"]
        print(f"cyclegan-jobs translate: incomplete: the run's records were {missing} "
              f"(the manifest is kept at {kept})", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED, result
    return 0, result


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)[0]


if __name__ == "__main__":
    sys.exit(main())

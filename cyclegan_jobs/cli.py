"""The `cyclegan-jobs` command line: subcommands -> configs -> jobs. Errors are one clear line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from cyclegan_jobs import errors
from cyclegan_jobs.config import Thresholds, TranslateConfig
from cyclegan_jobs.options import COMMANDS, add_arguments

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from the declarations in options.py."""
    parser = argparse.ArgumentParser(
        prog="cyclegan-jobs", description="Train and run CycleGAN image translation as batch jobs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        add_arguments(sub.add_parser(command.name, help=command.help), command)
    return parser


def _config(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """A job config from the flags that share its fields' names, plus `values`."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names and k not in values}
    return cls(**flags, **values)


def _translate(args: argparse.Namespace) -> dict[str, Any]:
    from cyclegan_jobs.translation.translate import translate

    cfg = _config(
        TranslateConfig,
        args,
        model=args.model or args.model_store,
        reconstruct=not args.no_reconstruct,
    )
    return translate(cfg)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from cyclegan_jobs.evaluation.evaluate import evaluate

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
    from cyclegan_jobs.evaluation.evaluate import gate

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
    from cyclegan_jobs.translation.shards import plan_shards

    return plan_shards(_config(TranslateConfig, args), args.shard_size)


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    from cyclegan_jobs.translation.shards import merge_runs

    if not 0.0 <= args.max_failure_rate <= 1.0:
        raise ValueError("max failure rate must be in [0, 1]")
    return merge_runs(
        args.output, args.run_id, args.shard_run_id, max_failure_rate=args.max_failure_rate
    )


def _new_data(args: argparse.Namespace) -> dict[str, Any]:
    from cyclegan_jobs.retrain import new_data

    return new_data(args.domain_b, args.model_store)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from cyclegan_jobs.config import PRESET_BATCH_SIZE, PRESET_SELECT_EVERY, TrainConfig, preset
    from cyclegan_jobs.training.train import train

    # Flags left out (None) mean the preset's choice.
    model_cfg, loss_cfg = preset(args.preset, args.image_size)
    if args.upsample is not None:
        model_cfg = dataclasses.replace(model_cfg, upsample=args.upsample)
    if args.learning_rate is not None:
        loss_cfg = dataclasses.replace(loss_cfg, learning_rate=args.learning_rate)
    if args.disc_augment != "preset":
        loss_cfg = dataclasses.replace(loss_cfg, disc_augment=args.disc_augment == "on")
    if args.residual != "preset":
        model_cfg = dataclasses.replace(model_cfg, residual=args.residual == "on")
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
    from cyclegan_jobs import registry

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
    from cyclegan_jobs.sample_data import write_sample_domains

    return write_sample_domains(
        args.out, n_a=args.n_a, n_b=args.n_b, size=args.size, seed=args.seed
    )


# Arguments naming an object, folder or prefix (s3:// or local); domains may also be tfds:NAME.
_URI_ARGS = ("input", "output", "model", "model_store", "candidate", "keys", "out", "result_file")
_DOMAIN_ARGS = ("domain_a", "domain_b")


def _check_uri_args(args: argparse.Namespace) -> None:
    """Refuse a malformed URI argument before any work: InvalidURIError naming the flag."""
    from cyclegan_jobs.storage import InvalidURIError, check_uri, is_s3

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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (pytest and Airflow replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
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
    from cyclegan_jobs import storage

    if args.command in _TF_COMMANDS:
        from cyclegan_jobs.runtime import start_tensorflow

        start_tensorflow()

    if args.endpoint_url:
        storage.configure(endpoint_url=args.endpoint_url)
    try:
        storage.set_outage_wait(args.s3_outage_wait)
    except ValueError as err:
        print(f"cyclegan-jobs {args.command}: error: {err}", file=sys.stderr)
        return errors.EXIT_USAGE, None
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
    except (ValueError, RuntimeError) as err:
        code = errors.exit_code(err)
        if code is None:
            raise
        said = "error" if code == errors.EXIT_USAGE else "failed"
        print(f"cyclegan-jobs {args.command}: {said}: {err}", file=sys.stderr)
        return code, None
    print(json.dumps(result, sort_keys=True, default=str))
    if args.result_file:
        try:
            storage.write_bytes(args.result_file, json.dumps(result, default=str).encode("utf-8"))
        except (storage.StorageError, OSError) as err:  # a pod's result is its XCom: say so
            print(f"cyclegan-jobs {args.command}: error: cannot write the result file: "
                  f"{str(err).splitlines()[0]}", file=sys.stderr)  # fmt: skip
            return errors.EXIT_USAGE, result
    code, why = errors.result_exit(args.command, result)
    if code and args.command == "gate" and args.exit_zero:  # a decision the caller acts on
        log.info("gate: %s", why)
        return errors.EXIT_OK, result
    if code:
        print(f"cyclegan-jobs {args.command}: {why}", file=sys.stderr)
    return code, result


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)[0]


if __name__ == "__main__":
    sys.exit(main())

"""The local default (`make run`): the whole job on a local S3 server, end to end, rerun-safe.

`python -m cyclegan_local.local_default [--root var]` does, skipping whatever is already there:
1. starts SeaweedFS on 127.0.0.1 (port 8333 when free) with its data in `<root>/s3`, so buckets
   and objects stay between runs, using fixed local-only keys (`local_s3.LOCAL_ACCESS_KEY`);
2. creates the buckets cyclegan-input, cyclegan-output, cyclegan-models and cyclegan-data;
3. puts generated sample faces into s3://cyclegan-input/faces/ when the bucket is empty, and the
   training domains into s3://cyclegan-data/sample/ when they are missing;
4. trains the tiny preset and promotes it when s3://cyclegan-models has no promoted version;
5. runs the batch translation of s3://cyclegan-input/faces/ into s3://cyclegan-output/ (outputs
   that are up to date are skipped, so a second run does no model work);
6. prints where the results are (S3 URIs, the local contact sheet), stops the server, and prints
   the same as JSON on the last stdout line.
After it, `python -m cyclegan_local.local_s3` serves `var/s3` again, to look at the results.

Real S3 instead: the same jobs run from the CLI with s3:// URIs and no local server. Leave the
endpoint unset (unset AWS_ENDPOINT_URL; `--endpoint-url` is only for other S3-compatible servers
such as MinIO) and let boto3 find credentials in the standard chain (environment, AWS_PROFILE,
instance or task role); nothing here stores keys. For example:

    cyclegan-jobs sample-data --out s3://my-data/sample --n-a 256 --n-b 256 --size 64
    cyclegan-jobs train --preset tiny --image-size 64 --epochs 14 --promote \\
        --domain-a s3://my-data/sample/domain_a --domain-b s3://my-data/sample/domain_b \\
        --model-store s3://my-models
    cyclegan-jobs translate --input s3://my-input/faces/ --output s3://my-output/ \\
        --model-store s3://my-models
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cyclegan_jobs import registry, storage
from cyclegan_jobs.config import (
    PRESET_BATCH_SIZE,
    PRESET_SELECT_EVERY,
    TrainConfig,
    TranslateConfig,
    preset,
)
from cyclegan_local import local_s3

DEFAULT_PORT = 8333  # SeaweedFS's usual S3 port, so the endpoint stays the same between runs
BUCKETS = ("cyclegan-input", "cyclegan-output", "cyclegan-models", "cyclegan-data")
INPUT = "s3://cyclegan-input/faces/"
OUTPUT = "s3://cyclegan-output/"
MODEL_STORE = "s3://cyclegan-models"
DOMAINS = "s3://cyclegan-data/sample"
# Training images per domain: 64 scored 1.6 dB worse than 256 at the same settings (README,
# "The tiny preset's defaults"); they take seconds to make.
N_DOMAIN = 256
# The retrain of the local default (here and `make run`'s through Airflow): the tiny preset with
# its own defaults, 64 px, TRAIN_EPOCHS passes over the 179 training images of each domain (the
# rest is held out): 308 steps of the preset's batch of 8, about 2.5 minutes on 2 cores. Its
# first result is scored against the known mapping (domain A is paint of faces): KNOWN_STYLE.
TRAIN_PRESET, TRAIN_SIZE, TRAIN_EPOCHS = "tiny", 64, 14
KNOWN_STYLE = "cyclegan_jobs.sample_data:paint"
# Environment that would send the local keys elsewhere or mix them with real settings.
_AWS_OVERRIDES = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)
_LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": local_s3.LOCAL_ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": local_s3.LOCAL_SECRET_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _say(message: str) -> None:
    print(f"[local] {message}", file=sys.stderr, flush=True)


@contextmanager
def _local_aws_env() -> Iterator[None]:
    """The local dummy keys in this process's environment for a while, then the old values."""
    saved = {name: os.environ.get(name) for name in (*_AWS_OVERRIDES, *_LOCAL_ENV)}
    for name in _AWS_OVERRIDES:
        os.environ.pop(name, None)
    os.environ.update(_LOCAL_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def local_stack(root: str | Path = "var", *, size: int = 64, n_faces: int = 32) -> Iterator[Any]:
    """The local S3 server (data in <root>/s3) with the buckets and sample data, `storage` and
    this process's AWS environment pointed at it; stopped (and restored) on exit."""
    root = Path(root)
    preset("tiny", size)  # bad settings fail here, before any work
    if n_faces < 1:
        raise ValueError(f"need n_faces >= 1, got {n_faces}")
    port = DEFAULT_PORT if local_s3.port_is_free(DEFAULT_PORT) else None
    with (
        _local_aws_env(),
        local_s3.running(
            root / "s3",
            port=port,
            access_key=local_s3.LOCAL_ACCESS_KEY,
            secret_key=local_s3.LOCAL_SECRET_KEY,
        ) as server,
    ):
        _say(f"S3 server at {server.endpoint_url}, data in {server.data_dir}")
        storage.configure(endpoint_url=server.endpoint_url)
        try:
            _ensure_buckets()
            _ensure_input(n_faces, size)
            _ensure_domains(size)
            yield server
        finally:
            storage.configure()


def run_local_default(
    root: str | Path = "var", *, size: int = TRAIN_SIZE, n_faces: int = 32,
    epochs: int = TRAIN_EPOCHS,
) -> dict[str, Any]:  # fmt: skip
    """Run the local default under `root` (see the module docstring); returns where results are."""
    root = Path(root)
    if epochs < 1:
        raise ValueError(f"need epochs >= 1, got {epochs}")
    with local_stack(root, size=size, n_faces=n_faces) as server:
        _, trained = _ensure_model(root, size, epochs)
        summary = _translate(root)
        sheet = _contact_sheet(summary, root)
        scores = first_result()
    counts = summary["counts"]
    result = {
        # "failed": too many inputs failed; "incomplete": a record could not be stored
        "status": summary.get("status", "ok"),
        "model_version": summary["model_version"],
        "trained": trained,
        "counts": counts,
        "input": INPUT,
        "stylized": summary["stylized"],
        "reconstructed": summary["reconstructed"],
        "manifest": summary.get("manifest"),  # None when it could not be stored
        "summary": summary.get("summary"),
        **sheet,
        "model_store": MODEL_STORE,
        "s3_data": str(server.data_dir),
        "first_result": scores,
    }
    _say(
        f"translated: {counts['ok']} new, {counts['skipped']} already up to date, "
        f"{counts['failed']} failed, of {counts['total']}"
    )
    width = 15
    for label, key in (
        ("model version", "model_version"),
        ("stylized", "stylized"),
        ("reconstructed", "reconstructed"),
        ("manifest", "manifest"),
        ("contact sheet", "contact_sheet_local"),
    ):
        print(f"{label:<{width}}: {result[key]}", file=sys.stderr)
    print(
        f"The S3 server is stopped; `python -m cyclegan_local.local_s3 {root / 's3'}` serves "
        "these s3:// URIs again.",
        file=sys.stderr,
        flush=True,
    )
    return result


def _ensure_buckets() -> None:
    client = storage.get_client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    missing = [name for name in BUCKETS if name not in existing]
    for name in missing:
        client.create_bucket(Bucket=name)
    _say(f"buckets: created {', '.join(missing)}" if missing else "buckets: already there")


def _ensure_input(n_faces: int, size: int) -> None:
    bucket = "s3://" + storage.split_s3(INPUT)[0]
    if next(storage.list_objects(bucket), None) is not None:
        _say(f"input: {bucket} already has objects; left as is")
        return
    from cyclegan_jobs.sample_data import write_sample_faces

    write_sample_faces(INPUT, n_faces, size)
    _say(f"input: put {n_faces} sample faces ({size}x{size} JPEG) into {INPUT}")


def _ensure_domains(size: int) -> None:
    # Counted, not just probed: a run killed while writing them writes them all again.
    have = sum(1 for _ in storage.list_objects(DOMAINS))
    if have >= 2 * N_DOMAIN:
        _say(f"training data: {DOMAINS} already there")
        return
    from cyclegan_jobs.sample_data import write_sample_domains

    write_sample_domains(DOMAINS, n_a=N_DOMAIN, n_b=N_DOMAIN, size=size)
    _say(f"training data: wrote {N_DOMAIN} paintings + {N_DOMAIN} faces under {DOMAINS}")


def _ensure_model(root: Path, size: int, epochs: int) -> tuple[str, bool]:
    """The promoted version, training and promoting the tiny preset first when there is none."""
    pointer = registry.promoted(MODEL_STORE)
    if pointer is not None:
        _say(f"model: {pointer['version']} already promoted; no training")
        return pointer["version"], False
    from cyclegan_jobs.training.train import train

    # A fixed run id: a run interrupted by Ctrl-C resumes from its last mirrored checkpoint.
    run_id = f"local-default-{TRAIN_PRESET}-{size}px-{epochs}ep"
    work_dir = root / "train" / run_id
    # Emptied first, so a resume always starts from the copy in the model store.
    shutil.rmtree(work_dir, ignore_errors=True)
    model_cfg, loss_cfg = preset(TRAIN_PRESET, size)
    _say(f"model: none promoted; training the {TRAIN_PRESET} preset ({epochs} epochs, {size}px)")
    summary = train(
        TrainConfig(
            domain_a=storage.join(DOMAINS, "domain_a"),
            domain_b=storage.join(DOMAINS, "domain_b"),
            model_store=MODEL_STORE,
            model=model_cfg,
            loss=loss_cfg,
            epochs=epochs,
            batch_size=PRESET_BATCH_SIZE[TRAIN_PRESET],
            select_every=PRESET_SELECT_EVERY[TRAIN_PRESET],
            run_id=run_id,
            work_dir=str(work_dir),
            sample_every=40,
            checkpoint_every=40,
            promote=True,
        )
    )
    version = summary["version"]
    if registry.promoted(MODEL_STORE) is None:
        # The run had finished before (train returned its old summary), then was rolled back.
        registry.promote(MODEL_STORE, version, reason=f"local default, run {run_id}")
    _say(f"model: trained and promoted {version} (samples: {summary['samples']})")
    return version, True


def first_result(input_uri: str = INPUT, output_uri: str = OUTPUT) -> dict[str, Any]:
    """The outputs scored against the known mapping of the sample data (evaluate.score_outputs),
    said in one line and returned rounded; the goals are the README's (issue 21)."""
    from cyclegan_jobs.evaluation.evaluate import score_outputs

    try:
        s = score_outputs(input_uri, output_uri, KNOWN_STYLE)
    except ValueError as err:  # nothing to score (say, every output failed): a report, no more
        _say(f"first result: not scored: {err}")
        return {"error": str(err)}
    _say(
        f"first result against the truth ({KNOWN_STYLE} of each input face), {s['scored']} "
        f"faces: stylized {s['psnr_true']:.2f} dB, doing nothing {s['psnr_do_nothing']:.2f} dB "
        f"({s['gain_db']:+.2f} dB); reconstructions {s['cycle_psnr']:.2f} dB; checkerboard "
        f"{s['checkerboard_db']:+.2f} dB"
        + (f"; {len(s['unscored'])} unscored: {s['unscored'][:3]}" if s["unscored"] else "")
    )
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in s.items()}


def _translate(root: Path) -> dict[str, Any]:
    from cyclegan_jobs.translation.translate import translate

    _say(f"translating {INPUT} -> {OUTPUT}")
    return translate(
        TranslateConfig(
            input=INPUT,
            output=OUTPUT,
            model=MODEL_STORE,
            work_dir=str(root / "translate"),
        )
    )


def _contact_sheet(summary: dict[str, Any], root: Path) -> dict[str, str | None]:
    """This run's contact sheet or, when it translated nothing (so made none), the latest one."""
    if summary.get("contact_sheet"):
        return {
            "contact_sheet": summary["contact_sheet"],
            "contact_sheet_local": summary.get("contact_sheet_local"),
        }
    local = root / "translate" / "contact_sheet.png"  # translate's work dir keeps the last one
    return {
        "contact_sheet": latest_contact_sheet(OUTPUT),
        "contact_sheet_local": str(local) if local.is_file() else None,
    }


def latest_contact_sheet(output: str) -> str | None:
    """The URI of the newest contact sheet under <output>/_runs/, or None."""
    # Run ids start with their UTC start time, so key order is time order.
    sheets = [
        info.uri
        for info in storage.list_objects(storage.join(output, "_runs"))
        if info.rel.endswith("/contact_sheet.png")
    ]
    return sheets[-1] if sheets else None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cyclegan_local.local_default", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", default="var", help="folder for all local data (git-ignored)")
    parser.add_argument("--size", type=int, default=64, help="image size (multiple of 16)")
    parser.add_argument("--n-faces", type=int, default=32, help="sample faces to translate")
    parser.add_argument(
        "--epochs", type=int, default=TRAIN_EPOCHS, help="training epochs (tiny preset)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ banner is noise here
    # SIGTERM (a scheduler, `timeout`) unwinds like Ctrl-C, so the server is stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_local_default(
            args.root, size=args.size, n_faces=args.n_faces, epochs=args.epochs
        )
    except KeyboardInterrupt:
        _say("interrupted; run it again to continue where it stopped")
        return 130
    except (RuntimeError, ValueError) as err:  # LocalS3Error, StorageError, TrainingError, ...
        _say(f"failed: {err}")
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Known-mapping benchmark: does training recover a style we know, without any dataset?

Domain B = synthetic faces (one draw), domain A = style(another draw): unpaired, as CycleGAN
expects. Training runs for a time budget on the CPU with model selection on (every
`--select-every` steps the generators are scored on held-out images of the two training draws:
SWD and cycle PSNR, no ground truth). Then 64 faces b of a third draw are translated and
compared with the truth: PSNR(G_BA(b), style(b)) against the do-nothing PSNR(b, style(b)).
A probe (reporting only; it does not steer anything) also measures that PSNR at every selection
step, so the report shows the last step's weights, the selected ones and the best scored step.
Any style function (uint8 HxWx3 batches in and out) plugs in.

One run:    .venv/bin/python benchmarks/quality.py [--style MODULE_OR_FILE.py:FUNCTION]
            [--minutes 10 | --epochs N] [--image-size 64] [--preset tiny] [--out DIR]
            [--variant NAME=key:value,...]
The matrix: .venv/bin/python benchmarks/quality.py --matrix [--ablations] [--parallel 2]
            [--threads 1] (the three styles x each --variants entry, as separate processes; a
            table, then JSON)
Goal (issue 4): >= 25 dB and >= +10 dB over the do-nothing baseline within 10 minutes at 64x64.

It trains the preset exactly as users get it (its model, loss and batch size: the CLI's and
the retrain form's defaults); `--variant` changes named fields of those, and `--ablations`
runs the defaults beside each of their changes undone (ABLATIONS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from cyclegan_jobs import images
from cyclegan_jobs.config import PRESET_BATCH_SIZE, TrainConfig, preset
from cyclegan_jobs.evaluation import metrics
from cyclegan_jobs.evaluation.evaluate import evaluate, load_style
from cyclegan_jobs.sample_data import synthetic_faces, write_npy
from cyclegan_jobs.training import hooks

BUILTIN = "cyclegan_jobs.sample_data:paint"
STYLES = (BUILTIN, "benchmarks/styles.py:colour_remap", "benchmarks/styles.py:blur_posterize")
GOAL_DB, GOAL_GAIN_DB = 25.0, 10.0
# The seeds of the four face draws: training faces (b), faces to style (a), the truth probe's
# test faces (held_b) and the evaluation's styled test faces (held_a).
DRAWS = {"b": 0, "a": 1, "held_b": 2, "held_a": 3}
# A variant: options on top of the preset ("name=key:value,key:value"; see settings).
VARIANTS = ("defaults=",)
# The tiny preset's defaults, then each of issue 21's changes undone alone, then all of them
# (the defaults before it).
ABLATIONS = (
    "defaults=",
    "no_colour_match=colour_match_weight:0",
    "no_colour_fit=colour_fit_weight:0",
    "no_residual=residual:false",
    "transpose=upsample:transpose",
    "identity_5=identity_weight:5",
    "no_colour_head=colour_head:0",
    "no_moving_average=ema_momentum:0",
    "one_rate=disc_lr_scale:1",
    "no_disc_augment=disc_augment:false",
    "before=upsample:transpose,residual:false,batch_size:1,learning_rate:0.001,"
    "identity_weight:0.1,linear_decay:false,colour_fit_weight:0,colour_match_weight:0,"
    "colour_head:0,ema_momentum:0,disc_lr_scale:1,disc_augment:false",
)


class TruthProbe(hooks.Hook):
    """At each model-selection step, PSNR of G_BA on the test faces against the true style.
    Reporting only: the selection never sees it. Runs after ModelSelection, whose float32
    generators then hold the weights just scored."""

    def __init__(self, faces: np.ndarray, truth: np.ndarray):
        self.faces, self.truth, self.curve = faces, truth, []

    def after_step(self, t: Any, logs: dict[str, float]) -> None:
        row = t.history[-1] if t.history else {}
        if row.get("kind") != "selection" or row["step"] != t.state.step:
            return
        fake = images.to_uint8(t.selection.gens.apply("generator_BA", self.faces))
        scores = {k: v for k, v in row.items() if k not in ("kind", "best_step")}
        self.curve.append({**scores, "psnr_true": metrics.psnr(fake, self.truth)})


def _domains(
    style: Any, out: Path, n: int, held_out: int, size: int
) -> tuple[dict[str, str], np.ndarray]:
    """Training draws (n + a held-out share for selection) and the test draw, as .npy files;
    also the test faces b themselves (the truth probe and the report use them)."""
    select = hooks.SELECT_IMAGES
    faces_b = synthetic_faces(n + select, size, seed=DRAWS["b"])
    painted_a = np.asarray(style(synthetic_faces(n + select, size, seed=DRAWS["a"])), np.uint8)
    held_b = synthetic_faces(held_out, size, seed=DRAWS["held_b"])
    held_a = np.asarray(style(synthetic_faces(held_out, size, seed=DRAWS["held_a"])), np.uint8)
    arrays = (("a", painted_a), ("b", faces_b), ("held_a", held_a), ("held_b", held_b))
    return {name: write_npy(str(out / f"{name}.npy"), arr) for name, arr in arrays}, held_b


def run_benchmark(
    style_spec: str = BUILTIN,
    *,
    minutes: float = 10.0,
    image_size: int = 64,
    preset_name: str = "tiny",
    n: int = 256,
    held_out: int = 64,
    out: str | Path = "var/quality",
    options: dict[str, Any] | None = None,
    epochs: int | None = None,
    log_every: int = 200,
    select_every: int = 100,
) -> dict[str, Any]:
    """Train the preset as users get it, changed by `options` (ModelConfig and LossConfig
    fields, or batch_size), on unpaired (faces, style(faces)) for `minutes` (or, if given,
    `epochs` of n // batch size steps); report PSNR against the truth."""
    from cyclegan_jobs.training.train import Trainer

    style = load_style(style_spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    uris, held_b = _domains(style, out, n, held_out, image_size)
    truth = np.asarray(style(held_b), np.uint8)
    model_cfg, loss_cfg, batch_size = settings(preset_name, image_size, options or {})
    cfg = TrainConfig(
        domain_a=uris["a"],
        domain_b=uris["b"],
        model_store=str(out / "models"),
        model=model_cfg,
        loss=loss_cfg,
        batch_size=batch_size,
        holdout=hooks.SELECT_IMAGES / (n + hooks.SELECT_IMAGES),
        # By default the time budget ends training (and drives the LR decay); with `epochs`,
        # the steps do, as in `make run`'s retrain.
        epochs=epochs or 100_000,
        max_minutes=None if epochs else minutes,
        log_every=log_every,
        checkpoint_every=100_000,
        sample_every=100_000,
        select_every=select_every,
    )
    probe = TruthProbe(held_b, truth)
    started = time.monotonic()
    summary = Trainer(cfg, extra_hooks=(probe,)).run()
    summary["train_seconds"] = round(time.monotonic() - started, 1)
    return _report(style_spec, cfg, summary, probe, uris, held_b, truth, out)


def stylize(generator: Any, faces: np.ndarray) -> np.ndarray:
    """uint8 faces through a Keras generator (inference mode) -> uint8 images."""
    return images.to_uint8(np.asarray(generator(images.to_unit(faces), training=False)))


def limit_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op threads (0: leave TensorFlow's choice)."""
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _report(style_spec, cfg, summary, probe, uris, held_b, truth, out) -> dict[str, Any]:
    from cyclegan_jobs.inference import load_generators

    vuri = summary["version_uri"]
    result = evaluate(vuri, uris["held_a"], uris["held_b"], holdout=0.0, paired_b_to_a=style_spec)
    g_ba = load_generators(vuri)["generator_BA"]
    fake = stylize(g_ba, held_b)
    model_psnr, baseline = metrics.psnr(fake, truth), metrics.psnr(held_b, truth)
    rows = [[held_b[i], truth[i], fake[i]] for i in range(min(6, len(held_b)))]
    picture = out / "quality.png"
    titles = ["held-out face", "true style", "model output"]
    picture.write_bytes(images.encode_png(images.sample_grid(rows, col_titles=titles, cell=128)))
    curve = probe.curve
    oracle = max(curve, key=lambda r: r["psnr_true"]) if curve else None
    report = {
        "style": style_spec,
        "preset": cfg.model.preset,
        "model": asdict(cfg.model),
        "loss": asdict(cfg.loss),
        "batch_size": cfg.batch_size,
        "image_size": cfg.model.image_size,
        "minutes": cfg.max_minutes,
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "selected_step": (summary["selected"] or {}).get("step"),
        "psnr_model": round(model_psnr, 2),
        "psnr_last": round(curve[-1]["psnr_true"], 2) if curve else None,
        "psnr_best_scored": round(oracle["psnr_true"], 2) if oracle else None,
        "best_scored_step": oracle["step"] if oracle else None,
        "psnr_do_nothing": round(baseline, 2),
        "gain_db": round(model_psnr - baseline, 2),
        "goal_met": model_psnr >= GOAL_DB and model_psnr - baseline >= GOAL_GAIN_DB,
        "checkerboard_db": round(metrics.checkerboard_db(fake), 2),
        "evaluation": {k: result[k] for k in ("cycle_psnr", "swd_mean", "swd", "color")},
        "curve": curve,
        "picture": str(picture),
        "load_average": os.getloadavg(),
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    return report


def settings(name: str, size: int, options: dict[str, Any]) -> tuple[Any, Any, int]:
    """The preset's model, loss and batch size (what users train), each option applied to the
    config that has a field of its name."""
    model_cfg, loss_cfg = preset(name, size)
    fields = {
        "model": {f.name for f in fields_of(model_cfg)},
        "loss": {f.name for f in fields_of(loss_cfg)},
    }
    unknown = set(options) - fields["model"] - fields["loss"] - {"batch_size"}
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}: ModelConfig, LossConfig fields")
    model_cfg = replace(model_cfg, **{k: v for k, v in options.items() if k in fields["model"]})
    loss_cfg = replace(loss_cfg, **{k: v for k, v in options.items() if k in fields["loss"]})
    return model_cfg, loss_cfg, options.get("batch_size", PRESET_BATCH_SIZE[name])


def _value(text: str) -> Any:
    """An option's value as written: true/false, a number, else the text."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """NAME=key:value,key:value -> (NAME, {key: value})."""
    name, _, spec = text.partition("=")
    options: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition(":")
        options[key] = _value(value)
    return name, options


# The options one run of the matrix takes from the matrix's own command line.
RUN_OPTIONS = ("minutes", "epochs", "image_size", "preset", "n", "held_out", "select_every",
               "threads")  # fmt: skip


def run_argv(args: argparse.Namespace, style: str, variant: str, out: Path) -> list[str]:
    """The command line of one matrix run: its style, variant and folder, and every option of
    RUN_OPTIONS that the matrix was given (a matrix with --n 1024 trains each run on 1,024)."""
    argv = ["--style", style, "--variant", variant, "--out", str(out)]
    for name in RUN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def run_matrix(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every style x variant as its own process (`--parallel` at a time, `--threads` each)."""
    jobs = []
    for style in args.styles:
        for variant in args.variants:
            tag = f"{Path(style.split(':')[-1]).name}-{parse_variant(variant)[0]}"
            out = Path(args.out) / tag
            argv = [sys.executable, __file__, *run_argv(args, style, variant, out)]
            jobs.append((tag, out, argv))
    running, reports = [], []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            tag, out, argv = jobs.pop(0)
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "run.log", "w")  # closed when the process ends
            print(f"{time.strftime('%H:%M:%S')} start {tag}", flush=True)
            running.append((tag, out, subprocess.Popen(argv, stdout=log, stderr=log), log))
        time.sleep(5)
        for item in [r for r in running if r[2].poll() is not None]:
            running.remove(item)
            item[3].close()
            tag, out, proc = item[0], item[1], item[2]
            print(f"{time.strftime('%H:%M:%S')} done {tag} (exit {proc.returncode})", flush=True)
            if proc.returncode == 0:
                reports.append({"run": tag, **json.loads((out / "quality.json").read_text())})
    return reports


def print_table(reports: list[dict[str, Any]]) -> None:
    head = ("run", "steps", "last", "selected (step)", "best scored (step)", "do-nothing", "gain")
    print("\n| " + " | ".join((*head, "goal")) + " |\n" + "|---" * (len(head) + 1) + "|")
    for r in reports:
        cells = (
            r["run"], r["steps"], r["psnr_last"], f"{r['psnr_model']} ({r['selected_step']})",
            f"{r['psnr_best_scored']} ({r['best_scored_step']})", r["psnr_do_nothing"],
            f"{r['gain_db']:+.2f}", "met" if r["goal_met"] else "missed",
        )  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--style", default=BUILTIN)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--epochs", type=int, default=None, help="stop after N // batch steps x this")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--n", type=int, default=256, help="training images per domain")
    p.add_argument("--held-out", type=int, default=64)
    p.add_argument("--out", default="var/quality")
    p.add_argument("--select-every", type=int, default=100, help="0: export the last weights")
    p.add_argument(
        "--variant",
        default="preset=",
        help="NAME=key:value,...: ModelConfig or LossConfig fields, or batch_size, changed\n"
        "from the preset's defaults (e.g. old=upsample:transpose,learning_rate:1e-3)",
    )
    p.add_argument("--threads", type=int, default=0, help="TF threads per process (0: all)")
    p.add_argument("--matrix", action="store_true", help="all --styles x --variants")
    p.add_argument("--styles", nargs="+", default=list(STYLES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--ablations", action="store_true", help="--variants ABLATIONS")
    p.add_argument("--parallel", type=int, default=1, help="matrix runs at a time")
    return p


def main() -> None:
    args = _parser().parse_args()
    if args.ablations:
        args.variants = list(ABLATIONS)
    if args.matrix:
        reports = run_matrix(args)
        print_table(reports)
        print(json.dumps({"runs": [{k: v for k, v in r.items() if k != "curve"} for r in reports]}))
        return
    limit_threads(args.threads)
    report = run_benchmark(
        args.style,
        minutes=args.minutes,
        image_size=args.image_size,
        preset_name=args.preset,
        n=args.n,
        held_out=args.held_out,
        out=args.out,
        options=parse_variant(args.variant)[1],
        select_every=args.select_every,
        epochs=args.epochs,
    )
    print(
        f"\nstyle {report['style']}: {report['steps']} steps in {report['minutes']} min at "
        f"{report['image_size']}px -> PSNR(G_BA(b), style(b)) = {report['psnr_model']:.2f} dB "
        f"(selected step {report['selected_step']}; last step {report['psnr_last']} dB), "
        f"do-nothing {report['psnr_do_nothing']:.2f} dB, gain {report['gain_db']:+.2f} dB; goal "
        f"(>= {GOAL_DB:.0f} dB and >= +{GOAL_GAIN_DB:.0f} dB) "
        f"{'MET' if report['goal_met'] else 'MISSED'}; picture {report['picture']}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()

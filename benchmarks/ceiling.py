"""Paired ceiling: how close can the preset's generator get to a known style when it is *shown*
the answer? An estimate from above for the unpaired known-mapping benchmark (quality.py).

The generator G_BA of the preset (as users get it, changed by --variants like quality.py's) is
trained supervised on pairs (face, style(face)) of quality.py's training faces: MSE to the true
style, the preset's Adam rate, beta_1, batch size and linear decay over the second half (no
moving average: the last weights are scored), for --steps steps (default 3,500: about what the
unpaired benchmark trains in its 10 minutes). No discriminator, no cycle: the truth itself is
the most direct signal the network can get, so this estimates from above (it does not prove)
what an unpaired objective reaches. The held-out faces of quality.py's truth probe are scored
every --probe-every steps.

Run:  .venv/bin/python benchmarks/ceiling.py [--styles SPEC ...] [--variants NAME=key:value,...]
      [--steps 3500] [--threads 1]
Prints a table (best and last held-out PSNR, do-nothing, gain) and the JSON of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import quality  # benchmarks/quality.py: the styles, variants and settings

from cyclegan_jobs import images
from cyclegan_jobs.evaluation import metrics
from cyclegan_jobs.evaluation.evaluate import load_style
from cyclegan_jobs.sample_data import synthetic_faces


def paired_run(style_spec: str, options: dict[str, Any], *, steps: int, probe_every: int,
               n: int = 256, held_out: int = 64, size: int = 64) -> dict[str, Any]:  # fmt: skip
    """Train the preset's generator on (face, style(face)) pairs; the held-out PSNR curve."""
    import tensorflow as tf

    from cyclegan_jobs.training.model import make_optimizer
    from cyclegan_jobs.training.networks import build_generator

    style = load_style(style_spec)
    model_cfg, loss_cfg, batch = quality.settings("tiny", size, options)
    faces = synthetic_faces(n, size, seed=quality.DRAWS["b"])  # quality.py's training faces
    x, y = images.to_unit(faces), images.to_unit(np.asarray(style(faces), np.uint8))
    held = synthetic_faces(held_out, size, seed=quality.DRAWS["held_b"])  # its truth probe's
    truth = np.asarray(style(held), np.uint8)
    gen = build_generator(model_cfg, name="generator_BA")
    opt = make_optimizer(loss_cfg, steps, "float32", "ceiling")

    @tf.function
    def train_step(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(gen(a, training=True) - b))
        grads = tape.gradient(loss, gen.trainable_variables)
        opt.apply_gradients(zip(grads, gen.trainable_variables, strict=True))
        return loss

    rng, curve, started = np.random.default_rng(0), [], time.monotonic()
    for step in range(1, steps + 1):
        pick = rng.integers(0, n, batch)
        train_step(tf.constant(x[pick]), tf.constant(y[pick]))
        if step % probe_every == 0 or step == steps:
            psnr = metrics.psnr(quality.stylize(gen, held), truth)
            curve.append({"step": step, "psnr_true": round(psnr, 2)})
            print(f"{style_spec} {options} step {step}: {curve[-1]['psnr_true']} dB", flush=True)
    best = max(curve, key=lambda r: r["psnr_true"])
    baseline = metrics.psnr(held, truth)
    return {
        "style": style_spec, "options": options, "n": n, "steps": steps,
        "seconds": round(time.monotonic() - started, 1), "psnr_last": curve[-1]["psnr_true"],
        "psnr_best": best["psnr_true"], "best_step": best["step"],
        "psnr_do_nothing": round(baseline, 2),
        "gain_best_db": round(best["psnr_true"] - baseline, 2), "curve": curve,
    }  # fmt: skip


def print_table(runs: list[dict[str, Any]]) -> None:
    print("\n| style | variant | pairs | steps | last | best (step) | do-nothing | gain (best) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        cells = (
            Path(r["style"].split(":")[-1]).name, r["variant"], r["n"], r["steps"], r["psnr_last"],
            f"{r['psnr_best']} ({r['best_step']})", r["psnr_do_nothing"],
            f"{r['gain_best_db']:+.2f} dB",
        )  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--styles", nargs="+", default=list(quality.STYLES))
    p.add_argument("--variants", nargs="+", default=list(quality.VARIANTS))
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--probe-every", type=int, default=500)
    p.add_argument("--n", type=int, default=256, help="training pairs (quality.py's --n)")
    p.add_argument("--threads", type=int, default=0, help="TF threads (0: all)")
    args = p.parse_args()
    quality.limit_threads(args.threads)
    runs = []
    for style in args.styles:
        for variant in args.variants:
            name, options = quality.parse_variant(variant)
            run = paired_run(
                style, options, steps=args.steps, probe_every=args.probe_every, n=args.n
            )
            runs.append({"variant": name, **run})
    print_table(runs)
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()

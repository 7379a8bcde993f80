"""Known-mapping benchmark: does training recover a style we know, without any dataset?

Domain B = synthetic faces (one draw), domain A = style(another draw): unpaired, as CycleGAN
expects. After training for a time budget on the CPU, held-out faces b are translated and
compared with the truth: PSNR(G_BA(b), style(b)) against the do-nothing PSNR(b, style(b)), plus
the evaluation metrics. Any style function (uint8 HxWx3 batches in and out) plugs in.
Run: `.venv/bin/python benchmarks/quality.py [--style MODULE_OR_FILE.py:FUNCTION]
[--minutes 10] [--image-size 64] [--preset tiny] [--out var/quality]`.
Goal (issue 4): >= 25 dB and >= +10 dB over the do-nothing baseline within 10 minutes at 64x64.

Training settings (on top of the preset; each has a flag): batch 8, learning rate 3e-3, the
paper's identity weight 5 and a linear LR decay over the second half of the time budget.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cyclegan_jobs import images, metrics  # noqa: E402
from cyclegan_jobs.config import TrainConfig, preset  # noqa: E402
from cyclegan_jobs.evaluate import evaluate, load_style  # noqa: E402
from cyclegan_jobs.sample_data import synthetic_faces, write_npy  # noqa: E402
from cyclegan_jobs.train import train  # noqa: E402

BUILTIN = "cyclegan_jobs.sample_data:paint"
GOAL_DB, GOAL_GAIN_DB = 25.0, 10.0


def run_benchmark(
    style_spec: str = BUILTIN,
    *,
    minutes: float = 10.0,
    image_size: int = 64,
    preset_name: str = "tiny",
    n: int = 256,
    held_out: int = 64,
    out: str | Path = "var/quality",
    batch_size: int = 8,
    learning_rate: float | None = 3e-3,
    identity_weight: float | None = 5.0,
    decay: bool = True,
    epochs: int | None = None,
    log_every: int = 200,
) -> dict[str, Any]:
    """Train on unpaired (faces, style(faces)) for `minutes` (or `epochs` of n // batch_size
    steps, if that ends first); report PSNR against the truth."""
    style = load_style(style_spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = image_size
    faces_b = synthetic_faces(n, size, seed=0)
    painted_a = np.asarray(style(synthetic_faces(n, size, seed=1)), np.uint8)
    held_b = synthetic_faces(held_out, size, seed=2)
    held_a = np.asarray(style(synthetic_faces(held_out, size, seed=3)), np.uint8)
    uris = {
        name: write_npy(str(out / f"{name}.npy"), arr)
        for name, arr in (("a", painted_a), ("b", faces_b), ("held_a", held_a), ("held_b", held_b))
    }
    model_cfg, loss_cfg = preset(preset_name, size)
    overrides = {"identity_weight": identity_weight, "learning_rate": learning_rate}
    loss_cfg = replace(loss_cfg, **{k: v for k, v in overrides.items() if v is not None})
    loss_cfg = replace(loss_cfg, linear_decay=decay)
    summary = train(
        TrainConfig(
            domain_a=uris["a"],
            domain_b=uris["b"],
            model_store=str(out / "models"),
            model=model_cfg,
            loss=loss_cfg,
            batch_size=batch_size,
            holdout=0.0,
            epochs=epochs or 100_000,  # by default the time budget ends training
            max_minutes=minutes,
            log_every=log_every,
            checkpoint_every=10_000,
            sample_every=10_000,
        )
    )
    vuri = summary["version_uri"]
    result = evaluate(vuri, uris["held_a"], uris["held_b"], holdout=0.0, paired_b_to_a=style_spec)

    from cyclegan_jobs.inference import load_generators

    g_ba = load_generators(vuri)["generator_BA"]
    fake = images.to_uint8(np.asarray(g_ba(images.to_unit(held_b), training=False)))
    truth = np.asarray(style(held_b), np.uint8)
    model_psnr, baseline = metrics.psnr(fake, truth), metrics.psnr(held_b, truth)
    rows = [[held_b[i], truth[i], fake[i]] for i in range(min(6, len(held_b)))]
    picture = out / "quality.png"
    titles = ["held-out face", "true style", "model output"]
    picture.write_bytes(images.encode_png(images.sample_grid(rows, col_titles=titles, cell=128)))

    report = {
        "style": style_spec,
        "preset": preset_name,
        "loss": asdict(loss_cfg),
        "batch_size": batch_size,
        "image_size": size,
        "minutes": minutes,
        "steps": summary["steps"],
        "psnr_model": round(model_psnr, 2),
        "psnr_do_nothing": round(baseline, 2),
        "gain_db": round(model_psnr - baseline, 2),
        "goal_met": model_psnr >= GOAL_DB and model_psnr - baseline >= GOAL_GAIN_DB,
        "evaluation": {k: result[k] for k in ("cycle_psnr", "swd_mean", "swd", "color")},
        "picture": str(picture),
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--style", default=BUILTIN)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--n", type=int, default=256, help="training images per domain")
    p.add_argument("--held-out", type=int, default=64)
    p.add_argument("--out", default="var/quality")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--identity-weight", type=float, default=5.0, help="None: the preset's")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--no-decay", action="store_true", help="constant learning rate")
    args = p.parse_args()
    report = run_benchmark(
        args.style,
        minutes=args.minutes,
        image_size=args.image_size,
        preset_name=args.preset,
        n=args.n,
        held_out=args.held_out,
        out=args.out,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        identity_weight=args.identity_weight,
        decay=not args.no_decay,
    )
    print(
        f"\nstyle {report['style']}: {report['steps']} steps in {report['minutes']} min at "
        f"{report['image_size']}px -> PSNR(G_BA(b), style(b)) = {report['psnr_model']:.2f} dB, "
        f"do-nothing {report['psnr_do_nothing']:.2f} dB, gain {report['gain_db']:+.2f} dB; goal "
        f"(>= {GOAL_DB:.0f} dB and >= +{GOAL_GAIN_DB:.0f} dB) "
        f"{'MET' if report['goal_met'] else 'MISSED'}; picture {report['picture']}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()

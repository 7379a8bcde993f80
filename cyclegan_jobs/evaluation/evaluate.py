"""Model evaluation on held-out images (cycle, identity, distribution) and the quality gate."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from cyclegan_jobs import registry, storage
from cyclegan_jobs.config import Thresholds, model_config_from_dict
from cyclegan_jobs.evaluation import metrics
from cyclegan_jobs.images import to_uint8, to_unit
from cyclegan_jobs.training import datasets

BATCH = 32


def load_style(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """A style function from `module:function` or `path/to/file.py:function` (uint8 in/out)."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ValueError(f"style must be MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location("cyclegan_style", target)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot load style file {target}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{spec}: no function {name!r} in {target}")
    return fn


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # Non-finite outputs stay visible: NaN is kept as float so the metrics report it as such.
    return (x + 1.0) * 127.5 if not np.all(np.isfinite(x)) else to_uint8(x)


def evaluate(
    version_uri: str,
    domain_a: str,
    domain_b: str,
    *,
    limit: int | None = None,
    holdout: float = 0.3,
    paired_b_to_a: str | None = None,
    write: bool = False,
) -> dict[str, Any]:
    """Metrics of one model version on the held-out images of both domains.

    cycle:    PSNR / SSIM of x vs F(G(x)) per domain (higher is better);
    identity: PSNR of G(y) vs y for images already in G's target domain;
    swd:      sliced Wasserstein distance (x1e3) of translated vs real target images, and the
              same for the untranslated inputs (what a do-nothing generator would score);
    color:    colour-histogram distance, translated and untranslated;
    paired:   PSNR / SSIM of G_BA(b) vs style(b) when a ground-truth style is given.
    Non-finite values are reported as null and listed under "non_finite".
    """
    from cyclegan_jobs.inference import Generators

    config = storage.read_json(storage.join(version_uri, "config.json"))
    model_cfg = model_config_from_dict(config["model"])
    size = model_cfg.image_size
    held = {}
    for d, uri in (("a", domain_a), ("b", domain_b)):
        data = datasets.load_domain(uri, size, domain=d, holdout=holdout, limit=limit)
        held[d] = data.test if len(data.test) else data.train  # holdout 0: all we have
    # float32: metrics must not depend on the machine's fastest precision.
    gens = Generators.load(version_uri, model_cfg, precision="float32")
    a, b = held["a"], held["b"]
    fake_a, fake_b, rec_a, rec_b = _cycles(gens, a, b)
    id_a = _to_uint8(gens.apply("generator_BA", a, BATCH))
    id_b = _to_uint8(gens.apply("generator_AB", b, BATCH))

    result: dict[str, Any] = {
        "version": PurePosixPath(version_uri.rstrip("/")).name,
        "image_size": size,
        "images": {"a": len(a), "b": len(b)},
        "data": {"domain_a": domain_a, "domain_b": domain_b, "holdout": holdout, "limit": limit},
        "cycle": {
            "a": {"psnr": metrics.psnr(a, rec_a), "ssim": _ssim(a, rec_a)},
            "b": {"psnr": metrics.psnr(b, rec_b), "ssim": _ssim(b, rec_b)},
        },
        "identity": {"a": metrics.psnr(a, id_a), "b": metrics.psnr(b, id_b)},
        "swd": {
            "a2b": _swd(fake_b, b),
            "b2a": _swd(fake_a, a),
            "a2b_untranslated": _swd(a, b),
            "b2a_untranslated": _swd(b, a),
        },
        "color": {
            "a2b": _color(fake_b, b),
            "b2a": _color(fake_a, a),
            "a2b_untranslated": _color(a, b),
            "b2a_untranslated": _color(b, a),
        },
        "paired": None,
    }
    if paired_b_to_a:
        truth = np.asarray(load_style(paired_b_to_a)(b), dtype=np.uint8)
        result["paired"] = {
            "style": paired_b_to_a,
            "psnr": metrics.psnr(fake_a, truth),
            "ssim": _ssim(fake_a, truth),
            "psnr_do_nothing": metrics.psnr(b, truth),
        }
    result.update(_summary_scores(result["cycle"], result["swd"]))
    result, result["non_finite"] = _finite(result)
    if write:
        storage.write_json(storage.join(version_uri, "evaluation.json"), result)
    return result


def _cycles(gens: Any, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """(B->A, A->B, A->B->A, B->A->B) of uint8 held-out images through `gens` (an
    inference.Generators); NaN outputs stay float (see _to_uint8)."""
    fake_b = gens.apply("generator_AB", a, BATCH)
    fake_a = gens.apply("generator_BA", b, BATCH)
    rec_a = _to_uint8(gens.apply("generator_BA", _to_uint8(fake_b), BATCH))
    rec_b = _to_uint8(gens.apply("generator_AB", _to_uint8(fake_a), BATCH))
    return _to_uint8(fake_a), _to_uint8(fake_b), rec_a, rec_b


def _summary_scores(cycle: dict, swd: dict) -> dict[str, float]:
    return {
        "cycle_psnr": _mean(cycle["a"]["psnr"], cycle["b"]["psnr"]),
        "swd_mean": _mean(swd["a2b"], swd["b2a"]),
    }


def selection_metrics(gens: Any, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The unsupervised scores model selection ranks by, computed as `evaluate` does: cycle
    PSNR (mean of both domains) and SWD of translated vs real target images (mean of both
    directions). `gens` is an inference.Generators; a, b uint8 held-out images."""
    fake_a, fake_b, rec_a, rec_b = _cycles(gens, a, b)
    cycle = {"a": {"psnr": metrics.psnr(a, rec_a)}, "b": {"psnr": metrics.psnr(b, rec_b)}}
    swd = {"a2b": _swd(fake_b, b), "b2a": _swd(fake_a, a)}
    # Signals that see colour: the colour-histogram distance of the translations to the real
    # targets, and the identity PSNR (a target-domain image through its own generator).
    same_a = _to_uint8(gens.apply("generator_BA", a, BATCH))
    same_b = _to_uint8(gens.apply("generator_AB", b, BATCH))
    return {
        **_summary_scores(cycle, swd),
        "color_mean": _mean(_color(fake_b, b), _color(fake_a, a)),
        "identity_psnr": _mean(metrics.psnr(a, same_a), metrics.psnr(b, same_b)),
        # What no per-image affine colour map of the input explains (texture, blotches).
        "fit_residual": _mean(_fit(a, fake_b), _fit(b, fake_a)),
    }


def score_outputs(input_uri: str, output_uri: str, style_spec: str) -> dict[str, Any]:
    """A translation job's outputs against a known mapping (the local default's data: domain A
    is `sample_data.paint` of faces). Each input x should come out as style(x): PSNR of the
    stylized outputs against it, the do-nothing PSNR (x against style(x)) and the gain, the
    cycle PSNR (reconstructed against x) and the stylized outputs' checkerboard_db, each input
    at its outputs' size (images.resize, when the job wrote another size). Inputs without both
    outputs are counted as `unscored`, not skipped silently."""
    from cyclegan_jobs.images import decode_image, resize
    from cyclegan_jobs.translation.stages import output_rel

    style = load_style(style_spec)
    inputs, stylized, rebuilt, unscored = [], [], [], []
    for info in storage.list_objects(input_uri):
        x = decode_image(storage.read_bytes(info.uri))
        outs = [
            storage.join(output_uri, root, output_rel(info.rel, "png"))
            for root in ("stylized", "reconstructed")
        ]
        try:
            y, z = (decode_image(storage.read_bytes(uri)) for uri in outs)
        except (storage.StorageError, ValueError) as err:
            unscored.append(f"{info.rel}: {err}")
            continue
        if y.shape != z.shape:
            unscored.append(f"{info.rel}: outputs of two sizes, {y.shape} and {z.shape}")
            continue
        x = resize(x, y.shape[:2])  # the job's --size: compared at the outputs' size
        for kept, image in ((inputs, x), (stylized, y), (rebuilt, z)):
            kept.append(image)
    if not inputs:
        raise ValueError(f"no input under {input_uri} has outputs under {output_uri}")
    x, y, z = (np.stack(v) for v in (inputs, stylized, rebuilt))
    truth = np.asarray(style(x), np.uint8)
    psnr, nothing = metrics.psnr(y, truth), metrics.psnr(x, truth)
    return {
        "style": style_spec,
        "scored": len(x),
        "unscored": unscored,
        "psnr_true": psnr,
        "psnr_do_nothing": nothing,
        "gain_db": psnr - nothing,
        "cycle_psnr": metrics.psnr(z, x),
        "checkerboard_db": metrics.checkerboard_db(y),
    }


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    # SSIM needs 11 px; smaller test images have no SSIM rather than a wrong one.
    return metrics.ssim(a, b) if min(a.shape[1:3]) >= metrics.SSIM_WINDOW else float("nan")


def _swd(x: np.ndarray, y: np.ndarray) -> float:
    return metrics.swd(x, y, seed=0)["mean"]


def _color(x: np.ndarray, y: np.ndarray) -> float:
    return metrics.color_histogram_distance(x, y)


def _fit(source: np.ndarray, output: np.ndarray) -> float:
    """losses.colour_fit_residual (the training term) of uint8 images, scaled to [-1, 1]."""
    from cyclegan_jobs.training.losses import colour_fit_residual

    return float(colour_fit_residual(to_unit(source), to_unit(output)))


def _mean(*values: float | None) -> float:
    vals = [float("nan") if v is None else v for v in values]
    return float(np.mean(vals))


def _finite(tree: Any, path: str = "") -> tuple[Any, list[str]]:
    """Replace NaN/inf floats by None (JSON null) and list where they were."""
    bad: list[str] = []
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out[k], sub = _finite(v, f"{path}.{k}" if path else k)
            bad += sub
        return out, bad
    if isinstance(tree, float | np.floating):
        value = metrics.finite_or_none(float(tree))
        return value, ([path] if value is None else [])
    return tree, bad


def gate(
    candidate_uri: str,
    model_store: str,
    *,
    thresholds: Thresholds | None = None,
    domain_a: str | None = None,
    domain_b: str | None = None,
    limit: int | None = None,
    promote: bool = False,
) -> dict[str, Any]:
    """Decide whether a candidate may replace the promoted version; record the decision.

    Both versions are evaluated on the same held-out images (by default the candidate's training
    data split). The decision, its reasons and the metrics go to `<candidate>/gate.json`.
    """
    thresholds = thresholds or Thresholds()
    config = storage.read_json(storage.join(candidate_uri, "config.json"))
    train_cfg = config.get("train", {})
    domain_a = domain_a or train_cfg.get("domain_a")
    domain_b = domain_b or train_cfg.get("domain_b")
    if not domain_a or not domain_b:
        raise ValueError("no evaluation data: pass --domain-a and --domain-b")
    holdout = float(train_cfg.get("holdout", 0.3))
    cand = _stored_evaluation(candidate_uri, domain_a, domain_b, limit, holdout)
    if cand is None:
        cand = evaluate(candidate_uri, domain_a, domain_b, limit=limit, holdout=holdout, write=True)

    reasons: list[str] = []
    if cand["non_finite"]:
        reasons.append(f"non-finite metrics: {', '.join(cand['non_finite'])}")
    psnr = cand["cycle_psnr"]
    if psnr is not None and psnr < thresholds.min_cycle_psnr:
        reasons.append(f"cycle PSNR {psnr:.2f} dB < floor {thresholds.min_cycle_psnr} dB")

    current = registry.promoted(model_store)
    baseline = None
    candidate_name = cand["version"]
    if current and current["version"] != candidate_name and not cand["non_finite"]:
        base_uri = registry.version_uri(model_store, current["version"])
        baseline = evaluate(base_uri, domain_a, domain_b, limit=limit, holdout=holdout)
        reasons += _compare(cand, baseline, thresholds)

    decision = {
        "candidate": candidate_name,
        "passed": not reasons,
        "reasons": reasons,
        "thresholds": asdict(thresholds),
        "compared_with": baseline["version"] if baseline else None,
        "candidate_metrics": {"cycle_psnr": cand["cycle_psnr"], "swd_mean": cand["swd_mean"]},
        "promoted_metrics": (
            {"cycle_psnr": baseline["cycle_psnr"], "swd_mean": baseline["swd_mean"]}
            if baseline
            else None
        ),
        "data": {"domain_a": domain_a, "domain_b": domain_b, "images": cand["images"]},
        "decided_at": datetime.now(UTC).isoformat(),
        "promoted": False,
    }
    if decision["passed"] and promote:
        registry.promote(model_store, candidate_name, reason="passed the quality gate")
        decision["promoted"] = True
    storage.write_json(storage.join(candidate_uri, "gate.json"), decision)
    return decision


def _stored_evaluation(
    version_uri: str, domain_a: str, domain_b: str, limit: int | None, holdout: float
) -> dict[str, Any] | None:
    """The version's evaluation.json when it was made on the same data (an evaluate step ran
    before the gate), so the gate does not evaluate the candidate twice."""
    try:
        stored = storage.read_json(storage.join(version_uri, "evaluation.json"))
    except storage.NotFoundError:
        return None
    same = {"domain_a": domain_a, "domain_b": domain_b, "holdout": holdout, "limit": limit}
    return stored if stored.get("data") == same else None


def _compare(cand: dict, base: dict, t: Thresholds) -> list[str]:
    reasons = []
    c_psnr, b_psnr = cand["cycle_psnr"], base["cycle_psnr"]
    if b_psnr is not None and c_psnr is not None and c_psnr < b_psnr - t.psnr_tolerance:
        reasons.append(
            f"cycle PSNR {c_psnr:.2f} dB is worse than the promoted {base['version']}'s "
            f"{b_psnr:.2f} dB by more than {t.psnr_tolerance} dB"
        )
    c_swd, b_swd = cand["swd_mean"], base["swd_mean"]
    if b_swd is not None and c_swd is not None and c_swd > b_swd * (1 + t.swd_tolerance):
        reasons.append(
            f"sliced Wasserstein distance {c_swd:.1f} is worse than the promoted "
            f"{base['version']}'s {b_swd:.1f} by more than {t.swd_tolerance:.0%}"
        )
    return reasons

"""The retrain DAG's library side: whether there is new data to train on (`new_data`), and
the run's outcome, what it did and why, stored beside its checkpoints
(`<model store>/runs/<run>/retrain.json`) and logged as one block for the task log."""

from __future__ import annotations

import logging
from typing import Any

from cyclegan_jobs import registry, storage
from cyclegan_jobs.training.datasets import source_snapshot

log = logging.getLogger(__name__)


def new_data(uri: str, model_store: str, *, domain: str = "b") -> dict[str, Any]:
    """How many of a domain's source objects are new since the promoted version was trained.

    New: a key missing from the data snapshot in the promoted version's metrics.json, or one
    whose ETag changed. With no promoted version everything is new.
    """
    listing = source_snapshot(uri)
    current = registry.promoted(model_store)
    known: dict[str, str] = {}
    if current:
        version = registry.version_uri(model_store, current["version"])
        metrics = storage.read_json(storage.join(version, "metrics.json"))
        known = {e["key"]: e["etag"] for e in metrics.get("snapshot", {}).get(domain, [])}
    new = [e["key"] for e in listing if known.get(e["key"]) != e["etag"]]
    return {
        "domain": domain,
        "uri": uri,
        "promoted": current["version"] if current else None,
        "total": len(listing),
        "new": len(new),
        "examples": new[:10],
    }


def outcome(found: dict, trained: dict | None, decision: dict | None, promoted: dict | None,
            *, min_new_images: int, promote: str) -> str:  # fmt: skip
    """One line: promoted <version> | refused <version>: <reasons> | not trained | ..."""
    if trained is None:
        return f"not trained: {found['new']} new images < {min_new_images}"
    if promoted:
        return f"promoted {decision['candidate']}"
    if decision and not decision["passed"]:
        return f"refused {decision['candidate']}: {'; '.join(decision['reasons'])}"
    return f"trained {trained['version']}; not promoted (promote={promote})"


def summary_block(result: dict, uri: str) -> str:
    """The run's outcome as the summary task logs it: readable in the task log as one block."""
    found, gate = result["new_data"], result["gate"] or {}
    metrics = gate.get("candidate_metrics") or {}
    since = found["promoted"] or "(no promoted version)"
    rows = [
        ("outcome", result["outcome"]),
        ("new data", f"{found['new']} of {found['total']} images new since {since}"),
        ("version", result["version"] or "-"),
    ]
    if result.get("selected"):
        picked = result["selected"]
        rows.append(("selected", f"step {picked['step']} of {result['steps']} (model selection)"))
    if gate:
        psnr, swd = metrics.get("cycle_psnr"), metrics.get("swd_mean")
        rows.append(("gate", "passed" if gate["passed"] else "refused"))
        rows += [("reason", reason) for reason in gate["reasons"]]
        rows.append(("cycle PSNR", "-" if psnr is None else f"{psnr:.2f} dB"))
        rows.append(("SWD", "-" if swd is None else f"{swd:.4f}"))
        rows.append(("compared with", gate.get("compared_with") or "(no promoted version)"))
    rows.append(("summary", uri))
    width = max(len(name) for name, _ in rows)
    lines = [f"retrain run {result['run_id']}"]
    lines += [f"  {name:<{width}} : {value}" for name, value in rows]
    return "\n".join(lines)


def write_summary(model_store: str, run_key: str, run_id: str, steps: dict[str, Any], *,
                  min_new_images: int, promote: str) -> dict[str, str]:  # fmt: skip
    """Store and log what the run did. `steps`: the results of its tasks by name (new_data,
    trained, gate, promoted; None where a task was skipped). `run_key`: the run's id as a key."""
    found, trained = steps["new_data"], steps["trained"]
    decision, promoted = steps["gate"], steps["promoted"]
    said = outcome(found, trained, decision, promoted, min_new_images=min_new_images,
                   promote=promote)  # fmt: skip
    uri = storage.join(model_store, "runs", run_key, "retrain.json")
    result = {
        "run_id": run_id,
        "outcome": said,
        "new_data": found,
        "version": trained and trained["version"],
        "steps": trained and trained["steps"],
        "selected": trained and trained.get("selected"),
        "gate": decision,
        "promoted": promoted,
    }
    storage.write_json(uri, result)
    log.info("%s", summary_block(result, uri))
    return {"outcome": said, "summary": uri}

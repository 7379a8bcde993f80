"""Which selection score picks the step the truth would? Replays known-mapping runs' curves.

Each `benchmarks/quality.py` run writes quality.json with a curve: at every selection step the
unsupervised scores model selection saw (held-out SWD, cycle PSNR, colour-histogram distance,
identity PSNR) and the truth probe's PSNR against the known style, which selection never sees.
This replays each candidate score over those curves, online as ModelSelection does (a step
replaces the best so far when its key is lower), and prints, per rule, how far the selected
step's true PSNR is below the best scored step's: the mean and worst shortfall, and how often
it is within 0.3 and 0.5 dB.

    .venv/bin/python benchmarks/selection.py var/quality/*/quality.json [--floor 15]
    .venv/bin/python benchmarks/selection.py benchmarks/results/curves-2026-12-06.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyclegan_jobs.training import hooks

Row = dict[str, float]


def _log(value: float) -> float:
    return math.log(max(value, 1e-9))


def _by_key(key: Callable[[Row], float]) -> Callable[[Row, Row | None, float], bool]:
    """A rule from a key (lower is better) for rows whose cycle PSNR clears the floor; below
    it, the higher cycle PSNR. A new row replaces the best so far when its key is lower."""

    def ranked(row: Row, floor: float) -> tuple:
        return (1, -row["cycle_psnr"]) if row["cycle_psnr"] < floor else (0, key(row))

    return lambda row, best, floor: best is None or ranked(row, floor) < ranked(best, floor)


# Candidate rules: whether a new row replaces the best so far. Scale-free combinations (sums
# of logs: products) compare one step with the best so far without knowing the run's range, as
# an online selection must. "the library's" is the rule ModelSelection uses.
RULES: dict[str, Callable[[Row, Row | None, float], bool]] = {
    "swd (before)": _by_key(lambda r: r["swd_mean"]),
    "colour": _by_key(lambda r: r["color_mean"]),
    "swd x colour": _by_key(lambda r: _log(r["swd_mean"]) + _log(r["color_mean"])),
    "swd x colour^2": _by_key(lambda r: _log(r["swd_mean"]) + 2 * _log(r["color_mean"])),
    "swd x colour^0.5": _by_key(lambda r: _log(r["swd_mean"]) + 0.5 * _log(r["color_mean"])),
    "-identity psnr": _by_key(lambda r: -r["identity_psnr"]),
    "the library's": hooks.replaces,
}


def replay(curve: list[Row], rule: str, floor: float) -> Row:
    """The row an online selection with `rule` ends on."""
    best = None
    for row in curve:
        if RULES[rule](row, best, floor):
            best = row
    return best


def table(reports: list[dict], floor: float) -> list[dict]:
    results = []
    for rule in RULES:
        shortfalls = []
        for report in reports:
            curve = report["curve"]
            if not curve or "color_mean" not in curve[0]:
                continue
            truth = max(r["psnr_true"] for r in curve)
            shortfalls.append(truth - replay(curve, rule, floor)["psnr_true"])
        n = len(shortfalls)
        results.append(
            {
                "rule": rule,
                "runs": n,
                "mean_shortfall_db": round(sum(shortfalls) / max(n, 1), 2),
                "worst_shortfall_db": round(max(shortfalls, default=0.0), 2),
                "within_0.3": sum(s <= 0.3 for s in shortfalls),
                "within_0.5": sum(s <= 0.5 for s in shortfalls),
            }
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("reports", nargs="+", help="quality.json files or files of them")
    p.add_argument("--floor", type=float, default=15.0, help="cycle PSNR floor (the gate's)")
    args = p.parse_args()
    reports = []
    for f in args.reports:  # a quality.json, or a file of them under "runs" (benchmarks/results)
        loaded = json.loads(Path(f).read_text())
        reports += loaded.get("runs", [loaded])
    rows = table(reports, args.floor)
    print("| rule | runs | mean shortfall | worst | within 0.3 dB | within 0.5 dB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['rule']} | {r['runs']} | {r['mean_shortfall_db']} | "
            f"{r['worst_shortfall_db']} | {r['within_0.3']} | {r['within_0.5']} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

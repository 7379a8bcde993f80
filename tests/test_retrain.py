"""The retrain DAG's outcome and summary (cyclegan_jobs/retrain.py), without Airflow: the DAG's
runs themselves are in test_dags.py."""

from __future__ import annotations

import json
import logging

from cyclegan_jobs import retrain

FOUND = {"new": 5, "total": 40, "promoted": "v1"}
TRAINED = {"version": "v2", "steps": 300, "selected": {"step": 200}}
REFUSED = {
    "candidate": "s3://m/versions/v2",
    "passed": False,
    "reasons": ["cycle PSNR 12.00 dB < 15.00 dB", "SWD worse"],
    "candidate_metrics": {"cycle_psnr": 12.0, "swd_mean": 0.0512},
    "compared_with": "s3://m/versions/v1",
}
RULES = {"min_new_images": 10, "promote": "gate"}


def test_each_outcome_says_what_happened_and_why() -> None:
    passed = {**REFUSED, "passed": True, "reasons": []}
    said = {
        "skipped": retrain.outcome(FOUND, None, None, None, **RULES),
        "refused": retrain.outcome(FOUND, TRAINED, REFUSED, None, **RULES),
        "promoted": retrain.outcome(FOUND, TRAINED, passed, {"version": "v2"}, **RULES),
        "kept": retrain.outcome(FOUND, TRAINED, passed, None, min_new_images=1, promote="never"),
    }
    assert said["skipped"] == "not trained: 5 new images < 10"
    assert said["refused"] == f"refused {REFUSED['candidate']}: {'; '.join(REFUSED['reasons'])}"
    assert said["promoted"] == f"promoted {REFUSED['candidate']}"
    assert said["kept"] == "trained v2; not promoted (promote=never)"


def test_the_summary_is_stored_and_logged_as_one_block(tmp_path, caplog) -> None:
    steps = {"new_data": FOUND, "trained": TRAINED, "gate": REFUSED, "promoted": None}
    with caplog.at_level(logging.INFO, logger="cyclegan_jobs.retrain"):
        done = retrain.write_summary(str(tmp_path), "run-1", "manual__1", steps, **RULES)
    stored = json.loads((tmp_path / "runs" / "run-1" / "retrain.json").read_text())
    assert done == {
        "outcome": stored["outcome"],
        "summary": str(tmp_path / "runs/run-1/retrain.json"),
    }
    assert stored["outcome"].startswith("refused ") and stored["steps"] == 300
    assert stored["gate"] == REFUSED and stored["selected"] == {"step": 200}
    [block] = [r.getMessage() for r in caplog.records if "retrain run manual__1" in r.getMessage()]
    lines = block.splitlines()
    rows = dict(line.strip().split(" : ", 1) for line in lines[1:])
    rows = {name.strip(): value for name, value in rows.items()}
    assert rows["new data"] == "5 of 40 images new since v1"
    assert rows["selected"] == "step 200 of 300 (model selection)"
    assert rows["cycle PSNR"] == "12.00 dB" and rows["SWD"] == "0.0512"
    assert rows["gate"] == "refused" and rows["compared with"] == REFUSED["compared_with"]
    assert [line for line in lines if "reason" in line and ":" in line][0].endswith(
        REFUSED["reasons"][0]
    )


def test_a_run_without_training_has_no_gate_rows(tmp_path, caplog) -> None:
    steps = {"new_data": {**FOUND, "promoted": None}, "trained": None, "gate": None,
             "promoted": None}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cyclegan_jobs.retrain"):
        retrain.write_summary(str(tmp_path), "r", "r", steps, **RULES)
    [block] = [r.getMessage() for r in caplog.records if "retrain run" in r.getMessage()]
    assert "(no promoted version)" in block and "version  : -" in block
    assert "gate" not in block and "cycle PSNR" not in block

"""`make run`'s flow on a small scale: everything on the local S3 server, and a rerun skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyclegan_local.local_default import run_local_default


def test_local_default_runs_end_to_end_then_skips(aws_env, tmp_path: Path) -> None:
    first = run_local_default(tmp_path / "var", size=32, n_faces=4, epochs=1)
    assert first["trained"] is True
    assert first["counts"]["ok"] == 4 and first["counts"]["failed"] == 0
    assert first["stylized"].startswith("s3://cyclegan-output/")
    assert Path(first["contact_sheet_local"]).is_file()

    second = run_local_default(tmp_path / "var", size=32, n_faces=4, epochs=1)
    assert second["trained"] is False and second["model_version"] == first["model_version"]
    assert second["counts"]["ok"] == 0 and second["counts"]["skipped"] == 4


# Issue 21's bar for the first result a newcomer sees, scored against the truth (domain A of the
# sample data is sample_data.paint of faces).
FIRST_RESULT_GAIN_DB, FIRST_RESULT_CYCLE_DB, FIRST_RESULT_CHECKERBOARD_DB = 5.0, 25.0, 2.0


@pytest.mark.slow
def test_the_first_result_at_make_runs_settings_looks_right(aws_env, tmp_path: Path) -> None:
    """`make run`'s retrain (the tiny preset's defaults, TRAIN_SIZE px, TRAIN_EPOCHS; the retrain
    DAG's form leaves batch size, learning rate and selection to the preset, as here), then the
    translation of the 32 sample faces, scored as `make run` prints it."""
    result = run_local_default(tmp_path / "var")
    scores = result["first_result"]
    assert scores["scored"] == 32 and scores["unscored"] == []
    assert scores["gain_db"] >= FIRST_RESULT_GAIN_DB, scores
    assert scores["cycle_psnr"] >= FIRST_RESULT_CYCLE_DB, scores
    assert scores["checkerboard_db"] <= FIRST_RESULT_CHECKERBOARD_DB, scores

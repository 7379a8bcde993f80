"""`make run`'s flow on a small scale: everything on the local S3 server, and a rerun skips."""

from __future__ import annotations

from pathlib import Path

from cyclegan_local.local_default import run_local_default


def test_local_default_runs_end_to_end_then_skips(aws_env, tmp_path: Path) -> None:  # noqa: ANN001
    first = run_local_default(tmp_path / "var", size=32, n_faces=4, epochs=1)
    assert first["trained"] is True
    assert first["counts"]["ok"] == 4 and first["counts"]["failed"] == 0
    assert first["stylized"].startswith("s3://cyclegan-output/")
    assert Path(first["contact_sheet_local"]).is_file()

    second = run_local_default(tmp_path / "var", size=32, n_faces=4, epochs=1)
    assert second["trained"] is False and second["model_version"] == first["model_version"]
    assert second["counts"]["ok"] == 0 and second["counts"]["skipped"] == 4

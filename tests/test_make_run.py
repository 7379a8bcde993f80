"""`make run`'s own code path as a newcomer meets it: `scripts/airflow_local.py run` in a child
process with a scrubbed environment (no AIRFLOW_*, no AWS_*, HOME a fresh empty folder) on a
fresh root. Both DAGs run through Airflow; the second run trains nothing and translates nothing.

Training is cut to a few tiny steps with `--retrain-conf` (the wiring is under test here, not the
model), the gate's floor lowered so that the version is promoted and the rerun has nothing to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "scripts" / "airflow_local.py"
pytestmark = pytest.mark.slow
SMALL_TRAINING = {"image_size": 32, "epochs": 1, "steps_per_epoch": 20, "min_cycle_psnr": 0}


def _make_run(root: Path, home: Path) -> tuple[dict, str]:
    """One `make run` (the command it runs) in an environment with only PATH and HOME."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
    retrain_conf = json.dumps(SMALL_TRAINING)
    done = subprocess.run(
        [sys.executable, str(DRIVER), "run", "--root", str(root), "--retrain-conf", retrain_conf],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_make_run_twice_in_a_clean_environment(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "var"
    home.mkdir()
    first, log = _make_run(root, home)
    assert "cyclegan_retrain: success" in log and "cyclegan_nightly_translate: success" in log
    assert first["retrained"] is True
    assert first["model version"] != "(none promoted)"
    counts = first["counts"]
    assert counts["ok"] == counts["total"] == 32 and counts["failed"] == 0
    assert Path(first["contact sheet"]).is_file()
    assert first["Airflow home"] == str(root / "airflow")
    assert not (home / "airflow").exists(), "Airflow configured itself for the default home"

    second, log = _make_run(root, home)
    assert "cyclegan_retrain not needed" in log
    assert "metadata DB and pool cyclegan_gpu already prepared" in log
    assert second["retrained"] is False
    assert second["model version"] == first["model version"]
    assert second["counts"] == {**counts, "ok": 0, "skipped": 32}

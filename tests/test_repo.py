"""The repository contract: pinned installs and a library free of Airflow."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_requirements_are_exact_pins() -> None:
    for name in ("requirements-job.txt", "requirements-airflow.txt", "requirements-dev.txt"):
        lines = [
            line.strip()
            for line in (ROOT / name).read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-r"))
        ]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", ln) for ln in lines)
    runtime = "".join((ROOT / f"requirements-{s}.txt").read_text() for s in ("job", "airflow"))
    for pkg in ("tensorflow==2.21.0", "apache-airflow==3.3.2", "apache-airflow-providers-amazon"):
        assert pkg in runtime


def test_console_script_points_at_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["cyclegan-jobs"] == "cyclegan_jobs.cli:main"


def test_library_never_imports_airflow() -> None:
    for path in (ROOT / "cyclegan_jobs").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+airflow", path.read_text(), flags=re.M), path
    code = (
        "import sys, cyclegan_jobs.cli, cyclegan_jobs.train, cyclegan_jobs.registry; "
        "print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


MAX_FUNCTION_LINES = 80


def test_no_library_function_is_longer_than_80_lines() -> None:
    import ast

    too_long = []
    for path in sorted((ROOT / "cyclegan_jobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "split these into named stages: " + ", ".join(too_long)

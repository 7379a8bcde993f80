"""The repository contract: pinned installs and a library free of Airflow."""

from __future__ import annotations

import ast
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
    for path in (ROOT / "cyclegan_jobs").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+airflow", path.read_text(), flags=re.M), path
    code = (
        "import sys, cyclegan_jobs.cli, cyclegan_jobs.training.train, cyclegan_jobs.registry; "
        "print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


MAX_FUNCTION_LINES = 80
# Everything but the tests: the package, the DAGs, scripts, benchmarks, tools and the plugin.
CODE_DIRS = (
    "cyclegan_jobs",
    "cyclegan_local",
    "dags",
    "plugins",
    "scripts",
    "benchmarks",
    "docker",
)


def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_no_function_outside_the_tests_is_longer_than_80_lines() -> None:
    import ast

    too_long = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    where = path.relative_to(ROOT)
                    too_long.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    assert len(_code_files()) > 45
    assert not too_long, "split these into named stages: " + ", ".join(too_long)


def _module_name(path: Path) -> str:
    """cyclegan_jobs/storage/s3.py -> "storage.s3"; a package's __init__ -> the package."""
    parts = path.relative_to(ROOT / "cyclegan_jobs").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "cyclegan_jobs"


def _imported(node: ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """The package modules an import names (relative or cyclegan_jobs.x), as _module_name."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    elif (node.module or "").startswith("cyclegan_jobs"):
        base, node = [], ast.ImportFrom(module=node.module[len("cyclegan_jobs.") :] or None,
                                        names=node.names, level=1)  # fmt: skip
    else:
        return set()
    target = ".".join([*base, *([node.module] if node.module else [])])
    return {target, *(f"{target}.{a.name}".strip(".") for a in node.names)}


def _package_imports() -> dict[str, set[str]]:
    """Each package module's imports of other package modules, at any depth of the code (a
    function's lazy import counts: it is a dependency too), TYPE_CHECKING blocks left out."""
    paths = sorted((ROOT / "cyclegan_jobs").rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name, tree = _module_name(path), ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in typing_only:
                found |= _imported(node, name, path.name == "__init__.py")
        graph[name] = (found & modules) - {name}
    return graph


def test_no_import_cycle_among_the_packages_modules() -> None:
    graph = _package_imports()
    # The scan sees lazy imports, relative ones at any level and subpackages' modules.
    assert graph["cli"] >= {"options", "errors", "storage", "training.train", "translation.shards"}
    assert graph["storage.s3"] >= {"config", "errors", "storage.base", "storage.uris"}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert not cycles, cycles

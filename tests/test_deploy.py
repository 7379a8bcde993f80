"""The Docker deployment's contract, checked without Docker (`make stack-test` runs the stack).

docker/compose.yaml: every image a variable with an official default, host ports on 127.0.0.1,
no secret without a LOCAL-ONLY mark, the gpu queue and its override. docker/Dockerfile: the
three stages, non-root, healthchecks, and copies of files that exist. The two dependency sets,
and the Airflow pieces the stack uses importing together in this venv.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
VARIABLE = re.compile(r"^\$\{(\w+):?-([^}]*)\}$")


def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_image_is_a_variable_with_an_official_default() -> None:
    images = {name: svc["image"] for name, svc in compose()["services"].items()}
    expected = {
        "postgres": ("POSTGRES_IMAGE", "postgres:16"),
        "redis": ("REDIS_IMAGE", "redis:7.2-bookworm"),
        "s3": ("S3_IMAGE", "chrislusf/seaweedfs:4.48"),
        "airflow-apiserver": ("CYCLEGAN_AIRFLOW_IMAGE", "cyclegan-jobs-airflow:latest"),
        "airflow-worker-gpu": ("CYCLEGAN_WORKER_IMAGE", "cyclegan-jobs-worker:latest"),
        "s3-init": ("CYCLEGAN_JOB_IMAGE", "cyclegan-jobs:latest"),
    }
    for service, image in images.items():
        assert VARIABLE.match(image), f"{service}: image {image!r} is not ${{VAR:-default}}"
    for service, (variable, default) in expected.items():
        assert VARIABLE.match(images[service]).groups() == (variable, default), service
    # Nothing names this machine's stand-ins (docker/local) or its base image.
    assert "cyclegan-local" not in (DOCKER / "compose.yaml").read_text()
    assert "cyclegan-local" not in (DOCKER / "Dockerfile").read_text()


def test_host_ports_bind_to_loopback_by_default() -> None:
    published = [
        (name, port) for name, svc in compose()["services"].items() for port in svc.get("ports", [])
    ]
    assert {name for name, _ in published} == {"airflow-apiserver", "s3"}
    for name, port in published:
        assert port.startswith("${HOST_BIND:-127.0.0.1}:"), f"{name} publishes {port}"


def _environment_values(node: object) -> list[tuple[str, str]]:
    """Every (name, value) pair under any `environment:` in the file, anchors resolved."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "environment" and isinstance(value, dict):
                found += [(k, str(v)) for k, v in value.items()]
            else:
                found += _environment_values(value)
    elif isinstance(node, list):
        for item in node:
            found += _environment_values(item)
    return found


def test_secrets_come_from_variables_with_marked_local_only_defaults() -> None:
    secret_name = re.compile(r"PASSWORD|SECRET|_KEY$|ACCESS_KEY|SQL_ALCHEMY_CONN|RESULT_BACKEND")
    checked = 0
    for name, value in _environment_values(compose()):
        if not secret_name.search(name):
            continue
        defaults = re.findall(r"\$\{\w+:?-([^}]*)\}", value)
        assert defaults or "${" in value, f"{name} is a literal: {value!r}"
        for default in defaults:
            assert default == "" or "LOCAL-ONLY" in default, f"{name}: unmarked {default!r}"
        checked += 1
    assert checked >= 8
    example = [ln for ln in (DOCKER / ".env.example").read_text().splitlines() if "=" in ln]
    values = [ln.split("=", 1)[1] for ln in example if not ln.startswith("#")]
    assert "change-me" in values and not any("LOCAL-ONLY" in v for v in values)
    assert "docker/.env" in (ROOT / ".gitignore").read_text().split()


def test_gpu_queue_pool_and_nvidia_override() -> None:
    services = compose()["services"]
    gpu = services["airflow-worker-gpu"]["command"]
    assert gpu[gpu.index("--queues") + 1] == "gpu" and gpu[gpu.index("--concurrency") + 1] == "1"
    default = services["airflow-worker"]["command"]
    assert default[default.index("--queues") + 1] == "default"
    env = services["airflow-worker-gpu"]["environment"]
    assert (env["CYCLEGAN_QUEUE"], env["CYCLEGAN_POOL"]) == ("gpu", "cyclegan_gpu")
    override = compose("compose.gpu.yaml")["services"]["airflow-worker-gpu"]
    device = override["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert override["build"]["args"]["TENSORFLOW"] == "tensorflow[and-cuda]"
    assert set(compose()["volumes"]) >= {"postgres-db-volume", "s3-data"}


def _stages(dockerfile: str) -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+([\w-]+)\s*$", dockerfile, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_dockerfile_stages_are_non_root_with_healthchecks_and_real_copies() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert set(stages) == {"base", "job-deps", "job", "airflow", "worker"}
    for name in ("job", "airflow", "worker"):
        body = stages[name]
        assert re.search(r"^USER\s+50000\s*$", body, flags=re.M), f"{name} runs as root"
        assert "HEALTHCHECK" in body, f"{name} has no healthcheck"
    assert "tensorflow" not in stages["airflow"].lower()  # the Airflow image has no TensorFlow
    # ... but the package without its dependencies: the DAG files read cyclegan_jobs.options.
    assert "pip install --no-deps ." in stages["airflow"]
    assert 'ENTRYPOINT ["cyclegan-jobs"]' in stages["job"]
    for sources in re.findall(r"^COPY(?:\s+--\S+)*\s+(.+?)\s+\S+$", dockerfile, flags=re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert "cyclegan_local" not in dockerfile  # development tools stay out of the images
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)
    # The DAGs import their timetable from the plugins folder ($AIRFLOW_HOME/plugins), which
    # also registers it: every image that parses the DAGs carries both.
    for name in ("airflow", "worker"):
        for folder in ("dags", "plugins"):
            copy = rf"^COPY(?:\s+--\S+)*\s+{folder}\s+/opt/airflow/{folder}\s*$"
            assert re.search(copy, stages[name], flags=re.M), f"{name} does not copy {folder}"
    assert "plugins" not in ignored


def test_dependency_sets_are_apart_and_requirements_txt_joins_them() -> None:
    job = (ROOT / "requirements-job.txt").read_text()
    orchestration = (ROOT / "requirements-airflow.txt").read_text()
    assert "tensorflow==" in job and "apache-airflow" not in job
    assert "apache-airflow==" in orchestration and "tensorflow" not in orchestration
    lines = (ROOT / "requirements.txt").read_text().split("\n")
    assert {"-r requirements-job.txt", "-r requirements-airflow.txt"} <= set(lines)


def test_the_stacks_airflow_pieces_import_together() -> None:
    # The celery provider once broke on a newer celery; import what the stack loads.
    code = (
        "from airflow.providers.celery.executors.celery_executor import CeleryExecutor; "
        "from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager; "
        "import psycopg2, redis; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_runtime_package_leaves_out_the_local_tools() -> None:
    assert not list((ROOT / "cyclegan_jobs").glob("local_*.py"))
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert find["find"]["include"] == ["cyclegan_jobs*"]


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/opt/venv/bin/python", "/opt/venv/bin/airflow", "api-server"], ["api-server"]),
        (["/opt/venv/bin/python", "/opt/venv/bin/airflow", "celery", "worker", "--queues", "gpu"],
         ["celery", "worker", "--queues", "gpu"]),
        (["python", "/opt/cyclegan-jobs/airflow_init.py"], []),
    ],
)  # fmt: skip
def test_healthcheck_finds_the_component(cmdline: list[str], expected: list[str], tmp_path) -> None:
    health = load_script("airflow_health")
    proc = tmp_path / "cmdline"
    proc.write_bytes("\0".join(cmdline).encode() + b"\0")
    assert health.command(proc)[: len(expected)] == expected


def test_init_reads_json_after_airflow_warnings() -> None:
    init = load_script("airflow_init")
    stdout = '2026-12-01T16:17:11Z [warning ] deprecated\n[{"username": "admin"}]\n'
    assert init.json_output(stdout) == [{"username": "admin"}]
    assert init.json_output("no users\n") == []


def test_empty_schedule_means_manual_triggers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stack test (and anyone who wants no scheduled runs) sets the schedules empty.
    monkeypatch.syspath_prepend(str(ROOT / "dags"))
    from cyclegan_common import Settings

    monkeypatch.setenv("CYCLEGAN_NIGHTLY_SCHEDULE", "")
    monkeypatch.delenv("CYCLEGAN_RETRAIN_SCHEDULE", raising=False)
    settings = Settings.from_env()
    assert settings.nightly_schedule is None
    assert settings.retrain_schedule == "@weekly"

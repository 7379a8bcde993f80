"""The Airflow DAGs, in a real Airflow (SQLite metadata DB in a temporary AIRFLOW_HOME).

Each DAG run is `scripts/airflow_local.py dag-test` in a subprocess (Airflow reads its settings
when first imported, and a fresh process shows what parsing imports), against the SeaweedFS
server through the `aws_default` connection. The end-to-end tests share one retrained model.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from PIL import Image

from cyclegan_jobs import registry, storage
from cyclegan_jobs.images import encode_jpeg
from cyclegan_jobs.sample_data import synthetic_faces, write_sample_domains

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
DRIVER = REPO / "scripts" / "airflow_local.py"
sys.path[:0] = [str(DRIVER.parent), str(DAGS)]
import airflow_local  # noqa: E402
from cyclegan_common import safe_run_id  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 32
# A few steps of the tiny preset: enough to produce a version, not a good one, so the gate's
# floor is lowered where a test needs a promotion (the floor itself is tested in test_evaluate).
TRAIN_CONF = {
    "preset": "tiny",
    "image_size": SIZE,
    "epochs": 1,
    "steps_per_epoch": 20,
    "select_every": 10,  # model selection scores steps 10 and 20; the better one is the version
    "min_cycle_psnr": 0.0,
}


def _bucket(server) -> str:
    name = f"dag-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def airflow(s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A migrated Airflow home with the pool, and the environment for its processes."""
    home = tmp_path_factory.mktemp("airflow")
    env = airflow_local.airflow_env(
        home,
        s3_server.endpoint_url,
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    airflow_local.prepare_home(env)
    storage.configure(endpoint_url=s3_server.endpoint_url)
    yield {**os.environ, **env}
    storage.configure()


def _driver(env: dict, dag_id: str, conf: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DRIVER), "dag-test", dag_id, "--conf", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def dag_test(env: dict, dag_id: str, conf: dict) -> dict:
    """One dag.test() in a subprocess; returns the run's state and task states."""
    done = _driver(env, dag_id, conf)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"dag_id"')]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1])
    # The errors of failed tasks, so that an assertion on the result shows why.
    errors = [
        line[:400]
        for line in (done.stdout + done.stderr).splitlines()
        if ("Error" in line or "error" in line) and "XCom not found" not in line
    ]
    result["errors"] = errors[-15:]
    result["log"] = done.stdout + done.stderr
    return result


@pytest.fixture(scope="module")
def trained(airflow: dict, s3_server) -> dict:
    """cyclegan_retrain on fresh buckets: sample domains in, a promoted version out."""
    data, store = _bucket(s3_server), _bucket(s3_server)
    write_sample_domains(data, n_a=24, n_b=24, size=SIZE)
    conf = {
        **TRAIN_CONF,
        "domain_a": f"{data}/domain_a",
        "domain_b": f"{data}/domain_b",
        "model_store": store,
    }
    result = dag_test(airflow, "cyclegan_retrain", conf)
    return {"conf": conf, "result": result, "store": store}


def _faces_bucket(server, n: int, bad: dict[str, bytes] | None = None) -> str:
    bucket = _bucket(server)
    for i, face in enumerate(synthetic_faces(n, SIZE, seed=11)):
        storage.write_bytes(f"{bucket}/in/face_{i:03d}.jpg", encode_jpeg(face))
    for name, data in (bad or {}).items():
        storage.write_bytes(f"{bucket}/in/{name}", data)
    return bucket


def _nightly_conf(trained: dict, bucket: str, **extra) -> dict:
    return {
        "input": f"{bucket}/in/",
        "output": f"{bucket}/out/",
        "model_store": trained["store"],
        "shard_size": 4,
        "batch_size": 4,
        **extra,
    }


def _run_summary(output: str, run_id: str) -> dict:
    return storage.read_json(f"{output}_runs/{safe_run_id(run_id)}/summary.json")


# --- parsing -----------------------------------------------------------------------------------

PARSE = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
dags = Path(sys.argv[1])
bag = BundleDagBag(str(dags), bundle_path=dags)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag in bag.dags.values():
    tasks = {}
    for t in dag.tasks:
        kw = getattr(t, "partial_kwargs", None) or {}
        tasks[t.task_id] = {
            "pool": kw.get("pool", getattr(t, "pool", None)),
            "queue": kw.get("queue", getattr(t, "queue", None)),
            "retries": kw.get("retries", getattr(t, "retries", None)),
            "backoff": kw.get("retry_exponential_backoff",
                              getattr(t, "retry_exponential_backoff", None)),
            **{k: (lambda d: d and d.total_seconds())(kw.get(k, getattr(t, k, None)))
               for k in ("retry_delay", "max_retry_delay")},
            "mapped": hasattr(t, "expand_input"),
            "inlets": [getattr(a, "name", None) for a in getattr(t, "inlets", [])],
            "outlets": [getattr(a, "name", None) for a in getattr(t, "outlets", [])],
            "trigger_rule": getattr(getattr(t, "trigger_rule", None), "value", None),
        }
    out["dags"][dag.dag_id] = {
        "schedule": str(dag.schedule), "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs, "tags": sorted(dag.tags),
        "params": {k: {**dag.params.get_param(k).schema,
                       "description": dag.params.get_param(k).description,
                       "default": dag.params.get_param(k).value} for k in dag.params},
        "doc_md": dag.doc_md or "", "tasks": tasks,
    }
heavy = ("tensorflow", "numpy", "PIL", "keras")
out["imported"] = [m for m in heavy if m in sys.modules]
# The DAGs read the library's options and choices (stdlib only); nothing else.
out["imported"] += [m for m in sys.modules if m.startswith("cyclegan_jobs.")
                    and m not in ("cyclegan_jobs.config", "cyclegan_jobs.errors",
                                  "cyclegan_jobs.options")]
print(json.dumps(out))
"""


def _parse(env: dict, runner: str = "local") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PARSE, str(DAGS)],
        env={**env, "CYCLEGAN_RUNNER": runner},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def parsed(airflow: dict) -> dict:
    return _parse(airflow)


def test_dagbag_loads_both_dags_with_their_schedules_and_settings(parsed: dict) -> None:
    assert parsed["errors"] == {}
    nightly, retrain = (
        parsed["dags"]["cyclegan_nightly_translate"],
        parsed["dags"]["cyclegan_retrain"],
    )
    assert set(parsed["dags"]) == {"cyclegan_nightly_translate", "cyclegan_retrain"}
    # The settings' crons, in the timetable that skips ticks missed while paused (no surprise
    # run on unpause; tests/test_timetables.py, tests/test_browser.py).
    assert "NextTickCronTimetable('0 2 * * *'" in nightly["schedule"]
    assert "NextTickCronTimetable('0 0 * * 0'" in retrain["schedule"]  # @weekly
    for dag in (nightly, retrain):
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        assert "cyclegan" in dag["tags"]
        assert "Settings" in dag["doc_md"] and "Trigger" in dag["doc_md"]
    assert set(nightly["params"]) == {
        "input", "output", "model_store", "scope", "direction", "size", "batch_size",
        "shard_size", "max_failure_rate",
    }  # fmt: skip
    assert set(retrain["params"]) == {
        "preset", "epochs", "steps_per_epoch", "batch_size", "learning_rate", "image_size",
        "precision", "domain_a", "domain_b", "model_store", "min_new_images", "force",
        "promote", "min_cycle_psnr", "select_every", "disc_augment", "residual",
    }  # fmt: skip
    assert retrain["params"]["epochs"]["minimum"] == 1
    assert retrain["params"]["promote"]["enum"] == ["gate", "never"]
    assert nightly["params"]["scope"]["enum"] == ["new", "all"]
    size = re.compile(nightly["params"]["size"]["pattern"])  # what the form lets through
    assert [bool(size.match(v)) for v in ("default", "native", "1024", "0", "big", "")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip


def test_the_forms_choices_are_the_librarys(parsed: dict) -> None:
    from cyclegan_jobs import cli, config

    form = parsed["dags"]["cyclegan_retrain"]["params"]
    assert form["preset"]["enum"] == list(config.PRESETS)
    assert form["precision"]["enum"] == list(config.PRECISIONS)
    assert form["image_size"]["enum"] == list(config.IMAGE_SIZES)
    assert form["image_size"]["type"] == "integer"  # a dropdown of sizes, not free input
    for size in config.IMAGE_SIZES:  # every choice is one the model accepts
        config.ModelConfig(image_size=size)
    assert set(config.PRESET_HELP) == set(config.PRESETS)
    assert set(config.PRECISION_HELP) == set(config.PRECISIONS)
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: a.choices for a in train._actions if a.choices}
    assert list(choices["preset"]) == list(config.PRESETS)
    assert list(choices["precision"]) == list(config.PRECISIONS)
    for name in ("disc_augment", "residual"):
        assert form[name]["enum"] == list(choices[name]) == ["preset", "on", "off"]


def test_every_param_is_generated_from_the_options_declarations(parsed: dict) -> None:
    from cyclegan_jobs.options import FORMS, form_schema

    assert set(parsed["dags"]) == set(FORMS)
    for dag_id, dag in parsed["dags"].items():
        names = [f.option.name for f in FORMS[dag_id]()]
        assert list(dag["params"]) == names, dag_id  # no Param added by hand, in the form's order
        defaults = {name: param["default"] for name, param in dag["params"].items()}
        for name, (default, text, schema) in form_schema(dag_id, defaults).items():
            assert dag["params"][name] == {**schema, "description": text, "default": default}


def test_every_param_has_a_title_a_description_and_numbers_have_bounds(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        for name, schema in dag["params"].items():
            where = f"{dag_id}.{name}"
            assert schema.get("title") and schema.get("description"), where
            types = schema.get("type")
            types = set(types) if isinstance(types, list) else {types}
            if types & {"integer", "number"} and "enum" not in schema:
                assert "minimum" in schema or "exclusiveMinimum" in schema, where
                assert "maximum" in schema, where


def _code_strings() -> set[str]:
    """Every string constant in the package and the DAG files, docstrings left out."""
    found: set[str] = set()
    for path in [*(REPO / "cyclegan_jobs").rglob("*.py"), *DAGS.glob("*.py")]:
        tree = ast.parse(path.read_text())
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        found |= {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs
        }  # fmt: skip
    return found


def test_the_docs_panel_names_only_params_tasks_and_files_that_exist(parsed: dict) -> None:
    from cyclegan_common import RUNNERS, Settings

    strings = _code_strings()
    for dag_id, dag in parsed["dags"].items():
        doc = dag["doc_md"]
        files = set(re.findall(r"[\w.-]+\.(?:json|jsonl|png|keras|py)\b", doc))
        assert files, dag_id
        for name in files:
            if name.endswith(".py"):
                assert (DAGS / name).is_file() or (REPO / name).is_file(), (dag_id, name)
            else:  # an output the code writes: its name is a string in the code
                assert any(name in text for text in strings), (dag_id, name)
        enums = {str(v) for schema in dag["params"].values() for v in schema.get("enum", [])}
        settings = Settings()  # the connection and its extra, the pool and the queue
        known = {*dag["params"], *dag["tasks"], *enums, *RUNNERS, settings.aws_conn_id,
                 "endpoint_url", settings.pool, settings.queue}  # fmt: skip
        named = set(re.findall(r"`([a-z][a-z0-9_]*)`", doc))
        assert named - known == set(), dag_id
        assert named & set(dag["params"]), dag_id  # the form's fields are explained


def test_heavy_tasks_use_the_gpu_pool_and_queue_and_io_tasks_retry(parsed: dict) -> None:
    nightly = parsed["dags"]["cyclegan_nightly_translate"]["tasks"]
    retrain = parsed["dags"]["cyclegan_retrain"]["tasks"]
    heavy = [nightly["translate_shard"], retrain["train"], retrain["evaluate"], retrain["gate"]]
    for t in heavy:
        assert (t["pool"], t["queue"]) == ("cyclegan_gpu", "gpu")
    assert nightly["translate_shard"]["mapped"] is True
    light = [t for name, t in {**nightly, **retrain}.items() if t not in heavy]
    assert all(t["pool"] != "cyclegan_gpu" for t in light)
    for name in ("resolve_model", "plan", "summarize"):
        # Airflow 3's backoff is a multiplier: True (Airflow 2's flag) is 1.0, a constant delay.
        assert nightly[name]["retries"] >= 1 and nightly[name]["backoff"] >= 2.0, name
    assert nightly["summarize"]["trigger_rule"] == "none_failed"
    assert nightly["resolve_model"]["inlets"] == ["cyclegan_promoted_model"]
    assert retrain["promote"]["outlets"] == ["cyclegan_promoted_model"]


def test_a_heavy_task_on_a_lost_worker_is_retried_within_two_minutes(parsed: dict) -> None:
    """The deployment's heartbeat timeout, the scheduler's check interval and the longest first
    retry delay (Airflow adds up to 100 % jitter to an exponential backoff) fit in 2 minutes; later
    retries back off. On f88ac07 it was 300 s + 300 s, with no backoff."""
    import yaml
    from airflow.configuration import conf

    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    env = compose["x-airflow-env"]
    default = conf.getfloat("scheduler", "task_instance_heartbeat_timeout")  # Airflow's: 300
    timeout = float(env.get("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", default))
    every = conf.getfloat("scheduler", "task_instance_heartbeat_timeout_detection_interval")
    nightly = parsed["dags"]["cyclegan_nightly_translate"]["tasks"]
    retrain = parsed["dags"]["cyclegan_retrain"]["tasks"]
    for t in (nightly["translate_shard"], retrain["train"], retrain["evaluate"], retrain["gate"]):
        first = min(2 * t["retry_delay"], t["max_retry_delay"])
        assert timeout + every + first <= 120, (timeout, every, t)
        assert t["backoff"] >= 2.0 and t["max_retry_delay"] >= 300, t
    # The supervisor heartbeats every few seconds: the timeout tolerates a dozen missed ones.
    assert timeout >= 10 * conf.getfloat("workers", "min_heartbeat_interval")
    assert nightly["translate_shard"]["retries"] >= 4  # ~15 min of S3 outage before the night fails


def test_parsing_imports_no_tensorflow_numpy_pil_or_library(parsed: dict) -> None:
    # boto3 is not in this list: the amazon provider imports it to normalise the s3:// URI of
    # the model Asset. The DAG files themselves import none of them (next test).
    assert parsed["imported"] == []


def test_dag_modules_have_no_heavy_top_level_imports() -> None:
    banned = {"tensorflow", "numpy", "PIL", "boto3", "cyclegan_jobs", "keras"}
    # The options the forms offer, and their choices: these import only stdlib.
    allowed = {"cyclegan_jobs.config", "cyclegan_jobs.options"}
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: tasks import inside their functions
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            names = [n for n in names if n not in allowed]
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name}: {names}"
    stdlib = {"__future__", "argparse", "collections.abc", "dataclasses", "os", "typing"}
    for name in ("config", "errors", "options"):
        tree = ast.parse((REPO / "cyclegan_jobs" / f"{name}.py").read_text())
        imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        ours = {"cyclegan_jobs.config", "cyclegan_jobs.errors"}
        assert imported - ours <= stdlib, (name, imported)


def test_without_the_plugin_each_dag_file_says_what_to_copy_where(tmp_path: Path) -> None:
    """A deployment that lacks the timetable plugin: both DAG files' import errors name the file
    and where it goes, instead of a bare ModuleNotFoundError."""
    empty = tmp_path / "plugins"
    empty.mkdir()
    env = {
        **os.environ,
        **airflow_local.airflow_config(tmp_path / "home"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(empty),
    }
    done = _driver(env, "cyclegan_nightly_translate", {})
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "DAG import errors" in done.stderr
    for dag_file in ("cyclegan_retrain.py", "cyclegan_nightly_translate.py"):
        assert f"{DAGS / dag_file}" in done.stderr
    said = "copy plugins/cyclegan_timetables.py"
    assert done.stderr.count(said) == 2, done.stderr[-3000:]
    assert "into the plugins folder" in done.stderr and "of every Airflow component" in done.stderr


def test_ruff_airflow_rules_are_clean_on_dags() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "check", "--select", "AIR", str(DAGS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- end to end through dag.test() -------------------------------------------------------------


def test_retrain_promotes_a_version(trained: dict) -> None:
    result = trained["result"]
    assert result["state"] == "success", result
    for task in ("detect_new_data", "train", "evaluate", "gate", "promote", "summary"):
        assert result["tasks"][task] == "success", (task, result)
    store = trained["store"]
    pointer = registry.promoted(store)
    assert pointer is not None
    version = registry.version_uri(store, pointer["version"])
    assert storage.read_json(f"{version}/gate.json")["passed"] is True
    assert storage.exists(f"{version}/evaluation.json")
    summary = storage.read_json(f"{store}/runs/{safe_run_id(result['run_id'])}/retrain.json")
    assert summary["outcome"] == f"promoted {pointer['version']}"
    # The version the gate passed is model selection's pick, and says so.
    assert summary["steps"] == 20 and summary["selected"]["step"] in (10, 20), summary
    assert (
        registry.get_version(store, pointer["version"])["metrics"]["selected"]
        == summary["selected"]
    )


def test_nightly_writes_every_output_then_skips_everything(
    airflow: dict, trained: dict, s3_server
) -> None:
    bucket = _faces_bucket(s3_server, 6)
    conf = _nightly_conf(trained, bucket)
    first = dag_test(airflow, "cyclegan_nightly_translate", conf)
    assert first["state"] == "success", first
    assert [t for t in first["tasks"] if t.startswith("translate_shard")] == [
        "translate_shard[0]",
        "translate_shard[1]",
    ]  # 6 inputs, shards of 4
    for kind in ("stylized", "reconstructed"):
        keys = sorted(o.rel for o in storage.list_objects(f"{bucket}/out/{kind}/"))
        assert keys == [f"face_{i:03d}.png" for i in range(6)]
    summary = _run_summary(f"{bucket}/out/", first["run_id"])
    assert summary["counts"] == {"total": 6, "ok": 6, "skipped": 0, "failed": 0}
    assert summary["model_version"] == registry.promoted(trained["store"])["version"]
    # The run's contact sheet beside its summary, and a link to it in the task log that a
    # browser can open (presigned: no keys).
    run_root = f"{bucket}/out/_runs/{safe_run_id(first['run_id'])}"
    assert summary["contact_sheet"] == f"{run_root}/contact_sheet.png"
    path = urllib.parse.quote(run_root.removeprefix("s3://") + "/contact_sheet.png")
    links = [u for u in re.findall(r"Contact sheet: (http\S+)", first["log"]) if path in u]
    assert len(links) == 1, first["log"][-3000:]
    assert "X-Amz-Signature=" in links[0] and os.environ["AWS_SECRET_ACCESS_KEY"] not in (
        links[0].replace("Credential=" + os.environ["AWS_ACCESS_KEY_ID"], "")
    )
    with urllib.request.urlopen(links[0], timeout=30) as resp:
        assert resp.read() == storage.read_bytes(summary["contact_sheet"])
    shard_links = re.findall(r"Contact sheet: (http\S+-shard000[01]/contact_sheet\.png\S*)",
                             first["log"])  # fmt: skip
    assert len(shard_links) == 2  # each shard's log links its own

    second = dag_test(airflow, "cyclegan_nightly_translate", conf)
    assert second["state"] == "success"
    assert second["tasks"]["translate_shard"] == "skipped"  # nothing pending: no mapped task
    again = _run_summary(f"{bucket}/out/", second["run_id"])
    assert again["counts"] == {"total": 6, "ok": 0, "skipped": 6, "failed": 0}
    # Nothing new, no contact sheet: the operator's log still has no ERROR line.
    assert "[error" not in second["log"] and "XCom not found" not in second["log"], [
        line for line in second["log"].splitlines() if "[error" in line or "XCom not" in line
    ]
    # The inputs are untouched.
    assert len(list(storage.list_objects(f"{bucket}/in/"))) == 6


def test_nightly_with_size_native_keeps_every_inputs_own_shape(
    airflow: dict, trained: dict, s3_server
) -> None:
    """The form's size "native": each output has its input's upright size (a landscape, a
    portrait stored sideways with an EXIF rotation, a square), and the summary records it."""
    bucket = _bucket(s3_server)
    shapes = {"wide": (60, 90, 1), "tall": (40, 70, 6), "square": (48, 48, 1)}  # stored h, w
    for name, (h, w, orientation) in shapes.items():
        face = np.asarray(Image.fromarray(synthetic_faces(1, SIZE, seed=3)[0]).resize((w, h)))
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="JPEG", exif=exif.tobytes())
        storage.write_bytes(f"{bucket}/in/{name}.jpg", buffer.getvalue())
    run = dag_test(airflow, "cyclegan_nightly_translate",
                   _nightly_conf(trained, bucket, size="native"))  # fmt: skip
    assert run["state"] == "success", run
    summary = _run_summary(f"{bucket}/out/", run["run_id"])
    assert summary["counts"] == {"total": 3, "ok": 3, "skipped": 0, "failed": 0}
    for name, (h, w, orientation) in shapes.items():
        upright = (h, w) if orientation == 1 else (w, h)  # 6: turned a quarter
        for kind in ("stylized", "reconstructed"):
            data = storage.read_bytes(f"{bucket}/out/{kind}/{name}.png")
            width, height = Image.open(io.BytesIO(data)).size
            assert (height, width) == upright, (name, kind)


def test_nightly_with_bad_files_passes_under_the_threshold_and_fails_above(
    airflow: dict, trained: dict, s3_server
) -> None:
    bad = {"broken.jpg": b"not an image at all", "empty.png": b""}
    bucket = _faces_bucket(s3_server, 4, bad)
    # This deployment's shards GET/decode and encode/PUT in 2 worker processes.
    under = dag_test(
        {**airflow, "CYCLEGAN_FEED_PROCESSES": "2"},
        "cyclegan_nightly_translate",
        _nightly_conf(trained, bucket, max_failure_rate=0.5),
    )
    assert under["state"] == "success", under
    summary = _run_summary(f"{bucket}/out/", under["run_id"])
    shards = [
        storage.read_json(f"{bucket}/out/_runs/{shard}/summary.json") for shard in summary["shards"]
    ]
    assert {s["feed_processes"] for s in shards} == {2}
    assert sum(s["counts"]["ok"] for s in shards) == 4
    assert summary["counts"]["ok"] == 4 and summary["counts"]["failed"] == 2
    assert {f["key"] for f in summary["failures"]} == set(bad)
    assert len(list(storage.list_objects(f"{bucket}/out/stylized/"))) == 4

    # 2 failed of 6 images = 33 %: above a 20 % threshold the run fails (in `summarize`).
    over = dag_test(
        airflow, "cyclegan_nightly_translate", _nightly_conf(trained, bucket, max_failure_rate=0.2)
    )
    assert over["state"] == "failed"
    assert over["tasks"]["summarize"] == "failed"
    assert _run_summary(f"{bucket}/out/", over["run_id"])["status"] == "failed"


def test_nightly_without_a_promoted_model_fails_at_once_saying_why(
    airflow: dict, s3_server
) -> None:
    bucket = _faces_bucket(s3_server, 1)
    conf = {**_nightly_conf({"store": _bucket(s3_server)}, bucket)}
    result = dag_test(airflow, "cyclegan_nightly_translate", conf)
    assert result["state"] == "failed"
    assert result["tasks"]["resolve_model"] == "failed"  # no retries: AirflowFailException
    assert any("no promoted version" in line for line in result["errors"]), result["errors"]
    assert list(storage.list_objects(f"{bucket}/out/")) == []


def test_retrain_without_new_data_skips_training(airflow: dict, trained: dict) -> None:
    result = dag_test(airflow, "cyclegan_retrain", trained["conf"])
    assert result["state"] == "success"
    assert result["tasks"]["enough_new_data"] == "success"  # the short-circuit task itself
    for task in ("train", "evaluate", "gate", "promote"):
        assert result["tasks"][task] == "skipped", (task, result)
    assert result["tasks"]["summary"] == "success"


def test_forced_retrain_trains_and_a_refused_candidate_is_not_promoted(
    airflow: dict, trained: dict
) -> None:
    store = trained["store"]
    before = registry.promoted(store)["version"]
    versions_before = {v["version"] for v in registry.list_versions(store)}
    # Forced (no new data) with an unreachable floor: trains, then the gate refuses.
    conf = {**trained["conf"], "force": True, "min_cycle_psnr": 99.0}
    result = dag_test(airflow, "cyclegan_retrain", conf)
    assert result["state"] == "success", result
    assert result["tasks"]["train"] == "success" and result["tasks"]["gate"] == "success"
    assert result["tasks"]["promote"] == "skipped"
    new = {v["version"] for v in registry.list_versions(store)} - versions_before
    assert len(new) == 1
    candidate = new.pop()
    decision = storage.read_json(f"{registry.version_uri(store, candidate)}/gate.json")
    assert decision["passed"] is False and "floor 99.0 dB" in decision["reasons"][0]
    assert registry.promoted(store)["version"] == before
    summary = storage.read_json(f"{store}/runs/{safe_run_id(result['run_id'])}/retrain.json")
    assert summary["outcome"].startswith(f"refused {candidate}: cycle PSNR")
    # The summary task's log says so in one block, without anyone opening XComs.
    assert re.search(rf"outcome +: refused {candidate}: cycle PSNR", result["log"])
    assert re.search(r"gate +: refused", result["log"])
    assert re.search(r"reason +: cycle PSNR [\d.]+ dB < floor 99.0 dB", result["log"])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"preset": "huge"}, "preset"),
        ({"learning_rate": -0.001}, "learning_rate"),
        ({"image_size": 50}, "image_size"),
    ],
)
def test_invalid_params_are_refused_before_any_task(
    airflow: dict, s3_server, bad: dict, message: str
) -> None:
    store = _bucket(s3_server)
    conf = {**TRAIN_CONF, "model_store": store, "force": True, **bad}
    done = _driver(airflow, "cyclegan_retrain", conf)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "invalid params, no run" in done.stderr and message in done.stderr
    assert list(storage.list_objects(store)) == []  # no task ran


# --- the kubernetes runner ---------------------------------------------------------------------

POD = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
dags = Path(sys.argv[1])
bag = BundleDagBag(str(dags), bundle_path=dags)
dag = bag.get_dag("cyclegan_retrain")
params = {k: dag.params[k] for k in dag.params}
command = dag.get_task("train_command").python_callable(params=params, run_id="scheduled__x")
op = dag.get_task("train")
op.arguments = command  # what the XCom of train_command renders to at run time
pod = op.build_pod_request_obj(dry_run=True)  # dry run: no cluster to ask
c = pod.spec.containers[0]
shard = bag.get_dag("cyclegan_nightly_translate").get_task("translate_shard")
print(json.dumps({
    "operator": type(op).__name__, "command": command, "image": c.image, "cmds": c.command,
    "args": c.args, "limits": c.resources.limits, "node_selector": pod.spec.node_selector,
    "tolerations": [t.to_dict() for t in pod.spec.tolerations or []],
    "env": {e.name: e.value for e in c.env or []},
    "shard_operator": shard.operator_class.__name__ if hasattr(shard, "operator_class") else
        type(shard).__name__,
    "shard_image": shard.partial_kwargs.get("image"), "pool": op.pool, "queue": op.queue,
}))
"""


def test_kubernetes_runner_renders_a_gpu_pod_with_the_local_runners_arguments(
    airflow: dict,
) -> None:
    tolerations = [{"key": "gpu-node", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]
    env = {
        **airflow,
        "CYCLEGAN_RUNNER": "kubernetes",
        "CYCLEGAN_IMAGE": "registry.example/cyclegan-jobs:1.2",
        "CYCLEGAN_K8S_GPUS": "2",
        "CYCLEGAN_K8S_NODE_SELECTOR": json.dumps({"accelerator": "h100"}),
        "CYCLEGAN_K8S_TOLERATIONS": json.dumps(tolerations),
    }
    done = subprocess.run(
        [sys.executable, "-c", POD, str(DAGS)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pod = json.loads(done.stdout.splitlines()[-1])
    assert pod["operator"] == "KubernetesPodOperator"
    assert pod["image"] == "registry.example/cyclegan-jobs:1.2"
    assert pod["cmds"] == ["cyclegan-jobs"] and pod["args"] == pod["command"]
    # The local runner runs exactly this list through cyclegan_jobs.cli.run.
    assert pod["command"][:3] == ["train", "--domain-a", "s3://cyclegan-data/sample/domain_a"]
    assert "--run-id" in pod["command"] and "retrain-scheduled__x" in pod["command"]
    assert pod["limits"] == {"nvidia.com/gpu": "2"}
    assert pod["node_selector"] == {"accelerator": "h100"}
    assert [{k: t[k] for k in tolerations[0]} for t in pod["tolerations"]] == tolerations
    assert pod["env"]["CYCLEGAN_RESULT_FILE"] == "/airflow/xcom/return.json"
    assert (pod["pool"], pod["queue"]) == ("cyclegan_gpu", "gpu")
    assert pod["shard_operator"] == "KubernetesPodOperator"
    assert pod["shard_image"] == "registry.example/cyclegan-jobs:1.2"


# --- REST trigger, as the UI does it -----------------------------------------------------------


def _request(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_rest_trigger_with_conf_creates_a_run_and_invalid_conf_is_refused(
    airflow: dict, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(12)
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    port = free_port()
    env = {
        **airflow,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    airflow_bin = airflow_local.AIRFLOW
    # The API serves DAGs from the metadata DB: serialize ours first (as the DAG processor would).
    subprocess.run([airflow_bin, "dags", "reserialize"], env=env, check=True, capture_output=True)
    log = (tmp_path / "api.log").open("wb")
    server = subprocess.Popen(
        [airflow_bin, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        token = None
        deadline = time.time() + 180
        while token is None and time.time() < deadline:
            assert server.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            try:
                status, body = _request(f"{base}/auth/token", {"username": "admin",
                                                               "password": password})  # fmt: skip
                token = body.get("access_token") if status in (200, 201) else None
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(2)
        assert token, "the API server did not hand out a token"
        runs = f"{base}/api/v2/dags/cyclegan_retrain/dagRuns"
        before = _request(runs, token=token)[1]["total_entries"]  # earlier tests' dag.test runs
        conf = {"preset": "tiny", "epochs": 3, "learning_rate": 0.0005, "force": True}
        status, run = _request(runs, {"logical_date": None, "conf": conf}, token)
        assert status == 200, run
        status, fetched = _request(f"{runs}/{urllib.parse.quote(run['dag_run_id'])}", token=token)
        assert status == 200 and fetched["conf"] == conf

        status, refused = _request(runs, {"logical_date": None, "conf": {"epochs": 0}}, token)
        assert status == 400, refused
        assert "epochs" in json.dumps(refused)
        status, listing = _request(runs, token=token)
        assert status == 200 and listing["total_entries"] == before + 1  # refused: no run
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

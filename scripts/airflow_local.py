"""Airflow on the embedded default: `make run` drives both DAGs, `make airflow` serves the UI.

    python scripts/airflow_local.py run [--root var] [--retrain-conf JSON]  # `make run`
    python scripts/airflow_local.py standalone [--root var]  # what `make airflow` does
    python scripts/airflow_local.py dag-test DAG_ID [--conf JSON] [--home DIR]  # one dag.test()

run:        starts the local S3 server (SeaweedFS, data in <root>/s3), creates the buckets and
            sample data when missing, prepares an Airflow home in <root>/airflow (SQLite
            metadata DB, the pool `cyclegan_gpu`, the `aws_default` connection to the local
            server), runs `cyclegan_retrain` when no version is promoted, then
            `cyclegan_nightly_translate` (each `dag-test` in a child process: no scheduler
            needed) and prints where the results and the contact sheet are, the last stdout
            line as JSON. A second run skips everything.
standalone: the same preparation, then `airflow standalone` (scheduler, DAG processor, API
            server and UI) until Ctrl-C; prints the UI address and the login.
dag-test:   one `dag.test()` with a JSON conf against whatever S3 the environment names
            (AWS_ENDPOINT_URL_S3 and the AWS_* keys); prints the states as JSON (for tests).

The connection is given to Airflow as the environment variable AIRFLOW_CONN_AWS_DEFAULT, built
here from the local server's address and its local-only keys; nothing is written to the repo.
Airflow reads its settings when first imported, so `airflow_config` goes into the environment
before anything here imports it. run and standalone start `cyclegan_local.reaper` first: if this
process dies, even by SIGKILL, what it started is stopped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
sys.path.insert(0, str(REPO))  # cyclegan_local: development tools, not installed
from cyclegan_local import reaper  # noqa: E402
from cyclegan_local.local_default import TRAIN_EPOCHS, TRAIN_PRESET, TRAIN_SIZE  # noqa: E402

AIRFLOW = str(Path(sys.executable).with_name("airflow"))  # the CLI of this venv's Airflow
POOL, POOL_SLOTS = "cyclegan_gpu", 1  # slots = GPUs; one CPU "GPU" here
# The retrain form's defaults on the local stack: small enough for a CPU (the seed preset at
# 256 px would take hours here). On a real deployment they stay the seed's.
LOCAL_TRAINING = {
    "CYCLEGAN_TRAIN_PRESET": TRAIN_PRESET,
    "CYCLEGAN_TRAIN_IMAGE_SIZE": str(TRAIN_SIZE),
    "CYCLEGAN_TRAIN_EPOCHS": str(TRAIN_EPOCHS),
}


def _say(message: str) -> None:
    print(f"[airflow-local] {message}", file=sys.stderr, flush=True)


def airflow_config(home: Path) -> dict[str, str]:
    """Airflow's settings for every process here. Airflow reads them when it is first imported,
    so they go into the environment before anything imports it (or into a child's)."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def airflow_env(home: Path, endpoint_url: str, access_key: str, secret_key: str) -> dict:
    """Environment for every Airflow process here: `airflow_config` and the connection."""
    connection = {
        "conn_type": "aws",
        "login": access_key,
        "password": secret_key,
        "extra": {"endpoint_url": endpoint_url, "region_name": "us-east-1"},
    }
    return {**airflow_config(home), "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection)}


def prepare_home(env: dict) -> None:
    """Migrate the SQLite metadata DB and create the pool (both idempotent); skipped, with its
    ~15 s of Airflow start-ups, when a stamp says it was done for this Airflow version."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / "prepared.json"
    want = {"airflow": importlib.metadata.version("apache-airflow"), "pool": [POOL, POOL_SLOTS]}
    if (home / "airflow.db").is_file() and _read_stamp(stamp) == want:
        _say(f"Airflow home {home}: metadata DB and pool {POOL} already prepared")
        return
    full = {**os.environ, **env}
    log = home / "setup.log"
    with log.open("ab") as out:
        for args in (["db", "migrate"], ["pools", "set", POOL, str(POOL_SLOTS), "CycleGAN GPUs"]):
            done = subprocess.run([AIRFLOW, *args], env=full, stdout=out, stderr=out, check=False)
            if done.returncode:
                raise RuntimeError(f"`airflow {' '.join(args)}` failed; see {log}")
    stamp.write_text(json.dumps(want))
    _say(f"Airflow home {home}: metadata DB migrated, pool {POOL} ({POOL_SLOTS} slot)")


def _read_stamp(stamp: Path) -> Any:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def dag_test(dag_id: str, conf: dict | None = None) -> dict[str, Any]:
    """One `dag.test()` in this process (AIRFLOW_* must already be in os.environ)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(str(DAGS), bundle_path=DAGS)
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise RuntimeError(f"no DAG {dag_id!r} in {DAGS}")
    run = dag.test(run_conf=conf or {})
    tasks = {}
    for ti in run.get_task_instances():
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[name] = str(ti.state)
    return {"dag_id": dag_id, "run_id": run.run_id, "state": str(run.state), "tasks": tasks}


def _run_dag(dag_id: str, conf: dict | None = None) -> dict[str, Any]:
    """One `dag.test()` in a child process: a fresh Airflow that reads this environment."""
    conf_json = json.dumps(conf or {})
    _say(f"running {dag_id} through Airflow (dag.test) with conf {conf_json}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "dag-test", dag_id, "--conf", conf_json]
    result = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the task logs, then the result as one JSON line
            if line.startswith('{"dag_id"'):
                result = json.loads(line)
            else:
                sys.stderr.write(line)
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted here: the child unwinds on SIGTERM too
            proc.terminate()
            proc.wait()
    if proc.returncode or result is None:
        raise RuntimeError(f"{dag_id}: dag.test exited with {proc.returncode}; its log is above")
    _say(f"{dag_id}: {result['state']} {result['tasks']}")
    if result["state"] != "success":
        raise RuntimeError(f"{dag_id} ended {result['state']}; task logs are above")
    return result


def run(root: Path, retrain_conf: dict | None = None) -> int:
    """`make run`: both DAGs through Airflow on the local S3 server (`retrain_conf`: Params for
    cyclegan_retrain, when it runs, over the form's defaults)."""
    root = root.resolve()
    os.environ.update(airflow_config(root / "airflow"))  # before anything imports Airflow
    os.environ.update(LOCAL_TRAINING)
    sys.path.insert(0, str(DAGS))
    from cyclegan_common import Settings

    from cyclegan_local import local_default, local_s3

    with local_default.local_stack(root) as server:
        env = airflow_env(
            root / "airflow",
            server.endpoint_url,
            local_s3.LOCAL_ACCESS_KEY,
            local_s3.LOCAL_SECRET_KEY,
        )
        prepare_home(env)
        os.environ.update(env)
        settings = Settings.from_env()
        pointer, retrained = _ensure_model(settings.model_store, retrain_conf)
        nightly = _run_dag("cyclegan_nightly_translate")
        rows, counts, summary_uri = _nightly_results(settings.output_uri, nightly, root)
        scores = local_default.first_result(settings.input_uri, settings.output_uri)
        rows = {
            "model version": pointer["version"] if pointer else "(none promoted)",
            **rows,
            "Airflow home": env["AIRFLOW_HOME"],
        }
        for label, value in rows.items():
            print(f"{label:<15}: {value}", file=sys.stderr)
        print(
            f"The S3 server is stopped; `python -m cyclegan_local.local_s3 {root / 's3'}` serves "
            "these s3:// URIs again; `make airflow` shows the runs in the Airflow UI.",
            file=sys.stderr,
        )
        # The last stdout line: what this run did, for scripts (CI checks a rerun did nothing).
        print(
            json.dumps(
                {
                    "retrained": retrained,
                    "counts": counts,
                    "summary": summary_uri,
                    "first_result": scores,
                    **rows,
                }
            )
        )
    return 0


def _ensure_model(model_store: str, conf: dict | None) -> tuple[dict | None, bool]:
    """The promoted version, after running cyclegan_retrain when there is none; and whether
    it ran."""
    from cyclegan_common import safe_run_id

    from cyclegan_jobs import registry, storage

    pointer = registry.promoted(model_store)
    if pointer is not None:
        _say(f"model: {pointer['version']} already promoted; cyclegan_retrain not needed")
        return pointer, False
    retrain = _run_dag("cyclegan_retrain", conf)
    uri = storage.join(model_store, "runs", safe_run_id(retrain["run_id"]), "retrain.json")
    _say(f"retrain: {storage.read_json(uri)['outcome']}")
    return registry.promoted(model_store), True  # None if the gate refused


def _nightly_results(output_uri: str, nightly: dict, root: Path) -> tuple[dict, dict, str]:
    """Where the nightly run put its results (the contact sheet copied to <root>/airflow-run),
    its counts and its summary's URI."""
    from cyclegan_common import safe_run_id

    from cyclegan_jobs import storage
    from cyclegan_local import local_default

    run_root = storage.join(output_uri, "_runs", safe_run_id(nightly["run_id"]))
    summary = storage.read_json(storage.join(run_root, "summary.json"))
    sheet_local = None
    sheet = summary["contact_sheet"] or local_default.latest_contact_sheet(output_uri)
    if sheet:
        sheet_local = root / "airflow-run" / "contact_sheet.png"
        sheet_local.parent.mkdir(parents=True, exist_ok=True)
        sheet_local.write_bytes(storage.read_bytes(sheet))
    c = summary["counts"]
    _say(f"nightly: {c['ok']} translated, {c['skipped']} skipped, {c['failed']} failed")
    rows = {
        "stylized": storage.join(output_uri, "stylized"),
        "reconstructed": storage.join(output_uri, "reconstructed"),
        "run summary": summary["summary"],
        "contact sheet": str(sheet_local) if sheet_local else "(none yet)",
    }
    return rows, c, summary["summary"]


def standalone(root: Path, port: int) -> int:
    """`make airflow`: `airflow standalone` with the DAGs, pool and connection, until Ctrl-C."""
    from cyclegan_local import local_default, local_s3

    root = root.resolve()
    with local_default.local_stack(root) as server:
        home = root / "airflow"
        env = airflow_env(
            home, server.endpoint_url, local_s3.LOCAL_ACCESS_KEY, local_s3.LOCAL_SECRET_KEY
        )
        env.update(LOCAL_TRAINING)
        env["AIRFLOW__API__PORT"] = str(port)
        # Task processes report to the API server's execution API: on the same port.
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
        # standalone starts its components as `airflow ...` subprocesses: from this venv.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        prepare_home(env)
        proc = subprocess.Popen(
            [AIRFLOW, "standalone"],
            env={**os.environ, **env},
            stdout=(home / "standalone.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        passwords = home / "simple_auth_manager_passwords.json.generated"
        try:
            login = _wait_for_ui(port, passwords, proc)
            _say(f"Airflow UI: http://127.0.0.1:{port}  login: {login}")
            _say("DAGs: cyclegan_retrain (Trigger -> the form; unpause it to let it run), "
                 "cyclegan_nightly_translate. Logs: " + str(home / "standalone.log"))  # fmt: skip
            _say("Ctrl-C stops Airflow and the S3 server.")
            proc.wait()
        except KeyboardInterrupt:
            _say("stopping Airflow")
        finally:
            _stop(proc)
    return 0


def _wait_for_ui(port: int, passwords: Path, proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait until the API server answers; return the login standalone generated."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("airflow standalone exited; see standalone.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/version", timeout=5):
                pass
        except OSError:  # not listening yet (URLError and HTTP errors are OSErrors)
            time.sleep(2)
            continue
        if passwords.is_file() and passwords.stat().st_size:
            users = json.loads(passwords.read_text())
            return ", ".join(f"{user} / {pw}" for user, pw in users.items())
        time.sleep(1)
    raise RuntimeError(f"the Airflow UI did not come up within {timeout:.0f} s; see standalone.log")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _dag_test_command(dag_id: str, conf: str, home: str | None) -> int:
    """`dag-test`: print one `dag.test()`'s result as JSON; 2 for Params the DAG refuses."""
    home = home or os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    os.environ["AIRFLOW_HOME"] = home
    for name, value in airflow_config(Path(home)).items():  # before Airflow is imported
        os.environ.setdefault(name, value)
    from airflow.sdk.definitions.param import ParamValidationError

    try:
        print(json.dumps(dag_test(dag_id, json.loads(conf))), flush=True)
    except ParamValidationError as err:
        _say(f"invalid params, no run: {err}")
        return 2
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "standalone"):
        p = sub.add_parser(name)
        p.add_argument("--root", default="var", help="folder for all local data (git-ignored)")
    sub.choices["standalone"].add_argument("--port", type=int, default=8080)
    sub.choices["run"].add_argument(
        "--retrain-conf", default="{}", help="JSON object of Params for cyclegan_retrain"
    )
    t = sub.add_parser("dag-test")
    t.add_argument("dag_id")
    t.add_argument("--conf", default="{}", help="JSON object of Params")
    t.add_argument("--home", default=None, help="Airflow home (default: $AIRFLOW_HOME)")
    args = parser.parse_args(argv)
    # SIGTERM (a scheduler, `timeout`) unwinds like Ctrl-C, so servers are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command in ("run", "standalone"):
            reaper.guard()  # whatever ends this process, nothing it starts is left behind
        if args.command == "run":
            return run(Path(args.root), json.loads(args.retrain_conf))
        if args.command == "standalone":
            return standalone(Path(args.root), args.port)
        return _dag_test_command(args.dag_id, args.conf, args.home)
    except KeyboardInterrupt:
        _say("interrupted; run it again to continue where it stopped")
        return 130
    except (RuntimeError, ValueError) as err:
        _say(f"failed: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

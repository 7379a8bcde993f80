"""Airflow on the embedded default: `make run` drives both DAGs, `make airflow` serves the UI.

    python scripts/airflow_local.py run [--root var]         # what `make run` does
    python scripts/airflow_local.py standalone [--root var]  # what `make airflow` does
    python scripts/airflow_local.py dag-test DAG_ID [--conf JSON] [--home DIR]  # one dag.test()

run:        starts the local S3 server (SeaweedFS, data in <root>/s3), creates the buckets and
            sample data when missing, prepares an Airflow home in <root>/airflow (SQLite
            metadata DB, the pool `cyclegan_gpu`, the `aws_default` connection to the local
            server), runs `cyclegan_retrain` when no version is promoted, then
            `cyclegan_nightly_translate` (each with `dag.test()`: no scheduler needed) and
            prints where the results and the contact sheet are. A second run skips everything.
standalone: the same preparation, then `airflow standalone` (scheduler, DAG processor, API
            server and UI) until Ctrl-C; prints the UI address and the login.
dag-test:   one `dag.test()` with a JSON conf against whatever S3 the environment names
            (AWS_ENDPOINT_URL_S3 and the AWS_* keys); prints the states as JSON (for tests).

The connection is given to Airflow as the environment variable AIRFLOW_CONN_AWS_DEFAULT, built
here from the local server's address and its local-only keys; nothing is written to the repo.
"""

from __future__ import annotations

import argparse
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
AIRFLOW = str(Path(sys.executable).with_name("airflow"))  # the CLI of this venv's Airflow
POOL, POOL_SLOTS = "cyclegan_gpu", 1  # slots = GPUs; one CPU "GPU" here
# The retrain form's defaults on the local stack: small enough for a CPU (the seed preset at
# 256 px would take hours here). On a real deployment they stay the seed's.
LOCAL_TRAINING = {
    "CYCLEGAN_TRAIN_PRESET": "tiny",
    "CYCLEGAN_TRAIN_IMAGE_SIZE": "64",
    "CYCLEGAN_TRAIN_EPOCHS": "20",
}


def _say(message: str) -> None:
    print(f"[airflow-local] {message}", file=sys.stderr, flush=True)


def airflow_env(home: Path, endpoint_url: str, access_key: str, secret_key: str) -> dict:
    """Environment for every Airflow process here: home, DAGs, no examples, the connection."""
    connection = {
        "conn_type": "aws",
        "login": access_key,
        "password": secret_key,
        "extra": {"endpoint_url": endpoint_url, "region_name": "us-east-1"},
    }
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def prepare_home(env: dict) -> None:
    """Migrate the SQLite metadata DB and create the pool (both idempotent)."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **env}
    log = home / "setup.log"
    with log.open("ab") as out:
        for args in (["db", "migrate"], ["pools", "set", POOL, str(POOL_SLOTS), "CycleGAN GPUs"]):
            done = subprocess.run([AIRFLOW, *args], env=full, stdout=out, stderr=out, check=False)
            if done.returncode:
                raise RuntimeError(f"`airflow {' '.join(args)}` failed; see {log}")
    _say(f"Airflow home {home}: metadata DB migrated, pool {POOL} ({POOL_SLOTS} slot)")


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
    _say(f"running {dag_id} through Airflow (dag.test) with conf {json.dumps(conf or {})}")
    result = dag_test(dag_id, conf)
    _say(f"{dag_id}: {result['state']} {result['tasks']}")
    if result["state"] != "success":
        raise RuntimeError(f"{dag_id} ended {result['state']}; task logs are above")
    return result


def run(root: Path) -> int:
    """`make run`: both DAGs through Airflow on the local S3 server."""
    sys.path.insert(0, str(DAGS))
    from cyclegan_common import Settings, safe_run_id

    from cyclegan_jobs import registry, storage
    from cyclegan_local import local_default, local_s3

    root = root.resolve()
    with local_default.local_stack(root) as server:
        env = airflow_env(
            root / "airflow",
            server.endpoint_url,
            local_s3.LOCAL_ACCESS_KEY,
            local_s3.LOCAL_SECRET_KEY,
        )
        prepare_home(env)
        os.environ.update(env)
        os.environ.update(LOCAL_TRAINING)
        settings = Settings.from_env()
        pointer = registry.promoted(settings.model_store)
        if pointer is None:
            retrain = _run_dag("cyclegan_retrain")
            summary = storage.read_json(
                storage.join(settings.model_store, "runs", safe_run_id(retrain["run_id"]),
                             "retrain.json")
            )  # fmt: skip
            _say(f"retrain: {summary['outcome']}")
            pointer = registry.promoted(settings.model_store)  # None if the gate refused
        else:
            _say(f"model: {pointer['version']} already promoted; cyclegan_retrain not needed")
        nightly = _run_dag("cyclegan_nightly_translate")
        run_root = storage.join(settings.output_uri, "_runs", safe_run_id(nightly["run_id"]))
        summary = storage.read_json(storage.join(run_root, "summary.json"))
        sheet_local = None
        sheet = summary["contact_sheet"] or local_default.latest_contact_sheet(settings.output_uri)
        if sheet:
            sheet_local = root / "airflow-run" / "contact_sheet.png"
            sheet_local.parent.mkdir(parents=True, exist_ok=True)
            sheet_local.write_bytes(storage.read_bytes(sheet))
        c = summary["counts"]
        _say(f"nightly: {c['ok']} translated, {c['skipped']} skipped, {c['failed']} failed")
        rows = {
            "model version": pointer["version"] if pointer else "(none promoted)",
            "stylized": storage.join(settings.output_uri, "stylized"),
            "reconstructed": storage.join(settings.output_uri, "reconstructed"),
            "run summary": summary["summary"],
            "contact sheet": str(sheet_local) if sheet_local else "(none yet)",
            "Airflow home": env["AIRFLOW_HOME"],
        }
        for label, value in rows.items():
            print(f"{label:<15}: {value}", file=sys.stderr)
        print(
            f"The S3 server is stopped; `python -m cyclegan_local.local_s3 {root / 's3'}` serves "
            "these s3:// URIs again; `make airflow` shows the runs in the Airflow UI.",
            file=sys.stderr,
        )
        print(json.dumps({"counts": c, "summary": summary["summary"], **rows}))
    return 0


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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "standalone"):
        p = sub.add_parser(name)
        p.add_argument("--root", default="var", help="folder for all local data (git-ignored)")
    sub.choices["standalone"].add_argument("--port", type=int, default=8080)
    t = sub.add_parser("dag-test")
    t.add_argument("dag_id")
    t.add_argument("--conf", default="{}", help="JSON object of Params")
    t.add_argument("--home", default=None, help="Airflow home (default: $AIRFLOW_HOME)")
    args = parser.parse_args(argv)
    # SIGTERM (a scheduler, `timeout`) unwinds like Ctrl-C, so servers are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command == "run":
            return run(Path(args.root))
        if args.command == "standalone":
            return standalone(Path(args.root), args.port)
        if args.home:
            os.environ["AIRFLOW_HOME"] = args.home
        os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
        os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        from airflow.sdk.definitions.param import ParamValidationError

        try:
            print(json.dumps(dag_test(args.dag_id, json.loads(args.conf))))
        except ParamValidationError as err:
            _say(f"invalid params, no run: {err}")
            return 2
        return 0
    except KeyboardInterrupt:
        _say("interrupted; run it again to continue where it stopped")
        return 130
    except (RuntimeError, ValueError) as err:
        _say(f"failed: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

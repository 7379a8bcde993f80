"""`make stack-test`: the Docker deployment (docker/compose.yaml) built, brought up and exercised.

    python scripts/stack_test.py [--cold] [--bench-images 500] [--keep]

Stages, in order (each prints what it does; the figures are printed at the end and as JSON on
the last stdout line):
 1. engine   a running Docker engine (dockerd is started, and stopped at the end, when it is
             not running and this process may start it) and a compose CLI (v2 `docker
             compose`, else Debian's docker-compose v1 on the same file);
 2. images   a Debian base from Debian's packages (docker/local/build-base.sh, unless the image
             is there already), stand-ins for postgres, redis and seaweedfs built on it, then
             the three cyclegan-jobs images (docker/Dockerfile: job, airflow, worker) timed
             cold (--cold: --no-cache) or as they come, and again warm (all cached);
 3. up       compose up with 2 gpu workers, timed until every service is healthy;
 4. runs     over the REST API: cyclegan_retrain (tiny preset, sample data), then
             cyclegan_nightly_translate, each must succeed; in S3 a promoted version, a
             stylized and a reconstructed output per input and a run summary; through the API
             the heavy tasks ran on gpu-queue workers and the shards on both of them;
 5. contract the kubernetes runner's contract: the argument lists the DAGs rendered for one
             translate shard and for train, run in the job image with `docker run` and S3
             settings in the environment (as the Secret passes them); their JSON result lands
             in /airflow/xcom/return.json, where the KubernetesPodOperator reads its XCom;
 6. restart  compose down (volumes kept) and up: the runs and outputs are still there, and a
             second nightly translates nothing;
 7. bench    a nightly over --bench-images generated photos with 1 and with 2 gpu workers;
 8. faults   (unless --no-faults) a nightly of 800 photos in 2 shards for each fault, which
             must end with every input in its manifest exactly once, none failed, every output
             there: a gpu worker's container SIGKILLed mid-shard (the shard must run again within
             2 minutes), S3 stopped for 60 s mid-shard (no task may need a retry), a gpu worker
             restarted mid-shard (Celery's warm shutdown: the shard finishes on its first try)
             and stopped again while starting (within 30 s), and postgres restarted with
             every client connected (a clean shutdown, no crash recovery); the recovery times
             are figures;
 9. down     everything removed (containers, volumes, network; the images stay as the build
             cache), timed, and the engine stopped if this started it.

Secrets (S3 keys, passwords, JWT secret) are random for each run and live only in this
process's environment and the stack's containers; nothing is written to the repository.
Needs root (dockerd, debootstrap), about 25 GB of disk and about 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DOCKER = REPO / "docker"
PROJECT = "cyclegan-stacktest"
BASE = "cyclegan-local/debian:bookworm"
STAND_INS = {  # compose variable -> (image, Dockerfile in docker/local)
    "POSTGRES_IMAGE": ("cyclegan-local/postgres:latest", "postgres.Dockerfile"),
    "REDIS_IMAGE": ("cyclegan-local/redis:latest", "redis.Dockerfile"),
    "S3_IMAGE": ("cyclegan-local/seaweedfs:latest", "seaweedfs.Dockerfile"),
}
OURS = {  # Dockerfile target -> (compose variable, image)
    "job": ("CYCLEGAN_JOB_IMAGE", "cyclegan-jobs:latest"),
    "airflow": ("CYCLEGAN_AIRFLOW_IMAGE", "cyclegan-jobs-airflow:latest"),
    "worker": ("CYCLEGAN_WORKER_IMAGE", "cyclegan-jobs-worker:latest"),
}
GPU_SERVICE, DEFAULT_SERVICE = "airflow-worker-gpu", "airflow-worker"
RETRAIN, NIGHTLY = "cyclegan_retrain", "cyclegan_nightly_translate"
HEAVY_TASKS = {"train", "evaluate", "gate", "translate_shard"}
# The retrain form for the test: small enough for 2 CPU cores, and a gate that lets it through
# (the test checks the plumbing, not the model's quality).
RETRAIN_CONF = {
    "preset": "tiny",
    "image_size": 64,
    "epochs": 2,
    "steps_per_epoch": 40,
    "force": True,
    "min_cycle_psnr": 0,
}
N_SAMPLE_FACES = 6
FIGURES: dict[str, Any] = {}


def say(message: str) -> None:
    print(f"[stack-test] {message}", flush=True)


class StackTestError(RuntimeError):
    """A check of the stack failed; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StackTestError(message)
    say(f"ok: {message}")


def sh(*args: str, env: dict | None = None, timeout: float = 3600) -> str:
    """Run a command; its stdout, or StackTestError with the output's tail."""
    done = subprocess.run(
        args, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode:
        tail = (done.stdout + done.stderr)[-3000:]
        raise StackTestError(f"`{' '.join(args[:6])} ...` exited {done.returncode}:\n{tail}")
    return done.stdout


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, round(time.monotonic() - start, 1)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 5) -> Any:
    """Poll until `probe()` returns something truthy; StackTestError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StackTestError(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)


# -- 1. engine ---------------------------------------------------------------------------------


class Engine:
    """The Docker engine and compose CLI; starts dockerd when needed and stops what it started."""

    def __init__(self) -> None:
        self.started: subprocess.Popen | None = None
        self.compose_cli: list[str] = []

    def ensure(self) -> None:
        if shutil.which("docker") is None:
            raise StackTestError("no docker CLI: apt-get install docker.io (Debian)")
        if not self._running():
            self._start()
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if v2.returncode == 0:
            self.compose_cli = ["docker", "compose"]
        elif shutil.which("docker-compose"):
            self.compose_cli = ["docker-compose"]
        else:
            raise StackTestError(
                "no compose CLI: docker compose (v2) or apt-get install docker-compose"
            )
        say(f"engine up; compose CLI: {' '.join(self.compose_cli)}")

    @staticmethod
    def _running() -> bool:
        return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0

    def _start(self) -> None:
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            raise StackTestError("the Docker engine is not running and this cannot start it")
        log = open(tempfile.gettempdir() + "/stack-test-dockerd.log", "ab")
        self.started = subprocess.Popen(["dockerd"], stdout=log, stderr=log)
        wait_for("dockerd", self._running, timeout=60, every=1)
        say(f"started dockerd (pid {self.started.pid})")

    def stop(self) -> None:
        if self.started is not None:
            self.started.terminate()
            try:
                self.started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.started.kill()
            say("stopped the dockerd this test started")


# -- 2. images ---------------------------------------------------------------------------------


def image_exists(name: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False)
    return done.returncode == 0


def image_size_mb(name: str) -> int:
    return round(int(sh("docker", "image", "inspect", "-f", "{{.Size}}", name)) / 1e6)


def docker_build(tag: str, dockerfile: Path, context: Path, *extra: str) -> None:
    # --network host: pip and apt inside the build reach the registries only this way here.
    sh("docker", "build", "--network", "host", "-f", str(dockerfile), "-t", tag, *extra,
       str(context))  # fmt: skip


def build_stand_ins() -> dict[str, str]:
    """The base and the postgres/redis/seaweedfs stand-ins, made from Debian packages."""
    if not image_exists(BASE):
        say("building the Debian base image from Debian packages (about 4 minutes)")
        _, seconds = timed(lambda: sh(str(DOCKER / "local" / "build-base.sh"), BASE))
        FIGURES["base_image_build_s"] = seconds
    env = {}
    for variable, (image, dockerfile) in STAND_INS.items():
        docker_build(image, DOCKER / "local" / dockerfile, DOCKER / "local",
                     "--build-arg", f"BASE_IMAGE={BASE}")  # fmt: skip
        env[variable] = image
    say(f"stand-ins built: {', '.join(env.values())}")
    return env


def build_ours(cold: bool) -> dict[str, str]:
    """The three cyclegan-jobs images, timed as built and again warm (everything cached)."""
    env, times = {}, {}
    # "cold": nothing cached (--cold, or none of the images was there); "cached": layers reused.
    fresh = cold or not any(image_exists(image) for _, image in OURS.values())
    for label, no_cache in (("cold" if fresh else "cached", cold), ("warm", False)):
        start = time.monotonic()
        for target, (variable, image) in OURS.items():
            say(f"building {image} (target {target}, {label})")
            extra = ["--target", target, "--build-arg", f"BASE_IMAGE={BASE}"]
            docker_build(image, DOCKER / "Dockerfile", REPO, *extra, *(["--no-cache"] * no_cache))
            env[variable] = image
        times[label] = round(time.monotonic() - start, 1)
        say(f"images built ({label}): {times[label]} s")
    FIGURES["build_s"] = times
    FIGURES["image_size_mb"] = {image: image_size_mb(image) for _, image in OURS.values()}
    return env


# -- 3. the stack --------------------------------------------------------------------------------


class Stack:
    """The compose project: its environment, up/down, health, and its S3 and REST API."""

    def __init__(self, engine: Engine, images: dict[str, str]) -> None:
        self.engine = engine
        self.port = {"airflow": free_port(), "s3": free_port()}
        self.user, self.password = "admin", secrets.token_urlsafe(12)
        self.s3_keys = (f"stacktest-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
        self.env = {
            **images,
            "_AIRFLOW_WWW_USER_USERNAME": self.user,
            "_AIRFLOW_WWW_USER_PASSWORD": self.password,
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "S3_ACCESS_KEY": self.s3_keys[0],
            "S3_SECRET_KEY": self.s3_keys[1],
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW_PORT": str(self.port["airflow"]),
            "S3_PORT": str(self.port["s3"]),
            "CYCLEGAN_GPU_SLOTS": "2",
            "CYCLEGAN_SAMPLE_DATA": "true",
            "CYCLEGAN_SAMPLE_FACES": str(N_SAMPLE_FACES),
            # Manual triggers only: unpausing must not start a run of its own mid-test.
            "CYCLEGAN_NIGHTLY_SCHEDULE": "",
            "CYCLEGAN_RETRAIN_SCHEDULE": "",
        }
        self.states: dict[str, str] = {}  # container -> health, as last seen by _all_healthy
        self.api = Api(f"http://127.0.0.1:{self.port['airflow']}", self.user, self.password)

    def compose(self, *args: str, timeout: float = 1800) -> str:
        cli = [*self.engine.compose_cli, "-p", PROJECT, "-f", str(DOCKER / "compose.yaml")]
        return sh(*cli, *args, env=self.env, timeout=timeout)

    def up(self, gpu_workers: int) -> float:
        """`up -d` with N gpu workers, then wait until every service is healthy; seconds."""
        start = time.monotonic()
        self.compose("up", "-d", "--no-build", "--scale", f"{GPU_SERVICE}={gpu_workers}")
        try:
            wait_for("every service healthy", self._all_healthy, timeout=600)
        except StackTestError as err:
            raise StackTestError(f"{err}; services: {self.states}") from err
        wait_for("both DAGs parsed", self._dags_parsed, timeout=300)
        return round(time.monotonic() - start, 1)

    def down(self, volumes: bool) -> None:
        self.compose("down", *(["--volumes"] if volumes else []), "--remove-orphans")

    def containers(self, service: str | None = None) -> list[dict]:
        """docker inspect of the project's containers (of one service)."""
        labels = [f"label=com.docker.compose.project={PROJECT}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        ids = sh("docker", "ps", "-aq", *[x for f in labels for x in ("--filter", f)]).split()
        return json.loads(sh("docker", "inspect", *ids)) if ids else []

    def hostnames(self, service: str) -> set[str]:
        running = [c for c in self.containers(service) if c["State"]["Running"]]
        return {c["Config"]["Hostname"] for c in running}

    def _all_healthy(self) -> bool:
        """Every init job exited 0 and every other container (each replica) is healthy."""
        self.states = {c["Name"].lstrip("/"): self._status(c) for c in self.containers()}
        return bool(self.states) and all(s in ("healthy", "exited 0") for s in self.states.values())

    @staticmethod
    def _status(container: dict) -> str:
        state = container["State"]
        if not container["Config"]["Labels"]["com.docker.compose.service"].endswith("-init"):
            return state.get("Health", {}).get("Status", "healthy")
        if state["Status"] == "exited" and state["ExitCode"]:
            logs = sh("docker", "logs", "--tail", "30", container["Id"])
            raise StackTestError(f"{container['Name']} failed (exit {state['ExitCode']}):\n{logs}")
        return f"exited {state['ExitCode']}" if state["Status"] == "exited" else state["Status"]

    def _dags_parsed(self) -> bool:
        return all(self.api.get(f"/api/v2/dags/{d}", missing_ok=True) for d in (RETRAIN, NIGHTLY))

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port['s3']}",
            aws_access_key_id=self.s3_keys[0],
            aws_secret_access_key=self.s3_keys[1],
            region_name="us-east-1",
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """Airflow's REST API with a JWT from /auth/token (FAB auth manager)."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base, self.user, self.password = base, user, password
        self.token: str | None = None

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self.token is None and not path.startswith("/auth/"):
            login = {"username": self.user, "password": self.password}
            self.token = self._request("POST", "/auth/token", login)["access_token"]
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token and not path.startswith("/auth/"):
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str, missing_ok: bool = False, tries: int = 5) -> Any:
        """GET with a fresh token on 401 and a few retries while the server restarts."""
        for attempt in range(tries):
            try:
                return self._request("GET", path)
            except urllib.error.HTTPError as err:
                if missing_ok and err.code == 404:
                    return None
                if err.code != 401 or attempt == tries - 1:
                    raise
                self.token = None
            except urllib.error.URLError:
                if attempt == tries - 1:
                    raise
                time.sleep(3)
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any) -> Any:
        try:
            return self._request(method, path, body)
        except urllib.error.HTTPError as err:
            raise StackTestError(f"{method} {path}: {err.code} {err.read()[:500]!r}") from err

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}?update_mask=is_paused", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict) -> str:
        run = self.call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        say(f"triggered {dag_id}: {run['dag_run_id']} conf {json.dumps(conf)}")
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances"
        return self.get(path + "?limit=500")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/"
            f"{task_id}/xcomEntries/return_value?deserialize=true&stringify=false"
        )
        return self.get(path)["value"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 1800) -> dict:
        """Wait for the run to end; StackTestError with the failed tasks' log tails if not ok."""

        def ended() -> dict | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        run = wait_for(f"{dag_id} {run_id}", ended, timeout=timeout, every=5)
        if run["state"] != "success":
            raise StackTestError(
                f"{dag_id} {run_id} {run['state']}:\n{self.failures(dag_id, run_id)}"
            )
        return run

    def failures(self, dag_id: str, run_id: str) -> str:
        lines = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] in ("failed", "upstream_failed"):
                lines.append(f"  {ti['task_id']}[{ti['map_index']}]: {ti['state']}")
                if ti["state"] == "failed":
                    lines.append(self.log_tail(dag_id, run_id, ti))
        return "\n".join(lines)

    def log_tail(self, dag_id: str, run_id: str, ti: dict) -> str:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/"
            f"{ti['task_id']}/logs/{ti['try_number']}?map_index={ti['map_index']}"
        )
        try:
            content = self.get(path).get("content", [])
        except urllib.error.HTTPError as err:
            return f"    (log unavailable: {err.code})"
        events = [e.get("event", "") if isinstance(e, dict) else str(e) for e in content]
        return "\n".join("    " + str(e) for e in events[-25:])


def run_seconds(run: dict) -> float:
    from datetime import datetime

    start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
    return round((end - start).total_seconds(), 1)


# -- 4. runs and their checks -----------------------------------------------------------------


def retrain_and_check(stack: Stack) -> str:
    api = stack.api
    for dag_id in (RETRAIN, NIGHTLY):
        api.unpause(dag_id)
    run_id = api.trigger(RETRAIN, RETRAIN_CONF)
    run = api.wait(RETRAIN, run_id)
    FIGURES["retrain_s"] = run_seconds(run)
    promoted = json.loads(
        stack.s3().get_object(Bucket="cyclegan-models", Key="PROMOTED.json")["Body"].read()
    )
    check(bool(promoted.get("version")), f"retrain promoted {promoted.get('version')}")
    check_heavy_on_gpu(stack, RETRAIN, run_id)
    return run_id


def input_stems(client: Any, bucket: str, prefix: str) -> list[str]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]  # fmt: skip
    return [k[len(prefix) :].rsplit(".", 1)[0] for k in keys]


def nightly_and_check(stack: Stack, conf: dict, expect_translated: int | None) -> tuple[str, dict]:
    api = stack.api
    run_id = api.trigger(NIGHTLY, conf)
    run = api.wait(NIGHTLY, run_id)
    summary = api.xcom(NIGHTLY, run_id, "summarize")
    counts = summary["counts"]
    say(f"nightly {run_id}: {run_seconds(run)} s, counts {counts}")
    if expect_translated is not None:
        check(counts["ok"] == expect_translated, f"nightly translated {counts['ok']} images")
    return run_id, {"seconds": run_seconds(run), "counts": counts, "summary": summary["summary"]}


def check_outputs(stack: Stack, output_bucket: str, out_prefix: str, in_prefix: str) -> None:
    client = stack.s3()
    stems = input_stems(client, "cyclegan-input", in_prefix)
    check(len(stems) > 0, f"{len(stems)} inputs under s3://cyclegan-input/{in_prefix}")
    for kind in ("stylized", "reconstructed"):
        have = set(input_stems(client, output_bucket, f"{out_prefix}{kind}/"))
        missing = [s for s in stems if s not in have]
        check(not missing, f"a {kind} output for every input ({len(stems)}); missing {missing[:5]}")


def check_summary(stack: Stack, summary_uri: str) -> None:
    bucket, key = summary_uri.removeprefix("s3://").split("/", 1)
    summary = json.loads(stack.s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    check("counts" in summary, f"run summary at {summary_uri}")


def check_heavy_on_gpu(stack: Stack, dag_id: str, run_id: str) -> set[str]:
    """Every heavy task ran on a gpu worker, every light one on the default worker."""
    gpu, default = stack.hostnames(GPU_SERVICE), stack.hostnames(DEFAULT_SERVICE)
    ran = [ti for ti in stack.api.task_instances(dag_id, run_id) if ti["state"] == "success"]
    heavy = {ti["hostname"] for ti in ran if ti["task_id"] in HEAVY_TASKS}
    light = {ti["hostname"] for ti in ran if ti["task_id"] not in HEAVY_TASKS}
    check(bool(heavy) and heavy <= gpu, f"{dag_id}: heavy tasks on gpu workers {sorted(heavy)}")
    check(light <= default, f"{dag_id}: light tasks on the default worker {sorted(light)}")
    return {ti["hostname"] for ti in ran if ti["task_id"] == "translate_shard"}


# -- 5. the kubernetes runner's contract ---------------------------------------------------------


def pod_run(stack: Stack, args: list[str], label: str) -> dict:
    """`args` in the job image as a pod would run them: S3 settings in the environment, the
    result file in /airflow/xcom (an emptyDir the KubernetesPodOperator's sidecar reads)."""
    network = f"{PROJECT}_default"
    with tempfile.TemporaryDirectory() as xcom:
        os.chmod(xcom, 0o777)  # the image's user (uid 50000) writes there, like into an emptyDir
        env = {
            "AWS_ACCESS_KEY_ID": stack.s3_keys[0],
            "AWS_SECRET_ACCESS_KEY": stack.s3_keys[1],
            "AWS_ENDPOINT_URL_S3": "http://s3:8333",
            "AWS_DEFAULT_REGION": "us-east-1",
            "CYCLEGAN_RESULT_FILE": "/airflow/xcom/return.json",
        }
        flags = [x for k in env for x in ("-e", k)]  # values from this process's environment
        _, seconds = timed(lambda: sh(
            "docker", "run", "--rm", "--network", network, *flags, "-v", f"{xcom}:/airflow/xcom",
            OURS["job"][1], *args, env=env))  # fmt: skip
        result_file = Path(xcom) / "return.json"
        check(
            result_file.is_file(), f"pod {label}: result in /airflow/xcom/return.json ({seconds} s)"
        )
        return json.loads(result_file.read_text())


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def check_pod_contract(stack: Stack, retrain_run: str, nightly_run: str) -> None:
    api = stack.api
    shard_args = api.xcom(NIGHTLY, nightly_run, "shard_commands")[0]
    # A fresh output prefix, so that the pod really translates the shard's inputs.
    shard_args = replace_flag(shard_args, "--output", "s3://cyclegan-output/pod-contract/")
    result = pod_run(stack, shard_args, "translate shard")
    check(result["counts"]["ok"] > 0 and result["counts"]["failed"] == 0,
          f"pod translate: {result['counts']}")  # fmt: skip
    train_args = api.xcom(RETRAIN, retrain_run, "train_command")
    train_args = replace_flag(train_args, "--run-id", f"pod-contract-{secrets.token_hex(3)}")
    result = pod_run(stack, train_args, "train")
    bucket, key = result["version_uri"].removeprefix("s3://").split("/", 1)
    listed = stack.s3().list_objects_v2(Bucket=bucket, Prefix=key + "/").get("KeyCount", 0)
    check(listed > 0, f"pod train: version {result['version_uri']} in S3 ({listed} objects)")


# -- 7. bench ----------------------------------------------------------------------------------


def put_bench_inputs(stack: Stack, n: int, prefix: str) -> None:
    """n generated 'phone photos' (640x480 JPEG) under s3://cyclegan-input/<prefix>."""
    import numpy as np

    from cyclegan_jobs.images import encode_jpeg
    from cyclegan_jobs.sample_data import synthetic_faces

    client = stack.s3()
    faces = synthetic_faces(16, 480, seed=11)

    def put(i: int) -> None:
        photo = np.concatenate([faces[i % 16], faces[(i + 1) % 16][:, :160]], axis=1)
        body = encode_jpeg(photo, quality=90)
        client.put_object(Bucket="cyclegan-input", Key=f"{prefix}photo_{i:05d}.jpg", Body=body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, range(n)))
    say(f"put {n} photos (640x480 JPEG) under s3://cyclegan-input/{prefix}")


def bench(stack: Stack, n: int) -> None:
    prefix = "bench/"
    put_bench_inputs(stack, n, prefix)
    results = {}
    for workers in (1, 2):
        stack.compose("up", "-d", "--no-build", "--scale", f"{GPU_SERVICE}={workers}")
        wait_for(f"{workers} gpu workers", lambda w=workers: len(stack.hostnames(GPU_SERVICE)) == w
                 and stack._all_healthy(), timeout=300)  # fmt: skip
        conf = {
            "input": f"s3://cyclegan-input/{prefix}",
            "output": f"s3://cyclegan-output/bench-{workers}w/",
            "shard_size": max(1, n // 4),
            "batch_size": 64,
        }
        run_id, result = nightly_and_check(stack, conf, expect_translated=n)
        spread = check_heavy_on_gpu(stack, NIGHTLY, run_id)
        results[f"{workers}_gpu_workers"] = {**result, "workers_used": len(spread)}
    one, two = (results[f"{w}_gpu_workers"]["seconds"] for w in (1, 2))
    FIGURES["bench_nightly"] = {"images": n, **results, "ratio_1_over_2": round(one / two, 2)}


# -- 8. faults ---------------------------------------------------------------------------------

# Nightlies over these photos, one per fault: 2 shards of 400 (each about 40 s here), one on each
# gpu worker, so that a retry never queues behind another shard for the surviving worker.
FAULT_PREFIX, FAULT_INPUTS, FAULT_SHARD_SIZE = "faults/", 800, 400
S3_OUTAGE_S = 60
RETRY_WITHIN_S = 120  # a lost worker's shard runs again within this (issue 19)


def fault_nightly(stack: Stack, label: str) -> tuple[str, str]:
    """Trigger a nightly over the fault photos into a fresh output prefix: (run id, prefix)."""
    out = f"fault-{label}/"
    conf = {"input": f"s3://cyclegan-input/{FAULT_PREFIX}", "output": f"s3://cyclegan-output/{out}",
            "shard_size": FAULT_SHARD_SIZE, "batch_size": 16}  # fmt: skip
    return stack.api.trigger(NIGHTLY, conf), out


def shard_tis(stack: Stack, run_id: str) -> list[dict]:
    tis = stack.api.task_instances(NIGHTLY, run_id)
    return sorted(
        (t for t in tis if t["task_id"] == "translate_shard"), key=lambda t: t["map_index"]
    )


def utc_seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def mid_shard(stack: Stack, run_id: str, out: str, outputs: int = 48) -> tuple[dict, int]:
    """A running translate_shard, once the run has written `outputs` outputs (the shards are
    translating): (the shard's task instance, the outputs written by then)."""

    def probe() -> tuple[dict, int] | None:
        running = [t for t in shard_tis(stack, run_id) if t["state"] == "running"]
        written = stylized(stack, out) if running else 0
        return (running[0], written) if running and written >= outputs else None

    return wait_for(f"a shard of {run_id} mid-run", probe, timeout=900, every=1)


def stylized(stack: Stack, out: str) -> int:
    return len(input_stems(stack.s3(), "cyclegan-output", f"{out}stylized/"))


def check_exactly_once(stack: Stack, run_id: str, out: str) -> dict:
    """The run succeeded, every input is in its merged manifest exactly once, none failed, and
    every input has its outputs. Returns the run's counts."""
    run = stack.api.wait(NIGHTLY, run_id)
    uri = stack.api.xcom(NIGHTLY, run_id, "summarize")["summary"]
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    summary = json.loads(stack.s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    bucket, key = summary["manifest"].removeprefix("s3://").split("/", 1)
    lines = stack.s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    counts = summary["counts"]
    once = len(keys) == len(set(keys)) == FAULT_INPUTS == counts["ok"] + counts["skipped"]
    what = f"{run_id}: each of {FAULT_INPUTS} inputs once in the manifest, none failed: {counts}"
    check(once and counts["failed"] == 0, what)
    check_outputs(stack, "cyclegan-output", out, FAULT_PREFIX)
    return {"counts": counts, "seconds": run_seconds(run)}


def gpu_worker(stack: Stack, hostname: str) -> dict:
    """The gpu worker container whose hostname a task instance names (docker inspect)."""
    [container] = [c for c in stack.containers(GPU_SERVICE) if c["Config"]["Hostname"] == hostname]
    return container


def kill_gpu_worker(stack: Stack) -> dict:
    """SIGKILL a gpu worker's container (the worker, its running shard, everything in it, as a
    lost machine) mid-shard: the shard must run again within RETRY_WITHIN_S."""
    run_id, out = fault_nightly(stack, "kill")
    victim, written = mid_shard(stack, run_id, out)
    container = gpu_worker(stack, victim["hostname"])
    os.kill(container["State"]["Pid"], 9)
    killed = time.time()
    say(f"killed gpu worker {victim['hostname']} running shard {victim['map_index']} "
        f"(try {victim['try_number']}; {written} outputs written)")  # fmt: skip

    def retried() -> dict | None:
        shard = shard_tis(stack, run_id)[victim["map_index"]]
        later = shard["try_number"] > victim["try_number"] and shard["start_date"]
        return shard if later and shard["state"] in ("running", "success") else None

    retry = wait_for("the killed shard's retry", retried, timeout=900, every=2)
    after = round(utc_seconds(retry["start_date"]) - killed, 1)
    queued = retry.get("queued_when") and round(utc_seconds(retry["queued_when"]) - killed, 1)
    result = {"retry_queued_after_s": queued, "retry_started_after_s": after,
              "retry_host": retry["hostname"]}  # fmt: skip
    result.update(check_exactly_once(stack, run_id, out))
    check(after <= RETRY_WITHIN_S, f"the killed worker's shard ran again {after} s after the "
          f"kill (within {RETRY_WITHIN_S} s), on {retry['hostname']}")  # fmt: skip
    return result


def stop_s3(stack: Stack) -> dict:
    """Stop S3 for S3_OUTAGE_S while shards run: they ride it out, no Airflow retry."""
    run_id, out = fault_nightly(stack, "s3")
    mid_shard(stack, run_id, out)
    before = stylized(stack, out)
    stack.compose("stop", "s3")
    say(f"S3 stopped ({before} outputs written); starting it again in {S3_OUTAGE_S} s")
    time.sleep(S3_OUTAGE_S)
    stack.compose("start", "s3")
    started = time.monotonic()

    def progressed() -> bool:
        try:
            return stylized(stack, out) > before
        except Exception:  # S3 still starting
            return False

    wait_for("outputs after the outage", progressed, timeout=600, every=1)
    resumed = round(time.monotonic() - started, 1)
    result = {"outage_s": S3_OUTAGE_S, "new_outputs_after_restart_s": resumed,
              **check_exactly_once(stack, run_id, out)}  # fmt: skip
    tries = [t["try_number"] for t in shard_tis(stack, run_id)]
    check(tries == [1] * len(tries), f"the {S3_OUTAGE_S} s S3 outage cost no retry: tries {tries}")
    return result


def restart_gpu_worker(stack: Stack) -> dict:
    """`docker restart` a gpu worker mid-shard: Celery's warm shutdown lets the shard finish
    (within the stop grace period) before the worker stops: no retry."""
    run_id, out = fault_nightly(stack, "restart")
    victim, _ = mid_shard(stack, run_id, out)
    container = gpu_worker(stack, victim["hostname"])
    _, seconds = timed(lambda: sh("docker", "restart", container["Id"]))
    say(f"restarted gpu worker {victim['hostname']} mid-shard in {seconds} s")
    # Stopped again at once, while it starts: Airflow must not ignore the SIGTERM (it did as
    # PID 1, and Docker then waited out the 10-minute grace period).
    _, stop_s = timed(lambda: sh("docker", "stop", container["Id"]))
    check(stop_s < 30, f"a gpu worker stopped while starting stops in {stop_s} s")
    sh("docker", "start", container["Id"])
    result = {"restart_s": seconds, "stop_while_starting_s": stop_s}
    result.update(check_exactly_once(stack, run_id, out))
    shard = shard_tis(stack, run_id)[victim["map_index"]]
    same_try = shard["try_number"] == victim["try_number"] and shard["state"] == "success"
    check(same_try, f"the restarted worker's shard finished on try {shard['try_number']}")
    return result


def restart_postgres(stack: Stack) -> dict:
    """`docker restart` postgres with every Airflow component connected: it must stop cleanly
    (fast shutdown on SIGINT), with no crash recovery when it starts, and the stack recover."""
    [container] = stack.containers("postgres")
    since = sh("docker", "inspect", "-f", "{{.State.StartedAt}}", container["Id"]).strip()
    _, seconds = timed(lambda: sh("docker", "restart", container["Id"]))
    done = subprocess.run(["docker", "logs", "--since", since, container["Id"]],
                          capture_output=True, text=True, check=True)  # fmt: skip
    log = done.stdout + done.stderr
    crash = [x for x in ("not properly shut down", "was interrupted", "automatic recovery")
             if x in log]  # fmt: skip
    check(not crash and "shutting down" in log, f"postgres restarted in {seconds} s, shut "
          f"down cleanly (crash recovery: {crash or 'none'})")  # fmt: skip
    _, healthy = timed(lambda: wait_for("every service healthy", stack._all_healthy, timeout=600))
    return {"restart_s": seconds, "healthy_again_s": healthy}


def faults(stack: Stack) -> None:
    """Each fault on a nightly of its own; the recovery figures."""
    put_bench_inputs(stack, FAULT_INPUTS, FAULT_PREFIX)
    FIGURES["faults"] = {}
    for name, fault in (("gpu_worker_killed", kill_gpu_worker), ("s3_stopped", stop_s3),
                        ("gpu_worker_restarted", restart_gpu_worker),
                        ("postgres_restarted", restart_postgres)):  # fmt: skip
        wait_for("every service healthy", stack._all_healthy, timeout=600)
        FIGURES["faults"][name] = fault(stack)
        say(f"fault {name}: {FIGURES['faults'][name]}")


# -- the whole test ----------------------------------------------------------------------------


def exercise(stack: Stack, bench_images: int, with_faults: bool) -> None:
    stack.down(volumes=True)  # a clean start: nothing left from an earlier, interrupted test
    FIGURES["up_s"] = stack.up(gpu_workers=2)
    say(
        f"stack up and healthy in {FIGURES['up_s']} s (UI http://127.0.0.1:{stack.port['airflow']})"
    )
    retrain_run = retrain_and_check(stack)
    nightly_run, first = nightly_and_check(
        stack, {"shard_size": 2}, expect_translated=N_SAMPLE_FACES
    )
    check_outputs(stack, "cyclegan-output", "", "faces/")
    check_summary(stack, first["summary"])
    spread = check_heavy_on_gpu(stack, NIGHTLY, nightly_run)
    check(len(spread) == 2, f"the nightly's shards ran on both gpu workers {sorted(spread)}")
    check_pod_contract(stack, retrain_run, nightly_run)

    stack.down(volumes=False)
    FIGURES["restart_up_s"] = stack.up(gpu_workers=2)
    for dag_id, run_id in ((RETRAIN, retrain_run), (NIGHTLY, nightly_run)):
        check(stack.api.run(dag_id, run_id)["state"] == "success", f"{run_id} kept after down/up")
    check_outputs(stack, "cyclegan-output", "", "faces/")
    nightly_and_check(stack, {"shard_size": 2}, expect_translated=0)
    if bench_images:
        bench(stack, bench_images)
    if with_faults:
        faults(stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="build our images with --no-cache")
    parser.add_argument("--bench-images", type=int, default=500, help="0: no benchmark")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    parser.add_argument("--no-faults", action="store_true", help="skip the fault steps")
    args = parser.parse_args(argv)
    engine = Engine()
    started = time.monotonic()
    try:
        engine.ensure()
        images = {**build_stand_ins(), **build_ours(args.cold)}
        stack = Stack(engine, images)
        try:
            exercise(stack, args.bench_images, not args.no_faults)
        finally:
            if not args.keep:
                _, FIGURES["down_s"] = timed(lambda: stack.down(volumes=True))
                say(f"stack removed (containers, volumes, network) in {FIGURES['down_s']} s")
    except StackTestError as err:
        say(f"FAILED: {err}")
        return 1
    finally:
        if not args.keep:
            engine.stop()
    FIGURES["total_s"] = round(time.monotonic() - started, 1)
    say("figures:\n" + json.dumps(FIGURES, indent=2))
    print(json.dumps(FIGURES))
    return 0


if __name__ == "__main__":
    sys.exit(main())

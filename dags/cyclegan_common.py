"""Settings and job runners shared by the CycleGAN DAGs (not a DAG file: see .airflowignore).

Settings are environment variables read when a DAG file is parsed, each with a default that
matches the local stack (`make run`, `make airflow`); per-run Params override the data ones.

  CYCLEGAN_AWS_CONN_ID        aws_default: the Airflow AWS connection (extra endpoint_url
                              for MinIO/SeaweedFS; unset for AWS itself)
  CYCLEGAN_INPUT_URI          s3://cyclegan-input/faces/: images to translate
  CYCLEGAN_OUTPUT_URI         s3://cyclegan-output/: stylized/, reconstructed/, _runs/
  CYCLEGAN_MODEL_STORE        s3://cyclegan-models: versions/, PROMOTED.json, runs/
  CYCLEGAN_DOMAIN_A_URI       s3://cyclegan-data/sample/domain_a: paintings (training)
  CYCLEGAN_DOMAIN_B_URI       s3://cyclegan-data/sample/domain_b: faces (training)
  CYCLEGAN_NIGHTLY_SCHEDULE   0 2 * * *: the nightly translation (cron, UTC; empty: manual
                              and API triggers only)
  CYCLEGAN_RETRAIN_SCHEDULE   @weekly: periodic retraining (empty: manual triggers only)
  CYCLEGAN_TRAIN_PRESET       seed: the retrain form's default preset
  CYCLEGAN_TRAIN_IMAGE_SIZE   (the preset's): the retrain form's default image size
  CYCLEGAN_TRAIN_EPOCHS       1: the retrain form's default epochs
  CYCLEGAN_RUNNER             local: local (in the task's process) or kubernetes (a pod)
  CYCLEGAN_POOL               cyclegan_gpu: pool of the heavy tasks (slots = GPUs)
  CYCLEGAN_QUEUE              gpu: queue of the heavy tasks (workers with GPUs)
  CYCLEGAN_IMAGE              cyclegan-jobs:latest: the job image (kubernetes runner)
  CYCLEGAN_FEED_PROCESSES     0: worker processes per translate task for GET/decode and
                              encode/PUT (0: threads; about 2 per core on GPU machines)
  CYCLEGAN_K8S_NAMESPACE      default: the pods' namespace
  CYCLEGAN_K8S_GPUS           1: nvidia.com/gpu limit per pod
  CYCLEGAN_K8S_NODE_SELECTOR  {"nvidia.com/gpu.present": "true"} (JSON object)
  CYCLEGAN_K8S_TOLERATIONS    [{"key": "nvidia.com/gpu", "operator": "Exists",
                              "effect": "NoSchedule"}] (JSON list)
  CYCLEGAN_K8S_ENV_SECRET     cyclegan-s3: a Secret with the pods' AWS_* environment
  CYCLEGAN_LINK_ENDPOINT_URL  (the connection's endpoint): the S3 address in results links,
                              as a browser reaches it (e.g. a published port when workers
                              use an internal name); links are presigned for 7 days

Runners: every heavy step is a light task that renders one `cyclegan-jobs` command line and a
heavy task that runs it, in pool CYCLEGAN_POOL and queue CYCLEGAN_QUEUE. `local` runs it in the
task's process (`cyclegan_jobs.cli.run`) with a boto3 client from the Airflow connection;
`kubernetes` runs the same arguments in a pod of CYCLEGAN_IMAGE with a GPU limit, whose S3
credentials and endpoint (AWS_ENDPOINT_URL_S3) come from the Secret CYCLEGAN_K8S_ENV_SECRET.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink

log = logging.getLogger(__name__)

RUNNERS = ("local", "kubernetes")
# What both DAGs share: no backfill of missed intervals, one run at a time.
DAG_DEFAULTS = {
    "start_date": datetime(2026, 1, 1, tzinfo=UTC),
    "catchup": False,
    "max_active_runs": 1,
}
# Where a pod writes its result; the KubernetesPodOperator turns it into the task's XCom.
POD_RESULT_FILE = "/airflow/xcom/return.json"
# I/O tasks (listing, merging, promoting) retry with backoff: object stores have bad minutes.
# Airflow 3 takes the backoff as a multiplier: True (Airflow 2's flag) is 1.0, no backoff at all.
IO_RETRIES = {
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
}
# Heavy tasks (train, translate shards) on a lost worker: the scheduler notices after its heartbeat
# timeout (60 s in docker/compose.yaml; Airflow's default is 300 s) and the first retry follows
# 15-30 s later (Airflow adds up to 100 % jitter), so the work is running again within 2 minutes.
# Later retries back off (x2, at most 10 min), so that a long S3 outage, beyond what a job rides
# out itself (--s3-outage-wait), gets minutes more before the run fails. The retries themselves
# are per task (heavy_step/heavy_mapped): a retry resumes (checkpoints, the translate ledger).
# Shards get 4: with each try's own outage wait, the night rides out 11-15 min of S3 down.
HEAVY_RETRY_DELAYS = {
    "retry_delay": timedelta(seconds=15),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


# The DAGs' schedules come from the cyclegan_timetables plugin; a deployment without it gets this
# import error in the UI instead of a bare ModuleNotFoundError.
PLUGIN_MISSING = (
    "cyclegan_timetables is not importable: copy plugins/cyclegan_timetables.py (from the "
    "cyclegan-jobs repository; /opt/airflow/plugins in its images) into the plugins folder "
    "([core] plugins_folder, by default $AIRFLOW_HOME/plugins) of every Airflow component "
    "(scheduler, DAG processor, API server, triggerer, workers), then restart them"
)


def schedule_for(cron: str | None) -> Any:
    """A DAG's `schedule=` for a cron string: the plugin's no-surprise-run timetable (None when
    empty: manual triggers only)."""
    try:
        import cyclegan_timetables
    except ModuleNotFoundError as err:
        if err.name != "cyclegan_timetables":
            raise
        raise ImportError(PLUGIN_MISSING) from err
    return cyclegan_timetables.schedule_for(cron)


def _json_env(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{name} must be JSON: {err}") from err


@dataclass(frozen=True)
class Settings:
    """The deployment's settings (see the module docstring for the environment variables)."""

    aws_conn_id: str = "aws_default"
    input_uri: str = "s3://cyclegan-input/faces/"
    output_uri: str = "s3://cyclegan-output/"
    model_store: str = "s3://cyclegan-models"
    domain_a_uri: str = "s3://cyclegan-data/sample/domain_a"
    domain_b_uri: str = "s3://cyclegan-data/sample/domain_b"
    nightly_schedule: str | None = "0 2 * * *"
    retrain_schedule: str | None = "@weekly"
    train_preset: str = "seed"
    train_image_size: int | None = None
    train_epochs: int = 1
    runner: str = "local"
    pool: str = "cyclegan_gpu"
    queue: str = "gpu"
    image: str = "cyclegan-jobs:latest"
    feed_processes: int = 0
    k8s_namespace: str = "default"
    k8s_gpus: int = 1
    k8s_node_selector: dict = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    k8s_tolerations: list = field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )
    k8s_env_secret: str = "cyclegan-s3"
    link_endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"CYCLEGAN_RUNNER must be one of {RUNNERS}, got {self.runner!r}")

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        d = cls()
        return cls(
            aws_conn_id=env("CYCLEGAN_AWS_CONN_ID", d.aws_conn_id),
            input_uri=env("CYCLEGAN_INPUT_URI", d.input_uri),
            output_uri=env("CYCLEGAN_OUTPUT_URI", d.output_uri),
            model_store=env("CYCLEGAN_MODEL_STORE", d.model_store),
            domain_a_uri=env("CYCLEGAN_DOMAIN_A_URI", d.domain_a_uri),
            domain_b_uri=env("CYCLEGAN_DOMAIN_B_URI", d.domain_b_uri),
            nightly_schedule=env("CYCLEGAN_NIGHTLY_SCHEDULE", d.nightly_schedule) or None,
            retrain_schedule=env("CYCLEGAN_RETRAIN_SCHEDULE", d.retrain_schedule) or None,
            train_preset=env("CYCLEGAN_TRAIN_PRESET", d.train_preset),
            train_image_size=int(env("CYCLEGAN_TRAIN_IMAGE_SIZE", "0")) or None,
            train_epochs=int(env("CYCLEGAN_TRAIN_EPOCHS", str(d.train_epochs))),
            runner=env("CYCLEGAN_RUNNER", d.runner),
            pool=env("CYCLEGAN_POOL", d.pool),
            queue=env("CYCLEGAN_QUEUE", d.queue),
            image=env("CYCLEGAN_IMAGE", d.image),
            feed_processes=int(env("CYCLEGAN_FEED_PROCESSES", str(d.feed_processes))),
            k8s_namespace=env("CYCLEGAN_K8S_NAMESPACE", d.k8s_namespace),
            k8s_gpus=int(env("CYCLEGAN_K8S_GPUS", str(d.k8s_gpus))),
            k8s_node_selector=_json_env("CYCLEGAN_K8S_NODE_SELECTOR", d.k8s_node_selector),
            k8s_tolerations=_json_env("CYCLEGAN_K8S_TOLERATIONS", d.k8s_tolerations),
            k8s_env_secret=env("CYCLEGAN_K8S_ENV_SECRET", d.k8s_env_secret),
            link_endpoint_url=env("CYCLEGAN_LINK_ENDPOINT_URL") or None,
        )

    def model_asset(self) -> Any:
        """The model Asset: the store's promoted-version pointer, which `promote` updates."""
        from airflow.sdk import Asset

        store = self.model_store.rstrip("/")
        if "://" not in store:
            store = Path(store).resolve().as_uri()
        return Asset(name="cyclegan_promoted_model", uri=f"{store}/PROMOTED.json")


# Form fields whose default is the deployment's setting (the rest come from cyclegan_jobs/options).
FORM_SETTINGS = {
    "preset": "train_preset",
    "epochs": "train_epochs",
    "domain_a": "domain_a_uri",
    "domain_b": "domain_b_uri",
    "model_store": "model_store",
    "input": "input_uri",
    "output": "output_uri",
}


def form_params(dag_id: str, settings: Settings) -> dict[str, Any]:
    """A DAG's trigger-form Params, generated from the options' declarations
    (cyclegan_jobs.options.form_schema), with the deployment's defaults."""
    from airflow.sdk import Param

    from cyclegan_jobs.config import PRESET_IMAGE_SIZE
    from cyclegan_jobs.options import form_schema

    defaults = {name: getattr(settings, attr) for name, attr in FORM_SETTINGS.items()}
    defaults["image_size"] = settings.train_image_size or PRESET_IMAGE_SIZE[settings.train_preset]
    form = form_schema(dag_id, defaults)
    return {name: Param(value, description=text, **schema) for name, (value, text, schema) in
            form.items()}  # fmt: skip


def safe_run_id(run_id: str) -> str:
    """An Airflow run id (e.g. manual__2026-11-29T02:00:00+00:00) as a key- and path-safe name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.") or "run"


def use_connection(conn_id: str) -> None:
    """Route every cyclegan_jobs S3 call of this task through the Airflow connection: its
    endpoint and, when it has them, its keys (else the worker's own AWS credential chain).
    Settings, not a ready client, so that the job's worker processes can use them too."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from cyclegan_jobs import storage

    conn = S3Hook(aws_conn_id=conn_id).conn_config
    keys = {
        "aws_access_key_id": conn.aws_access_key_id,
        "aws_secret_access_key": conn.aws_secret_access_key,
        "aws_session_token": conn.aws_session_token,
        "region_name": conn.region_name,
    }
    storage.configure(
        endpoint_url=conn.endpoint_url,
        credentials={k: v for k, v in keys.items() if v} or None,
    )


def run_command(command: list[str], conn_id: str) -> Any:
    """The local runner: one `cyclegan-jobs` command in this process; its JSON result is the
    task's return value (XCom). A non-zero exit fails the task; the reason is in the log.

    The job logs through Airflow's task logger (INFO progress stays INFO), not stderr, which
    the task log would show as errors."""
    from cyclegan_jobs import cli

    use_connection(conn_id)
    code, result = cli.run(command, log_to_stderr=False)
    if code != 0:
        raise RuntimeError(f"`cyclegan-jobs {command[0]}` exited with {code}; see the log above")
    return result


# Results links: a task pushes each URL to an XCom (push_links) and its extra link, a button
# on the task instance page, shows it (with_results_links).
class _ResultsLink(BaseOperatorLink):
    """Evaluated by the worker when the task ends: the URL the task pushed, or nothing."""

    key: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.key) or ""


class ContactSheetLink(_ResultsLink):
    name = "Contact sheet"
    key = "contact_sheet_url"


class OutputsLink(_ResultsLink):
    name = "Outputs"
    key = "outputs_url"


RESULTS_LINKS = (ContactSheetLink, OutputsLink)


def results_links(settings: Settings, *, contact_sheet: str | None, outputs: str) -> dict:
    """Browser links to a run's contact sheet and output prefix, by XCom key (presigned for
    S3, see storage.presigned_url), also logged so that they are in the task log."""
    from cyclegan_jobs import storage

    endpoint = settings.link_endpoint_url
    links = {OutputsLink.key: storage.presigned_url(outputs, listing=True, endpoint_url=endpoint)}
    # Every key, "" for no link: reading a missing XCom (the extra link does, when the task
    # ends) puts an ERROR "XCom not found" in the task log of a run that made no contact sheet.
    links[ContactSheetLink.key] = (
        storage.presigned_url(contact_sheet, endpoint_url=endpoint) if contact_sheet else ""
    )
    for link in RESULTS_LINKS:
        if links[link.key]:
            log.info("%s: %s", link.name, links[link.key])
    return links


def push_links(links: dict[str, str], context: dict) -> None:
    """Store the links where the task's extra links (`with_results_links`) find them."""
    for key, url in links.items():
        context["ti"].xcom_push(key=key, value=url)


def with_results_links(task_output: Any) -> Any:
    """Give a task (the XComArg a @task call returned) the "Contact sheet" and "Outputs"
    buttons; the task fills them with push_links()."""
    task_output.operator.operator_extra_links = tuple(link() for link in RESULTS_LINKS)
    return task_output


def heavy_step(settings: Settings, task_id: str, command: Any, *, retries: int = 1) -> Any:
    """Run a rendered command (an XComArg of list[str]) with the configured runner."""
    common = {"task_id": task_id, "pool": settings.pool, "queue": settings.queue,
              "retries": retries, **HEAVY_RETRY_DELAYS}  # fmt: skip
    if settings.runner == "kubernetes":
        return pod_operator(settings, arguments=command, **common)
    return _local_task(settings, **common)(command=command)


def heavy_mapped(settings: Settings, task_id: str, commands: Any, *, retries: int = 1) -> Any:
    """Run one rendered command per element of `commands` (dynamic task mapping)."""
    common = {"task_id": task_id, "pool": settings.pool, "queue": settings.queue,
              "retries": retries, **HEAVY_RETRY_DELAYS}  # fmt: skip
    if settings.runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        partial = KubernetesPodOperator.partial(**common, **_pod_kwargs(settings))
        return partial.expand(arguments=commands)
    return _local_task(settings, **common).expand(command=commands)


def _local_task(settings: Settings, **overrides: Any) -> Any:
    from airflow.sdk import task

    conn_id = settings.aws_conn_id

    @task
    def run_job(command: list[str]) -> Any:
        result = run_command(command, conn_id)
        if command[0] == "translate" and result:  # a shard: its own results, in its log
            results_links(
                settings, contact_sheet=result.get("contact_sheet"), outputs=result["output"]
            )
        return result

    return run_job.override(**overrides)


def pod_operator(settings: Settings, **kwargs: Any) -> Any:
    """A KubernetesPodOperator running the job image with `arguments` on one GPU."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    return KubernetesPodOperator(**kwargs, **_pod_kwargs(settings))


def _pod_kwargs(settings: Settings) -> dict[str, Any]:
    from kubernetes.client import models as k8s

    gpus = {"nvidia.com/gpu": str(settings.k8s_gpus)}
    return {
        "image": settings.image,
        "cmds": ["cyclegan-jobs"],
        "namespace": settings.k8s_namespace,
        "name": "cyclegan-job",
        "container_resources": k8s.V1ResourceRequirements(limits=gpus, requests=gpus),
        "node_selector": settings.k8s_node_selector,
        "tolerations": [k8s.V1Toleration(**t) for t in settings.k8s_tolerations],
        "env_vars": [k8s.V1EnvVar(name="CYCLEGAN_RESULT_FILE", value=POD_RESULT_FILE)],
        "env_from": [
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.k8s_env_secret))
        ],
        "do_xcom_push": True,  # the CLI writes its JSON result to POD_RESULT_FILE
        "get_logs": True,
        "on_finish_action": "delete_pod",
    }

"""
# cyclegan_retrain

Retrains the CycleGAN when new face data has arrived, and promotes the new version only when it
passes the quality gate, so a worse model never replaces a better one.

**Tasks**: `detect_new_data` (the domain-B listing's keys and ETags against the data snapshot
of the promoted version; nothing is downloaded) -> `enough_new_data` (short-circuits the rest
when fewer than `min_new_images` are new and `force` is off) -> `train` (resumable: a retry
continues from the run's checkpoint mirrored to `<model store>/runs/<run>/`) -> `evaluate`
(`<version>/evaluation.json`) -> `gate` (`<version>/gate.json`: decision and reasons) ->
`promote` (only when the gate passed and `promote` is `gate`; updates the model Asset) ->
`summary` (`<model store>/runs/<run>/retrain_summary.json`: what happened and why). The heavy
steps (`train`, `evaluate`, `gate`) run in pool `cyclegan_gpu` and queue `gpu`, each after a
`*_command` task that renders its `cyclegan-jobs` command line.

**Settings** (environment, see `dags/cyclegan_common.py`): CYCLEGAN_DOMAIN_A_URI,
CYCLEGAN_DOMAIN_B_URI, CYCLEGAN_MODEL_STORE, CYCLEGAN_RETRAIN_SCHEDULE (default `@weekly`),
CYCLEGAN_RUNNER (`local` | `kubernetes`: a pod of CYCLEGAN_IMAGE with a GPU), CYCLEGAN_AWS_CONN_ID.

**Trigger**: weekly by schedule; or *Trigger DAG* in the UI and fill in the form (preset,
epochs, learning rate, ...; invalid values are refused before anything runs). From a shell:
`airflow dags trigger cyclegan_retrain --conf '{"preset": "tiny", "epochs": 5, "force": true}'`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from cyclegan_common import (
    DAG_DEFAULTS,
    IO_RETRIES,
    Settings,
    cli_args,
    heavy_step,
    safe_run_id,
    use_connection,
)

SETTINGS = Settings.from_env()
MODEL_ASSET = SETTINGS.model_asset()
PRESETS = ["seed", "paper", "tiny"]
PRECISIONS = ["auto", "float32", "bfloat16", "float16"]


@dag(
    dag_id="cyclegan_retrain",
    schedule=SETTINGS.retrain_schedule,
    **DAG_DEFAULTS,
    tags=["cyclegan", "training"],
    doc_md=__doc__,
    params={
        "preset": Param(
            SETTINGS.train_preset,
            enum=PRESETS,
            description="seed: the notebook; paper: Zhu et "
            "al. 2017; tiny: small and fast, for CPU demos",
        ),
        "epochs": Param(SETTINGS.train_epochs, type="integer", minimum=1),
        "steps_per_epoch": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="empty: all images once per epoch",
        ),
        "batch_size": Param(1, type="integer", minimum=1, maximum=256),
        "learning_rate": Param(
            None, type=["null", "number"], exclusiveMinimum=0, description="empty: the preset's"
        ),
        "image_size": Param(
            SETTINGS.train_image_size,
            type=["null", "integer"],
            minimum=16,
            multipleOf=16,
            description="empty: the preset's (seed: 256)",
        ),
        "precision": Param("auto", enum=PRECISIONS),
        "domain_a": Param(
            SETTINGS.domain_a_uri,
            type="string",
            minLength=1,
            description="paintings: s3:// prefix, folder or .npy",
        ),
        "domain_b": Param(
            SETTINGS.domain_b_uri,
            type="string",
            minLength=1,
            description="faces: s3:// prefix, folder or .npy",
        ),
        "model_store": Param(SETTINGS.model_store, type="string", minLength=1),
        "min_new_images": Param(
            1, type="integer", minimum=0, description="train only when at least this many are new"
        ),
        "force": Param(False, type="boolean", description="train even without new data"),
        "min_cycle_psnr": Param(
            15.0,
            type="number",
            minimum=0,
            description="the gate's floor on cycle PSNR (dB); see README, the quality gate",
        ),
        "promote": Param(
            "gate", enum=["gate", "never"], description="gate: promote when the quality gate passes"
        ),
    },
)
def cyclegan_retrain():
    conn_id = SETTINGS.aws_conn_id

    @task(**IO_RETRIES)
    def detect_new_data(params: dict | None = None) -> dict:
        """How many domain-B images are new since the promoted version was trained."""
        from cyclegan_jobs.datasets import new_data

        use_connection(conn_id)
        return new_data(params["domain_b"], params["model_store"])

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def enough_new_data(found: dict, params: dict | None = None) -> bool:
        enough = found["new"] >= params["min_new_images"]
        print(
            f"{found['new']} of {found['total']} images new since {found['promoted']}; "
            f"minimum {params['min_new_images']}, force {params['force']}"
        )
        return enough or params["force"]

    @task
    def train_command(params: dict | None = None, run_id: str | None = None) -> list[str]:
        return cli_args(
            "train",
            domain_a=params["domain_a"],
            domain_b=params["domain_b"],
            model_store=params["model_store"],
            preset=params["preset"],
            image_size=params["image_size"],
            epochs=params["epochs"],
            steps_per_epoch=params["steps_per_epoch"],
            batch_size=params["batch_size"],
            learning_rate=params["learning_rate"],
            precision=params["precision"],
            # The same run id on a retry: training resumes from the mirrored checkpoint.
            run_id=f"retrain-{safe_run_id(run_id)}",
        )

    @task
    def evaluate_command(trained: dict, params: dict | None = None) -> list[str]:
        return cli_args(
            "evaluate",
            model=trained["version_uri"],
            domain_a=params["domain_a"],
            domain_b=params["domain_b"],
            write=True,
        )

    @task
    def gate_command(evaluation: dict, trained: dict, params: dict | None = None) -> list[str]:
        return cli_args(
            "gate",
            candidate=trained["version_uri"],
            model_store=params["model_store"],
            domain_a=params["domain_a"],
            domain_b=params["domain_b"],
            min_cycle_psnr=params["min_cycle_psnr"],
            exit_zero=True,  # a refusal is a decision, not a failure; `promote` acts on it
        )

    @task(outlets=[MODEL_ASSET], **IO_RETRIES)
    def promote(decision: dict, params: dict | None = None) -> dict:
        """Promote the candidate when the gate passed; otherwise skip (no Asset event)."""
        from cyclegan_jobs import registry

        if not decision["passed"]:
            raise AirflowSkipException(f"gate refused: {'; '.join(decision['reasons'])}")
        if params["promote"] == "never":
            raise AirflowSkipException("passed the gate; not promoted (promote=never)")
        use_connection(conn_id)
        return registry.promote(
            params["model_store"], decision["candidate"], reason="passed the quality gate"
        )

    @task(trigger_rule="none_failed", **IO_RETRIES)
    def summary(
        found: dict, trained: dict | None, decision: dict | None, promoted: dict | None,
        params: dict | None = None, run_id: str | None = None,
    ) -> dict:  # fmt: skip
        """What this run did and why, stored beside the run's checkpoints."""
        from cyclegan_jobs import storage

        if trained is None:
            outcome = f"not trained: {found['new']} new images < {params['min_new_images']}"
        elif promoted:
            outcome = f"promoted {decision['candidate']}"
        elif decision and not decision["passed"]:
            outcome = f"refused {decision['candidate']}: {'; '.join(decision['reasons'])}"
        else:
            outcome = f"trained {trained['version']}; not promoted (promote={params['promote']})"
        result = {
            "run_id": run_id,
            "outcome": outcome,
            "new_data": found,
            "version": trained and trained["version"],
            "gate": decision,
            "promoted": promoted,
        }
        use_connection(conn_id)
        uri = storage.join(params["model_store"], "runs", safe_run_id(run_id), "retrain.json")
        storage.write_json(uri, result)
        print(f"{outcome} (summary: {uri})")
        return {"outcome": outcome, "summary": uri}

    found = detect_new_data()
    command = train_command()
    enough_new_data(found) >> command
    trained = heavy_step(SETTINGS, "train", command, retries=2)
    evaluation = heavy_step(SETTINGS, "evaluate", evaluate_command(trained))
    decision = heavy_step(SETTINGS, "gate", gate_command(evaluation, trained))
    summary(found, trained, decision, promote(decision))


cyclegan_retrain()

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
`summary` (`<model store>/runs/<run>/retrain.json`: what happened and why). The heavy
steps (`train`, `evaluate`, `gate`) run in pool `cyclegan_gpu` and queue `gpu`, each after a
`*_command` task that renders its `cyclegan-jobs` command line. With model selection on
(`select_every`; the tiny and paper presets' default) the version `train` writes holds the
best-scoring weights on held-out images, not the last step's, and `gate` judges those.

**Reading a run**: `promote` green: a new version is live. `promote` skipped: the gate refused
the candidate, or `promote` is `never`, or there was too little new data (then `train` is
skipped too). The `summary` task's log says which, with the gate's reasons, in one block.
A refused candidate does **not** fail the run: the gate did its job and the promoted model
stays in service; the run fails only when something broke (data unreadable, training
diverged, the store unreachable). Alert on refusals from `retrain.json` if you need to.

**Settings** (environment, see `dags/cyclegan_common.py`): CYCLEGAN_DOMAIN_A_URI,
CYCLEGAN_DOMAIN_B_URI, CYCLEGAN_MODEL_STORE, CYCLEGAN_RETRAIN_SCHEDULE (default `@weekly`),
CYCLEGAN_RUNNER (`local` | `kubernetes`: a pod of CYCLEGAN_IMAGE with a GPU), CYCLEGAN_AWS_CONN_ID.

**Trigger**: weekly by schedule (unpausing does not start a run for a week that has already
passed); or *Trigger* in the UI and fill in the form (`preset`, `epochs`, `image_size`, ...;
invalid values are refused before anything runs). From a shell:
`airflow dags trigger cyclegan_retrain --conf '{"preset": "tiny", "epochs": 5, "force": true}'`.
"""

from __future__ import annotations

import logging

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException
from cyclegan_common import (
    DAG_DEFAULTS,
    IO_RETRIES,
    Settings,
    form_params,
    heavy_step,
    safe_run_id,
    schedule_for,
    use_connection,
)

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
MODEL_ASSET = SETTINGS.model_asset()
# The trigger form: cyclegan_jobs/options.py declares its fields; the deployment's settings
# give some of their defaults.
PARAMS = form_params("cyclegan_retrain", SETTINGS)


# The tasks, wired in cyclegan_retrain below.


@task(**IO_RETRIES)
def detect_new_data(params: dict | None = None) -> dict:
    """How many domain-B images are new since the promoted version was trained."""
    from cyclegan_jobs.retrain import new_data

    use_connection(SETTINGS.aws_conn_id)
    return new_data(params["domain_b"], params["model_store"])


@task.short_circuit(ignore_downstream_trigger_rules=False)
def enough_new_data(found: dict, params: dict | None = None) -> bool:
    enough = found["new"] >= params["min_new_images"]
    log.info(
        "%d of %d images new since %s; minimum %d, force %s",
        found["new"], found["total"], found["promoted"] or "(no promoted version)",
        params["min_new_images"], params["force"],
    )  # fmt: skip
    return enough or params["force"]


@task
def train_command(params: dict | None = None, run_id: str | None = None) -> list[str]:
    from cyclegan_jobs.options import command_line, form_values

    # The form's `promote` is the DAG's (gate | never), not train's flag.
    values = form_values("train", params, leave_out=("promote",))
    # The same run id on a retry: training resumes from the mirrored checkpoint.
    return command_line("train", {**values, "run_id": f"retrain-{safe_run_id(run_id)}"})


@task
def evaluate_command(trained: dict, params: dict | None = None) -> list[str]:
    from cyclegan_jobs.options import command_line, form_values

    model = {"model": trained["version_uri"]}
    return command_line("evaluate", {**model, **form_values("evaluate", params), "write": True})


@task
def gate_command(evaluation: dict, trained: dict, params: dict | None = None) -> list[str]:
    from cyclegan_jobs.options import command_line, form_values

    # The form's `promote` is the DAG's (gate | never), not the gate's flag.
    values = form_values("gate", params, leave_out=("promote",))
    # exit_zero: a refusal is a decision, not a failure; `promote` acts on it.
    return command_line("gate", {"candidate": trained["version_uri"], **values, "exit_zero": True})


@task(outlets=[MODEL_ASSET], **IO_RETRIES)
def promote(decision: dict, params: dict | None = None) -> dict:
    """Promote the candidate when the gate passed; otherwise skip (no Asset event)."""
    from cyclegan_jobs import registry

    if not decision["passed"]:
        raise AirflowSkipException(f"gate refused: {'; '.join(decision['reasons'])}")
    if params["promote"] == "never":
        raise AirflowSkipException("passed the gate; not promoted (promote=never)")
    use_connection(SETTINGS.aws_conn_id)
    return registry.promote(
        params["model_store"], decision["candidate"], reason="passed the quality gate"
    )


@task(trigger_rule="none_failed", **IO_RETRIES)
def summary(
    found: dict, trained: dict | None, decision: dict | None, promoted: dict | None,
    params: dict | None = None, run_id: str | None = None,
) -> dict:  # fmt: skip
    """What this run did and why: logged as one block, stored beside the checkpoints."""
    from cyclegan_jobs.retrain import write_summary

    use_connection(SETTINGS.aws_conn_id)
    steps = {"new_data": found, "trained": trained, "gate": decision, "promoted": promoted}
    return write_summary(
        params["model_store"], safe_run_id(run_id), run_id, steps,
        min_new_images=params["min_new_images"], promote=params["promote"],
    )  # fmt: skip


@dag(
    dag_id="cyclegan_retrain",
    schedule=schedule_for(SETTINGS.retrain_schedule),
    **DAG_DEFAULTS,
    tags=["cyclegan", "training"],
    doc_md=__doc__,
    params=PARAMS,
)
def cyclegan_retrain():
    found = detect_new_data()
    command = train_command()
    enough_new_data(found) >> command
    trained = heavy_step(SETTINGS, "train", command, retries=2)
    evaluation = heavy_step(SETTINGS, "evaluate", evaluate_command(trained))
    decision = heavy_step(SETTINGS, "gate", gate_command(evaluation, trained))
    summary(found, trained, decision, promote(decision))


cyclegan_retrain()

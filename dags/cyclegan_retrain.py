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

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from cyclegan_common import (
    DAG_DEFAULTS,
    IO_RETRIES,
    Settings,
    cli_args,
    heavy_step,
    number_param,
    safe_run_id,
    schedule_for,
    text_param,
    use_connection,
)

from cyclegan_jobs.config import (
    IMAGE_SIZES,
    PRECISION_HELP,
    PRECISIONS,
    PRESET_BATCH_SIZE,
    PRESET_HELP,
    PRESET_IMAGE_SIZE,
    PRESET_SELECT_EVERY,
    PRESETS,
    preset,
)

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
MODEL_ASSET = SETTINGS.model_asset()


def _choices(help_by_value: dict) -> str:
    return "; ".join(f"{value}: {text}" for value, text in help_by_value.items())


PARAMS = {
    "preset": Param(
        SETTINGS.train_preset,
        enum=list(PRESETS),
        title="Preset",
        description="The model and loss configuration. " + _choices(PRESET_HELP),
    ),
    "epochs": number_param(
        SETTINGS.train_epochs,
        minimum=1,
        maximum=1000,
        title="Epochs",
        description="Passes over the training images (1 to 1000).",
    ),
    "steps_per_epoch": number_param(
        None,
        minimum=1,
        maximum=1_000_000,
        title="Steps per epoch",
        description="Empty: every training image once per epoch.",
    ),
    "batch_size": number_param(
        None,
        minimum=1,
        maximum=256,
        title="Batch size",
        description="Images of each domain per step. Empty: the preset's ("
        + ", ".join(f"{name} {size}" for name, size in PRESET_BATCH_SIZE.items())
        + ").",
    ),
    "learning_rate": number_param(
        None,
        kind="number",
        exclusiveMinimum=0,
        maximum=0.1,
        title="Learning rate",
        description="Adam's learning rate, above 0 and at most 0.1, e.g. 0.0002. Empty: the "
        "preset's ("
        + ", ".join(f"{name} {preset(name)[1].learning_rate:g}" for name in PRESETS)
        + ").",
    ),
    "select_every": number_param(
        None,
        minimum=0,
        maximum=1_000_000,
        title="Model selection every (steps)",
        description="Score the generators on held-out images every N steps and at the last, "
        "and make the version from the best-scoring weights (the gate then judges those); 0: "
        "off, the last step's weights. Empty: the preset's ("
        + ", ".join(f"{name} {every or 'off'}" for name, every in PRESET_SELECT_EVERY.items())
        + ").",
    ),
    "image_size": Param(
        SETTINGS.train_image_size or PRESET_IMAGE_SIZE[SETTINGS.train_preset],
        type="integer",
        enum=list(IMAGE_SIZES),
        values_display={str(size): f"{size} x {size} px" for size in IMAGE_SIZES},
        title="Image size",
        description="Training images are resized to this square. The presets' own sizes: "
        + ", ".join(f"{name} {size} px" for name, size in PRESET_IMAGE_SIZE.items())
        + ". Larger is slower: 256 px is hours on a CPU.",
    ),
    "precision": Param(
        "auto",
        enum=list(PRECISIONS),
        title="Precision",
        description="Numeric precision of training. " + _choices(PRECISION_HELP),
    ),
    "domain_a": text_param(
        SETTINGS.domain_a_uri,
        "Domain A (paintings)",
        "The style to learn: s3://bucket/prefix, a folder, or a .npy file.",
    ),
    "domain_b": text_param(
        SETTINGS.domain_b_uri,
        "Domain B (faces)",
        "The photos: s3://bucket/prefix, a folder, or a .npy file.",
    ),
    "model_store": text_param(
        SETTINGS.model_store,
        "Model store",
        "Where versions, PROMOTED.json and run checkpoints live (s3:// or folder).",
    ),
    "min_new_images": number_param(
        1,
        minimum=0,
        maximum=10_000_000,
        title="Minimum new images",
        description="Train only when at least this many domain-B images are new since the "
        "promoted version.",
    ),
    "force": Param(
        False, type="boolean", title="Force", description="Train even without new data."
    ),
    "min_cycle_psnr": number_param(
        15.0,
        kind="number",
        minimum=0,
        maximum=100,
        title="Gate: minimum cycle PSNR (dB)",
        description="The quality gate refuses a candidate whose cycle PSNR (photo -> painting "
        "-> photo) is below this. 0 turns the floor off (the comparison with the promoted "
        "version still applies). See README, the quality gate.",
    ),
    "promote": Param(
        "gate",
        enum=["gate", "never"],
        title="Promote",
        description="gate: promote the new version when it passes the quality gate; "
        "never: train, evaluate and gate only.",
    ),
}


def _outcome(found: dict, trained: dict | None, decision: dict | None, promoted: dict | None,
             params: dict) -> str:  # fmt: skip
    """One line: promoted <version> | refused <version>: <reasons> | not trained | ..."""
    if trained is None:
        return f"not trained: {found['new']} new images < {params['min_new_images']}"
    if promoted:
        return f"promoted {decision['candidate']}"
    if decision and not decision["passed"]:
        return f"refused {decision['candidate']}: {'; '.join(decision['reasons'])}"
    return f"trained {trained['version']}; not promoted (promote={params['promote']})"


def _summary_block(result: dict, uri: str) -> str:
    """The run's outcome as the summary task logs it: readable in the task log as one block."""
    found, gate = result["new_data"], result["gate"] or {}
    metrics = gate.get("candidate_metrics") or {}
    since = found["promoted"] or "(no promoted version)"
    rows = [
        ("outcome", result["outcome"]),
        ("new data", f"{found['new']} of {found['total']} images new since {since}"),
        ("version", result["version"] or "-"),
    ]
    if result.get("selected"):
        picked = result["selected"]
        rows.append(("selected", f"step {picked['step']} of {result['steps']} (model selection)"))
    if gate:
        psnr, swd = metrics.get("cycle_psnr"), metrics.get("swd_mean")
        rows.append(("gate", "passed" if gate["passed"] else "refused"))
        rows += [("reason", reason) for reason in gate["reasons"]]
        rows.append(("cycle PSNR", "-" if psnr is None else f"{psnr:.2f} dB"))
        rows.append(("SWD", "-" if swd is None else f"{swd:.4f}"))
        rows.append(("compared with", gate.get("compared_with") or "(no promoted version)"))
    rows.append(("summary", uri))
    width = max(len(name) for name, _ in rows)
    lines = [f"retrain run {result['run_id']}"]
    lines += [f"  {name:<{width}} : {value}" for name, value in rows]
    return "\n".join(lines)


# The tasks, wired in cyclegan_retrain below.


@task(**IO_RETRIES)
def detect_new_data(params: dict | None = None) -> dict:
    """How many domain-B images are new since the promoted version was trained."""
    from cyclegan_jobs.datasets import new_data

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
        select_every=params["select_every"],
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
    from cyclegan_jobs import storage

    outcome = _outcome(found, trained, decision, promoted, params)
    uri = storage.join(params["model_store"], "runs", safe_run_id(run_id), "retrain.json")
    result = {
        "run_id": run_id,
        "outcome": outcome,
        "new_data": found,
        "version": trained and trained["version"],
        "steps": trained and trained["steps"],
        "selected": trained and trained.get("selected"),
        "gate": decision,
        "promoted": promoted,
    }
    use_connection(SETTINGS.aws_conn_id)
    storage.write_json(uri, result)
    log.info("%s", _summary_block(result, uri))
    return {"outcome": outcome, "summary": uri}


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

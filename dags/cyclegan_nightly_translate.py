"""
# cyclegan_nightly_translate

Translates the images people dropped into the input prefix with the **promoted** CycleGAN:
each input gets a stylized result (`<output>/stylized/<key>.png`) and its reconstruction, the
cycle back (`<output>/reconstructed/<key>.png`). Inputs whose outputs are up to date are skipped,
so a second run the same night does no model work.

**Tasks**: `resolve_model` (the promoted version, pinned for the whole run; the model Asset is
its inlet) -> `plan` (list pending inputs, cut them into shard files) -> `shard_commands` ->
`translate_shard` (one mapped task per shard, pool `cyclegan_gpu`, queue `gpu`) -> `summarize`
(merge the shard manifests into `<output>/_runs/<run>/summary.json` and the shards' contact
sheets into `<output>/_runs/<run>/contact_sheet.png`; fails the run when the share of failed
images exceeds `max_failure_rate`). Nothing pending: the mapped step is skipped and the run
succeeds.

**Results**: the `summarize` task instance has two buttons, *Contact sheet* (input, stylized,
reconstructed, side by side) and *Outputs* (the listing of the output prefix); each shard's
log ends with the same links for its own images. On S3 they are presigned URLs valid for 7
days (set CYCLEGAN_LINK_ENDPOINT_URL when browsers reach the S3 server at another address than
the workers do).

**Settings** (environment, see `dags/cyclegan_common.py`): CYCLEGAN_INPUT_URI,
CYCLEGAN_OUTPUT_URI, CYCLEGAN_MODEL_STORE, CYCLEGAN_NIGHTLY_SCHEDULE (default `0 2 * * *`, UTC),
CYCLEGAN_RUNNER (`local` | `kubernetes`), CYCLEGAN_AWS_CONN_ID (default `aws_default`; its
extra `endpoint_url` points at MinIO/SeaweedFS).

**Trigger**: nightly by schedule (unpausing does not start a run for a night that has already
passed); or *Trigger* in the UI, where the form's Params (`input`, `output`, `model_store`,
`scope`, `direction`, `size`, `batch_size`, `shard_size`, `max_failure_rate`) override the
settings for that run. From a shell:
`airflow dags trigger cyclegan_nightly_translate --conf '{"scope": "all", "size": "native"}'`.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException
from cyclegan_common import (
    DAG_DEFAULTS,
    IO_RETRIES,
    Settings,
    form_params,
    heavy_mapped,
    push_links,
    results_links,
    safe_run_id,
    schedule_for,
    use_connection,
    with_results_links,
)

SETTINGS = Settings.from_env()
MODEL_ASSET = SETTINGS.model_asset()


# The tasks, wired in cyclegan_nightly_translate below.


@task(inlets=[MODEL_ASSET], **IO_RETRIES)
def resolve_model(params: dict | None = None) -> str:
    """The promoted version's URI: every shard of this run uses the same version."""
    from cyclegan_jobs import registry

    use_connection(SETTINGS.aws_conn_id)
    try:
        return registry.resolve(params["model_store"])
    except registry.RegistryError as err:  # no promoted version: retrying will not help
        raise AirflowFailException(f"{err} (cyclegan_retrain makes one)") from err


@task(**IO_RETRIES)
def plan(model_uri: str, params: dict | None = None, run_id: str | None = None) -> dict:
    """Pending inputs, cut into shard files; returns their URIs and counts (no keys)."""
    from cyclegan_jobs.config import TranslateConfig, parse_size
    from cyclegan_jobs.translation.shards import plan_shards

    use_connection(SETTINGS.aws_conn_id)
    cfg = TranslateConfig(
        input=params["input"],
        output=params["output"],
        model=model_uri,
        direction=params["direction"],
        scope=params["scope"],
        size=parse_size(params["size"]),
        run_id=safe_run_id(run_id),
    )
    return plan_shards(cfg, params["shard_size"])


@task
def shard_commands(planned: dict, params: dict | None = None) -> list[list[str]]:
    """One `cyclegan-jobs translate` command line per shard file."""
    from cyclegan_jobs.options import command_line, form_values

    # As the form gives them (the CLI reads `size` as "default", "native" or N), but the
    # model is the version resolved for the run, and bad inputs are judged over the whole
    # run by `summarize`, not per shard.
    values = form_values("translate", params, leave_out=("model_store", "max_failure_rate"))
    feed = {"feed_processes": SETTINGS.feed_processes or None, "max_failure_rate": 1.0}
    return [
        command_line(
            "translate",
            {
                "model": planned["model_uri"],
                "keys": shard["keys"],
                "run_id": shard["run_id"],
                **values,
                **feed,
            },
        )
        for shard in planned["shards"]
    ]


@task(trigger_rule="none_failed", **IO_RETRIES)
def summarize(planned: dict, params: dict | None = None, **context) -> dict:
    """Merge the shards' manifests into the run's summary and contact sheet, link them;
    fail above the failure rate."""
    from cyclegan_jobs.translation.shards import merge_runs

    use_connection(SETTINGS.aws_conn_id)
    summary = merge_runs(
        params["output"],
        planned["run_id"],
        [shard["run_id"] for shard in planned["shards"]],
        max_failure_rate=params["max_failure_rate"],
    )
    links = results_links(
        SETTINGS, contact_sheet=summary["contact_sheet"], outputs=params["output"]
    )
    push_links(links, context)
    if summary["status"] == "failed":
        raise AirflowFailException(
            f"{summary['counts']['failed']} inputs failed ({summary['failed_share']:.1%}, "
            f"max {params['max_failure_rate']:.1%}); see {summary['manifest']}"
        )
    return {k: summary[k] for k in ("counts", "failed_share", "summary", "contact_sheet")}


@dag(
    dag_id="cyclegan_nightly_translate",
    schedule=schedule_for(SETTINGS.nightly_schedule),
    **DAG_DEFAULTS,
    tags=["cyclegan", "translate"],
    doc_md=__doc__,
    # The trigger form: cyclegan_jobs/options.py declares its fields.
    params=form_params("cyclegan_nightly_translate", SETTINGS),
)
def cyclegan_nightly_translate():
    planned = plan(resolve_model())
    translated = heavy_mapped(SETTINGS, "translate_shard", shard_commands(planned), retries=4)
    translated >> with_results_links(summarize(planned))


cyclegan_nightly_translate()

"""Dump what users see of the options, to check that a refactor leaves it unchanged.

    .venv/bin/python scripts/dump_interfaces.py after.json
    (in a checkout of the older commit:) .venv/bin/python scripts/dump_interfaces.py before.json
    diff before.json after.json

It writes one JSON document: every `cyclegan-jobs` subcommand's --help (80 columns), every DAG's
Params (JSON schema, default, title, description) as the trigger form gets them, and the command
lines the DAGs' `*_command` tasks render, for the form's defaults and for a form with every
optional field filled in, as the CLI parses them (every argument's value: the flags' order
does not matter).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "dags"), str(REPO / "plugins")]
os.environ["COLUMNS"] = "80"  # argparse wraps help to the terminal's width
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="dump-interfaces-"))

# A form with every optional field filled in (the rest keep their defaults).
FILLED = {
    "steps_per_epoch": 7,
    "batch_size": 3,
    "learning_rate": 0.0005,
    "select_every": 0,
    "size": "native",
    "scope": "all",
    "direction": "a2b",
}
TRAINED = {"version_uri": "s3://models/versions/v1", "version": "v1"}
PLANNED = {
    "model_uri": "s3://models/versions/v1",
    "shards": [{"keys": "s3://out/_runs/r/shards/0.txt", "run_id": "r-0"}],
}


def helps() -> dict[str, str]:
    """The top-level --help and each subcommand's."""
    from cyclegan_jobs.cli import build_parser

    parser = build_parser()
    out = {"": parser.format_help()}
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        out[name] = subparser.format_help()
    return out


def dags() -> dict[str, Any]:
    """Each DAG's Params and the commands its tasks render."""
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(str(REPO / "dags"), bundle_path=REPO / "dags")
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    out = {}
    for dag in sorted(bag.dags.values(), key=lambda d: d.dag_id):
        params = {k: dag.params.get_param(k) for k in dag.params}
        defaults = {k: p.value for k, p in params.items()}
        out[dag.dag_id] = {
            "params": {
                k: {"value": p.value, "schema": p.schema, "description": p.description}
                for k, p in params.items()
            },
            "commands": {
                "defaults": _commands(dag, defaults),
                "filled": _commands(dag, {**defaults, **FILLED}),
            },
        }
    return out


def _commands(dag: Any, params: dict) -> dict[str, Any]:
    """What each command-rendering task returns for these Params."""
    calls = {
        "train_command": {"run_id": "manual__2026-12-05T00:00:00+00:00"},
        "evaluate_command": {"trained": TRAINED},
        "gate_command": {"evaluation": {}, "trained": TRAINED},
        "shard_commands": {"planned": PLANNED},
    }
    rendered = {}
    for task_id, kwargs in calls.items():
        if task_id in dag.task_dict:
            argv = dag.task_dict[task_id].python_callable(params=params, **kwargs)
            rendered[task_id] = _parsed(argv)
    return rendered


def _parsed(argv: list[str] | list[list[str]]) -> Any:
    """A command line as the CLI reads it: each argument's value, whatever the flags' order."""
    from cyclegan_jobs.cli import build_parser

    if argv and isinstance(argv[0], list):
        return [_parsed(one) for one in argv]
    return {"command": argv[0], "args": vars(build_parser().parse_args(argv))}


def main() -> None:
    dump = {"help": helps(), "dags": dags()}
    # A file, not stdout: Airflow logs to stdout while it fills the DagBag.
    Path(sys.argv[1]).write_text(json.dumps(dump, indent=1, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()

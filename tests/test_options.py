"""The options' one declaration (cyclegan_jobs/options.py): the command line and the command
lines the DAGs render come from it, and nothing adds a flag or a form field by hand. The Params
side is checked against a parsed DagBag in test_dags.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cyclegan_jobs import options
from cyclegan_jobs.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def _subparsers() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _sample(option: options.Option) -> tuple[str | bool, object]:
    """A valid value for the option, as rendered and as the CLI should read it back."""
    if option.choices:
        return option.choices[-1], option.choices[-1]
    if option.kind is bool:
        return True, True
    if option.kind is int:
        value = int(option.minimum or 0) + 2
        return value, value
    if option.kind is float:
        return 0.25, 0.25
    if option.kind is str:
        return f"s3://bucket/{option.name}", f"s3://bucket/{option.name}"
    return {"size": ("native", "native"), "shard": ("1/3", (1, 3))}[option.name]


def _as_read(command: str, name: str, value: object) -> object:
    """A form value as the CLI reads it: through the option's parser (size "default": None)."""
    kind = options.COMMANDS[command].option(name).kind
    return value if kind in (int, float, str, bool) else kind(str(value))


def test_every_flag_of_every_command_is_a_declared_option() -> None:
    subparsers = _subparsers()
    assert list(subparsers) == list(options.COMMANDS)
    for name, command in options.COMMANDS.items():
        dests = [a.dest for a in subparsers[name]._actions if a.dest != "help"]
        assert dests == [o.name for o in command.options], name


def test_no_flag_or_form_field_is_added_by_hand() -> None:
    """argparse arguments are added only by options.add_arguments, Params made only by
    dags/cyclegan_common.form_params."""
    allowed = {("cyclegan_jobs/options.py", "add_argument"), ("dags/cyclegan_common.py", "Param")}
    for path in [*REPO.glob("cyclegan_jobs/**/*.py"), *REPO.glob("dags/*.py")]:
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("add_argument", "Param"):
                assert (rel, name) in allowed, f"{rel}:{node.lineno}: {name}( by hand"


@pytest.mark.parametrize("name", list(options.COMMANDS))
def test_a_rendered_command_line_reads_back_as_the_values_given(name: str) -> None:
    command = options.COMMANDS[name]
    values, expected = {}, {}
    for option in command.options:
        if option.name in command.exclusive[1:]:  # one of a mutually exclusive pair
            continue
        values[option.name], expected[option.name] = _sample(option)
    if "shard_run_id" in values:  # repeated per shard
        values["shard_run_id"], expected["shard_run_id"] = ["r-0", "r-1"], ["r-0", "r-1"]
    argv = options.command_line(name, values)
    read = vars(build_parser().parse_args(argv))
    assert {k: read[k] for k in expected} == expected


def test_a_value_below_a_declared_minimum_is_refused_by_the_command_line(capsys) -> None:
    checked = 0
    for name, command in options.COMMANDS.items():
        for option in command.options:
            if option.kind is not int or option.minimum is None:
                continue
            required = [o for o in command.options if o.required and o is not option]
            argv = options.command_line(name, {o.name: _sample(o)[0] for o in required})
            with pytest.raises(SystemExit) as exit_:
                build_parser().parse_args([*argv, option.flag, str(int(option.minimum) - 1)])
            assert exit_.value.code == 2
            assert f"must be >= {int(option.minimum)}" in capsys.readouterr().err, option.name
            checked += 1
    assert checked >= 15


def test_an_option_a_command_does_not_have_is_refused_when_rendered() -> None:
    with pytest.raises(KeyError, match="no option max_pixels"):
        options.command_line("train", {"max_pixels": 5})


def test_the_forms_defaults_make_command_lines_the_cli_accepts() -> None:
    """The values a form starts with, rendered for the commands that take them, parse."""
    deployment = {"domain_a": "s3://d/a", "domain_b": "s3://d/b", "model_store": "s3://m",
                  "input": "s3://i/", "output": "s3://o/", "image_size": 64}  # fmt: skip
    model = "s3://m/versions/v"
    commands = {  # what each DAG renders from its form, with what the DAG adds itself
        "cyclegan_retrain": {"train": {}, "evaluate": {"model": model},
                             "gate": {"candidate": model}},
        "cyclegan_nightly_translate": {"translate": {"model": model}, "plan": {"model": model}},
    }  # fmt: skip
    assert set(commands) == set(options.FORMS)
    for dag_id, rendered in commands.items():
        form = options.form_schema(dag_id, deployment)
        params = {name: default for name, (default, _, _) in form.items()}
        for command, more in rendered.items():
            # The DAG's own `promote`; the nightly gives the resolved version, not the store.
            leave_out = ("promote", "model_store") if command == "translate" else ("promote",)
            values = options.form_values(command, params, leave_out=leave_out)
            argv = options.command_line(command, {**more, **values})
            read = vars(build_parser().parse_args(argv))
            assert values and all(read[k] == _as_read(command, k, v) for k, v in values.items())


def test_each_form_field_keeps_its_options_bounds() -> None:
    for dag_id in options.FORMS:
        for f in options.FORMS[dag_id]():
            schema = options.form_schema(dag_id, {f.option.name: 1})[f.option.name][2]
            if f.option.kind in (int, float) and f.option.minimum is not None:
                assert schema["minimum"] == f.option.minimum, (dag_id, f.option.name)
            if f.option.choices:
                assert schema["enum"] == list(f.option.choices), (dag_id, f.option.name)

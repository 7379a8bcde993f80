"""TensorFlow's start-up chatter kept out of job logs, and the CLI's logging inside Airflow."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyclegan_jobs import cli, registry, runtime

CUINIT = (
    "E0000 00:00:1796151784.977544 6093 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
)


def test_the_capture_takes_what_c_code_writes_to_descriptor_2() -> None:
    with runtime.captured_stderr_fd() as lines:
        os.write(2, b"written by C\n")  # below sys.stderr, as TensorFlow's C++ writes
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'a child\\n')"], check=True)
    assert lines == ["written by C", "a child"]
    with runtime.captured_stderr_fd() as after:  # descriptor 2 was given back
        pass
    assert after == []


@pytest.mark.parametrize(
    ("line", "gpu_device", "noise"),
    [
        ("WARNING: All log messages before absl::InitializeLog() is called are written", 0, 1),
        ("I0000 port.cc:153] oneDNN custom operations are on. You may see ...", 0, 1),
        ("I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine", 0, 1),
        (CUINIT, False, True),  # no GPU here: the expected answer
        (CUINIT, True, False),  # a GPU that cannot start: a real problem, shown
        ("E0000 something else went wrong", False, False),
    ],
)
def test_known_start_up_lines_are_noise_and_others_are_not(
    line: str, gpu_device: bool, noise: bool
) -> None:
    assert runtime.is_noise(line, bool(gpu_device)) is bool(noise)


QUIET = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(message)s")
from cyclegan_jobs.runtime import start_tensorflow
print(json.dumps(start_tensorflow()))
"""


def test_starting_tensorflow_writes_nothing_to_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", QUIET], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # what Airflow would show as ERROR lines
    started = json.loads(done.stdout.splitlines()[-1])
    assert started["gpus"] == 0 and started["device"] == "CPU (no GPU found)"
    levels = {line.split(" ", 1)[0] for line in done.stdout.splitlines()[:-1]}
    assert levels == {"DEBUG"}, done.stdout  # the chatter is kept, at DEBUG
    assert "DEBUG TensorFlow" in done.stdout


def test_inside_airflow_the_cli_logs_through_logging_not_stderr(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = str(tmp_path / "store")
    damaged = Path(registry.version_uri(store, "v-damaged"), "VERSION.json")
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{not json")  # `models list` skips it with a WARNING
    monkeypatch.setattr(logging.getLogger("cyclegan_jobs"), "handlers", [])  # a fresh process
    caplog.set_level(logging.INFO)

    code, listed = cli.run(["models", "list", "--model-store", store], log_to_stderr=False)
    assert code == 0 and listed == []
    assert capsys.readouterr().err == ""  # Airflow would show stderr lines as errors
    warned = [r for r in caplog.records if r.name == "cyclegan_jobs.registry"]
    assert [r.levelname for r in warned] == ["WARNING"] and "v-damaged" in warned[0].getMessage()

    code, _ = cli.run(["models", "list", "--model-store", store])  # the command line
    assert code == 0
    assert "[cyclegan_jobs.registry] WARNING skipping a damaged version" in capsys.readouterr().err
    code, _ = cli.run(["models", "promote", "v9", "--model-store", store], log_to_stderr=False)
    assert code == 2
    assert "error:" in capsys.readouterr().err  # errors still reach stderr: they are errors

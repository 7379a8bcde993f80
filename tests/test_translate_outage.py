"""A translate run rides out a short S3 outage by itself (issue 19): the real SeaweedFS server is
stopped mid-run and started again on the same port and data, as `make stack-test` does to the
deployment's S3 service. With the default outage wait the run finishes every input; with
`--s3-outage-wait 0` (the behaviour before) the same outage stops it, which is what cost the
nightly an Airflow retry per shard.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, random_version

from cyclegan_jobs import images, storage
from cyclegan_jobs.config import S3_OUTAGE_WAIT_S, TranslateConfig
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.translation.translate import TranslateError, translate
from cyclegan_local import local_s3

SIZE = 32
N_INPUTS = 160
OUTAGE_S = 8.0


@pytest.fixture
def server(aws_env: None, tmp_path: Path) -> Any:
    """A SeaweedFS server of this test's own (it is stopped mid-test), with inputs and a model."""
    keys = {"access_key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    port = free_port()
    box = {"server": local_s3.start(tmp_path / "s3", port=port, **keys), "port": port}
    box["server"].client().create_bucket(Bucket="photos")
    storage.configure(endpoint_url=box["server"].endpoint_url)
    faces = synthetic_faces(16, SIZE, seed=5)
    for i in range(N_INPUTS):
        storage.write_bytes(f"s3://photos/in/face_{i:03d}.jpg", images.encode_jpeg(faces[i % 16]))
    random_version("s3://photos/models", "tiny", SIZE)
    try:
        yield box
    finally:
        storage.configure()
        storage.set_outage_wait(S3_OUTAGE_WAIT_S)
        local_s3.stop(box["server"])


def _outputs(server: local_s3.LocalS3) -> int:
    listed = server.client().list_objects_v2(Bucket="photos", Prefix="out/stylized/")
    return listed.get("KeyCount", 0)


def _run_with_an_outage(box: dict, outage_wait: float, tmp_path: Path) -> dict[str, Any]:
    """translate() in a thread; S3 stopped once the first outputs exist, started again
    OUTAGE_S later. What the run returned or raised, and what it had done at the stop."""
    cfg = TranslateConfig(
        input="s3://photos/in", output="s3://photos/out", model="s3://photos/models",
        batch_size=4, workers=2, s3_outage_wait=outage_wait, work_dir=str(tmp_path / "work"),
    )  # fmt: skip
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["summary"] = translate(cfg)
        except TranslateError as err:
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while _outputs(box["server"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    local_s3.stop(box["server"])
    result["done_at_stop"] = thread.is_alive() is False
    stopped = time.monotonic()
    time.sleep(OUTAGE_S)
    box["server"] = local_s3.start(
        box["server"].data_dir, port=box["port"], access_key=box["server"].access_key,
        secret_key=box["server"].secret_key,
    )  # fmt: skip
    result["down_s"] = time.monotonic() - stopped
    thread.join(150)
    assert not thread.is_alive(), "the run did not end within 150 s of the restart"
    return result


def _failures(result: dict) -> list[str]:
    import json

    manifest = storage.read_bytes(result["summary"]["manifest"]).decode().splitlines()
    return [line for line in manifest if json.loads(line).get("status") == "failed"][:5]


def test_a_run_rides_out_an_s3_restart(
    server: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cyclegan_jobs.storage")
    result = _run_with_an_outage(server, S3_OUTAGE_WAIT_S, tmp_path)
    print(f"\nS3 down for {result['down_s']:.1f} s; the run: {result.get('error') or 'ok'}")
    assert not result["done_at_stop"], "the run ended before the outage: nothing was tested"
    assert "error" not in result, result["error"]
    counts = result["summary"]["counts"]
    assert counts["ok"] == N_INPUTS and counts["failed"] == 0, (counts, _failures(result))
    assert _outputs(server["server"]) == N_INPUTS
    warned = [r.getMessage() for r in caplog.records if "S3 unavailable" in r.getMessage()]
    assert warned and "--s3-outage-wait 90" in warned[0], warned


def test_without_an_outage_wait_the_same_outage_stops_the_run(server: dict, tmp_path: Path) -> None:
    result = _run_with_an_outage(server, 0.0, tmp_path)
    assert not result["done_at_stop"], "the run ended before the outage: nothing was tested"
    assert "unreachable" in str(result.get("error")), result
    assert _outputs(server["server"]) < N_INPUTS

"""The embedded S3 server: data persists across restarts, and stop leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

from cyclegan_local import local_s3

KEYS = {"access_key": "local-test", "secret_key": "local-test-secret"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_data_persists_across_restarts_and_stop_is_clean(tmp_path: Path) -> None:
    data_dir = tmp_path / "s3"
    with local_s3.running(data_dir, **KEYS) as first:
        client = first.client()
        client.create_bucket(Bucket="kept")
        client.put_object(Bucket="kept", Key="a/b.txt", Body=b"persisted")
    assert _gone(first.pid)
    local_s3.stop(first)  # a second stop is a no-op

    second = local_s3.start(data_dir, **KEYS)
    try:
        assert second.pid != first.pid
        body = second.client().get_object(Bucket="kept", Key="a/b.txt")["Body"].read()
        assert body == b"persisted"
    finally:
        local_s3.stop(second)
    assert _gone(second.pid)
    assert not (data_dir / "weed.pid").exists()

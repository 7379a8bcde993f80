"""An S3 store whose GETs and PUTs go through obstore (Rust's object_store; it releases the GIL
while a request is in flight) instead of boto3, for the feed benchmark's comparison.

Not a product backend: it was measured (benchmarks/translate.py --only feed --s3-backends
boto3 obstore) and kept here with its figures in the README. Only the per-image requests move:
GET (read_bytes, read_into) and PUT (write_bytes, user metadata as x-amz-meta-*). Listing,
HEAD (the ledger needs the user metadata, which obstore's head does not return), deletes and
presigned links stay on boto3. Needs `pip install obstore` (not a requirement).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import obstore
from obstore import exceptions as obs_errors
from obstore.store import S3Store as ObsS3

from cyclegan_jobs.errors import NotFoundError, StorageError, SystemicError
from cyclegan_jobs.storage import S3, set_s3_store
from cyclegan_jobs.storage.base import CHUNK
from cyclegan_jobs.storage.s3 import S3Client, S3Store, content_type_for, effective_endpoint
from cyclegan_jobs.storage.uris import split_s3


@contextmanager
def obstore_errors(uri: str) -> Iterator[None]:
    """obstore's exceptions as the Store interface's, in one line naming the URI."""
    try:
        yield
    except (obs_errors.NotFoundError, FileNotFoundError) as err:  # 0.12 raises the builtin one
        if "<Code>NoSuchBucket</Code>" in str(err):
            bucket = split_s3(uri)[0]
            raise SystemicError(f"bucket '{bucket}' does not exist ({uri})") from err
        raise NotFoundError(f"no such object: {uri}") from err
    except (obs_errors.PermissionDeniedError, obs_errors.UnauthenticatedError) as err:
        raise SystemicError(f"access denied to {uri}") from err
    except obs_errors.BaseError as err:
        raise StorageError(f"S3 request for {uri} failed: {str(err).splitlines()[0]}") from err


class ObstoreS3Store(S3Store):
    """S3Store with GET and PUT through one obstore client per bucket (clients are thread-safe
    and keep their own connection pool)."""

    def __init__(self, s3: S3Client) -> None:
        super().__init__(s3)
        self._lock = threading.Lock()
        self._buckets: dict[str, Any] = {}

    def _bucket(self, bucket: str) -> Any:
        # Keyed by the settings too: storage.configure() may point the client elsewhere.
        key = repr((bucket, self.s3.endpoint_url, self.s3.credentials))
        with self._lock:
            if key not in self._buckets:
                self._buckets[key] = self._build(bucket)
            return self._buckets[key]

    def _build(self, bucket: str) -> Any:
        endpoint = effective_endpoint(self.s3.endpoint_url)
        config: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            config.update(endpoint=endpoint, virtual_hosted_style_request=False)
        creds = self.s3.credentials or {}
        if creds.get("aws_access_key_id"):
            config["access_key_id"] = creds["aws_access_key_id"]
            config["secret_access_key"] = creds["aws_secret_access_key"]
            if creds.get("aws_session_token"):
                config["session_token"] = creds["aws_session_token"]
        client = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        client.update(connect_timeout="10s", timeout="60s", pool_max_idle_per_host="64")
        return ObsS3(bucket, config=config, client_options=client)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        with obstore_errors(uri):
            return bytes(obstore.get(self._bucket(bucket), key).bytes())

    def read_into(self, uri: str, dst: BinaryIO) -> None:
        bucket, key = split_s3(uri)
        with obstore_errors(uri):
            for chunk in obstore.get(self._bucket(bucket), key).stream(min_chunk_size=CHUNK):
                dst.write(chunk)

    def write_bytes(self, uri: str, body: bytes | BinaryIO, *, metadata: dict[str, str] | None,
                    content_type: str | None) -> str:  # fmt: skip
        bucket, key = split_s3(uri)
        attributes = dict(metadata or {})
        content_type = content_type_for(key, content_type)
        if content_type:
            attributes["Content-Type"] = content_type
        with obstore_errors(uri):
            result = obstore.put(
                self._bucket(bucket), key, body, attributes=attributes, use_multipart=False
            )
        return str(result.get("e_tag") or "").strip('"')


def use_obstore() -> None:
    """Route this process's s3:// GETs and PUTs through obstore."""
    set_s3_store(ObstoreS3Store(S3))


def pytest_configure(config: Any) -> None:
    """As a pytest plugin, the tests with obstore: `PYTHONPATH=benchmarks .venv/bin/python -m
    pytest -p obstore_store tests/test_storage.py ...` (the README's count of what fails)."""
    use_obstore()

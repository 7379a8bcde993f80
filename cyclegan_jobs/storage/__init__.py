"""The one object-store interface: read, write, list and copy s3:// URIs and local paths.

Each kind of store implements `base.Store` (`local.LocalStore`, `s3.S3Store`); `store_for(uri)`
picks the one a URI names, and the functions below are that interface for any URI. The S3
client is an object (`S3`, an `s3.S3Client`): `configure`, `set_outage_wait` and `ensure_pool`
set it for this process. Errors: StorageError (one line naming the URI), NotFoundError, and
SystemicError when the store itself is unusable (cyclegan_jobs/errors.py).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cyclegan_jobs.errors import InvalidURIError, NotFoundError, StorageError, SystemicError
from cyclegan_jobs.storage.base import ObjectInfo, Store
from cyclegan_jobs.storage.local import LocalStore, atomic_write
from cyclegan_jobs.storage.s3 import (
    MAX_ATTEMPTS,
    MAX_LINK_SECONDS,
    MAX_WORKERS,
    THROTTLED_MAX_ATTEMPTS,
    S3Client,
    S3Store,
)
from cyclegan_jobs.storage.uris import S3_SCHEME, check_uri, is_s3, join, local_path, split_s3

__all__ = [
    "MAX_ATTEMPTS", "MAX_LINK_SECONDS", "MAX_WORKERS", "S3", "S3_SCHEME", "THROTTLED_MAX_ATTEMPTS",
    "InvalidURIError", "NotFoundError", "ObjectInfo", "StorageError", "Store", "SystemicError",
    "check_uri", "client_settings", "configure", "delete", "delete_prefix", "download_dir",
    "ensure_pool", "exists", "get_client", "head", "injected_client", "is_s3", "join",
    "list_objects", "presigned_url", "read_bytes", "read_json", "set_outage_wait",
    "set_s3_store", "split_s3", "store_for", "upload_dir", "write_bytes", "write_json",
]  # fmt: skip

S3 = S3Client()  # this process's S3 settings and client
_STORES: dict[bool, Store] = {True: S3Store(S3), False: LocalStore()}


def store_for(uri: str | Path) -> Store:
    """The store a URI names: S3 for s3://, the local one for paths."""
    return _STORES[is_s3(str(uri)) and not isinstance(uri, Path)]


def set_s3_store(store: Store) -> Store:
    """Serve s3:// URIs with another Store implementation (e.g. the obstore-backed one that
    benchmarks/obstore_store.py measures); return the one it replaces."""
    previous, _STORES[True] = _STORES[True], store
    return previous


# -- the S3 client's settings -------------------------------------------------------------------
def configure(*, endpoint_url: str | None = None, client: Any | None = None,
              credentials: dict[str, str | None] | None = None) -> None:  # fmt: skip
    """Set the S3 endpoint (and, e.g. from an Airflow connection, explicit credentials:
    aws_access_key_id, aws_secret_access_key, aws_session_token), or inject a ready client,
    for all s3 calls. Without arguments: the defaults (a fresh client from the environment)."""
    S3.configure(endpoint_url=endpoint_url, client=client, credentials=credentials)


def set_outage_wait(seconds: float) -> None:
    """How long each S3 request keeps retrying while S3 is unavailable (0: a few tries only)."""
    S3.set_outage_wait(seconds)


def ensure_pool(connections: int) -> None:
    """At least this many pooled S3 connections (one per thread with a request in flight)."""
    S3.ensure_pool(connections)


def client_settings() -> dict[str, Any]:
    """The S3 settings, to build the same client in another process (never log them)."""
    return S3.settings()


def injected_client() -> bool:
    """True when configure() was given a ready client (which other processes cannot share)."""
    return S3.injected


def get_client() -> Any:
    """The shared boto3 S3 client."""
    return S3.get()


# -- objects ------------------------------------------------------------------------------------
def list_objects(prefix: str, *, suffixes: tuple[str, ...] | None = None, page_size: int = 1000,
                 missing_ok: bool = False) -> Any:  # fmt: skip
    """Yield every object under a folder-like prefix, recursively, in key order.

    S3 listing is paginated and streamed; an s3 prefix is treated as a folder ('/' is added).
    Keys ending in '/' (directory markers) are skipped. `suffixes` filters case-insensitively.
    A missing bucket raises StorageError; a missing local folder raises NotFoundError unless
    `missing_ok`. Errors surface on the first iteration, since this is a generator.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    for info in store_for(prefix).list(prefix, page_size=page_size, missing_ok=missing_ok):
        if wanted is None or info.rel.lower().endswith(wanted):
            yield info


def exists(uri: str) -> bool:
    """True when the object (or local file) exists."""
    try:
        head(uri)
    except NotFoundError:
        return False
    return True


def head(uri: str) -> dict:
    """Return {"size", "etag", "metadata"} of an object; NotFoundError if it is missing."""
    return store_for(uri).head(uri)


def read_bytes(uri: str) -> bytes:
    """Return the whole content of an object or local file."""
    return store_for(uri).read_bytes(uri)


def write_bytes(uri: str, data: bytes, *, metadata: dict[str, str] | None = None,
                content_type: str | None = None) -> str:  # fmt: skip
    """Write an object in one PUT, or a local file atomically; return its new ETag (as a
    listing reports it). Local files keep `metadata` in a hidden sidecar."""
    return store_for(uri).write_bytes(uri, data, metadata=metadata, content_type=content_type)


def read_json(uri: str) -> Any:
    """Read and parse a JSON object."""
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except ValueError as err:
        raise StorageError(f"not valid JSON: {uri}: {err}") from err


def write_json(uri: str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON (stable diffs, readable in a console)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_bytes(uri, text.encode("utf-8"), content_type="application/json")


def delete(uri: str) -> None:
    """Delete one object (a no-op when it is already gone).

    Only for a job's own outputs and scratch (e.g. superseded checkpoints): never on inputs.
    """
    store_for(uri).delete(uri)


def delete_prefix(prefix: str) -> int:
    """Delete every object under `prefix`; return how many were deleted.

    Only for a job's own outputs and scratch space (reruns, cleanup): never call it on inputs.
    Refuses a whole bucket or a filesystem root, which would never be a job's own folder.
    """
    return store_for(prefix).delete_prefix(prefix)


def presigned_url(uri: str, *, listing: bool = False, expires_s: int = MAX_LINK_SECONDS,
                  endpoint_url: str | None = None) -> str:  # fmt: skip
    """A browser link to an object (or, with `listing`, to the XML listing of a prefix): for
    S3 a presigned URL signed for `endpoint_url` (default: the client's); a local path gives
    its file:// URI."""
    link = store_for(uri).link
    return link(uri, listing=listing, expires_s=expires_s, endpoint_url=endpoint_url)


# -- folders ------------------------------------------------------------------------------------
def _map(fn: Any, items: list[Any], parallel: bool) -> list[Any]:
    if not parallel or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=MAX_WORKERS) as pool:
        return list(pool.map(fn, items))


def upload_dir(local_dir: str | Path, prefix: str) -> list[str]:
    """Copy every file under `local_dir` to `prefix/<rel>` (s3 or local); return the URIs."""
    if is_s3(str(local_dir)):
        raise ValueError(f"upload_dir needs a local folder, got {local_dir}")
    sources = list(list_objects(str(local_dir)))
    store = store_for(prefix)

    def copy(info: ObjectInfo) -> str:
        dest = join(prefix, info.rel)
        with open(info.uri, "rb") as fh:
            store.write_bytes(dest, fh, metadata=None, content_type=None)
        return dest

    return _map(copy, sources, parallel=store.parallel)


def download_dir(prefix: str, local_dir: str | Path) -> list[Path]:
    """Mirror of upload_dir: copy every object under `prefix` into `local_dir`; [] if none."""
    root = local_path(local_dir)
    sources = list(list_objects(prefix, missing_ok=True))
    store = store_for(prefix)

    def fetch(info: ObjectInfo) -> Path:
        parts = info.rel.split("/")
        # A key like "../x" must not write outside local_dir.
        if any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"refusing to download {info.uri}: unsafe relative key {info.rel!r}")
        dest = root.joinpath(*parts)
        with atomic_write(dest) as dst:
            store.read_into(info.uri, dst)
        return dest

    return _map(fetch, sources, parallel=store.parallel)

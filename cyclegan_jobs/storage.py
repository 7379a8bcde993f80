"""The one object-store module: read, write, list and copy s3:// URIs (boto3) and local paths."""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from .config import S3_OUTAGE_WAIT_S
from .errors import InvalidURIError, NotFoundError, StorageError, SystemicError

S3_SCHEME = "s3://"
# Enough parallel transfers to hide S3 latency, matched to the client's connection pool.
MAX_WORKERS = 16
# Temporary files of atomic local writes start with this, so listings can skip them.
# Hidden sidecars holding the metadata of local files (S3 keeps it on the object).
_META_PREFIX = ".cyclegan-meta."
_TMP_PREFIX = ".tmp-cyclegan-"
_CHUNK = 8 * 1024 * 1024

_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
log = logging.getLogger(__name__)
# A URI scheme (RFC 3986) at the start: "s3:", "gs:", "http:", "S3:", ... ("tfds:" is not ours).
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Current S3 bucket naming rules (also MinIO's and SeaweedFS'): 3-63 of a-z 0-9 . -
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_EXPECTED = "expected s3://bucket/prefix or a local path"

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: where it is, its key under the listed prefix, and its size and ETag."""

    uri: str
    rel: str
    size: int
    etag: str


_lock = threading.Lock()
_endpoint_url: str | None = None
_client: Any | None = None
_injected = False
_credentials: dict[str, str | None] | None = None
# Connections the client keeps: at least one per thread of the largest parallel stage.
_pool_size = 2 * MAX_WORKERS


def configure(
    *,
    endpoint_url: str | None = None,
    client: Any | None = None,
    credentials: dict[str, str | None] | None = None,
) -> None:
    """Set the S3 endpoint (and, e.g. from an Airflow connection, explicit credentials:
    aws_access_key_id, aws_secret_access_key, aws_session_token), or inject a ready client,
    for all s3 calls.

    Calling it without arguments resets to the defaults (a fresh client from the environment).
    """
    global _endpoint_url, _client, _injected, _credentials
    with _lock:
        _endpoint_url, _credentials = endpoint_url, credentials
        _client = client
        _injected = client is not None


def ensure_pool(connections: int) -> None:
    """Make the client's connection pool hold at least `connections` (one per thread that
    may have a request in flight); a smaller pool makes urllib3 discard connections and log
    "Connection pool is full" warnings. Rebuilds the shared client when it must grow."""
    global _pool_size, _client
    with _lock:
        if connections <= _pool_size:
            return
        _pool_size = connections
        if not _injected:
            _client = None


def client_settings() -> dict[str, Any]:
    """What configure() and set_outage_wait() were given, to build the same client in another
    process (never logged: it may hold credentials)."""
    return {
        "endpoint_url": _endpoint_url,
        "credentials": _credentials,
        "outage_wait": _outage_wait_s,
    }


def injected_client() -> bool:
    """True when configure() was given a ready client (which other processes cannot share)."""
    return _injected


def get_client() -> Any:
    """Return the shared boto3 S3 client, building it once (boto3 clients are thread-safe)."""
    global _client
    client = _client
    if client is not None:
        return client
    with _lock:
        if _client is None:
            _client = _build_client(_endpoint_url, _credentials)
        return _client


def _build_client(endpoint_url: str | None, credentials: dict | None = None) -> Any:
    # Imported here so that importing this module (e.g. from a DAG file) stays cheap.
    import boto3
    from botocore.config import Config

    # boto3 reads AWS_ENDPOINT_URL(_S3) itself; we only look at it to choose the addressing style.
    effective = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        # MAX_ATTEMPTS tries in all (botocore's max_attempts counts retries); throttling gets
        # more, per request: see _retry_per_request. A stalled endpoint is cut by the jobs' own
        # stall deadline.
        retries={"max_attempts": MAX_ATTEMPTS - 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=_pool_size,
        # SigV4 everywhere, presigned links too (an expiry of at most 7 days, no secret key).
        signature_version="s3v4",
        # SeaweedFS/MinIO behind a plain host:port cannot serve virtual-hosted bucket names.
        s3={"addressing_style": "path"} if effective else None,
    )
    # A private session: the boto3 default session is not safe to create from several threads.
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=config, **(credentials or {})
    )
    _retry_per_request(client)
    return client


# Tries per request. Transient errors and unreachable endpoints: botocore's standard backoff
# starts at 50 ms for them, so a dead endpoint fails in about 2 s (at most 3.2 s of sleeps).
MAX_ATTEMPTS = 7
# Throttling (503 SlowDown and the like): the server is up and asks us to wait. The backoff
# starts at 1 s and is capped at 20 s a wait: a request throttled on every try gives up after
# about 1 min (111 s at most, under the 120 s stall deadline); under 40 % SlowDown one request
# in 10,000 does (0.4**10).
THROTTLED_MAX_ATTEMPTS = 10


class _RetryConditions:
    """botocore's standard retry conditions, with more tries for throttling responses."""

    def __init__(self, throttling: Any) -> None:
        from botocore.retries import standard

        self._throttling = throttling
        self._throttled = standard.StandardRetryConditions(THROTTLED_MAX_ATTEMPTS)
        self._other = standard.StandardRetryConditions(MAX_ATTEMPTS)

    def is_retryable(self, context: Any) -> bool:
        throttled = self._throttling.is_throttling_error_from_context(context)
        return (self._throttled if throttled else self._other).is_retryable(context)


# S3 unavailable: an endpoint that cannot be reached (connection refused, no DNS name, connect
# timeout) or that answers 5xx errors other than throttling (a server restarting: SeaweedFS
# answers 500 for a few seconds after it is back). After the tries above, such a request keeps
# retrying for up to config.S3_OUTAGE_WAIT_S from its first failure, so that a batch job rides
# out a short outage instead of failing it; set_outage_wait() changes it (the CLI's
# --s3-outage-wait; 0: give up after MAX_ATTEMPTS, about 2 s).
# Seconds between those tries (with jitter, so that threads do not retry all at once).
_OUTAGE_STEP_S = (2.0, 5.0)
# At most one "S3 unavailable, waiting" warning this often (every thread hits it).
_OUTAGE_LOG_EVERY_S = 15.0
_outage_wait_s = S3_OUTAGE_WAIT_S
_outage_logged_at = -_OUTAGE_LOG_EVERY_S


def set_outage_wait(seconds: float) -> None:
    """How long each S3 request keeps retrying while S3 is unavailable (0: MAX_ATTEMPTS only)."""
    global _outage_wait_s
    if seconds < 0:
        raise ValueError(f"the S3 outage wait must be >= 0 seconds, got {seconds:g}")
    _outage_wait_s = float(seconds)


def _unavailable(context: Any, throttling: Any) -> str | None:
    """What made this try fail if S3 looks unavailable (not throttling), else None."""
    if isinstance(context.caught_exception, _UNREACHABLE):
        return type(context.caught_exception).__name__
    status = getattr(context.http_response, "status_code", 0) or 0
    if status >= 500 and not throttling.is_throttling_error_from_context(context):
        return f"HTTP {status}"
    return None


class _OutageWait:
    """The outage part of the retry policy: per request, the time since S3 first looked
    unavailable, and a warning in the log at most every _OUTAGE_LOG_EVERY_S."""

    def __init__(self, throttling: Any) -> None:
        self._throttling = throttling

    def left(self, context: Any) -> float:
        """Seconds this request may still wait (0: S3 is not unavailable, or time is up); once
        botocore's own tries are spent, a warning says so."""
        why = _unavailable(context, self._throttling)
        left = 0.0
        if why is not None:
            start = context.request_context.setdefault(
                "cyclegan_unavailable_since", time.monotonic()
            )
            left = max(0.0, _outage_wait_s - (time.monotonic() - start))
            if left > 0 and context.attempt_number >= MAX_ATTEMPTS:
                self._warn(why, left)
        context.request_context["cyclegan_outage_left"] = left  # this try's, for the delay
        return left

    @staticmethod
    def _warn(why: str, left: float) -> None:
        global _outage_logged_at
        now = time.monotonic()
        with _lock:
            if now - _outage_logged_at < _OUTAGE_LOG_EVERY_S:
                return
            _outage_logged_at = now
        log.warning(
            "S3 unavailable (%s); requests keep retrying for up to %.0f s more "
            "(--s3-outage-wait %g)", why, left, _outage_wait_s
        )  # fmt: skip


def _retry_policy(standard: Any, throttling: Any, backoff: Any) -> Any:
    """botocore's standard policy, which also rides out S3 being unavailable for a while."""
    outage = _OutageWait(throttling)

    class OutagePolicy(standard.RetryPolicy):
        def should_retry(self, context: Any) -> bool:
            left = outage.left(context)  # also notes when this request first found S3 down
            return super().should_retry(context) or left > 0

        def compute_retry_delay(self, context: Any) -> float:
            # should_retry (always called first, on the same try) worked out what is left.
            left = context.request_context.get("cyclegan_outage_left", 0.0)
            if context.attempt_number < MAX_ATTEMPTS or not left:
                return super().compute_retry_delay(context)
            return min(left, random.uniform(*_OUTAGE_STEP_S))

    return OutagePolicy(retry_checker=_RetryConditions(throttling), retry_backoff=backoff)


class _NoSharedQuota:
    """Stands in for botocore's RetryQuota: every retry the conditions allow may go ahead."""

    def acquire_retry_quota(self, context: Any) -> bool:
        return True


def _retry_per_request(client: Any) -> None:
    """Give the client standard-mode retries budgeted per request.

    botocore's standard mode takes every retry from one RetryQuota per client (5 units a
    throttled retry, 1 back per request that needed none): under sustained throttling (40 % of
    requests answered 503 SlowDown) it runs dry after a few hundred requests, and from then on
    every 503 fails at once (RetryQuotaReached) for the rest of the run. Adaptive mode uses
    the same quota, and its client-side rate limiter cut the send rate to about one request a
    second under throttling that does not ease when the client slows down. Legacy mode has no
    quota but backs off from 1 s on every error: a dead endpoint took 33 s per request instead
    of 2. So this keeps the standard mode's conditions and backoff and replaces only the
    quota: each request is bounded by its own tries (MAX_ATTEMPTS, THROTTLED_MAX_ATTEMPTS), and
    by the outage wait when the endpoint cannot be reached (set_outage_wait).
    """
    from botocore.retries import standard

    name = client.meta.service_model.service_id.hyphenize()
    adapter = standard.RetryEventAdapter()
    throttling = standard.ThrottlingErrorDetector(adapter)
    handler = standard.RetryHandler(
        retry_policy=_retry_policy(
            standard,
            throttling,
            standard.ExponentialBackoff(service_name=name, throttling_detector=throttling),
        ),
        retry_event_adapter=adapter,
        retry_quota=_NoSharedQuota(),
        service_name=name,
    )
    # The same event and unique id as botocore's own handler (standard.register_retry_handler),
    # which registering ours under that id would otherwise keep in place.
    unique_id = f"retry-config-{name}"
    client.meta.events.unregister(f"needs-retry.{name}", unique_id=unique_id)
    client.meta.events.register(f"needs-retry.{name}", handler.needs_retry, unique_id=unique_id)


# The longest a SigV4 presigned URL may live.
MAX_LINK_SECONDS = 7 * 24 * 3600


def presigned_url(
    uri: str,
    *,
    listing: bool = False,
    expires_s: int = MAX_LINK_SECONDS,
    endpoint_url: str | None = None,
) -> str:
    """A browser link to an object (or, with `listing`, to the XML listing of a prefix).

    For S3 it is a presigned URL: it carries a signature and an expiry, not the keys. Sign it
    for the address the reader's browser uses (`endpoint_url`, e.g. a published port of an S3
    server that the workers reach by another name); default: the client's own endpoint.
    A local path gives its file:// URI.
    """
    if not is_s3(uri):
        return _local_path(uri).resolve().as_uri()
    bucket, key = split_s3(uri)
    if endpoint_url:
        client = _build_client(endpoint_url, _credentials)
    else:
        client = get_client()
    if listing:
        params = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else ""}
        return client.generate_presigned_url("list_objects_v2", Params=params, ExpiresIn=expires_s)
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )


def is_s3(uri: str) -> bool:
    """True for s3:// URIs."""
    return str(uri).startswith(S3_SCHEME)


def check_uri(uri: str) -> str:
    """Return `uri` unchanged if it is a well-formed s3://bucket/... URI or a local path.

    Otherwise raise InvalidURIError, one line naming the URI and what is wrong: an empty
    string, s3:// without a bucket or with an invalid bucket name, a misspelt s3 scheme
    (s3:/x, s3:x, S3://x) or any other scheme (gs://, http://, file://, ...). A local path
    whose first segment looks like a scheme must be written ./name: to be taken literally.
    """
    text = str(uri)
    if not text.strip():
        raise InvalidURIError(f"empty URI ({_EXPECTED})")
    if is_s3(text):
        _check_bucket(text, text[len(S3_SCHEME) :].partition("/")[0])
        return text
    scheme = _SCHEME_RE.match(text)
    if scheme is None:
        if "://" in text:
            raise InvalidURIError(f"{text!r}: '://' inside a local path (a misplaced URI?)")
        return text
    name = scheme.group(0)[:-1]
    if name.lower() == "s3":
        # "./s3:x" is how to name such a local folder on purpose (not possible with "://").
        hint = "" if "://" in text else f"; for a local path write './{text}'"
        raise InvalidURIError(f"{text!r} is a malformed s3 URI (expected s3://bucket/prefix{hint})")
    raise InvalidURIError(
        f"{text!r}: unsupported URI scheme {name!r} (only s3://bucket/prefix and local paths)"
    )


def _check_bucket(uri: str, bucket: str) -> None:
    if not bucket:
        raise InvalidURIError(f"{uri!r} has no bucket name (expected s3://bucket/prefix)")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket or _IPV4_RE.fullmatch(bucket):
        raise InvalidURIError(
            f"invalid s3 bucket name {bucket!r} in {uri!r} (3-63 lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or digit)"
        )


def split_s3(uri: str) -> tuple[str, str]:
    """Split 's3://bucket/key/prefix' into ('bucket', 'key/prefix'); InvalidURIError if bad."""
    if not is_s3(uri):
        raise InvalidURIError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = check_uri(uri)[len(S3_SCHEME) :].partition("/")
    return bucket, key


def _local_path(uri: str | Path) -> Path:
    # check_uri refuses "s3:/x" and friends, which would otherwise become a folder "./s3:".
    # A Path is local by type (and pathlib drops the "./" of "./s3:x", so it cannot be checked).
    if isinstance(uri, Path):
        return uri
    if is_s3(uri):
        raise InvalidURIError(f"not a local path: {uri}")
    return Path(check_uri(str(uri)))


def join(base: str, *parts: str) -> str:
    """Join a base URI or path with '/'-separated parts, without doubled slashes at the joints."""
    pieces = [p.strip("/") for p in parts if p.strip("/")]
    if not pieces:
        return base
    head = base.rstrip("/")
    if not head:
        # "/" stays the root; "" means a relative path.
        return "/" + "/".join(pieces) if base.startswith("/") else "/".join(pieces)
    return head + "/" + "/".join(pieces)


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Translate botocore failures into one-line StorageErrors naming the URI."""
    try:
        yield
    except ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "NoSuchBucket":
            bucket = split_s3(uri)[0]
            raise SystemicError(f"bucket '{bucket}' does not exist ({uri})") from err
        if code in _NOT_FOUND_CODES:
            raise NotFoundError(f"no such object: {uri}") from err
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED_CODES:
            raise SystemicError(f"access denied to {uri}") from err
        if status == 403:
            # e.g. InvalidAccessKeyId or SignatureDoesNotMatch: the credentials are wrong.
            raise SystemicError(f"access denied to {uri} ({code})") from err
        message = error.get("Message") or str(err)
        raise StorageError(f"S3 error {code} on {uri}: {message}") from err
    except _UNREACHABLE as err:
        # botocore retried already: the endpoint is down or stalled, for every object alike.
        raise SystemicError(f"S3 endpoint unreachable for {uri}: {err}") from err
    except BotoCoreError as err:
        # Credential and other client-side problems: keep botocore's explanation.
        raise StorageError(f"S3 request for {uri} failed: {err}") from err


def list_objects(
    prefix: str,
    *,
    suffixes: tuple[str, ...] | None = None,
    page_size: int = 1000,
    missing_ok: bool = False,
) -> Iterator[ObjectInfo]:
    """Yield every object under a folder-like prefix, recursively, in key order.

    S3 listing is paginated and streamed; an s3 prefix is treated as a folder ('/' is added).
    Keys ending in '/' (directory markers) are skipped. `suffixes` filters case-insensitively.
    A missing bucket raises StorageError; a missing local folder raises NotFoundError unless
    `missing_ok`. Errors surface on the first iteration, since this is a generator.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    source = _list_s3(prefix, page_size) if is_s3(prefix) else _list_local(prefix, missing_ok)
    for info in source:
        if wanted is None or info.rel.lower().endswith(wanted):
            yield info


def _list_s3(prefix: str, page_size: int) -> Iterator[ObjectInfo]:
    bucket, key_prefix = split_s3(prefix)
    if key_prefix and not key_prefix.endswith("/"):
        key_prefix += "/"
    paginator = get_client().get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=key_prefix, PaginationConfig={"PageSize": page_size}
    )
    with _s3_errors(prefix):
        # S3 returns keys in UTF-8 binary order, so streaming the pages keeps them sorted.
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                yield ObjectInfo(
                    uri=f"{S3_SCHEME}{bucket}/{key}",
                    rel=key[len(key_prefix) :],
                    size=int(obj.get("Size", 0)),
                    etag=str(obj.get("ETag", "")).strip('"'),
                )


def _list_local(prefix: str, missing_ok: bool) -> Iterator[ObjectInfo]:
    root = _local_path(prefix)
    if not root.is_dir():
        if missing_ok and not root.exists():
            return
        kind = "not a folder" if root.exists() else "no such folder"
        raise NotFoundError(f"{kind}: {root}")
    yield from _walk_sorted(os.path.abspath(root), "")


def _walk_sorted(folder: str, rel_base: str) -> Iterator[ObjectInfo]:
    # Sorting folders as "name/" makes the recursive walk come out in the same order as a flat
    # sort of the full keys (as S3 lists them): "a-b" < "a/x" because '-' < '/'.
    with os.scandir(folder) as it:
        entries = [
            (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
            for e in it
            if not e.name.startswith((_TMP_PREFIX, _META_PREFIX))
        ]
    for name, entry in sorted(entries, key=lambda pair: pair[0]):
        rel = rel_base + name
        if name.endswith("/"):
            yield from _walk_sorted(entry.path, rel)
        elif entry.is_file():
            stat = entry.stat()
            yield ObjectInfo(
                uri=entry.path,
                rel=rel,
                size=stat.st_size,
                etag=_local_etag(stat),
            )


def exists(uri: str) -> bool:
    """True when the object (or local file) exists."""
    try:
        head(uri)
    except NotFoundError:
        return False
    return True


def head(uri: str) -> dict:
    """Return {"size", "etag", "metadata"} of an object; NotFoundError if it is missing."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            resp = get_client().head_object(Bucket=bucket, Key=key)
        return {
            "size": int(resp.get("ContentLength", 0)),
            "etag": str(resp.get("ETag", "")).strip('"'),
            "metadata": dict(resp.get("Metadata", {})),
        }
    path = _local_path(uri)
    if not path.is_file():
        raise NotFoundError(f"no such object: {uri}")
    stat = path.stat()
    meta_path = _meta_path(path)
    try:
        metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError:  # a damaged sidecar only means "unknown provenance"
        metadata = {}
    return {
        "size": stat.st_size,
        "etag": _local_etag(stat),
        "metadata": metadata,
    }


def _meta_path(path: Path) -> Path:
    return path.parent / f"{_META_PREFIX}{path.name}.json"


def read_bytes(uri: str) -> bytes:
    """Return the whole content of an object or local file."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return get_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        return _local_path(uri).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        raise NotFoundError(f"no such object: {uri}") from err


def write_bytes(
    uri: str,
    data: bytes,
    *,
    metadata: dict[str, str] | None = None,
    content_type: str | None = None,
) -> str:
    """Write an object in one PUT, or a local file atomically; return its new ETag (as a
    listing reports it).

    Local files keep `metadata` in a hidden sidecar (`.cyclegan-meta.<name>.json`, never listed),
    written after the file: a crash in between leaves the old metadata, which reads as stale.
    """
    if is_s3(uri):
        return _put_s3(uri, data, metadata=metadata, content_type=content_type)
    with _atomic_local(uri) as fh:
        fh.write(data)
    path = _local_path(uri)
    meta_path = _meta_path(path)
    if metadata:
        with _atomic_local(meta_path) as fh:
            fh.write(json.dumps(metadata, sort_keys=True).encode())
    else:
        meta_path.unlink(missing_ok=True)
    return _local_etag(path.stat())


def _local_etag(stat: os.stat_result) -> str:
    """A local file's stand-in for an ETag: it changes whenever the file is rewritten."""
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _put_s3(
    uri: str,
    body: bytes | BinaryIO,
    *,
    metadata: dict[str, str] | None = None,
    content_type: str | None = None,
) -> str:
    bucket, key = split_s3(uri)
    extra: dict[str, Any] = {}
    if metadata:
        extra["Metadata"] = metadata
    # Browsers and S3 consoles show images and JSON correctly only with a real content type.
    content_type = content_type or mimetypes.guess_type(key)[0]
    if content_type:
        extra["ContentType"] = content_type
    with _s3_errors(uri):
        resp = get_client().put_object(Bucket=bucket, Key=key, Body=body, **extra)
    return str(resp.get("ETag", "")).strip('"')


@contextmanager
def _atomic_local(uri: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file beside the target and move it into place only when writing succeeded."""
    path = _local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"
    # os.open with 0o666 lets the umask decide permissions, like a normal open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

    def copy(info: ObjectInfo) -> str:
        dest = join(prefix, info.rel)
        if is_s3(dest):
            with open(info.uri, "rb") as fh:
                _put_s3(dest, fh)
        else:
            with open(info.uri, "rb") as src, _atomic_local(dest) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        return dest

    return _map(copy, sources, parallel=is_s3(prefix))


def download_dir(prefix: str, local_dir: str | Path) -> list[Path]:
    """Mirror of upload_dir: copy every object under `prefix` into `local_dir`; [] if none."""
    root = _local_path(local_dir)
    sources = list(list_objects(prefix, missing_ok=True))

    def fetch(info: ObjectInfo) -> Path:
        parts = info.rel.split("/")
        # A key like "../x" must not write outside local_dir.
        if any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"refusing to download {info.uri}: unsafe relative key {info.rel!r}")
        dest = root.joinpath(*parts)
        with _atomic_local(dest) as dst:
            if is_s3(info.uri):
                bucket, key = split_s3(info.uri)
                with _s3_errors(info.uri):
                    body = get_client().get_object(Bucket=bucket, Key=key)["Body"]
                    for chunk in iter(lambda: body.read(_CHUNK), b""):
                        dst.write(chunk)
            else:
                with open(info.uri, "rb") as src:
                    shutil.copyfileobj(src, dst, _CHUNK)
        return dest

    return _map(fetch, sources, parallel=is_s3(prefix))


def delete(uri: str) -> None:
    """Delete one object (a no-op when it is already gone).

    Only for a job's own outputs and scratch (e.g. superseded checkpoints): never on inputs.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            get_client().delete_object(Bucket=bucket, Key=key)
    else:
        _local_path(uri).unlink(missing_ok=True)


def delete_prefix(prefix: str) -> int:
    """Delete every object under `prefix`; return how many were deleted.

    Only for a job's own outputs and scratch space (reruns, cleanup): never call it on inputs.
    Refuses a whole bucket or a filesystem root, which would never be a job's own folder.
    """
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        if not key.strip("/"):
            raise StorageError(f"refusing to delete a whole bucket: {prefix}")
        return _delete_s3(prefix, bucket)
    root = _local_path(prefix)
    if root.resolve() == Path(root.resolve().anchor):
        raise StorageError(f"refusing to delete a filesystem root: {prefix}")
    if not root.exists():
        return 0
    count = sum(1 for _ in list_objects(str(root)))
    shutil.rmtree(root)
    return count


def _delete_s3(prefix: str, bucket: str) -> int:
    client = get_client()
    _, key_prefix = split_s3(prefix)
    key_prefix = key_prefix if key_prefix.endswith("/") else key_prefix + "/"
    paginator = client.get_paginator("list_objects_v2")
    count = 0
    with _s3_errors(prefix):
        # A listing page holds at most 1000 keys, the DeleteObjects limit, so delete page by page.
        # Directory markers ("folder/" keys) are deleted too, so nothing is left behind.
        for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if not keys:
                continue
            resp = client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StorageError(
                    f"could not delete {len(resp['Errors'])} objects under {prefix}, "
                    f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )
            count += len(keys)
    return count

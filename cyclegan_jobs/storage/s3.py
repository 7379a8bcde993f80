"""The S3 store (boto3): one client object holding the endpoint, the credentials, the
connection pool and the retry policy (standard retries budgeted per request, riding out an
outage for a while), and the Store operations over it."""

from __future__ import annotations

import logging
import mimetypes
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from cyclegan_jobs.config import S3_OUTAGE_WAIT_S
from cyclegan_jobs.errors import NotFoundError, StorageError, SystemicError
from cyclegan_jobs.storage.base import CHUNK, ObjectInfo
from cyclegan_jobs.storage.uris import S3_SCHEME, split_s3

log = logging.getLogger(__name__)
# Enough parallel transfers to hide S3 latency, matched to the client's connection pool.
MAX_WORKERS = 16
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
# The longest a SigV4 presigned URL may live.
MAX_LINK_SECONDS = 7 * 24 * 3600


class S3Client:
    """The S3 settings of this process and the boto3 client built from them (once; boto3
    clients are thread-safe). `configure` sets the endpoint and credentials or injects a ready
    client; `set_outage_wait` how long a request rides out an outage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.endpoint_url: str | None = None
        self.credentials: dict[str, str | None] | None = None
        self.injected = False
        self._client: Any | None = None
        # Connections the client keeps: at least one per thread of the largest parallel stage.
        self.pool_size = 2 * MAX_WORKERS
        self.outage_wait = S3_OUTAGE_WAIT_S
        self._outage_logged_at = -_OUTAGE_LOG_EVERY_S

    def configure(self, *, endpoint_url: str | None = None, client: Any | None = None,
                  credentials: dict[str, str | None] | None = None) -> None:  # fmt: skip
        with self._lock:
            self.endpoint_url, self.credentials = endpoint_url, credentials
            self._client, self.injected = client, client is not None

    def ensure_pool(self, connections: int) -> None:
        """Make the connection pool hold at least `connections` (one per thread that may have a
        request in flight); a smaller pool makes urllib3 discard connections and log
        "Connection pool is full" warnings. Rebuilds the client when it must grow."""
        with self._lock:
            if connections <= self.pool_size:
                return
            self.pool_size = connections
            if not self.injected:
                self._client = None

    def set_outage_wait(self, seconds: float) -> None:
        """How long each request keeps retrying while S3 is unavailable (0: MAX_ATTEMPTS only)."""
        if seconds < 0:
            raise ValueError(f"the S3 outage wait must be >= 0 seconds, got {seconds:g}")
        self.outage_wait = float(seconds)

    def settings(self) -> dict[str, Any]:
        """What configure() and set_outage_wait() were given, to build the same client in
        another process (never logged: it may hold credentials)."""
        return {"endpoint_url": self.endpoint_url, "credentials": self.credentials,
                "outage_wait": self.outage_wait}  # fmt: skip

    def get(self) -> Any:
        """The boto3 client, built on first use."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self.build(self.endpoint_url)
            return self._client

    def outage_warning_due(self) -> bool:
        """At most one "S3 unavailable" warning every _OUTAGE_LOG_EVERY_S (threads all hit it)."""
        now = time.monotonic()
        with self._lock:
            if now - self._outage_logged_at < _OUTAGE_LOG_EVERY_S:
                return False
            self._outage_logged_at = now
            return True

    def build(self, endpoint_url: str | None) -> Any:
        """A new boto3 client for `endpoint_url` with these credentials and this policy."""
        return _build_client(endpoint_url, self.credentials, self.pool_size, self)


def effective_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint requests go to: the configured one, else AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL from the environment (None: AWS itself)."""
    return (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )


def content_type_for(key: str, content_type: str | None) -> str | None:
    """The Content-Type to store an object with: the one given, else guessed from the key
    (browsers and S3 consoles show images and JSON correctly only with a real one)."""
    return content_type or mimetypes.guess_type(key)[0]


def _build_client(endpoint_url: str | None, credentials: dict | None, pool_size: int,
                  s3: S3Client) -> Any:  # fmt: skip
    # Imported here so that importing this module (e.g. from a DAG file) stays cheap.
    import boto3
    from botocore.config import Config

    # boto3 reads AWS_ENDPOINT_URL(_S3) itself; we only look at it to choose the addressing style.
    effective = effective_endpoint(endpoint_url)
    config = Config(
        # MAX_ATTEMPTS tries in all (botocore's max_attempts counts retries); throttling gets
        # more, per request: see _retry_per_request. A stalled endpoint is cut by the jobs' own
        # stall deadline.
        retries={"max_attempts": MAX_ATTEMPTS - 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=pool_size,
        # SigV4 everywhere, presigned links too (an expiry of at most 7 days, no secret key).
        signature_version="s3v4",
        # SeaweedFS/MinIO behind a plain host:port cannot serve virtual-hosted bucket names.
        s3={"addressing_style": "path"} if effective else None,
    )
    # A private session: the boto3 default session is not safe to create from several threads.
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=config, **(credentials or {})
    )
    _retry_per_request(client, s3)
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
# out a short outage instead of failing it; S3Client.set_outage_wait changes it (the CLI's
# --s3-outage-wait; 0: give up after MAX_ATTEMPTS, about 2 s).
# Seconds between those tries (with jitter, so that threads do not retry all at once).
_OUTAGE_STEP_S = (2.0, 5.0)
# At most one "S3 unavailable, waiting" warning this often (every thread hits it).
_OUTAGE_LOG_EVERY_S = 15.0


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

    def __init__(self, throttling: Any, s3: S3Client) -> None:
        self._throttling, self._s3 = throttling, s3

    def left(self, context: Any) -> float:
        """Seconds this request may still wait (0: S3 is not unavailable, or time is up); once
        botocore's own tries are spent, a warning says so."""
        why = _unavailable(context, self._throttling)
        left = 0.0
        if why is not None:
            start = context.request_context.setdefault(
                "cyclegan_unavailable_since", time.monotonic()
            )
            left = max(0.0, self._s3.outage_wait - (time.monotonic() - start))
            if left > 0 and context.attempt_number >= MAX_ATTEMPTS:
                self._warn(why, left)
        context.request_context["cyclegan_outage_left"] = left  # this try's, for the delay
        return left

    def _warn(self, why: str, left: float) -> None:
        if not self._s3.outage_warning_due():
            return
        log.warning(
            "S3 unavailable (%s); requests keep retrying for up to %.0f s more "
            "(--s3-outage-wait %g)", why, left, self._s3.outage_wait
        )  # fmt: skip


def _retry_policy(standard: Any, throttling: Any, backoff: Any, s3: S3Client) -> Any:
    """botocore's standard policy, which also rides out S3 being unavailable for a while."""
    outage = _OutageWait(throttling, s3)

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


def _retry_per_request(client: Any, s3: S3Client) -> None:
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
    by the outage wait when the endpoint cannot be reached (S3Client.set_outage_wait).
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
            s3,
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


@contextmanager
def s3_errors(uri: str) -> Iterator[None]:
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


class S3Store:
    """s3:// URIs behind the Store interface, through an S3Client."""

    parallel = True

    def __init__(self, s3: S3Client) -> None:
        self.s3 = s3

    def list(self, prefix: str, *, page_size: int, missing_ok: bool) -> Iterator[ObjectInfo]:
        bucket, key_prefix = split_s3(prefix)
        if key_prefix and not key_prefix.endswith("/"):
            key_prefix += "/"
        paginator = self.s3.get().get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=bucket, Prefix=key_prefix, PaginationConfig={"PageSize": page_size}
        )
        with s3_errors(prefix):
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

    def head(self, uri: str) -> dict:
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            resp = self.s3.get().head_object(Bucket=bucket, Key=key)
        return {
            "size": int(resp.get("ContentLength", 0)),
            "etag": str(resp.get("ETag", "")).strip('"'),
            "metadata": dict(resp.get("Metadata", {})),
        }

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            return self.s3.get().get_object(Bucket=bucket, Key=key)["Body"].read()

    def read_into(self, uri: str, dst: BinaryIO) -> None:
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            body = self.s3.get().get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in iter(lambda: body.read(CHUNK), b""):
                dst.write(chunk)

    def write_bytes(self, uri: str, body: bytes | BinaryIO, *, metadata: dict[str, str] | None,
                    content_type: str | None) -> str:  # fmt: skip
        """One PUT."""
        bucket, key = split_s3(uri)
        extra: dict[str, Any] = {}
        if metadata:
            extra["Metadata"] = metadata
        content_type = content_type_for(key, content_type)
        if content_type:
            extra["ContentType"] = content_type
        with s3_errors(uri):
            resp = self.s3.get().put_object(Bucket=bucket, Key=key, Body=body, **extra)
        return str(resp.get("ETag", "")).strip('"')

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            self.s3.get().delete_object(Bucket=bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        bucket, key_prefix = split_s3(prefix)
        if not key_prefix.strip("/"):
            raise StorageError(f"refusing to delete a whole bucket: {prefix}")
        client = self.s3.get()
        key_prefix = key_prefix if key_prefix.endswith("/") else key_prefix + "/"
        paginator = client.get_paginator("list_objects_v2")
        count = 0
        with s3_errors(prefix):
            # A listing page holds at most 1000 keys, the DeleteObjects limit: page by page.
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

    def link(self, uri: str, *, listing: bool = False, expires_s: int = MAX_LINK_SECONDS,
             endpoint_url: str | None = None) -> str:  # fmt: skip
        """A presigned URL: it carries a signature and an expiry, not the keys. Signed for the
        address the reader's browser uses (`endpoint_url`, e.g. a published port of an S3
        server that the workers reach by another name); default: the client's own endpoint."""
        bucket, key = split_s3(uri)
        client = self.s3.build(endpoint_url) if endpoint_url else self.s3.get()
        if listing:
            params = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else ""}
            return client.generate_presigned_url(
                "list_objects_v2", Params=params, ExpiresIn=expires_s
            )
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )

"""URIs as the stores take them: s3://bucket/key, or a local path. Checks, splits and joins."""

from __future__ import annotations

import re
from pathlib import Path

from cyclegan_jobs.errors import InvalidURIError

S3_SCHEME = "s3://"
# A URI scheme (RFC 3986) at the start: "s3:", "gs:", "http:", "S3:", ... ("tfds:" is not ours).
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Current S3 bucket naming rules (also MinIO's and SeaweedFS'): 3-63 of a-z 0-9 . -
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_EXPECTED = "expected s3://bucket/prefix or a local path"


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


def local_path(uri: str | Path) -> Path:
    """A local path's Path; InvalidURIError for an s3 URI or a malformed one."""
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

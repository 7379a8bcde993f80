"""What every store implements (`Store`) and what a listing yields (`ObjectInfo`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

CHUNK = 8 * 1024 * 1024  # streamed copies move this much at a time


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: where it is, its key under the listed prefix, and its size and ETag."""

    uri: str
    rel: str
    size: int
    etag: str


class Store(Protocol):
    """One kind of object store. Errors are StorageErrors naming the URI in one line:
    NotFoundError for a missing object, SystemicError when the store itself is unusable."""

    parallel: bool  # whether many requests in flight pay (S3's latency) or not (a disk)

    def list(self, prefix: str, *, page_size: int, missing_ok: bool) -> Iterator[ObjectInfo]:
        """Every object under a folder-like prefix, recursively, in key order."""

    def head(self, uri: str) -> dict:
        """{"size", "etag", "metadata"}."""

    def read_bytes(self, uri: str) -> bytes: ...

    def read_into(self, uri: str, dst: BinaryIO) -> None:
        """Stream the object into an open file."""

    def write_bytes(self, uri: str, body: bytes | BinaryIO, *, metadata: dict[str, str] | None,
                    content_type: str | None) -> str:  # fmt: skip
        """Write the whole object (all or nothing); return its ETag as a listing reports it."""

    def delete(self, uri: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int: ...

    def link(self, uri: str, *, listing: bool, expires_s: int, endpoint_url: str | None) -> str:
        """A browser link to the object (or with `listing`, to the prefix's listing)."""

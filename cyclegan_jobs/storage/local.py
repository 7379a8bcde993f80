"""The local store: a folder tree read and written like a bucket (atomic writes, metadata in
hidden sidecars, listings in S3's key order)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cyclegan_jobs.errors import NotFoundError, StorageError
from cyclegan_jobs.storage.base import CHUNK, ObjectInfo
from cyclegan_jobs.storage.uris import local_path

# Temporary files of atomic local writes start with this, so listings can skip them.
TMP_PREFIX = ".tmp-cyclegan-"
# Hidden sidecars holding the metadata of local files (S3 keeps it on the object).
META_PREFIX = ".cyclegan-meta."


class LocalStore:
    """Local paths behind the Store interface. One request at a time is as fast as many."""

    parallel = False

    def list(self, prefix: str, *, page_size: int, missing_ok: bool) -> Iterator[ObjectInfo]:
        root = local_path(prefix)
        if not root.is_dir():
            if missing_ok and not root.exists():
                return
            kind = "not a folder" if root.exists() else "no such folder"
            raise NotFoundError(f"{kind}: {root}")
        yield from _walk_sorted(os.path.abspath(root), "")

    def head(self, uri: str) -> dict:
        path = local_path(uri)
        if not path.is_file():
            raise NotFoundError(f"no such object: {uri}")
        stat = path.stat()
        meta = _meta_path(path)
        try:
            metadata = json.loads(meta.read_text()) if meta.is_file() else {}
        except ValueError:  # a damaged sidecar only means "unknown provenance"
            metadata = {}
        return {"size": stat.st_size, "etag": local_etag(stat), "metadata": metadata}

    def read_bytes(self, uri: str) -> bytes:
        try:
            return local_path(uri).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
            raise NotFoundError(f"no such object: {uri}") from err

    def read_into(self, uri: str, dst: BinaryIO) -> None:
        with open(uri, "rb") as src:
            shutil.copyfileobj(src, dst, CHUNK)

    def write_bytes(self, uri: str, body: bytes | BinaryIO, *, metadata: dict[str, str] | None,
                    content_type: str | None) -> str:  # fmt: skip
        """Atomically; `metadata` goes to a hidden sidecar (`.cyclegan-meta.<name>.json`, never
        listed), written after the file: a crash in between leaves the old metadata, which
        reads as stale."""
        with atomic_write(uri) as fh:
            if isinstance(body, bytes):
                fh.write(body)
            else:
                shutil.copyfileobj(body, fh, CHUNK)
        path = local_path(uri)
        meta = _meta_path(path)
        if metadata:
            with atomic_write(meta) as fh:
                fh.write(json.dumps(metadata, sort_keys=True).encode())
        else:
            meta.unlink(missing_ok=True)
        return local_etag(path.stat())

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        root = local_path(prefix)
        if root.resolve() == Path(root.resolve().anchor):
            raise StorageError(f"refusing to delete a filesystem root: {prefix}")
        if not root.exists():
            return 0
        count = sum(1 for _ in self.list(str(root), page_size=0, missing_ok=True))
        shutil.rmtree(root)
        return count

    def link(self, uri: str, **_: object) -> str:
        """A local file's file:// URI."""
        return local_path(uri).resolve().as_uri()


def local_etag(stat: os.stat_result) -> str:
    """A local file's stand-in for an ETag: it changes whenever the file is rewritten."""
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _meta_path(path: Path) -> Path:
    return path.parent / f"{META_PREFIX}{path.name}.json"


def _walk_sorted(folder: str, rel_base: str) -> Iterator[ObjectInfo]:
    # Sorting folders as "name/" makes the recursive walk come out in the same order as a flat
    # sort of the full keys (as S3 lists them): "a-b" < "a/x" because '-' < '/'.
    with os.scandir(folder) as it:
        entries = [
            (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
            for e in it
            if not e.name.startswith((TMP_PREFIX, META_PREFIX))
        ]
    for name, entry in sorted(entries, key=lambda pair: pair[0]):
        rel = rel_base + name
        if name.endswith("/"):
            yield from _walk_sorted(entry.path, rel)
        elif entry.is_file():
            stat = entry.stat()
            yield ObjectInfo(uri=entry.path, rel=rel, size=stat.st_size, etag=local_etag(stat))


@contextmanager
def atomic_write(uri: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file beside the target and move it into place only when writing succeeded."""
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"
    # os.open with 0o666 lets the umask decide permissions, like a normal open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""The stages of the translate job, each testable alone.

sources -> triage -> load -> (batch, infer: in translate.py) -> store -> records

Every stage takes an `Item` and returns it with a status; an exception in one image's path
fails that image with the stage and the reason, and the run goes on. Only a systemic error
(the store is unreachable, the disk is full) stops the run. The stages run in threads or in
worker processes (workers.py), so they take and return plain, picklable items.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cyclegan_jobs import images, storage
from cyclegan_jobs.config import TranslateConfig
from cyclegan_jobs.errors import TranslateError
from cyclegan_jobs.translation import ledger
from cyclegan_jobs.translation.workers import PixelBudget, child_budget

log = logging.getLogger(__name__)

UP_TO_DATE = "up to date"
# A full or read-only disk fails every write alike: stop instead of failing each image.
_SYSTEMIC_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}


@dataclass
class Item:
    """One input on its way through the pipeline."""

    info: storage.ObjectInfo
    status: str = "ready"  # ready | ok | skipped | failed | pending (dry run)
    reason: str = ""
    image: np.ndarray | None = None  # the model's input, uint8 H x W x 3 at the output size
    height: int = 0  # the original's upright size
    width: int = 0
    input_bytes: int = 0
    outputs: dict[str, str] = field(default_factory=dict)  # key under <output> -> ETag
    output_bytes: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None  # a systemic error met on this item
    held: int = 0  # pixels of the run's budget this item holds (its picture and outputs)

    def fail(self, reason: str) -> Item:
        self.status, self.reason, self.image = "failed", reason, None
        return self

    def record(self) -> dict[str, Any]:
        """Its manifest line."""
        line: dict[str, Any] = {
            "key": self.info.rel,
            "status": self.status,
            "reason": self.reason,
            "etag": self.info.etag,
        }
        if self.status == "ok":
            line.update(outputs=self.output_bytes, input_bytes=self.input_bytes)
            line.update(width=self.width, height=self.height)
        return line


# 1. sources -------------------------------------------------------------------------------


def output_stem(rel: str) -> str:
    """The key without its extension: inputs with the same stem write the same outputs."""
    return str(PurePosixPath(rel).with_suffix(""))


def output_roots(cfg: TranslateConfig) -> list[str]:
    """The output folders a run writes, under its output prefix."""
    return ["stylized", "reconstructed"] if cfg.reconstruct else ["stylized"]


def output_rel(rel: str, fmt: str) -> str:
    return output_stem(rel) + (".png" if fmt == "png" else ".jpg")


def shard_of(rel: str, count: int) -> int:
    """A stable shard for a key, the same on every run and machine. Keys that would write the
    same outputs (a.jpg, a.png) share a shard, so the collision is seen and settled there."""
    digest = hashlib.sha1(output_stem(rel).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def sources(cfg: TranslateConfig) -> Iterator[storage.ObjectInfo]:
    """The inputs of this run: the listing or a shard file, only this shard's keys. (The output
    is never under the input: TranslateConfig refuses that.)"""
    listing = _shard_file(cfg.keys, cfg.input) if cfg.keys else storage.list_objects(cfg.input)
    index, count = cfg.shard
    for info in listing:
        if shard_of(info.rel, count) == index:
            yield info


def _shard_file(uri: str, input_prefix: str) -> Iterator[storage.ObjectInfo]:
    try:
        entries = storage.read_json(uri)
    except (storage.StorageError, ValueError) as err:
        raise TranslateError(f"cannot read the shard file {uri}: {err}") from err
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("key"), str) for e in entries
    ):
        raise TranslateError(f"{uri} is not a shard file: expected [{{'key', 'etag'}}, ...]")
    for e in entries:
        uri = storage.join(input_prefix, e["key"])
        yield storage.ObjectInfo(uri=uri, rel=e["key"], size=-1, etag=str(e.get("etag", "")))


# 2. triage --------------------------------------------------------------------------------


def unsafe_reason(rel: str) -> str | None:
    """Why a key can't name an output (it could escape a local output folder), or None."""
    if not rel or rel.startswith("/") or "\\" in rel:
        return "unsafe key (absolute path or backslash)"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "unsafe key (control characters)"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "unsafe key ('.', '..' or empty path segment)"
    return None


class Triage:
    """Settles what needs no pixels: unsafe keys, non-images, name collisions, up-to-date."""

    def __init__(self, cfg: TranslateConfig, index: ledger.HeadIndex):
        self.cfg, self.index = cfg, index
        self.roots = output_roots(cfg)
        self.claimed: dict[str, str] = {}  # output stem -> the first input that claimed it

    def targets(self, rel: str) -> list[str]:
        """The output keys of an input, relative to the output prefix."""
        return [f"{root}/{output_rel(rel, self.cfg.format)}" for root in self.roots]

    def __call__(self, info: storage.ObjectInfo) -> Item:
        item = Item(info)
        reason = unsafe_reason(info.rel)
        if reason:
            return item.fail(reason)
        if not info.rel.lower().endswith(images.IMAGE_SUFFIXES):
            item.status, item.reason = "skipped", "not an image file extension"
            return item
        first = self.claimed.setdefault(output_stem(info.rel), info.rel)
        if first != info.rel:
            return item.fail(f"same output as {first} (rename one of them)")
        if self.index.up_to_date(info.rel, info.etag, self.targets(info.rel)):
            item.status, item.reason = "skipped", UP_TO_DATE
        elif self.cfg.dry_run:
            item.status, item.reason = "pending", "would be translated"
        return item


# 3. load ----------------------------------------------------------------------------------


def load(
    item: Item,
    *,
    long_side: int | None,
    max_pixels: int,
    outputs: int,
    budget: PixelBudget | None = None,
) -> Item:
    """GET and decode one input, upright, its long side `long_side` (None: its own size), its
    aspect kept, within the pixel budget (in a worker process: the one it shares). The picture
    and its `outputs` stay in the budget (`item.held`) until the outputs are written."""
    try:
        data = storage.read_bytes(item.info.uri)
        decoded = images.decode_at_size(
            data, long_side, max_pixels=max_pixels, budget=budget or child_budget(), keep=outputs
        )
    except images.ImageDecodeError as err:
        return item.fail(err.reason)
    except storage.SystemicError as err:
        item.error = err
        return item
    except storage.StorageError as err:
        return item.fail(f"unreadable: {err}")
    except Exception as err:  # never lose an image silently: it fails with the reason
        log.exception("load %s", item.info.rel)
        return item.fail(f"load failed: {type(err).__name__}: {err}")
    item.image, item.height, item.width = decoded.image, decoded.height, decoded.width
    item.input_bytes, item.held = len(data), decoded.held
    return item


# 5. store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """Encode and write the outputs of one input, with its provenance as metadata."""

    output: str
    fmt: str
    rule: ledger.Rule
    budget: PixelBudget | None = None  # None in a worker process: the one it shares

    def __call__(self, job: tuple[Item, list[str], list[np.ndarray]]) -> Item:
        """Write the outputs; then their pixels go back to the budget (here, not when the run
        records the item: the driver may be waiting for a batch that needs those pixels)."""
        item, targets, outs = job
        try:
            self._write(item, targets, outs)
        except storage.SystemicError as err:
            item.error = err
        except OSError as err:
            if err.errno in _SYSTEMIC_ERRNOS:
                item.error = err
            else:
                item.fail(f"write failed: {err}")
        except storage.StorageError as err:
            item.fail(f"write failed: {err}")
        except Exception as err:  # never lose an image silently: it fails with the reason
            log.exception("store %s", item.info.rel)
            item.fail(f"write failed: {type(err).__name__}: {err}")
        del outs, job  # the pixels go back to the budget: this frame no longer holds them
        budget = self.budget or child_budget()
        if budget is not None:
            budget.release(item.held)
            item.held = 0
        return item

    def _write(self, item: Item, targets: list[str], outs: list[np.ndarray]) -> None:
        metadata = self.rule.metadata(item.info.rel, item.info.etag)
        content_type = "image/png" if self.fmt == "png" else "image/jpeg"
        for target, picture in zip(targets, outs, strict=True):
            data = _encode(picture, self.fmt)
            uri = storage.join(self.output, target)
            etag = storage.write_bytes(uri, data, metadata=metadata, content_type=content_type)
            item.outputs[target], item.output_bytes[uri] = etag, len(data)
        item.status = "ok"


def _encode(picture: np.ndarray, fmt: str) -> bytes:
    # Fast PNG compression: encoding competes with the model for the same CPU cores.
    if fmt == "png":
        return images.encode_png(picture, compress_level=1)
    return images.encode_jpeg(picture)


# 6. records -------------------------------------------------------------------------------


class Manifest:
    """One JSON line per input (written as results come), counted by status."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()  # the feed thread and the driver both record
        self.counts: Counter[str] = Counter()
        self.up_to_date = 0  # skipped because an earlier run already translated them

    def add(self, item: Item) -> None:
        line = json.dumps(item.record()) + "\n"
        with self._lock:
            self._file.write(line)
            self.counts[item.status] += 1
            self.up_to_date += item.reason == UP_TO_DATE

    def close(self) -> None:
        self._file.close()


def failed_share(ok: int, failed: int, up_to_date: int) -> float:
    """The share of image inputs that failed, counting those an earlier run already did."""
    seen = ok + failed + up_to_date
    return failed / seen if seen else 0.0

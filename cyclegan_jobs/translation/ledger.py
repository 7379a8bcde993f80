"""What earlier runs already translated, for the up-to-date rule, at a few requests per run.

An output pair is up to date when its source has the same ETag (and direction; with scope
"all" also the same model version). That provenance is stored on every output (object
metadata), but reading it costs a HEAD per output. Instead, each run appends a ledger segment,
`<output>/_ledger/<run_id>.jsonl`, one line per input it translated:

    {"key": "people/a.jpg", "etag": "<source ETag>", "model": "v...", "direction": "b2a",
     "outputs": {"stylized/people/a.png": "<output ETag>", ...}}

A rerun lists the output folders (1,000 keys a request) and the ledger, and trusts a line only
while every output it names in those folders still has the recorded ETag, so an output
deleted or overwritten since (by hand, or by a run in the other direction) is not mistaken for
done. Outputs with no trusted line (written by an older version of this job, or by a run killed
before it wrote its segment) fall back to HEAD requests once; their provenance is then adopted
into the new segment. A line that is not a whole ledger line (a field missing or of the wrong
type) is ignored with a warning: it too only costs its input a HEAD.

After COMPACT_AFTER segments a run writes every line it still trusts, whole, into its own
segment (and any line about none of the folders it lists: a --no-reconstruct run cannot check
reconstructions, the next full run does) and deletes the segments it read, so the ledger stays
a handful of objects.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cyclegan_jobs import storage

log = logging.getLogger(__name__)

LEDGER_DIR = "_ledger"
COMPACT_AFTER = 32
# Object metadata keys (x-amz-meta-*) stored with every output.
META_SOURCE_KEY, META_SOURCE_ETAG = "source-key", "source-etag"
META_MODEL, META_DIRECTION = "model-version", "direction"
META_SIZE = "size"
# Rule.stale's reason for a changed input: a new input, not a redo.
INPUT_CHANGED = "the input changed"


@dataclass(frozen=True)
class Rule:
    """What "up to date" means for this run."""

    version: str
    direction: str
    scope: str  # new: the same source ETag is enough; all: the same model version and size too
    size: str = ""  # the outputs' size setting: "native" or a long side in pixels
    # Outputs recorded without a size (written before sizes were) count as the default size.
    default_size: bool = True

    def stale(self, source_etag: str, done: dict[str, str]) -> str | None:
        """Why outputs recorded with `done` (etag, model, direction, size) are not up to date
        for this run, or None when they are."""
        if done.get("etag") != source_etag:
            return INPUT_CHANGED
        if done.get("direction") != self.direction:
            return "another direction"
        if self.scope != "all":
            return None
        if done.get("model") != self.version:
            return "another model version"
        if not (done.get("size") == self.size if done.get("size") else self.default_size):
            return f"another size ({done.get('size') or 'from before sizes were recorded'})"
        return None

    def metadata(self, rel: str, etag: str) -> dict[str, str]:
        """The provenance stored on each output of input `rel`."""
        return {
            META_SOURCE_KEY: quote(rel, safe="/"),
            META_SOURCE_ETAG: etag,
            META_MODEL: self.version,
            META_DIRECTION: self.direction,
            META_SIZE: self.size,
        }


class HeadIndex:
    """Up to date by asking each output (2 HEADs an input): for a shard file's few keys."""

    def __init__(self, output: str, rule: Rule):
        self.output, self.rule = output, rule
        self.adopted: list[dict] = []
        self.head_requests = 0
        self.redone: Counter[str] = Counter()  # why earlier outputs of an input are not current

    def _current(self, etag: str, done: dict[str, str]) -> bool:
        reason = self.rule.stale(etag, done)
        if reason is not None and reason != INPUT_CHANGED:
            self.redone[reason] += 1
        return reason is None

    def up_to_date(self, rel: str, etag: str, targets: list[str]) -> bool:
        outputs = {}
        for target in targets:
            self.head_requests += 1
            try:
                head = storage.head(storage.join(self.output, target))
            except storage.NotFoundError:
                return False
            meta = head["metadata"]
            done = {
                "etag": meta.get(META_SOURCE_ETAG, ""),
                "model": meta.get(META_MODEL, ""),
                "direction": meta.get(META_DIRECTION, ""),
                "size": meta.get(META_SIZE, ""),
            }
            if not self._current(etag, done):
                return False
            outputs[target] = head["etag"]
        self.adopted.append(entry(rel, etag, self.rule, outputs))
        return True


class ListingIndex(HeadIndex):
    """Up to date from listings of the outputs and the ledger (a few requests per 1,000)."""

    def __init__(self, output: str, rule: Rule, roots: Iterable[str]):
        super().__init__(output, rule)
        self.roots = tuple(roots)
        self.listed: dict[str, str] = {}  # "stylized/a.png" -> ETag
        for root in self.roots:
            for info in storage.list_objects(storage.join(output, root), missing_ok=True):
                self.listed[f"{root}/{info.rel}"] = info.etag
        self.segments = [
            info.uri
            for info in storage.list_objects(
                storage.join(output, LEDGER_DIR), suffixes=(".jsonl",), missing_ok=True
            )
        ]
        self.unreadable: set[str] = set()  # segments compaction must not delete
        self.trusted: dict[str, dict] = {}
        # Lines about none of the outputs this run lists (another run's kind): kept as they are.
        self.unverified: dict[str, dict] = {}
        for uri in self.segments:
            lines = _read_segment(uri)
            if lines is None:
                self.unreadable.add(uri)
                continue
            for line in lines:
                self._consider(line)
        log.info(
            "ledger: %d output(s) listed, %d trusted entries in %d segment(s)",
            len(self.listed),
            len(self.trusted),
            len(self.segments),
        )

    def _consider(self, line: dict) -> None:
        """Trust a line while the outputs this run can see still have the recorded ETags.

        Outputs under folders this run does not list (a full run's reconstructions, seen by a
        --no-reconstruct run) can't be checked here: the next run that lists them does, so the
        line is kept whole for it."""
        seen = {k: v for k, v in line["outputs"].items() if k.split("/", 1)[0] in self.roots}
        if not seen:
            if line["key"] not in self.trusted:
                self.unverified[line["key"]] = line
        elif all(self.listed.get(k) == v for k, v in seen.items()):
            self.trusted[line["key"]] = line
            self.unverified.pop(line["key"], None)

    def kept(self) -> list[dict]:
        """The lines a compacted ledger carries on (besides this run's own)."""
        return [*self.unverified.values(), *self.trusted.values()]

    def up_to_date(self, rel: str, etag: str, targets: list[str]) -> bool:
        if any(target not in self.listed for target in targets):
            return False
        line = self.trusted.get(rel)
        if line is not None and all(line["outputs"].get(t) == self.listed[t] for t in targets):
            return self._current(etag, line)
        return super().up_to_date(rel, etag, targets)  # no ledger line: ask the outputs once


def entry(rel: str, etag: str, rule: Rule, outputs: dict[str, str]) -> dict:
    """The ledger line of one input (outputs: key under <output> -> ETag)."""
    return {
        "key": rel,
        "etag": etag,
        "model": rule.version,
        "direction": rule.direction,
        "size": rule.size,
        "outputs": outputs,
    }


def _valid(line: object) -> bool:
    """Whether a parsed line has every field the up-to-date rule reads, of the right type."""
    if not isinstance(line, dict):
        return False
    if not all(isinstance(line.get(k), str) for k in ("key", "etag", "model", "direction")):
        return False
    if not isinstance(line.get("size", ""), str):  # lines from before sizes have none
        return False
    outputs = line.get("outputs")
    return (
        isinstance(outputs, dict)
        and bool(outputs)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in outputs.items())
    )


def json_lines(text: str) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a JSON-lines text: its number (from 1) and its value, None where
    the line is not JSON (read back from a store, any line may be damaged)."""
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except (ValueError, RecursionError):
            yield number, None


def _read_segment(uri: str) -> list[dict] | None:
    """A segment's valid lines; None when it can't be read now (its inputs cost a HEAD)."""
    try:
        text = storage.read_bytes(uri).decode("utf-8", errors="replace")
    except storage.NotFoundError:  # compacted away by a concurrent run: its lines live on
        return []
    except storage.SystemicError:
        raise
    except storage.StorageError as err:  # one bad object must not stop every future run
        log.warning("ledger: cannot read %s (%s); its inputs are checked again", uri, err)
        return None
    lines, damaged = [], 0
    for _, line in json_lines(text):
        if _valid(line):
            lines.append(line)
        else:  # a damaged line only costs a HEAD for that input
            damaged += 1
    if damaged:
        log.warning("ledger: ignored %d damaged line(s) in %s", damaged, uri)
    return lines


def write_segment(output: str, run_id: str, lines: list[dict], index: HeadIndex | None) -> None:
    """Store this run's ledger segment; compact the ledger when it has grown long."""
    listing = index if isinstance(index, ListingIndex) else None
    compacted = listing if listing is not None and len(listing.segments) >= COMPACT_AFTER else None
    if compacted is not None:
        lines = [*compacted.kept(), *lines]
    if not lines:
        return
    mine = storage.join(output, LEDGER_DIR, f"{run_id}.jsonl")
    # A retried run (same id, e.g. an Airflow shard task) keeps what its first attempt wrote.
    keys = {line["key"] for line in lines}
    lines = [line for line in _read_segment(mine) or [] if line["key"] not in keys] + lines
    body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode("utf-8")
    storage.write_bytes(mine, body, content_type="application/x-ndjson")
    if compacted is not None:
        # An unreadable segment stays: its lines are not in the compacted one.
        for uri in compacted.segments:
            if uri != mine and uri not in compacted.unreadable:
                storage.delete(uri)
        log.info("ledger: compacted %d segment(s) into %s.jsonl", len(compacted.segments), run_id)

"""The batch translation job: images under a prefix -> stylized results and reconstructions.

    sources -> triage -> load -> batch (tf.data) -> infer -> store -> finish

The stages live in stages.py; this module runs them and keeps the run's records:
<output>/_runs/<run_id>/run.json (written first: it proves the output is writable), and at the
end, each on its own, the ledger segment (ledger.py), manifest.jsonl (every input, exactly
once), contact_sheet.png and summary.json, last. A run whose records are not all stored ends
"incomplete" (the CLI exits 1), never "ok".
Memory stays bounded: decoded pixels in flight are capped (`pixel_budget`) and at most a few
batches of small images are queued, whatever the input count or size.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cyclegan_jobs import images, registry, storage
from cyclegan_jobs.config import ModelConfig, TranslateConfig, model_config_from_dict
from cyclegan_jobs.errors import SystemicError
from cyclegan_jobs.translation import ledger
from cyclegan_jobs.translation.stages import (
    Item,
    Manifest,
    Store,
    TranslateError,
    Triage,
    failed_share,
    load,
    output_roots,
    shard_of,
    sources,
    unsafe_reason,
)
from cyclegan_jobs.translation.tiles import PictureStats, Stitcher, TileRef
from cyclegan_jobs.translation.workers import PixelBudget, Processes, Producer, StallClock, Threads

__all__ = ["TranslateError", "translate", "shard_of", "unsafe_reason"]

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Records still go up after a failure, but not forever if the store itself is what failed.
_RECORDS_TIMEOUT_S = 30.0
# The reason of inputs a --limit run leaves for later (status "pending", as in a dry run).
OVER_LIMIT = "over --limit"
# A part-full batch waits this long for the loaders before it is filled up (see Feed._next).
FLUSH_AFTER_S = 0.5


def new_run_id(now: datetime | None = None) -> str:
    return (
        "translate-" + (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    )


@dataclass
class Run:
    """What one run knows and has done so far."""

    cfg: TranslateConfig
    run_id: str
    version: str
    version_uri: str
    model_cfg: ModelConfig
    rule: ledger.Rule
    index: ledger.HeadIndex
    work: Path
    manifest: Manifest
    budget: PixelBudget
    clock: StallClock
    done: list[dict] = field(default_factory=list)  # ledger lines of what this run wrote
    sheet: list[list[np.ndarray]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict(load_s=0.0, model_s=0.0))
    # Pictures made whole, and their output pixels: in all, and by the end of the first model
    # call (which also compiles: start-up, not throughput).
    whole: list[int] = field(default_factory=lambda: [0, 0])
    first_batch: list[int] | None = None
    tiles_done: int = 0  # tiles through the model (fillers not counted): progress on big ones
    # tile, margin, tiles per batch; stats_side for instance norm
    geometry: dict[str, int] = field(default_factory=dict)
    precision: str | None = None
    started: float = field(default_factory=time.time)

    @property
    def run_root(self) -> str:
        return storage.join(self.cfg.output, "_runs", self.run_id)

    def record(self, item: Item) -> None:
        """An item's end: its manifest line (and ledger line); a systemic error stops the run."""
        self.budget.release(item.held)  # its picture and outputs are gone
        item.held = 0
        if item.error is not None:
            raise SystemicError(str(item.error).splitlines()[0])
        self.manifest.add(item)
        self.clock.tick()
        if item.status == "ok":
            self.done.append(ledger.entry(item.info.rel, item.info.etag, self.rule, item.outputs))


def translate(cfg: TranslateConfig) -> dict[str, Any]:
    """Run one translation job; returns the summary (also written to _runs/<run_id>/)."""
    storage.set_outage_wait(cfg.s3_outage_wait)
    listing = checked_listing(sources(cfg), cfg.input)
    run = open_run(cfg)
    triage = Triage(cfg, run.index)
    items = _triaged(triage, listing)
    try:
        if cfg.dry_run:
            for item in items:
                run.manifest.add(item)
        else:
            _run_pipeline(run, items, triage)
    except SystemicError as err:
        summary = _finish(run, error=str(err))
        raise TranslateError(
            f"run {run.run_id} stopped: {err}. {summary['counts']['total']} input(s) settled "
            f"are in {summary.get('manifest') or run.manifest.path}; a rerun does the rest"
        ) from err
    return _finish(run)


def open_run(cfg: TranslateConfig) -> Run:
    """Check everything that would fail every image, before any work: the model version, the
    run id, that the output can be written, and the listings the up-to-date rule needs."""
    run_id = cfg.run_id or new_run_id()
    if not _RUN_ID.fullmatch(run_id):
        raise TranslateError(f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only")
    version_uri, model_cfg = _resolve_model(cfg.model)  # only the pointer: the model loads later
    version = PurePosixPath(version_uri.rstrip("/")).name
    long_side = _long_side(cfg, model_cfg)
    rule = ledger.Rule(
        version, cfg.direction, cfg.scope, size=str(long_side or "native"),
        default_size=long_side == model_cfg.image_size,
    )  # fmt: skip
    if not cfg.dry_run:
        _check_writable(cfg, run_id, version)
    try:
        index = (
            ledger.HeadIndex(cfg.output, rule)
            if cfg.keys
            else ledger.ListingIndex(cfg.output, rule, output_roots(cfg))
        )
    except storage.StorageError as err:
        raise TranslateError(f"cannot list the outputs in {cfg.output}: {err}") from err
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix=f"cyclegan-{run_id}-"))
    work.mkdir(parents=True, exist_ok=True)
    return Run(
        cfg=cfg,
        run_id=run_id,
        version=version,
        version_uri=version_uri,
        model_cfg=model_cfg,
        rule=rule,
        index=index,
        work=work,
        manifest=Manifest(work / f"{run_id}.manifest.jsonl"),
        budget=PixelBudget(cfg.pixel_budget),
        clock=StallClock(cfg.stall_timeout),
    )


def _resolve_model(model: str) -> tuple[str, ModelConfig]:
    try:
        version_uri = registry.resolve(model)
        config_uri = storage.join(version_uri, registry.CONFIG_FILE)
        config = storage.read_json(config_uri)
    except (registry.RegistryError, storage.StorageError) as err:
        raise TranslateError(str(err)) from err
    try:
        return version_uri, model_config_from_dict(config["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # any shape of damage
        raise TranslateError(f"{config_uri} is not a model config: {err!r}") from err


def _check_writable(cfg: TranslateConfig, run_id: str, version: str) -> None:
    """run.json is the run's first record, and the proof that the output takes writes."""
    record = {
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(),
        "input": cfg.input,
        "model_version": version,
    }
    uri = storage.join(cfg.output, "_runs", run_id, "run.json")
    try:
        storage.write_json(uri, record)
    except (storage.StorageError, OSError) as err:
        raise TranslateError(f"cannot write to the output {cfg.output}: {err}") from err


def checked_listing(
    infos: Iterator[storage.ObjectInfo], prefix: str
) -> Iterator[storage.ObjectInfo]:
    """The sources, with a listing failure before the first key reported at once, as a setup
    error, and one later on (the store went away mid-run) as a systemic one."""
    try:
        first = next(infos, None)
    except storage.StorageError as err:
        raise TranslateError(f"cannot list {prefix}: {err}") from err
    return _after(first, infos, prefix)


def _triaged(triage: Triage, listing: Iterator[storage.ObjectInfo]) -> Iterator[Item]:
    """The triage stage over the sources."""
    for info in listing:
        yield triage_one(triage, info)


def triage_one(triage: Triage, info: storage.ObjectInfo) -> Item:
    """One input's triage. A check (HEAD) failing for good fails that input alone, as a failed
    GET does, and a rerun checks it again; only a store that is unusable as a whole (or one
    that stopped answering: the stall deadline) stops the run."""
    try:
        return triage(info)
    except storage.SystemicError as err:
        raise SystemicError(f"deciding what is up to date failed: {err}") from err
    except storage.StorageError as err:
        reason = f"could not check whether it is up to date: {str(err).splitlines()[0]}"
        log.warning("%s: %s", info.rel, reason)
        return Item(info).fail(reason)


def _after(
    first: storage.ObjectInfo | None, infos: Iterator[storage.ObjectInfo], prefix: str
) -> Iterator[storage.ObjectInfo]:
    if first is None:
        return
    yield first
    try:
        yield from infos
    except storage.StorageError as err:
        raise SystemicError(f"listing {prefix} failed: {err}") from err


class Feed:
    """load -> the batch stage: a generator for tf.data, fed by the loader threads.

    It runs in tf.data's own thread, so it never raises: a systemic error is kept in `error`
    for the driver, and the stream simply ends.
    """

    def __init__(
        self,
        run: Run,
        items: Iterator[Item],
        loaders: Any,
        window: int,
        stitcher: Stitcher,
        norm: PictureStats | None,
    ):
        # Triage runs ahead in its own thread: its requests may block, the waits here may not.
        self.items = Producer(items, run.clock, window)
        self.run, self.loaders, self.window, self.stitcher = run, loaders, window, stitcher
        self.norm = norm
        self.error: BaseException | None = None
        self.stopped = False
        self.tiles = 0  # tiles yielded so far, fillers included

    def __call__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._loaded()
        except BaseException as err:  # handed to the driver, not lost
            self.error = err

    def _loaded(self) -> Iterator[dict[str, Any]]:
        limit, ready = self.run.cfg.limit, 0
        for item in self.items:
            if self.stopped:
                return
            if item.status == "ready" and limit is not None and ready >= limit:
                # Still triaged and in the manifest: the summary counts the whole input.
                item.status, item.reason = "pending", OVER_LIMIT
            if item.status != "ready":
                self.run.record(item)
                continue
            ready += 1
            self.loaders.submit(item)
            # At the limit the loaded ones go first: the rest only needs its manifest lines.
            while self.loaders.pending >= self.window or (ready == limit and self.loaders.pending):
                yield from self._next()
        while self.loaders.pending and not self.stopped:
            yield from self._next()

    def _next(self) -> Iterator[dict[str, Any]]:
        """The next loaded item's tiles. When the loaders keep a part-full batch waiting, it is
        filled up first: its tiles then go through the model and their pictures are stored,
        giving back the pixels that the loaders may be waiting for."""
        batch = self.run.geometry["batch"]
        if self.tiles % batch and not self.loaders.ready(FLUSH_AFTER_S):
            filler = np.zeros(self.stitcher.shape, np.uint8)
            for _ in range(batch - self.tiles % batch):
                yield {"tile": filler, "ref": np.array([-1, -1], np.int64)}
            self.tiles = 0
        yield from self._take(self.loaders.next_result(self.run.clock))

    def _take(self, item: Item) -> Iterator[dict[str, Any]]:
        """The item's tiles (the stitcher keeps the item until its outputs are whole)."""
        if item.status != "ready" or item.error is not None:
            self.run.record(item)
            return
        self.run.clock.tick()
        tiles = self.stitcher.add(item, item.image)
        if self.norm is not None:
            self.norm.add(tiles[0][0].slot, item.image, len(tiles))
        for ref, tile in tiles:
            self.tiles += 1
            yield {"tile": tile, "ref": np.array([ref.slot, ref.index], np.int64)}


def _signature(tile: int) -> dict[str, Any]:
    import tensorflow as tf

    return {
        "tile": tf.TensorSpec((tile, tile, 3), tf.uint8),
        "ref": tf.TensorSpec((2,), tf.int64),  # the image's slot in the stitcher, the tile's index
    }


def _long_side(cfg: TranslateConfig, model_cfg: ModelConfig) -> int | None:
    """The outputs' long side in pixels; None: each input's own (--size native)."""
    return None if cfg.size == "native" else (cfg.size or model_cfg.image_size)


def _geometry(run: Run) -> tuple[int | None, int, int]:
    """The outputs' long side (None: each input's own), the tile and its margin: one tile per
    picture (no margin) when the long side fits in cfg.tile, else cfg.tile and cfg.tile_margin."""
    cfg = run.cfg
    long_side = _long_side(cfg, run.model_cfg)
    if long_side is not None and long_side <= cfg.tile:
        return long_side, -(-long_side // 16) * 16, 0
    return long_side, cfg.tile, cfg.tile_margin


def _stages(run: Run, long_side: int | None) -> tuple[Any, Any, Any]:
    """(worker processes or None, the load stage, the store stage)."""
    cfg = run.cfg
    outputs = 2 if cfg.reconstruct else 1
    load_one = partial(load, long_side=long_side, max_pixels=cfg.max_pixels, outputs=outputs)
    if cfg.feed_processes:  # children take seconds to start on a busy machine
        pool = Processes(cfg.feed_processes, cfg.pixel_budget, max(cfg.stall_timeout, 60.0))
        run.budget = pool.budget  # the children share one budget; stages find it there
        return pool, pool.stage(load_one), pool.stage(Store(cfg.output, cfg.format, run.rule))
    storage.ensure_pool(2 * cfg.workers + 4)  # a connection per thread, a few for the rest
    loaders = Threads("load", partial(load_one, budget=run.budget), cfg.workers)
    store = Store(cfg.output, cfg.format, run.rule, run.budget)
    return None, loaders, Threads("store", store, cfg.workers)


def _run_pipeline(run: Run, items: Iterator[Item], triage: Triage) -> None:
    """load -> tiles -> batch -> infer -> stitch -> store, until every item is recorded."""
    import tensorflow as tf

    cfg = run.cfg
    long_side, tile, margin = _geometry(run)
    # --batch-size counts pictures of the model's size: a larger tile counts as several, so the
    # model's memory per call is the same whatever the tile.
    per_call = max(1, round(cfg.batch_size * run.model_cfg.image_size**2 / tile**2))
    run.geometry = {"tile": tile, "margin": margin, "batch": per_call}
    pool, loaders, storers = _stages(run, long_side)
    stitcher = Stitcher(tile, margin, outputs=2 if cfg.reconstruct else 1)
    window = max(cfg.workers, cfg.feed_processes) + 2 * cfg.batch_size
    run.clock.tick()  # starting TensorFlow and worker processes was not a stall
    norm = None
    if run.model_cfg.per_image_norm:  # instance norm: tiles take their picture's statistics
        norm = PictureStats(cfg.stats_side)
        run.geometry["stats_side"] = cfg.stats_side
    feed = Feed(run, items, loaders, window=window, stitcher=stitcher, norm=norm)
    batches = (
        tf.data.Dataset.from_generator(feed, output_signature=_signature(tile))
        .batch(per_call)
        .prefetch(1)
    )
    generators = None
    try:
        for batch in batches:
            if generators is None:  # only when there is work: a no-op rerun loads nothing
                generators = _load_generators(run, tile)
            refs = batch["ref"].numpy()
            outs = _infer(run, generators, batch["tile"].numpy(), refs, norm)
            run.tiles_done += int((refs[:, 0] >= 0).sum())
            for i, (slot, index) in enumerate(refs):
                if slot < 0:  # a filler (see Feed._next)
                    continue
                whole = stitcher.put(TileRef(int(slot), int(index)), [o[i] for o in outs])
                if whole is not None:
                    if norm is not None:
                        norm.forget(int(slot))
                    _to_store(run, triage, storers, *whole)
            if run.first_batch is None:
                run.first_batch = list(run.whole)
            while storers.pending > 2 * cfg.batch_size:  # encoded-but-unwritten work bounded
                run.record(storers.next_result(run.clock))
            _progress(run)
        if feed.error is not None:
            raise feed.error
        while storers.pending:
            run.record(storers.next_result(run.clock))
    finally:
        feed.stopped = True
        feed.items.stop()
        loaders.close()
        storers.close()
        if pool is not None:
            pool.close()


def _to_store(run: Run, triage: Triage, storers: Any, item: Item, outputs: list) -> None:
    """A picture whose outputs are whole: a row of the contact sheet (thumbnails), then store."""
    if len(run.sheet) < run.cfg.contact_sheet_rows:
        cell = _sheet_cell(run)
        run.sheet.append([_thumbnail(p, cell) for p in (item.image, *outputs)])
    pixels = item.image.shape[0] * item.image.shape[1]
    run.whole[0] += 1
    run.whole[1] += pixels
    run.budget.release(pixels)
    item.held -= pixels
    item.image = None  # not needed any more (and not sent to a store process)
    storers.submit((item, triage.targets(item.info.rel), outputs))


def _sheet_cell(run: Run) -> int:
    return max(128, run.model_cfg.image_size)


def _thumbnail(picture: np.ndarray, cell: int) -> np.ndarray:
    height, width = picture.shape[:2]
    if max(height, width) <= cell:
        return picture
    return images.resize(picture, images.scaled_size(height, width, cell))


def _load_generators(run: Run, tile: int) -> Any:
    """The run's generators, built for tile x tile inputs."""
    from cyclegan_jobs.inference import Generators

    t = time.time()
    log.info("loading model %s", run.version)
    try:
        generators = Generators.load(
            run.version_uri, replace(run.model_cfg, image_size=tile), run.cfg.precision,
            names=_nets(run.cfg),
        )  # fmt: skip
    except registry.RegistryError as err:
        raise SystemicError(str(err)) from err
    run.precision = generators.precision
    run.timings["load_s"] = time.time() - t
    run.clock.tick()
    return generators


def _nets(cfg: TranslateConfig) -> tuple[str, ...]:
    from cyclegan_jobs.inference import DIRECTION_NETS

    names = DIRECTION_NETS[cfg.direction]
    return names if cfg.reconstruct else names[:1]


def _infer(
    run: Run, generators: Any, batch: np.ndarray, refs: np.ndarray, norm: PictureStats | None
) -> list[np.ndarray]:
    """The batch's outputs. With instance norm (`norm`), the tiles' rows of statistics are
    computed in here first, in the model's time."""
    t = time.time()
    cfg = run.cfg
    stats = None
    if norm is not None:
        stats_of = partial(generators.stats, direction=cfg.direction, reconstruct=cfg.reconstruct)
        own = generators.own_stats(cfg.direction, cfg.reconstruct)
        stats = norm.rows(refs[:, 0].tolist(), stats_of, own)
    stylized, reconstructed = generators.translate(
        batch, cfg.direction, cfg.reconstruct, stats=stats
    )
    if "first_batch_at" in run.timings:
        run.timings["model_s"] += time.time() - t
    else:  # the first call also compiles: counted with the model load
        run.timings["load_s"] += time.time() - t
        run.timings["first_batch_at"] = time.time()
    run.clock.tick()
    return [stylized] if reconstructed is None else [stylized, reconstructed]


def _progress(run: Run, every_s: float = 5.0) -> None:
    now = time.time()
    if now - run.timings.get("logged", run.started) < every_s:
        return
    run.timings["logged"] = now
    c = run.manifest.counts
    log.info(
        "%d translated, %d skipped, %d failed | %.1f images/s | %d tiles through the model",
        c["ok"],
        c["skipped"],
        c["failed"],
        c["ok"] / max(now - run.started, 1e-9),
        run.tiles_done,
    )


# finish -----------------------------------------------------------------------------------


def _finish(run: Run, error: str | None = None) -> dict[str, Any]:
    """The run's records: ledger segment, manifest, contact sheet, then the summary, last."""
    run.manifest.close()
    summary = _summary(run, error)
    if not run.cfg.dry_run:
        _write_records(run, summary, bounded=error is not None)
    c = summary["counts"]
    incomplete = summary["status"] == "incomplete"
    word = "stopped" if error else ("done, records incomplete" if incomplete else "done")
    log.log(
        logging.ERROR if error or incomplete else logging.INFO,
        "%s: %d translated, %d skipped, %d failed, %d pending (%s images/s); model %s",
        word,
        c["ok"],
        c["skipped"],
        c["failed"],
        c["pending"],
        summary["images_per_sec"],
        run.version,
    )
    for reason, n in summary["redone"].items():
        log.info("redone: %d input(s) whose earlier outputs were made with %s", n, reason)
    return summary


def _summary(run: Run, error: str | None) -> dict[str, Any]:
    cfg, counts = run.cfg, run.manifest.counts
    ok, failed = counts["ok"], counts["failed"]
    share = failed_share(ok, failed, run.manifest.up_to_date)
    work_s = time.time() - run.started
    status = "aborted" if error else ("failed" if share > cfg.max_failure_rate else "ok")
    return {
        "run_id": run.run_id,
        "status": status,
        "error": error,
        "dry_run": cfg.dry_run,
        "model_version": run.version,
        "model_uri": run.version_uri,
        "precision": run.precision,
        "direction": cfg.direction,
        "scope": cfg.scope,
        "size": run.rule.size,
        "tiles": run.geometry,  # tile, margin (px), tiles per model call (and stats_side)
        "tiles_done": run.tiles_done,  # tiles through the model, fillers not counted
        # Inputs translated again because their earlier outputs were not current (scope all).
        "redone": dict(run.index.redone),
        "shard": f"{cfg.shard[0]}/{cfg.shard[1]}",
        "input": cfg.input,
        "output": cfg.output,
        "counts": {
            "total": sum(counts.values()),
            "ok": ok,
            "skipped": counts["skipped"],
            "failed": failed,
            "pending": counts["pending"],
        },
        "failed_share": round(share, 4),
        "max_failure_rate": cfg.max_failure_rate,
        # Throughput after the first batch: what thousands of images see. A run of a single
        # batch reports its overall rate.
        "images_per_sec": round(_rate(run, ok, work_s), 3),
        "megapixels_per_sec": round(_rate(run, ok, work_s, megapixels=True), 3),
        "feed_processes": cfg.feed_processes,
        "pixel_budget": cfg.pixel_budget,
        "peak_pixels_in_flight": run.budget.peak,
        "head_requests": run.index.head_requests,
        "timings": {
            "load_s": round(run.timings["load_s"], 3),
            "model_s": round(run.timings["model_s"], 3),
            "total_s": round(work_s, 3),
        },
        "stylized": storage.join(cfg.output, "stylized"),
        "reconstructed": storage.join(cfg.output, "reconstructed") if cfg.reconstruct else None,
    }


def _rate(run: Run, ok: int, work_s: float, megapixels: bool = False) -> float:
    """Images (or output megapixels) per second after the first batch: listing, the first
    fetches, the model's load and compile are start-up, which thousands of images amortise."""
    first = run.first_batch or [0, 0]
    done, at_first = (run.whole[1] / 1e6, first[1] / 1e6) if megapixels else (ok, first[0])
    seconds = time.time() - run.timings.get("first_batch_at", run.started)
    if done - at_first > 0 and seconds > 0:
        return (done - at_first) / seconds
    return done / work_s if done and work_s > 0 else 0.0


def _write_records(run: Run, summary: dict[str, Any], bounded: bool) -> None:
    """Upload the records; after a systemic failure, give up after a while (the store may be
    what failed). A record not stored makes the run "incomplete": the summary names what is
    missing and where the local copy of the manifest is, and names only records that exist."""
    stored: dict[str, str] = {}  # filled by the uploader: summary key -> URI it wrote
    missing: list[str] = []
    worker = threading.Thread(
        target=_upload_records, args=(run, summary, stored, missing), daemon=True
    )
    worker.start()
    worker.join(min(_RECORDS_TIMEOUT_S, run.cfg.stall_timeout) if bounded else None)
    summary.update(dict(stored))  # a copy: an uploader given up on may still be writing
    missing = list(missing)
    if worker.is_alive():
        missing.append("the rest (gave up waiting for the store)")
    if missing:
        _mark_incomplete(run, summary, missing)
        log.error(
            "the run's records are incomplete: %s; the manifest is kept at %s",
            summary["records_error"],
            run.manifest.path,
        )


def _upload_records(
    run: Run, summary: dict[str, Any], stored: dict[str, str], missing: list[str]
) -> None:
    """Each record on its own, so one that fails does not take the others with it (unless the
    store itself is unusable: then the rest would only fail the same way, slowly). The ledger
    segment goes first: the lines of what this run verified or wrote save the next run HEADs,
    whatever happens to the manifest."""
    try:
        _upload_each(run, summary, stored, missing)
    except storage.SystemicError:
        missing.append("the rest (the store is unusable)")


def _upload_each(
    run: Run, summary: dict[str, Any], stored: dict[str, str], missing: list[str]
) -> None:
    lines = run.done + run.index.adopted
    segment = partial(ledger.write_segment, run.cfg.output, run.run_id, lines, run.index)
    _store("the ledger segment", segment, missing)
    uri = storage.join(run.run_root, "manifest.jsonl")
    manifest = partial(_upload_file, run.manifest.path, uri, "application/x-ndjson")
    if _store("manifest.jsonl", manifest, missing):
        stored["manifest"] = uri
    if run.sheet:
        uri = storage.join(run.run_root, "contact_sheet.png")
        if _store("contact_sheet.png", partial(_write_contact_sheet, run, uri, stored), missing):
            stored["contact_sheet"] = uri
    uri = storage.join(run.run_root, "summary.json")
    record = {**summary, **stored, "summary": uri}
    if missing:  # the stored summary says so too
        _mark_incomplete(run, record, missing)
    if _store("summary.json", partial(storage.write_json, uri, record), missing):
        stored["summary"] = uri


def _upload_file(path: Path, uri: str, content_type: str) -> None:
    storage.write_bytes(uri, path.read_bytes(), content_type=content_type)


def _store(what: str, write: Callable[[], object], missing: list[str]) -> bool:
    """write(); False, with `what` and why added to `missing`, when it failed (a SystemicError
    is raised on, after that)."""
    try:
        write()
    except storage.SystemicError as err:
        missing.append(f"{what} ({str(err).splitlines()[0]})")
        raise
    except (storage.StorageError, OSError) as err:
        missing.append(f"{what} ({str(err).splitlines()[0]})")
        return False
    except Exception as err:  # a bug must not cost the other records: logged, with its trace
        log.exception("storing %s", what)
        missing.append(f"{what} ({type(err).__name__}: {err})")
        return False
    return True


def _mark_incomplete(run: Run, summary: dict[str, Any], missing: list[str]) -> None:
    """What was not stored, in the summary; a run that was otherwise ok is "incomplete"."""
    if summary["status"] == "ok":
        summary["status"] = "incomplete"
    summary["records_error"] = "not stored: " + "; ".join(missing)
    summary["manifest_local"] = str(run.manifest.path)


def _write_contact_sheet(run: Run, uri: str, stored: dict[str, str]) -> None:
    titles = ["input", "stylized", "reconstructed"][: len(run.sheet[0])]
    png = images.encode_png(images.sample_grid(run.sheet, col_titles=titles, cell=_sheet_cell(run)))
    local = run.work / "contact_sheet.png"
    local.write_bytes(png)
    stored["contact_sheet_local"] = str(local)
    storage.write_bytes(uri, png, content_type="image/png")

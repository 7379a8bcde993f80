"""The batch translation job: images under a prefix -> stylized results and reconstructions.

list (streamed, sharded) -> check outputs (HEAD) -> GET + decode + resize (thread pool)
-> tf.data batches -> generator (+ the way back) in one compiled function -> encode + PUT
(thread pool) -> manifest.jsonl, contact_sheet.png, and summary.json written last.

Memory stays bounded: at most a few batches of images are in flight, whatever the input count.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np

from . import images, registry, storage
from .config import TranslateConfig, model_config_from_dict

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Object metadata keys (x-amz-meta-*) stored with every output.
META_SOURCE_KEY, META_SOURCE_ETAG = "source-key", "source-etag"
META_MODEL, META_DIRECTION = "model-version", "direction"
UP_TO_DATE = "up to date"


class TranslateError(RuntimeError):
    """A systemic problem found before any work (no model, bad config, unreadable input...)."""


def log(message: str) -> None:
    print(f"[translate] {message}", file=sys.stderr, flush=True)


def new_run_id(now: datetime | None = None) -> str:
    return (
        "translate-" + (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    )


def shard_of(rel: str, count: int) -> int:
    """A stable shard for a key: the same on every run and machine, independent of list order."""
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big") % count


def unsafe_reason(rel: str) -> str | None:
    """Why a key can't name an output (it could escape a local output folder), or None."""
    if not rel or rel.startswith("/") or "\\" in rel:
        return "unsafe key (absolute path or backslash)"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "unsafe key (control characters)"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "unsafe key ('.', '..' or empty path segment)"
    return None


def output_rel(rel: str, fmt: str) -> str:
    ext = ".png" if fmt == "png" else ".jpg"
    return str(PurePosixPath(rel).with_suffix(ext))


@dataclass
class Item:
    """One input on its way through the pipeline."""

    info: storage.ObjectInfo
    status: str = "ready"  # ready | skipped | failed | pending (dry run)
    reason: str = ""
    image: np.ndarray | None = None  # resized to the model's size, uint8
    original_hw: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)


class Manifest:
    """One JSON line per input, written as results come (thread-safe), counted by status."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.up_to_date = 0  # skipped because an earlier run already translated them

    def add(self, key: str, status: str, reason: str = "", **extra: Any) -> None:
        line = json.dumps({"key": key, "status": status, "reason": reason, **extra})
        with self._lock:
            self._file.write(line + "\n")
            self.counts[status] += 1
            self.up_to_date += reason == UP_TO_DATE

    def close(self) -> None:
        self._file.close()


def bounded_map(
    fn: Callable[[Any], Any], items: Iterable[Any], pool: ThreadPoolExecutor, window: int
) -> Iterator[Any]:
    """pool.map that keeps at most `window` calls in flight and yields in completion order."""
    pending: set[Future] = set()
    for item in items:
        pending.add(pool.submit(fn, item))
        if len(pending) >= window:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from (f.result() for f in done)


class Translator:
    """The generators of one model version, compiled for uint8 batches in, uint8 batches out."""

    def __init__(
        self,
        version_uri: str,
        model_cfg,  # noqa: ANN001 - a ModelConfig
        direction: str,
        precision: str,
        reconstruct: bool,
        strategy=None,  # noqa: ANN001 - default: MirroredStrategy over several GPUs, if any
    ):
        import tensorflow as tf

        from .model import POLICIES, distribution_strategy, load_generators, resolve_precision
        from .networks import build_generator

        self.precision = resolve_precision(precision)
        self.strategy = strategy or distribution_strategy()
        loaded = load_generators(version_uri)
        names = (
            ("generator_BA", "generator_AB")
            if direction == "b2a"
            else ("generator_AB", "generator_BA")
        )
        with self.strategy.scope():
            nets = []
            for name in names if reconstruct else names[:1]:
                net = build_generator(model_cfg, name=name, dtype=POLICIES[self.precision])
                net.set_weights(loaded[name].get_weights())
                nets.append(net)

        def to_uint8(y):  # noqa: ANN001, ANN202
            y = tf.cast(y, tf.float32)
            return tf.cast(tf.round(tf.clip_by_value((y + 1.0) * 127.5, 0.0, 255.0)), tf.uint8)

        @tf.function(reduce_retracing=True)
        def run(batch):  # noqa: ANN001, ANN202
            x = tf.cast(batch, tf.float32) / 127.5 - 1.0  # the seed's normalize()
            y = nets[0](x, training=False)
            outs = [to_uint8(y)]
            if len(nets) > 1:  # the cycle back, fed the un-quantized stylized image
                outs.append(to_uint8(nets[1](y, training=False)))
            return outs

        self._run = run

    def __call__(self, batch) -> list[np.ndarray]:  # noqa: ANN001
        if self.strategy.num_replicas_in_sync == 1:
            return [o.numpy() for o in self._run(batch)]
        # Each replica gets its own contiguous slice; results come back in replica order.
        replicas = self.strategy.num_replicas_in_sync
        per = -(-len(batch) // replicas)
        shards = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: batch[ctx.replica_id_in_sync_group * per :][:per]
        )
        per_replica = self.strategy.run(self._run, args=(shards,))
        return [
            np.concatenate([t.numpy() for t in self.strategy.experimental_local_results(o)])
            for o in per_replica
        ]


def translate(cfg: TranslateConfig) -> dict[str, Any]:
    """Run one translation job; returns the summary (also written to _runs/<run_id>/)."""
    t0 = time.time()
    run_id = cfg.run_id or new_run_id()
    try:
        version_uri = registry.resolve(cfg.model)
    except registry.RegistryError as err:
        raise TranslateError(str(err)) from err
    version = PurePosixPath(version_uri.rstrip("/")).name
    model_cfg = model_config_from_dict(
        storage.read_json(storage.join(version_uri, "config.json"))["model"]
    )
    size = model_cfg.image_size

    stylized_root = storage.join(cfg.output, "stylized")
    recon_root = storage.join(cfg.output, "reconstructed")
    run_root = storage.join(cfg.output, "_runs", run_id)
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix=f"cyclegan-{run_id}-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(_manifest_path(work, run_id))

    # The output may live under the input prefix: never translate our own results.
    out_prefix, in_prefix = cfg.output.rstrip("/") + "/", cfg.input.rstrip("/") + "/"
    own_rel = out_prefix[len(in_prefix) :] if out_prefix.startswith(in_prefix) else None

    listing = _shard_objects(cfg) if cfg.keys else storage.list_objects(cfg.input)
    try:  # systemic problems (missing bucket, access denied) surface here, before any work
        first = next(listing, None)
    except storage.StorageError as err:
        raise TranslateError(f"cannot list {cfg.input}: {err}") from err

    def candidates() -> Iterator[storage.ObjectInfo]:
        if first is not None:
            yield first
        yield from listing

    index, count = cfg.shard

    def targets(rel: str) -> list[str]:
        roots = [stylized_root, recon_root] if cfg.reconstruct else [stylized_root]
        return [storage.join(root, output_rel(rel, cfg.format)) for root in roots]

    def prepare(info: storage.ObjectInfo) -> Item:
        item = Item(info)
        reason = unsafe_reason(info.rel)
        if reason:
            item.status, item.reason = "failed", reason
            return item
        if not info.rel.lower().endswith(IMAGE_SUFFIXES):
            item.status, item.reason = "skipped", "not an image file extension"
            return item
        if _up_to_date(targets(info.rel), info.etag, version, cfg):
            item.status, item.reason = "skipped", UP_TO_DATE
            return item
        if cfg.dry_run:
            item.status, item.reason = "pending", "would be translated"
            return item
        try:
            data = storage.read_bytes(info.uri)
            picture = images.decode_image(data, max_pixels=cfg.max_pixels, draft_size=size)
        except images.ImageDecodeError as err:
            item.status, item.reason = "failed", err.reason
            return item
        except storage.StorageError as err:
            item.status, item.reason = "failed", f"unreadable: {err}"
            return item
        item.original_hw = picture.shape[:2]
        item.image = images.resize(picture, size)
        item.extra = {
            "input_bytes": len(data),
            "width": picture.shape[1],
            "height": picture.shape[0],
        }
        return item

    in_flight: dict[int, Item] = {}
    state = {"ready": 0, "last_log": time.time(), "model_s": 0.0, "load_s": 0.0, "load_n": 0}

    def ready_items() -> Iterator[tuple[int, np.ndarray]]:
        todo = (
            i
            for i in candidates()
            if (own_rel is None or not i.rel.startswith(own_rel))
            and shard_of(i.rel, count) == index
        )
        with ThreadPoolExecutor(cfg.workers, thread_name_prefix="get") as pool:
            for item in bounded_map(prepare, todo, pool, window=cfg.workers + 2 * cfg.batch_size):
                if item.status != "ready":
                    manifest.add(item.info.rel, item.status, item.reason, etag=item.info.etag)
                    continue
                if cfg.limit is not None and state["ready"] >= cfg.limit:
                    break  # what was fetched beyond the limit is dropped, not recorded
                idx = state["ready"]
                state["ready"] += 1
                in_flight[idx] = item
                yield idx, item.image

    sheet: list[list[np.ndarray]] = []
    sheet_lock = threading.Lock()

    def write(idx: int, outs: list[np.ndarray]) -> None:
        item = in_flight.pop(idx)
        rel = item.info.rel
        metadata = {
            META_SOURCE_KEY: quote(rel, safe="/"),
            META_SOURCE_ETAG: item.info.etag,
            META_MODEL: version,
            META_DIRECTION: cfg.direction,
        }
        if cfg.keep_size:
            outs = [images.resize(o, item.original_hw) for o in outs]
        # Fast PNG compression: encoding competes with the model for the same CPU cores.
        encode = partial(images.encode_png, compress_level=1)
        if cfg.format == "jpeg":
            encode = images.encode_jpeg
        content_type = "image/png" if cfg.format == "png" else "image/jpeg"
        written = {}
        try:
            for uri, picture in zip(targets(rel), outs, strict=True):
                data = encode(picture)
                storage.write_bytes(uri, data, metadata=metadata, content_type=content_type)
                written[uri] = len(data)
        except storage.StorageError as err:
            manifest.add(rel, "failed", f"write failed: {err}", etag=item.info.etag)
            return
        manifest.add(rel, "ok", etag=item.info.etag, outputs=written, **item.extra)
        with sheet_lock:
            if len(sheet) < cfg.contact_sheet_rows:
                sheet.append([item.image, *(images.resize(o, size) for o in outs)])

    translator: Translator | None = None
    t_work = time.time()
    if not cfg.dry_run:
        import tensorflow as tf

        dataset = (
            tf.data.Dataset.from_generator(
                ready_items,
                output_signature=(
                    tf.TensorSpec((), tf.int64),
                    tf.TensorSpec((size, size, 3), tf.uint8),
                ),
            )
            .batch(cfg.batch_size)
            .prefetch(2)
        )
        with ThreadPoolExecutor(cfg.workers, thread_name_prefix="put") as put_pool:
            pending: set[Future] = set()
            for idx_batch, batch in dataset:
                t = time.time()
                if translator is None:  # only when there is work: a no-op rerun loads nothing
                    translator = Translator(
                        version_uri, model_cfg, cfg.direction, cfg.precision, cfg.reconstruct
                    )
                    outs = translator(batch)  # the first call also compiles
                    state["load_s"], state["load_n"] = time.time() - t, len(batch)
                else:
                    outs = translator(batch)
                    state["model_s"] += time.time() - t
                for i, idx in enumerate(idx_batch.numpy()):
                    pending.add(put_pool.submit(write, int(idx), [o[i] for o in outs]))
                if len(pending) > 2 * cfg.batch_size:  # keep encoded-but-unwritten work bounded
                    _, pending = wait(pending, return_when=FIRST_COMPLETED)
                _progress(state, manifest, t_work)
            for f in pending:
                f.result()
    else:
        for _ in ready_items():
            pass
    manifest.close()

    # Records: the manifest, the contact sheet, then the summary, last: a run without a
    # summary is visibly incomplete.
    work_s = time.time() - t_work
    counts = manifest.counts
    ok, failed = counts.get("ok", 0), counts.get("failed", 0)
    failed_share = _failed_share(ok, failed, manifest.up_to_date)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": "failed" if failed_share > cfg.max_failure_rate else "ok",
        "dry_run": cfg.dry_run,
        "model_version": version,
        "model_uri": version_uri,
        "precision": translator.precision if translator else None,
        "direction": cfg.direction,
        "scope": cfg.scope,
        "shard": f"{index}/{count}",
        "input": cfg.input,
        "counts": {
            "total": sum(counts.values()),
            "ok": ok,
            "skipped": counts.get("skipped", 0),
            "failed": failed,
            "pending": counts.get("pending", 0),
        },
        "failed_share": round(failed_share, 4),
        "max_failure_rate": cfg.max_failure_rate,
        # Throughput after the first batch (model load and compile): what thousands of images
        # see. A run of a single batch reports its overall rate.
        "images_per_sec": round(_rate(ok, work_s, state), 3),
        "timings": {
            "work_s": round(work_s, 3),
            "load_s": round(state["load_s"], 3),
            "model_s": round(state["model_s"], 3),
            "total_s": round(time.time() - t0, 3),
        },
        "stylized": stylized_root,
        "reconstructed": recon_root if cfg.reconstruct else None,
    }
    if not cfg.dry_run:
        manifest_uri = storage.join(run_root, "manifest.jsonl")
        storage.write_bytes(
            manifest_uri, manifest.path.read_bytes(), content_type="application/x-ndjson"
        )
        summary["manifest"] = manifest_uri
        if sheet:
            titles = ["input", "stylized", "reconstructed"][: len(sheet[0])]
            png = images.encode_png(
                images.sample_grid(sheet, col_titles=titles, cell=max(128, size))
            )
            local = work / "contact_sheet.png"
            local.write_bytes(png)
            summary["contact_sheet"] = storage.join(run_root, "contact_sheet.png")
            summary["contact_sheet_local"] = str(local)
            storage.write_bytes(summary["contact_sheet"], png, content_type="image/png")
        summary["summary"] = storage.join(run_root, "summary.json")
        storage.write_json(summary["summary"], summary)
    c = summary["counts"]
    log(
        f"done: {c['ok']} translated, {c['skipped']} skipped, {c['failed']} failed "
        f"({summary['images_per_sec']} images/s); model {version}"
    )
    return summary


def _shard_objects(cfg: TranslateConfig) -> Iterator[storage.ObjectInfo]:
    """The inputs a shard file names (written by plan_shards), instead of a listing."""
    try:
        entries = storage.read_json(cfg.keys)
    except (storage.StorageError, ValueError) as err:
        raise TranslateError(f"cannot read the shard file {cfg.keys}: {err}") from err
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("key"), str) for e in entries
    ):
        raise TranslateError(f"{cfg.keys} is not a shard file: expected [{{'key', 'etag'}}, ...]")
    for e in entries:
        uri = storage.join(cfg.input, e["key"])
        yield storage.ObjectInfo(uri=uri, rel=e["key"], size=-1, etag=str(e.get("etag", "")))


def plan_shards(cfg: TranslateConfig, shard_size: int) -> dict[str, Any]:
    """What a run would translate (a dry run), cut into shard files of at most `shard_size` keys.

    Shard files go to <output>/_runs/<run_id>/shards/NNNN.json (keys and ETags); `translate
    --keys URI` runs one of them as run `<run_id>-shardNNNN`. Keys that need no work (up to date,
    not images, unsafe) are recorded in <output>/_runs/<run_id>/plan.jsonl for merge_runs.
    Returns only URIs, run ids and counts: small enough for an Airflow XCom.
    """
    if shard_size < 1:
        raise TranslateError(f"shard size must be >= 1, got {shard_size}")
    run_id = cfg.run_id or new_run_id()
    with tempfile.TemporaryDirectory(prefix=f"cyclegan-plan-{run_id}-") as work:
        dry = translate(
            replace(cfg, dry_run=True, keys=None, shard=(0, 1), run_id=run_id, work_dir=work)
        )
        lines = _manifest_path(Path(work), run_id).read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    pending = [{"key": e["key"], "etag": e["etag"]} for e in entries if e["status"] == "pending"]
    settled = [e for e in entries if e["status"] != "pending"]
    run_root = storage.join(cfg.output, "_runs", run_id)
    _write_jsonl(storage.join(run_root, "plan.jsonl"), settled)
    shards = []
    for i, start in enumerate(range(0, len(pending), shard_size)):
        uri = storage.join(run_root, "shards", f"{i:04d}.json")
        storage.write_json(uri, pending[start : start + shard_size])
        shards.append({"keys": uri, "run_id": f"{run_id}-shard{i:04d}"})
    counts = Counter(e["status"] for e in entries)
    log(
        f"plan {run_id}: {len(pending)} to translate in {len(shards)} shard(s), "
        f"{counts['skipped']} skipped, {counts['failed']} failed"
    )
    return {
        "run_id": run_id,
        "model_uri": dry["model_uri"],
        "shards": shards,
        "counts": {
            "pending": len(pending),
            "skipped": counts["skipped"],
            "failed": counts["failed"],
        },
    }


def merge_runs(
    output: str, run_id: str, shard_run_ids: list[str], *, max_failure_rate: float
) -> dict[str, Any]:
    """Merge a planned run's plan.jsonl and its shards' manifests into one manifest and summary.

    Writes <output>/_runs/<run_id>/manifest.jsonl and summary.json; the summary's status is
    "failed" when the share of failed images exceeds `max_failure_rate`.
    """
    run_root = storage.join(output, "_runs", run_id)
    parts = [storage.join(run_root, "plan.jsonl")]
    parts += [storage.join(output, "_runs", r, "manifest.jsonl") for r in shard_run_ids]
    entries: list[dict] = []
    for uri in parts:
        try:
            text = storage.read_bytes(uri).decode("utf-8")
        except storage.NotFoundError as err:
            raise TranslateError(f"{uri} is missing: did that shard finish?") from err
        entries += [json.loads(line) for line in text.splitlines() if line.strip()]
    counts = Counter(e["status"] for e in entries)
    ok, failed = counts["ok"], counts["failed"]
    failed_share = _failed_share(ok, failed, sum(e.get("reason") == UP_TO_DATE for e in entries))
    shard_summaries = [
        storage.read_json(storage.join(output, "_runs", r, "summary.json")) for r in shard_run_ids
    ]
    sheet = next((s["contact_sheet"] for s in shard_summaries if s.get("contact_sheet")), None)
    summary = {
        "run_id": run_id,
        "status": "failed" if failed_share > max_failure_rate else "ok",
        "shards": shard_run_ids,
        "model_version": shard_summaries[0]["model_version"] if shard_summaries else None,
        "counts": {
            "total": len(entries),
            "ok": ok,
            "skipped": counts["skipped"],
            "failed": failed,
        },
        "failed_share": round(failed_share, 4),
        "max_failure_rate": max_failure_rate,
        "failures": [  # the first few, to read in the summary; all are in the manifest
            {"key": e["key"], "reason": e["reason"]} for e in entries if e["status"] == "failed"
        ][:100],
        "contact_sheet": sheet,
        "manifest": storage.join(run_root, "manifest.jsonl"),
        "summary": storage.join(run_root, "summary.json"),
    }
    _write_jsonl(summary["manifest"], entries)
    storage.write_json(summary["summary"], summary)
    c = summary["counts"]
    log(
        f"run {run_id}: {c['ok']} translated, {c['skipped']} skipped, {c['failed']} failed "
        f"({failed_share:.1%}, max {max_failure_rate:.1%}) in {len(shard_run_ids)} shard(s)"
    )
    return summary


def _manifest_path(work: Path, run_id: str) -> Path:
    """Where a run writes its manifest while it works (uploaded when the run ends)."""
    return work / f"{run_id}.manifest.jsonl"


def _failed_share(ok: int, failed: int, up_to_date: int) -> float:
    """The share of image inputs that failed, counting those an earlier run already did."""
    seen = ok + failed + up_to_date
    return failed / seen if seen else 0.0


def _write_jsonl(uri: str, entries: list[dict]) -> None:
    body = "".join(json.dumps(e) + "\n" for e in entries).encode("utf-8")
    storage.write_bytes(uri, body, content_type="application/x-ndjson")


def _rate(ok: int, work_s: float, state: dict) -> float:
    after_first, seconds = ok - state["load_n"], work_s - state["load_s"]
    if after_first > 0 and seconds > 0:
        return after_first / seconds
    return ok / work_s if ok and work_s > 0 else 0.0


def _up_to_date(uris: list[str], etag: str, version: str, cfg: TranslateConfig) -> bool:
    for uri in uris:
        try:
            meta = storage.head(uri)["metadata"]
        except storage.NotFoundError:
            return False
        if meta.get(META_SOURCE_ETAG) != etag or meta.get(META_DIRECTION) != cfg.direction:
            return False
        if cfg.scope == "all" and meta.get(META_MODEL) != version:
            return False
    return True


def _progress(state: dict, manifest: Manifest, t_work: float) -> None:
    now = time.time()
    if now - state["last_log"] < 2.0:
        return
    state["last_log"] = now
    c = manifest.counts
    rate = c.get("ok", 0) / max(now - t_work, 1e-9)
    log(
        f"{c.get('ok', 0)} translated, {c.get('skipped', 0)} skipped, {c.get('failed', 0)} failed "
        f"| {rate:.1f} images/s"
    )

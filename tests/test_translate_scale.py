"""The translate job at scale: request cost of reruns (ledger), legacy outputs, name collisions,
--keep-size on big and rotated photos, the pixel budget, and worker processes."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import random_version
from PIL import Image

from cyclegan_jobs import storage
from cyclegan_jobs.config import TranslateConfig
from cyclegan_jobs.translation import ledger
from cyclegan_jobs.translation.shards import plan_shards
from cyclegan_jobs.translation.stages import shard_of
from cyclegan_jobs.translation.translate import TranslateError, translate
from cyclegan_jobs.translation.workers import PixelBudget

SIZE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A promoted version with random tiny generators (speed and shapes are all that matter)."""
    root = str(tmp_path_factory.mktemp("ledger_store"))
    random_version(root, "tiny", SIZE)
    return root


def _jpeg(size: tuple[int, int], seed: int, **kwargs) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth, so it compresses
    picture = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _put_many(prefix: str, n: int) -> None:
    data = [_jpeg((SIZE, SIZE), seed) for seed in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: storage.write_bytes(f"{prefix}/f{i:05d}.jpg", data[i % 16]), range(n)
            )
        )


def _cfg(inp: str, out: str, model: str, **changes) -> TranslateConfig:
    return TranslateConfig(input=inp, output=out, model=model, batch_size=64, **changes)


class RequestCounter:
    """Counts the S3 requests the storage client sends, by operation (botocore's event hooks)."""

    def __init__(self, client) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-send.s3.*", self._count)

    def _count(self, request, **kwargs) -> None:
        operation = kwargs.get("event_name", "").split(".")[-1]
        with self._lock:
            self.calls[operation] += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def test_a_no_op_rerun_costs_listings_not_heads(store, s3_bucket) -> None:
    n = 3000
    inp, out = f"{s3_bucket}/in", f"{s3_bucket}/out"
    _put_many(inp, n)
    first = translate(_cfg(inp, out, store))
    assert first["counts"]["ok"] == n

    counter = RequestCounter(storage.get_client())
    again = translate(_cfg(inp, out, store))
    assert again["counts"] == {"total": n, "ok": 0, "skipped": n, "failed": 0, "pending": 0}
    assert again["head_requests"] == 0
    # Inputs, both output folders and the ledger are listed (1,000 keys a request); the run
    # writes its own records. The HEAD rule needed 2 requests an input: 6,000 here.
    assert counter.total <= n / 500 + 20, dict(counter.calls)
    assert counter.calls["HeadObject"] == 0, dict(counter.calls)


def test_outputs_without_a_ledger_are_recognised_once_then_adopted(store, moto_s3) -> None:
    inp, out = f"{moto_s3}/in", f"{moto_s3}/out"
    _put_many(inp, 12)
    assert translate(_cfg(inp, out, store))["counts"]["ok"] == 12
    # Outputs of an older version of the job (or of a run killed before its ledger segment).
    storage.delete_prefix(f"{out}/{ledger.LEDGER_DIR}")
    legacy = translate(_cfg(inp, out, store))
    assert legacy["counts"]["skipped"] == 12 and legacy["counts"]["ok"] == 0
    assert legacy["head_requests"] == 24  # both outputs of each input, asked once
    adopted = translate(_cfg(inp, out, store))
    assert adopted["counts"]["skipped"] == 12 and adopted["head_requests"] == 0


def test_the_ledger_never_vouches_for_an_output_changed_since(store, tmp_path) -> None:
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    _put_many(inp, 6)
    assert translate(_cfg(inp, out, store))["counts"]["ok"] == 6
    # The other direction writes the same output keys: b2a's ledger lines no longer hold.
    assert translate(_cfg(inp, out, store, direction="a2b"))["counts"]["ok"] == 6
    back = translate(_cfg(inp, out, store))
    assert back["counts"]["ok"] == 6
    # An output deleted by hand is redone, the rest stay.
    Path(out, "reconstructed", "f00003.png").unlink()
    redo = translate(_cfg(inp, out, store))
    assert redo["counts"]["ok"] == 1 and redo["counts"]["skipped"] == 5


def test_ledger_segments_are_compacted(store, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ledger, "COMPACT_AFTER", 3)
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    for i in range(4):  # one new input a run: one new segment a run
        storage.write_bytes(f"{inp}/f{i}.jpg", _jpeg((SIZE, SIZE), i))
        assert translate(_cfg(inp, out, store))["counts"]["ok"] == 1
    segments = list(Path(out, ledger.LEDGER_DIR).glob("*.jsonl"))
    assert len(segments) == 1  # the 4th run found 3 and merged them into its own
    assert len(segments[0].read_text().splitlines()) == 4
    final = translate(_cfg(inp, out, store))
    assert final["counts"]["skipped"] == 4 and final["head_requests"] == 0


def test_inputs_that_would_share_outputs_fail_the_same_way_every_run(store, tmp_path) -> None:
    inp, out = _mkdir(str(tmp_path / "in")), str(tmp_path / "out")
    for name in ("face.jpg", "face.png", "face.webp", "other.jpg"):
        Image.open(io.BytesIO(_jpeg((SIZE, SIZE), 1))).save(inp / name)
    inp = str(inp)
    for attempt in range(2):
        summary = translate(_cfg(inp, out, store, max_failure_rate=1.0))
        lines = {e["key"]: e for e in _manifest(summary)}
        assert sorted(lines) == ["face.jpg", "face.png", "face.webp", "other.jpg"]
        for name in ("face.png", "face.webp"):
            assert lines[name]["status"] == "failed"
            assert lines[name]["reason"].startswith("same output as face.jpg")
        expected = "ok" if attempt == 0 else "skipped"
        assert lines["face.jpg"]["status"] == lines["other.jpg"]["status"] == expected
        assert summary["counts"]["ok"] == (2 if attempt == 0 else 0)  # a rerun settles
    # Colliding keys always fall in the same shard, so no two shards write one output.
    assert len({shard_of(k, 7) for k in ("face.jpg", "face.png", "face.webp")}) == 1
    plan = plan_shards(_cfg(inp, str(tmp_path / "planned"), store), shard_size=10)
    assert plan["counts"] == {"pending": 2, "skipped": 0, "failed": 2}


def _mkdir(path: str) -> Path:
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def _manifest(summary: dict) -> list[dict]:
    text = storage.read_bytes(summary["manifest"]).decode()
    return [json.loads(line) for line in text.splitlines()]


def test_keep_size_restores_big_and_rotated_jpegs(store, tmp_path) -> None:
    inp, out = _mkdir(str(tmp_path / "in")), str(tmp_path / "out")
    # 8x and 20x the model's size: big enough for JPEG draft decoding at 1/4 and 1/8.
    (inp / "wide.jpg").write_bytes(_jpeg((640, 256), 1))
    (inp / "photo.jpg").write_bytes(_jpeg((800, 600), 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored landscape, shown portrait
    (inp / "phone.jpg").write_bytes(_jpeg((1024, 768), 3, exif=exif.tobytes()))
    exif[0x0112] = 3  # upside down: same size, rotated pixels
    (inp / "flipped.jpg").write_bytes(_jpeg((400, 300), 4, exif=exif.tobytes()))
    summary = translate(_cfg(str(inp), out, store, keep_size=True))
    assert summary["counts"]["ok"] == 4
    expected = {
        "wide": (640, 256),
        "photo": (800, 600),
        "phone": (768, 1024),
        "flipped": (400, 300),
    }
    for name, size in expected.items():
        for kind in ("stylized", "reconstructed"):
            assert Image.open(Path(out, kind, f"{name}.png")).size == size, (name, kind)
    sizes = {e["key"]: (e["width"], e["height"]) for e in _manifest(summary)}
    assert sizes["phone.jpg"] == (768, 1024)


def test_run_ids_cannot_leave_the_output(store, tmp_path) -> None:
    inp = _mkdir(str(tmp_path / "in"))
    (inp / "a.jpg").write_bytes(_jpeg((SIZE, SIZE), 1))
    for bad in ("../../x", "a/b", ".hidden", "", "x y"):
        with pytest.raises(TranslateError, match="invalid run id"):
            translate(_cfg(str(inp), str(tmp_path / "out"), store, run_id=bad or "/"))
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


def test_pixel_budget_admits_what_fits_and_one_oversized_picture() -> None:
    budget = PixelBudget(100)
    lock = threading.Lock()
    inside: list[int] = []
    seen: list[tuple[int, int]] = []  # (pictures inside, pixels inside) at each entry

    def hold(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                inside.append(pixels)
                seen.append((len(inside), sum(inside)))
            threading.Event().wait(0.01)
            with lock:
                inside.remove(pixels)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hold, [60, 30, 50, 250, 10, 70, 40, 90] * 4))
    assert all(count == 1 or pixels <= 100 for count, pixels in seen), seen
    assert max(count for count, _ in seen) > 1  # it did run pictures side by side
    assert budget.peak == 250 and budget.used == 0  # the oversized one went through, alone


def test_worker_processes_give_the_same_outputs_within_one_shared_budget(store, s3_bucket) -> None:
    inp = f"{s3_bucket}/in"
    for i in range(12):  # PNGs: no draft decoding, so each holds 200 x 150 pixels in flight
        picture = Image.open(io.BytesIO(_jpeg((200, 150), i)))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        storage.write_bytes(f"{inp}/p{i:02d}.png", buffer.getvalue())
    threads = translate(_cfg(inp, f"{s3_bucket}/threads", store))
    budget = 2 * 200 * 150 + 1
    procs = translate(_cfg(inp, f"{s3_bucket}/procs", store, feed_processes=3, pixel_budget=budget))
    assert threads["counts"]["ok"] == procs["counts"]["ok"] == 12
    assert 200 * 150 <= procs["peak_pixels_in_flight"] <= budget
    for i in range(12):
        for kind in ("stylized", "reconstructed"):
            a = storage.read_bytes(f"{s3_bucket}/threads/{kind}/p{i:02d}.png")
            b = storage.read_bytes(f"{s3_bucket}/procs/{kind}/p{i:02d}.png")
            assert np.array_equal(
                np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(io.BytesIO(b)))
            )

"""Batch translation throughput and memory, measured side by side in one run.

With the seed-size generators (random weights: speed does not depend on them) and the same
256x256 JPEG faces in a local S3 server (SeaweedFS on loopback), it measures
  (a) seed-style loop: GET, PIL load, resize, one eager generator call per image, stylize and
      reconstruct in float32, write PNG, PUT (the seed's last cell, per image)
  (b) `translate` end to end (auto precision, batch 32)
  (c) the model alone on in-memory batches at (b)'s precision and batch size
and prints images/s with the ratios b/a and b/c; then the peak RSS of `translate` processes
(tiny preset, 64 px) for 200 and for 2,000 images.
Run: `.venv/bin/python benchmarks/translate.py [--images 256] [--skip-memory]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan_jobs import local_s3, registry, storage  # noqa: E402
from cyclegan_jobs.config import TranslateConfig, preset  # noqa: E402
from cyclegan_jobs.sample_data import synthetic_faces  # noqa: E402

KEYS = {"access_key": "bench-local", "secret_key": "bench-local-secret"}


def make_version(store: str, preset_name: str, size: int) -> str:
    """A promoted version with freshly initialised generators."""
    from cyclegan_jobs.networks import build_generator

    model_cfg, _ = preset(preset_name, size)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("generator_AB", "generator_BA"):
            build_generator(model_cfg, name=name).save(Path(tmp) / f"{name}.keras")
        (Path(tmp) / "config.json").write_text(json.dumps({"model": asdict(model_cfg)}))
        version = registry.new_version_id()
        registry.write_version(store, version, tmp)
    registry.promote(store, version, reason="benchmark")
    return version


def put_faces(prefix: str, n: int, size: int) -> list[str]:
    faces = synthetic_faces(min(n, 64), size, seed=0)

    def put(i: int) -> str:
        buffer = io.BytesIO()
        Image.fromarray(faces[i % len(faces)]).save(buffer, format="JPEG", quality=92)
        uri = storage.join(prefix, f"face_{i:05d}.jpg")
        storage.write_bytes(uri, buffer.getvalue())
        return uri

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(put, range(n)))


def seed_style(uris: list[str], out: str, version_uri: str) -> float:
    """The notebook's per-image inference, with S3 in and out."""
    from cyclegan_jobs.model import load_generators

    gens = load_generators(version_uri)
    g_ba, g_ab = gens["generator_BA"], gens["generator_AB"]
    t = time.perf_counter()
    for i, uri in enumerate(uris):
        img = Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB").resize((256, 256))
        x = np.expand_dims(np.asarray(img, np.float32) / 127.5 - 1, 0)
        fake_a = g_ba(x, training=False)
        rec_b = g_ab(fake_a, training=False)
        for kind, y in (("stylized", fake_a), ("reconstructed", rec_b)):
            pixels = np.uint8(np.clip((np.asarray(y[0]) + 1) / 2, 0, 1) * 255)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            storage.write_bytes(f"{out}/{kind}/{i:05d}.png", buffer.getvalue())
    return len(uris) / (time.perf_counter() - t)


def model_alone(version_uri: str, model_cfg, precision: str, batch: int, n: int) -> float:  # noqa: ANN001
    from cyclegan_jobs.translate import Translator

    translator = Translator(version_uri, model_cfg, "b2a", precision, reconstruct=True)
    data = synthetic_faces(batch, model_cfg.image_size, seed=1)
    for _ in range(2):  # compile, then let oneDNN settle its kernels
        translator(data)
    steps = max(8, n // batch)
    t = time.perf_counter()
    for _ in range(steps):
        translator(data)
    return steps * batch / (time.perf_counter() - t)


RSS_PROBE = """
import json, resource, sys
from cyclegan_jobs import storage
from cyclegan_jobs.config import TranslateConfig
from cyclegan_jobs.translate import translate
storage.configure(endpoint_url=sys.argv[1])
s = translate(TranslateConfig(input=sys.argv[2], output=sys.argv[3], model=sys.argv[4],
                              batch_size=32, work_dir=sys.argv[5]))
print(json.dumps({"ok": s["counts"]["ok"], "rss_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "images_per_sec": s["images_per_sec"]}))
"""


def peak_rss(server, store: str, n: int, tmp: Path) -> dict:  # noqa: ANN001
    inp, out = f"s3://bench/rss-{n}/in", f"s3://bench/rss-{n}/out"
    put_faces(inp, n, 64)
    proc = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, server.endpoint_url, inp, out, store, str(tmp / f"w{n}")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()

    from cyclegan_jobs.model import resolve_precision
    from cyclegan_jobs.translate import translate

    precision = resolve_precision("auto")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.update(AWS_ACCESS_KEY_ID=KEYS["access_key"], AWS_DEFAULT_REGION="us-east-1")
        os.environ["AWS_SECRET_ACCESS_KEY"] = KEYS["secret_key"]
        with local_s3.running(tmp / "s3", **KEYS) as server:
            storage.configure(endpoint_url=server.endpoint_url)
            storage.get_client().create_bucket(Bucket="bench")
            store = "s3://bench/models"
            version = make_version(store, "seed", 256)
            version_uri = registry.version_uri(store, version)
            uris = put_faces("s3://bench/in", args.images, 256)
            print(f"{len(uris)} JPEG faces at 256x256 in {server.endpoint_url}", flush=True)

            a = seed_style(uris[: max(16, args.images // 4)], "s3://bench/seed-out", version_uri)
            print(f"(a) seed-style loop, float32: {a:.2f} images/s", flush=True)
            cfg = TranslateConfig(
                input="s3://bench/in",
                output="s3://bench/out",
                model=store,
                batch_size=args.batch_size,
                work_dir=str(tmp / "work"),
            )
            summary = translate(cfg)
            b = summary["images_per_sec"]
            with_load = summary["counts"]["ok"] / summary["timings"]["work_s"]
            print(
                f"(b) translate end to end, {precision}: {b:.2f} images/s after the first batch "
                f"({with_load:.2f} counting the model load and the first batch, "
                f"{summary['timings']['load_s']:.1f} s)",
                flush=True,
            )
            model_cfg, _ = preset("seed", 256)
            c = model_alone(version_uri, model_cfg, precision, args.batch_size, args.images)
            print(f"(c) model alone, {precision}, batch {args.batch_size}: {c:.2f} images/s")
            print(f"\nb/a = {b / a:.2f}  (goal >= 6)   b/c = {b / c:.2f}  (goal >= 0.85)")

            if not args.skip_memory:
                tiny = "s3://bench/tiny-models"
                make_version(tiny, "tiny", 64)
                small, large = peak_rss(server, tiny, 200, tmp), peak_rss(server, tiny, 2000, tmp)
                ratio = large["rss_mb"] / small["rss_mb"]
                print(
                    f"peak RSS, tiny preset at 64 px: {small['rss_mb']:.0f} MB for 200 images, "
                    f"{large['rss_mb']:.0f} MB for 2,000 -> {ratio:.2f}x (goal <= 1.2x)"
                )


if __name__ == "__main__":
    main()

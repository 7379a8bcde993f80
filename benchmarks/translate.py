"""Batch translation throughput and memory, measured side by side in one run.

All parts use a local S3 server (SeaweedFS on loopback, started by this process and not pinned
to any core: its CPU time is reported beside each pinned run).

model  With the seed-size generators (random weights: speed does not depend on them) and the same
       256x256 JPEG faces, it measures
         (a) seed-style loop: GET, PIL load, resize, one eager generator call per image, stylize
             and reconstruct in float32, write PNG, PUT (the seed's last cell, per image)
         (b) `translate` end to end (auto precision, batch 32)
         (c) the model alone on in-memory batches at (b)'s precision and batch size
       and prints images/s with the ratios b/a and b/c.
feed   (d) the whole `translate` pipeline with the model replaced by the identity function:
       256x256 JPEG faces and 1024x768 phone-photo JPEGs (~130 KB) in, 256x256 PNG and JPEG out,
       each case in a fresh process pinned with `taskset -c 0` and with `taskset -c 0,1`;
       images/s after the first batch (the summary's figure), per core, and the 2/1-core ratio;
       --s3-backends boto3 obstore runs each case with both S3 clients (obstore_store.py).
profile (d) on 1 core, 1024x768 -> PNG, under py-spy (all threads; `pip install py-spy` into the
       venv, not a requirement) with the stage functions timed by per-thread CPU clocks: a table
       of ms per image per stage and the top functions.
memory The CLI as users run it: each case a fresh `cyclegan-jobs translate` process (the venv's
       console script, with the measured cyclegan_jobs first on PYTHONPATH) against the local
       server under `/usr/bin/time -v` (apt-get install -y time), its peak RSS read from
       "Maximum resident set size"; tiny preset, 64 px. 20 PNGs of 7000x7000 (49 MP each, ~64 KB
       on disk): at the default size with the default pixel budget (goal <= 2.5 GB, 20/20 ok),
       a quarter of it and --tiny-budget (the peak must fall with the budget), and
       --size native (20/20 at 7000x7000, read from the outputs' PNG headers in S3, within
       3 GB); 200 vs 2,000 64x64 faces (goal <= 1.2x). Each case: peak RSS, ok count, wall s.
speed  Native-size phone-photo JPEGs, 1024x768 (--speed-photos) and 4032x3024 (--speed-big),
       through the seed preset (random weights) at auto precision, --size native, in tiles of
       the run's shape (translate._geometry, tiles.Grid), --speed-batch as translate's --batch-size:
         (a) translate() in a fresh process (translate_probe.py): MP of image area per s from the
             end of the first model call (load, compile) to the last output written
         (b) the generators alone on a batch of the same tiles, MP of image area per s
         (c) a/b (goal >= 0.85)   (d) tiles' area over the images' (goal <= 1.3)
Run: `.venv/bin/python benchmarks/translate.py [--only feed profile memory model speed]
      [--feed-images 300] [--images 256] [--ref REF] [--baseline-ref REF] [--wait-quiet 900]
      [--big-count 20] [--big-side 7000] [--faces 200 2000] [--tiny-budget 50]
      [--speed-photos 4] [--speed-big 1] [--speed-batch 32] [--speed-reps 2]
      [--s3-backends boto3 obstore]`.
--ref measures a commit's cyclegan_jobs instead of the working tree's; --baseline-ref adds the
1024x768 -> PNG feed case with another commit's (e.g. the pipeline before). Other processes on
the machine skew the pinned figures: each feed row shows their share of the CPUs ('others'),
and a case is rerun (after waiting for quiet) when it exceeds --max-others.
"""

from __future__ import annotations

import argparse
import atexit
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The development tools (cyclegan_local) are imported from the repository, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from cyclegan_jobs import registry, storage
from cyclegan_jobs.config import TranslateConfig, preset
from cyclegan_jobs.sample_data import synthetic_faces
from cyclegan_jobs.translation.tiles import Grid, cut
from cyclegan_local import local_s3

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from feed_inputs import gradient_pngs, photo_jpegs  # noqa: E402

PROBE = HERE / "translate_probe.py"
# What the figures are of: a commit given with --ref, or the working tree.
CODE_LABEL = os.environ.get("BENCH_CODE", "worktree")[:12]
KEYS = {"access_key": "bench-local", "secret_key": "bench-local-secret"}
PARTS = ("model", "feed", "profile", "memory", "speed")
CORE_SETS = ("0", "0,1")  # taskset -c lists: 1 core, 2 cores
# Goals of the staged pipeline, and what the pipeline before it did (1024x768 JPEG -> PNG).
GOAL_PER_CORE = {"png": 50.0, "jpeg": 100.0}
GOAL_SCALING = 1.8
OLD_FEED = {"0": 13.9, "0,1": 17.5}
GOAL_BIG_RSS_MB = 2.5 * 1024
OLD_BIG_RSS = "8.9-12.1 GB"
GOAL_RSS_RATIO = 1.2
GOAL_NATIVE_MB = 3 * 1024  # 20 pictures of 7000x7000 kept at their size
SPEED_SIZES = ((1024, 768), (4032, 3024))  # width, height: a downscaled and a full phone photo
GOAL_SPEED_RATIO = 0.85  # end to end over the model alone
GOAL_AREA_RATIO = 1.3  # tiles' area over the images'


def load_note() -> str:
    """The machine's load: other work on the cores skews pinned figures."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def wait_quiet(max_wait_s: float, busy_limit: float = 0.08) -> None:
    """Wait (up to max_wait_s) until other processes use < busy_limit of the machine's CPUs."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0, t0 = machine_busy_s(), time.perf_counter()
        time.sleep(10)
        share = (machine_busy_s() - busy0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if share < busy_limit or time.monotonic() > deadline:
            print(f"machine CPU busy {share:.0%} over 10 s before the run", flush=True)
            return
        print(f"machine CPU busy {share:.0%}: waiting for other work to finish", flush=True)
        time.sleep(20)


def goal(met: bool) -> str:
    return "met" if met else "MISSED"


def make_version(store: str, preset_name: str, size: int) -> str:
    """A promoted version with freshly initialised generators."""
    from cyclegan_jobs.training.networks import build_generator

    model_cfg, _ = preset(preset_name, size)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("generator_AB", "generator_BA"):
            build_generator(model_cfg, name=name).save(Path(tmp) / f"{name}.keras")
        (Path(tmp) / "config.json").write_text(json.dumps({"model": asdict(model_cfg)}))
        version = registry.new_version_id()
        registry.write_version(store, version, tmp)
    registry.promote(store, version, reason="benchmark")
    return version


def put_files(prefix: str, files: list[bytes], n: int, name: str) -> list[str]:
    """n objects under prefix, cycling through `files` (distinct keys, repeated contents)."""

    def put(i: int) -> str:
        uri = storage.join(prefix, name.format(i=i))
        storage.write_bytes(uri, files[i % len(files)])
        return uri

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(put, range(n)))


def put_faces(prefix: str, n: int, size: int) -> list[str]:
    faces = synthetic_faces(min(n, 64), size, seed=0)
    files = []
    for face in faces:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="JPEG", quality=92)
        files.append(buffer.getvalue())
    return put_files(prefix, files, n, "face_{i:05d}.jpg")


# ---------------------------------------------------------------------------------------------
# Part "model": (a), (b), (c)


def seed_style(uris: list[str], out: str, version_uri: str) -> float:
    """The notebook's per-image inference, with S3 in and out."""
    from cyclegan_jobs.inference import load_generators

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


def model_alone(version_uri: str, model_cfg, precision: str, batch: int, n: int) -> float:
    from cyclegan_jobs.inference import Generators

    gens = Generators.load(version_uri, model_cfg, precision, ("generator_BA", "generator_AB"))
    data = synthetic_faces(batch, model_cfg.image_size, seed=1)
    for _ in range(2):  # compile, then let oneDNN settle its kernels
        gens.translate(data, "b2a", reconstruct=True)
    steps = max(8, n // batch)
    t = time.perf_counter()
    for _ in range(steps):
        gens.translate(data, "b2a", reconstruct=True)
    return steps * batch / (time.perf_counter() - t)


def part_model(args: argparse.Namespace, tmp: Path) -> None:
    from cyclegan_jobs.runtime import resolve_precision
    from cyclegan_jobs.translation.translate import translate

    precision = resolve_precision("auto")
    store = "s3://bench/models"
    version = make_version(store, "seed", 256)
    version_uri = registry.version_uri(store, version)
    uris = put_faces("s3://bench/in", args.images, 256)
    print(
        f"\n== model: {len(uris)} JPEG faces at 256x256, seed preset, in this process", flush=True
    )

    a = seed_style(uris[: max(16, args.images // 4)], "s3://bench/seed-out", version_uri)
    print(f"(a) seed-style loop, float32: {a:.2f} images/s", flush=True)
    cfg = TranslateConfig(
        input="s3://bench/in",
        output="s3://bench/out",
        model=store,
        batch_size=args.batch_size,
        work_dir=str(tmp / "work"),
    )
    t = time.perf_counter()
    summary = translate(cfg)
    b = summary["images_per_sec"]
    with_load = summary["counts"]["ok"] / (time.perf_counter() - t)
    load_s = summary["timings"].get("load_s")
    print(
        f"(b) translate end to end, {precision}: {b:.2f} images/s after the first batch "
        f"({with_load:.2f} counting the model load and the first batch"
        + (f", {load_s:.1f} s)" if load_s is not None else ")"),
        flush=True,
    )
    model_cfg, _ = preset("seed", 256)
    c = model_alone(version_uri, model_cfg, precision, args.batch_size, args.images)
    print(f"(c) model alone, {precision}, batch {args.batch_size}: {c:.2f} images/s")
    print(
        f"b/a = {b / a:.2f}  (goal >= 6: {goal(b / a >= 6)})   "
        f"b/c = {b / c:.2f}  (goal >= 0.85: {goal(b / c >= 0.85)})",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Probes: one translate() per fresh, pinned process


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process, from /proc (the SeaweedFS server's CPU use)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_probe(
    server: local_s3.LocalS3,
    tmp: Path,
    name: str,
    *,
    inp: str,
    model: str,
    fmt: str = "png",
    cores: str | None = None,
    identity: bool = False,
    stages: bool = False,
    batch_size: int = 32,
    pixel_budget: int | None = None,
    feed_processes: int = 0,
    workers: int | None = None,
    code: Path | None = None,
    profile_raw: Path | None = None,
    size: str | None = None,
    s3_backend: str = "boto3",
) -> dict:
    """Run translate_probe.py in a fresh process (pinned with taskset to `cores`, optionally under
    py-spy) on a fresh output prefix; its result plus the server's CPU seconds meanwhile."""
    out, result_file = f"s3://bench/out-{name}", tmp / f"{name}.json"
    cmd = [sys.executable, str(PROBE), "--endpoint", server.endpoint_url, "--input", inp]
    cmd += ["--output", out, "--model", model, "--work-dir", str(tmp / f"work-{name}")]
    cmd += ["--result", str(result_file), "--format", fmt, "--batch-size", str(batch_size)]
    cmd += ["--identity"] * identity + ["--stages"] * stages
    if pixel_budget is not None:
        cmd += ["--pixel-budget", str(pixel_budget)]
    if feed_processes:
        cmd += ["--feed-processes", str(feed_processes)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if size is not None:
        cmd += ["--size", size]
    if s3_backend != "boto3":
        cmd += ["--s3-backend", s3_backend]
    if cores is not None and shutil.which("taskset"):
        cmd = [shutil.which("taskset"), "-c", cores, *cmd]
    if profile_raw is not None:  # py-spy itself is not pinned: it runs beside the probe
        spy = [str(py_spy()), "record", "--rate", "100", "--format", "raw", "--threads"]
        cmd = [*spy, "--output", str(profile_raw), "--", *cmd]
    env = cli_env()  # the measured cyclegan_jobs, not the venv's editable install
    if code is not None:  # another commit's cyclegan_jobs (see --baseline-ref)
        env["PYTHONPATH"] = str(code)
    log_path = tmp / f"{name}.log"
    server_cpu0, busy0, wall0 = process_cpu_s(server.pid), machine_busy_s(), time.perf_counter()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server_cpu = process_cpu_s(server.pid) - server_cpu0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    probe_cpu = sum(getattr(children1, f) - getattr(children0, f) for f in ("ru_utime", "ru_stime"))
    # CPU used by anything else on the machine meanwhile (other jobs skew the pinned figures).
    others = machine_busy_s() - busy0 - probe_cpu - server_cpu
    others_share = max(others, 0.0) / ((time.perf_counter() - wall0) * (os.cpu_count() or 1))
    if proc.returncode != 0 or not result_file.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"probe {name} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_file.read_text())
    if profile_raw is not None and "process_cpu_s" in result:
        # py-spy does not wait for the probe, so the probe's CPU is not in RUSAGE_CHILDREN
        # (py-spy's own is); a negative remainder means it was.
        others_share = max(others - result["process_cpu_s"], 0.0) / (
            (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        )
    result["server_cpu_s"] = server_cpu
    result["others_share"] = others_share
    return result


def quiet_probe(args: argparse.Namespace, *pargs, **kw) -> dict:
    """run_probe, run again (after waiting for quiet) while other processes took more than
    --max-others of the machine's CPU meanwhile; the least disturbed try is kept."""
    tries = []
    for attempt in range(1 + args.retries):
        name = pargs[2] if not attempt else f"{pargs[2]}-retry{attempt}"
        tries.append(run_probe(*pargs[:2], name, *pargs[3:], **kw))
        if tries[-1]["others_share"] <= args.max_others:
            break
        print(
            f"  {name}: other processes took {tries[-1]['others_share']:.0%} of the CPUs "
            f"({tries[-1]['images_per_sec']:.1f} images/s): "
            + ("again" if attempt < args.retries else "kept as it is"),
            flush=True,
        )
        if attempt < args.retries:
            wait_quiet(args.wait_quiet)
    return min(tries, key=lambda r: r["others_share"])


def machine_busy_s() -> float:
    """CPU seconds all CPUs have been busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def py_spy() -> Path | None:
    beside = Path(sys.executable).parent / "py-spy"
    found = beside if beside.is_file() else shutil.which("py-spy")
    return Path(found) if found else None


# ---------------------------------------------------------------------------------------------
# Part "feed": (d)

FEED_INPUTS = {  # name -> (description, object name pattern)
    "faces": ("256x256 JPEG faces", "face_{i:05d}.jpg"),
    "photos": ("1024x768 JPEG photos", "photo_{i:05d}.jpg"),
}


def upload_feed_inputs(n: int, which: tuple[str, ...]) -> dict[str, str]:
    """The feed's inputs in S3 (once per benchmark run); prefix per input kind."""
    prefixes = {}
    if "faces" in which:
        prefixes["faces"] = "s3://bench/feed-faces"
        put_faces(prefixes["faces"], n, 256)
    if "photos" in which:
        prefixes["photos"] = "s3://bench/feed-photos"
        files = photo_jpegs(32, seed=0)
        sizes = [len(f) / 1000 for f in files]
        put_files(prefixes["photos"], files, n, FEED_INPUTS["photos"][1])
        print(
            f"phone photos: 32 distinct 1024x768 JPEGs (quality 90, EXIF), "
            f"{min(sizes):.0f}-{max(sizes):.0f} KB, mean {statistics.mean(sizes):.0f} KB, "
            f"repeated under {n} keys",
            flush=True,
        )
    return prefixes


def fmt_or_na(value: float, width: int, decimals: int) -> str:
    """A figure, or n/a where it could not be measured (outputs written by worker processes
    are not seen by the probe's timestamps)."""
    if value is None or value != value or value == 0:
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.{decimals}f}"


def first_batch_s(result: dict, batch: int) -> float:
    """Seconds from the start of translate() to the first batch's last output."""
    times = result.get("output_times") or []
    return times[batch - 1] if len(times) >= batch else float("nan")


def feed_row(results: list[dict], n_cores: int) -> dict:
    """Median over repeats of the figures of one case."""
    rate = statistics.median(r["images_per_sec"] for r in results)
    ok = statistics.median(r["ok"] for r in results)
    return {
        "rate": rate,
        "per_core": rate / n_cores,
        "ok": int(ok),
        "cpu_ms": statistics.median(1000 * r["translate_cpu_s"] / max(r["ok"], 1) for r in results),
        "server_ms": statistics.median(1000 * r["server_cpu_s"] / max(r["ok"], 1) for r in results),
        "rss_mb": max(r["rss_mb"] for r in results),
        "overall": statistics.median(r["ok"] / r["translate_wall_s"] for r in results),
        "steady": statistics.median(r.get("steady_images_per_sec") or 0.0 for r in results),
        "first_batch_s": statistics.median(first_batch_s(r, 32) for r in results),
        "others": max(r["others_share"] for r in results),
    }


def feed_header(args: argparse.Namespace, server: local_s3.LocalS3) -> None:
    """What the feed's columns mean."""
    print(
        f"\n== (d) feed: translate with the identity model, {args.feed_images} images per case, "
        f"batch {args.batch_size}, model image size 256, median of {args.repeat} run(s)\n"
        f"images/s after the first batch (the summary's images_per_sec); each case in a fresh "
        f"process pinned with taskset; the S3 server (pid {server.pid}) is not pinned and its "
        f"CPU time is shown as 'server ms/img'. steady: outputs written from the first "
        f"batch's last to the last one, per second (the summary's figure keeps the time to the "
        f"first batch, less the model load, but not its images); 1st batch s: from the start "
        f"of translate() to the {args.batch_size}th output written. "
        f"overall: ok / the whole translate() call "
        f"(startup included); CPU ms/img: the probe's CPU in translate(); others: share of the "
        f"machine's CPU used by other processes meanwhile (above a few % the figures are skewed)",
        flush=True,
    )


def feed_line(args: argparse.Namespace, kind: str, fmt: str, label: str, n_cores: int,
              row: dict) -> str:  # fmt: skip
    """One case's row of the feed table."""
    target = GOAL_PER_CORE[fmt]
    return (
        f"{FEED_INPUTS[kind][0]:<22}{fmt:<5}{label:<16}{n_cores:>5}"
        f"{row['rate']:>10.1f}{row['per_core']:>10.1f}"
        f"{fmt_or_na(row['steady'], 8, 1)}"
        f"{fmt_or_na(row['first_batch_s'], 12, 2)}"
        f"{row['overall']:>9.1f}"
        f"{row['cpu_ms']:>11.1f}{row['server_ms']:>14.1f}{row['rss_mb']:>8.0f}"
        f"{row['others']:>8.0%}"
        f"  >= {target:.0f}/s per core: {goal(row['per_core'] >= target)}"
        + (f" (ok {row['ok']})" if row["ok"] != args.feed_images else "")
    )


def feed_codes(args: argparse.Namespace, tmp: Path) -> list[tuple[str, Path | None, str]]:
    """The code measured in each feed case: (label, another commit's export or None, the S3
    backend of the probe)."""
    mode = f"p{args.feed_processes}" if args.feed_processes else "thr"
    mode += f"-w{args.workers}" if args.workers else ""
    codes = [
        (f"{CODE_LABEL}-{mode}" + (f"-{backend}" if backend != "boto3" else ""), None, backend)
        for backend in args.s3_backends
    ]
    if args.baseline_ref:
        codes.append((f"{args.baseline_ref}", export_code(args.baseline_ref, tmp), "boto3"))
    return codes


def part_feed(
    args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path, prefixes: dict, model: str
) -> None:
    feed_header(args, server)
    header = (
        f"{'input':<22}{'out':<5}{'code':<16}{'cores':>5}{'images/s':>10}{'per core':>10}"
        f"{'steady':>8}{'1st batch s':>12}{'overall':>9}{'CPU ms/img':>11}{'server ms/img':>14}"
        f"{'RSS MB':>8}{'others':>8}  goal"
    )
    lines, scaling, codes = [header], [], feed_codes(args, tmp)  # exported once
    for kind in args.feed_inputs:
        for fmt in args.formats:
            for label, code, backend in codes:
                if code is not None and not (kind == "photos" and fmt == "png"):
                    continue  # the baseline only in the case the old figures are for
                rows = {}
                for cores in CORE_SETS:
                    n_cores = len(cores.split(","))
                    results = [
                        quiet_probe(
                            args,
                            server,
                            tmp,
                            f"feed-{kind}-{fmt}-{label}-{n_cores}c-{rep}",
                            inp=prefixes[kind],
                            model=model,
                            fmt=fmt,
                            cores=cores,
                            identity=True,
                            batch_size=args.batch_size,
                            feed_processes=args.feed_processes if code is None else 0,
                            workers=args.workers if code is None else None,
                            code=code,
                            s3_backend=backend,
                        )
                        for rep in range(args.repeat)
                    ]
                    rows[cores] = feed_row(results, n_cores)
                    lines.append(feed_line(args, kind, fmt, label, n_cores, rows[cores]))
                    print(lines[-1], flush=True)
                ratio = rows["0,1"]["rate"] / rows["0"]["rate"]
                scaling.append(
                    f"{FEED_INPUTS[kind][0]} -> {fmt}, {label}: 2/1 cores = {ratio:.2f}x "
                    f"(goal >= {GOAL_SCALING}x: {goal(ratio >= GOAL_SCALING)})"
                )
                print(scaling[-1], flush=True)
    print("\n(d) summary\n" + "\n".join(lines) + "\n" + "\n".join(scaling))
    print(
        f"old pipeline (1024x768 JPEG -> PNG, real model's feed): {OLD_FEED['0']} images/s on 1 "
        f"core, {OLD_FEED['0,1']} on 2 ({OLD_FEED['0,1'] / OLD_FEED['0']:.2f}x)",
        flush=True,
    )


def run_with_ref(ref: str) -> None:
    """Run this whole benchmark (this process and every probe) with `ref`'s cyclegan_jobs:
    exported to a temporary folder, put first on PYTHONPATH, and this script re-executed."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-code-"))
    code = export_code(ref, tmp)
    sha = subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(code), "BENCH_REF": ref, "BENCH_CODE": sha}
    env["BENCH_CODE_DIR"] = str(tmp)
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)


def export_code(ref: str, tmp: Path) -> Path:
    """The cyclegan_jobs package of a commit, extracted with `git archive` (read-only for git)."""
    dest = tmp / f"code-{re.sub(r'[^A-Za-z0-9]', '_', ref)}"
    dest.mkdir(exist_ok=True)
    root = HERE.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "cyclegan_jobs"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


# ---------------------------------------------------------------------------------------------
# Part "profile": where the time goes, 1 core, 1024x768 -> PNG

# py-spy frames (innermost first wins) -> stage, for the share of samples per stage.
SPY_STAGES = (
    (re.compile(r"^read_bytes \(.*storage\.py"), "GET"),
    (re.compile(r"^write_bytes \(.*storage\.py"), "PUT"),
    (re.compile(r"^head \(.*storage\.py"), "HEAD"),
    (re.compile(r"^_?list_(objects|s3) \(.*storage\.py"), "LIST"),
    (re.compile(r"^encode_(png|jpeg) \(.*images\.py"), "encode"),
    (re.compile(r"^resize \(.*Image\.py"), "resize"),
    (re.compile(r"^resize \(.*images\.py"), "resize"),
    (re.compile(r"^decode_\w+ \(.*images\.py"), "decode"),
    (re.compile(r"^_identity \(.*translate_probe\.py"), "infer (identity)"),
)
GROUPS = (
    "GET (read_bytes, botocore)",
    "decode (open, load, convert, to numpy)",
    "resize",
    "infer (identity)",
    "encode (PNG/JPEG)",
    "PUT (write_bytes, botocore)",
    "other S3 calls (list, head, records)",
    "contact sheet",
)


def stage_group(path: str) -> str:
    """The pipeline stage a timed path ("outer > ... > inner") belongs to."""
    names = path.split(" > ")
    outer, inner = names[0], names[-1]
    if outer in ("GET", "S3 GetObject"):
        return GROUPS[0]
    if outer in ("PUT", "S3 PutObject"):
        return GROUPS[5]
    if inner.startswith("infer"):
        return GROUPS[3]
    if any(n.startswith(("images.sample_grid", "images.contact")) for n in names):
        return GROUPS[7]
    if "resize" in inner:
        return GROUPS[2]
    if any(n.startswith("images.encode") for n in names) or inner == "PIL save (encode)":
        return GROUPS[4]
    if any(n.startswith("images.decode") for n in names) or inner.startswith("PIL"):
        return GROUPS[1]
    if outer.startswith("S3 ") or outer == "HEAD":
        return GROUPS[6]
    return f"other timed: {outer}"


def stage_table(result: dict, n_cores: int = 1, detail: int = 25) -> list[str]:
    """ms per image per pipeline stage (thread CPU clocks), then the timed paths in detail."""
    ok = max(result["ok"], 1)
    wall_ms = 1000 * result["translate_wall_s"] / ok
    cpu_ms = 1000 * result["translate_cpu_s"] / ok
    stages = result["stages"] or {}
    groups: Counter = Counter()
    for path, v in stages.items():
        groups[stage_group(path)] += 1000 * v["cpu_s"] / ok
    timed = sum(groups.values())
    out = [f"{'stage':<46}{'CPU ms/img':>11}{'% of CPU':>9}"]
    order = [g for g in GROUPS if g in groups] + sorted(g for g in groups if g not in GROUPS)
    for g in order:
        out.append(f"{g:<46}{groups[g]:>11.2f}{groups[g] / cpu_ms:>9.0%}")
    other = cpu_ms - timed
    out.append(
        f"{'untimed (pipeline threads, queues, GIL, TF)':<46}{other:>11.2f}{other / cpu_ms:>9.0%}"
    )
    out.append(f"{'= process CPU (getrusage)':<46}{cpu_ms:>11.2f}{1:>9.0%}")
    idle = n_cores * wall_ms - cpu_ms
    out.append(
        f"{'core idle (waiting on S3 server, locks...)':<46}{idle:>11.2f}"
        f"   ({n_cores} core x {wall_ms:.2f} ms wall per image, whole translate() call)"
    )
    server_ms = 1000 * result["server_cpu_s"] / ok
    out.append(f"{'S3 server CPU (not pinned: other core)':<46}{server_ms:>11.2f}")
    out.append(f"\ntimed paths (exclusive CPU; wall per call includes waiting), top {detail}:")
    out.append(f"{'path':<62}{'calls':>7}{'CPU ms/img':>11}{'wall ms/call':>13}  threads")
    ranked = sorted(stages.items(), key=lambda pv: -pv[1]["cpu_s"])
    for path, v in ranked[:detail]:
        out.append(
            f"{path[-62:]:<62}{v['calls']:>7}{1000 * v['cpu_s'] / ok:>11.3f}"
            f"{1000 * v['wall_s'] / max(v['calls'], 1):>13.3f}  {','.join(v['threads'])}"
        )
    return out


def parse_spy(raw: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: [(frames root..leaf, samples)]."""
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


# Leaf functions that wait (locks, queues, sockets): on 1 core a thread that was woken but is not
# running yet still counts as active for py-spy, so these are shown apart.
WAITING_LEAVES = re.compile(
    r"^(Condition\.wait|Thread\._wait_for_tstate_lock|.*\.acquire|.*do_poll|SocketIO\.readinto|"
    r"Event\.wait|.*\.get|select|.*sleep|.*_recv_into|.*recv)\b"
)
# A main-thread sample inside the job (the rest is the probe's imports and setup).
IN_TRANSLATE = re.compile(r"^translate \((?:.*/)?cyclegan_jobs/translate\.py")
# The tool's own frames: left out of the function lists.
HARNESS = re.compile(r"\((?:.*/)?translate_probe\.py:")


def spy_tables(stacks: list[tuple[list[str], int]], top: int) -> list[str]:
    def name(frame: str) -> str:  # "fn (path/file.py:123)" -> "fn (file.py)"
        return re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", frame)

    threads, stage_samples, leaf, inclusive = Counter(), Counter(), Counter(), Counter()
    outside = waiting = 0
    for frames, n in stacks:
        # "thread (TID): name-3" -> "name"; "thread (TID)" -> "(unnamed)"
        thread = frames[0].partition(": ")[2].rstrip("0123456789").rstrip("-_") or "(unnamed)"
        calls = [f for f in frames[1:] if not HARNESS.search(f)]
        if thread in ("MainThread", "(unnamed)") and not any(IN_TRANSLATE.search(f) for f in calls):
            outside += n
            continue
        threads[thread] += n
        stage = next((s for f in reversed(frames) for rx, s in SPY_STAGES if rx.search(f)), "other")
        stage_samples[stage] += n
        if calls:
            leaf[name(calls[-1])] += n
            waiting += n * bool(WAITING_LEAVES.search(calls[-1]))
        for f in {name(f) for f in calls}:
            inclusive[f] += n
    total = sum(threads.values()) or 1
    out = [
        f"py-spy: {total} active samples at 100 Hz in translate() and its threads "
        f"({outside} of the probe's imports and setup left out; idle threads not sampled)",
        "  by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common(8)),
        "  by stage (innermost stage frame): "
        + ", ".join(f"{s} {n / total:.0%}" for s, n in stage_samples.most_common()),
        f"  in waiting leaves (locks, queues, sockets; runnable but not running on 1 core): "
        f"{waiting / total:.0%}",
        f"  top {top} functions by own samples:",
    ]
    out += [f"    {n / total:6.1%}  {f}" for f, n in leaf.most_common(top)]
    out.append(f"  top {top} functions by samples including callees:")
    out += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return out


def part_profile(
    args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path, prefixes: dict, model: str
) -> None:
    for case in args.profile_case:
        kind, _, fmt = case.partition(":")
        profile_case(args, server, tmp, prefixes[kind], model, kind, fmt or "png")


def profile_case(
    args: argparse.Namespace,
    server: local_s3.LocalS3,
    tmp: Path,
    inp: str,
    model: str,
    kind: str,
    fmt: str,
) -> None:
    spy = py_spy()
    print(
        f"\n== profile: (d) {FEED_INPUTS[kind][0]} -> {fmt.upper()} on 1 core (taskset -c 0), "
        f"{args.feed_images} images; stage functions timed with thread CPU clocks"
        + (", under py-spy (not pinned)" if spy else "; py-spy not installed: no sampling"),
        flush=True,
    )
    raw = tmp / f"profile-{kind}-{fmt}.raw" if spy else None
    result = quiet_probe(
        args,
        server,
        tmp,
        f"profile-{kind}-{fmt}",
        inp=inp,
        model=model,
        fmt=fmt,
        cores="0",
        identity=True,
        stages=True,
        batch_size=args.batch_size,
        profile_raw=raw,
    )
    print(
        f"profiled run: {result['images_per_sec']:.1f} images/s after the first batch "
        f"(steady {result.get('steady_images_per_sec') or 0:.1f}), "
        f"{result['ok']} ok (other processes took {result['others_share']:.0%} of the CPUs), "
        f"{1000 * result['translate_wall_s'] / max(result['ok'], 1):.2f} ms "
        f"wall per image over the whole translate() call; user {result['user_s']:.1f} s, "
        f"system {result['system_s']:.1f} s, context switches {result['voluntary_switches']} "
        f"voluntary / {result['involuntary_switches']} involuntary"
    )
    times = result.get("output_times") or []
    if times:
        quarter = [times[min(len(times) - 1, len(times) * q // 4)] for q in (1, 2, 3, 4)]
        print(
            f"outputs written (s from the start of translate()): first {times[0]:.2f}, "
            f"{args.batch_size}th {first_batch_s(result, args.batch_size):.2f}, quartiles "
            + ", ".join(f"{t:.2f}" for t in quarter)
        )
    print("\n".join(stage_table(result)))
    if raw is not None and raw.exists():
        print("\n".join(spy_tables(parse_spy(raw), args.top)))
        if args.keep_profile:
            args.keep_profile.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, args.keep_profile / raw.name)
            print(f"py-spy raw stacks copied to {args.keep_profile / raw.name}")


# ---------------------------------------------------------------------------------------------
# The CLI as users run it: a fresh `cyclegan-jobs translate` process under /usr/bin/time -v

MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


def time_binary() -> str:
    """GNU time (its -v report has the peak RSS), installed with apt-get when it is missing."""
    if not Path("/usr/bin/time").is_file() and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "time"], capture_output=True, check=False)
    if not Path("/usr/bin/time").is_file():
        raise SystemExit("/usr/bin/time is missing: apt-get install -y time")
    return "/usr/bin/time"


def cli_program() -> list[str]:
    """The console script beside this interpreter (pyproject: cyclegan-jobs =
    cyclegan_jobs.cli:main), else the same entry point through the interpreter."""
    script = Path(sys.executable).parent / "cyclegan-jobs"
    if script.is_file():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from cyclegan_jobs.cli import main; sys.exit(main())",
    ]


def cli_env() -> dict[str, str]:
    """A CLI run's environment: the measured cyclegan_jobs first on the path (the venv's editable
    install may be another checkout's; --ref has put its export there already). The S3 keys are
    this process's AWS_* variables, inherited, never on the command line."""
    if os.environ.get("BENCH_CODE_DIR"):
        return dict(os.environ)
    path = [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def cli_code() -> str:
    """Where the CLI processes import cyclegan_jobs from."""
    probe = "import cyclegan_jobs, os; print(os.path.dirname(cyclegan_jobs.__file__))"
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env(), check=False
    )
    return found.stdout.strip() or f"? ({found.stderr.strip()[-200:]})"


def run_cli(
    server: local_s3.LocalS3, tmp: Path, name: str, *, inp: str, model: str, extra: tuple = ()
) -> dict:
    """One `cyclegan-jobs translate` in a fresh process under `/usr/bin/time -v`, on a fresh
    output prefix: its summary (--result-file), peak RSS, wall seconds and exit code. A failed
    run is reported (ok 0, the log's last line), not raised: the other cases still run."""
    out, result_file = f"s3://bench/out-{name}", tmp / f"{name}.result.json"
    argv = [*cli_program(), "translate", "--input", inp, "--output", out, "--model-store", model]
    argv += ["--endpoint-url", server.endpoint_url, "--work-dir", str(tmp / f"work-{name}")]
    argv += ["--run-id", name, "--result-file", str(result_file), *map(str, extra)]
    log_path = tmp / f"{name}.log"
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [time_binary(), "-v", *argv], stdout=log, stderr=subprocess.STDOUT, env=cli_env()
        )
    wall = time.perf_counter() - t
    text = log_path.read_text(errors="replace")
    rss = MAX_RSS.search(text)
    summary = json.loads(result_file.read_text()) if result_file.exists() else None
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("\t")]
    return {
        "name": name,
        "cmd": " ".join(["/usr/bin/time", "-v", *argv]),
        "output": out,
        "summary": summary,
        "ok": summary["counts"]["ok"] if summary else 0,
        "rss_mb": int(rss.group(1)) / 1024 if rss else float("nan"),
        "wall_s": wall,
        "rc": proc.returncode,
        "error": None if proc.returncode == 0 else (lines[-1] if lines else "no output")[:300],
    }


def cli_line(label: str, r: dict, n: int) -> str:
    """A CLI case's figures: peak RSS, ok count, wall seconds (and the error of a failed run)."""
    peak = (r["summary"] or {}).get("peak_pixels_in_flight")
    return (
        f"  {label:<50}peak RSS {r['rss_mb']:>7.0f} MB  {r['ok']:>5}/{n} ok  {r['wall_s']:>7.1f} s"
        + (f"  peak pixels in flight {peak:,}" if peak is not None else "")
        + (f"  FAILED (exit {r['rc']}): {r['error']}" if r["rc"] else "")
    )


# ---------------------------------------------------------------------------------------------
# Part "memory": the CLI's peak RSS (/usr/bin/time -v)


def default_pixel_budget() -> int:
    return TranslateConfig.pixel_budget


def part_memory(args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path) -> None:
    tiny = "s3://bench/tiny-models"
    make_version(tiny, "tiny", 64)
    print(
        f"\n== memory: peak RSS ('Maximum resident set size' of /usr/bin/time -v) of "
        f"`cyclegan-jobs translate` as users run it, each case a fresh process, not pinned; "
        f"tiny preset at 64 px; cyclegan_jobs from {cli_code()}\n"
        f"command: /usr/bin/time -v {' '.join(cli_program())} translate --input S3_PREFIX "
        f"--output s3://bench/out-CASE --model-store {tiny} --endpoint-url {server.endpoint_url} "
        f"--work-dir TMP --run-id CASE --result-file TMP/CASE.result.json [CASE'S OPTIONS] "
        f"(S3 keys in the environment)",
        flush=True,
    )
    n, side = args.big_count, args.big_side
    pngs = gradient_pngs(side)
    put_files("s3://bench/big-png", pngs, n, "gradient_{i:02d}.png")
    kb = ", ".join(f"{len(p) / 1000:.0f}" for p in pngs)
    print(
        f"inputs: {n} PNGs of {side}x{side} ({side * side / 1e6:.0f} MP, "
        f"{3 * side * side / 1e6:.0f} MB decoded each; {kb} KB on disk), s3://bench/big-png",
        flush=True,
    )
    memory_budgets(args, server, tmp, tiny)
    memory_faces(args, server, tmp, tiny)
    memory_native(args, server, tmp, tiny)  # the longest (every pixel through the model): last


def memory_budgets(
    args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path, model: str
) -> None:
    """Default size (the model's, 64 px long side): the default pixel budget, a quarter of it and
    a tiny one; the peak RSS must fall with the budget."""
    default = args.pixel_budget or default_pixel_budget()
    cases = [
        ("default options" + (f", --pixel-budget {default}" if args.pixel_budget else ""), None),
        (f"--pixel-budget {default // 4:,} (1/4)", default // 4),
        (f"--pixel-budget {args.tiny_budget} (tiny)", args.tiny_budget),
    ]
    runs, n, side = [], args.big_count, args.big_side
    for i, (label, budget) in enumerate(cases):
        extra = ("--pixel-budget", budget or default) if (budget or args.pixel_budget) else ()
        runs.append(run_cli(server, tmp, f"mem-big-{i}", inp="s3://bench/big-png", model=model,
                            extra=extra))  # fmt: skip
        print(cli_line(f"{n} x {side}x{side}, {label}", runs[-1], n), flush=True)
    first = runs[0]
    met = first["rss_mb"] <= GOAL_BIG_RSS_MB and first["ok"] == n
    print(
        f"default size, default workers, {'default ' if not args.pixel_budget else ''}pixel "
        f"budget: peak RSS {first['rss_mb']:.0f} MB, {first['ok']}/{n} ok (goal <= "
        f"{GOAL_BIG_RSS_MB:.0f} MB and {n}/{n}: {goal(met)}; old pipeline {OLD_BIG_RSS})",
        flush=True,
    )
    peaks = [r["rss_mb"] for r in runs]
    budgets = [default, default // 4, args.tiny_budget]
    # A budget below one picture lets pictures in one at a time, as does any budget below two:
    # equal peaks there are by design, so "falls" allows RSS noise (2 %) between neighbours.
    falling = peaks[-1] < peaks[0] and all(
        b <= a * 1.02 for a, b in zip(peaks, peaks[1:], strict=False)
    )
    print(
        "peak RSS by pixel budget: "
        + "  |  ".join(f"{b:,} -> {p:.0f} MB" for b, p in zip(budgets, peaks, strict=True))
        + f"   never rises (2 % noise) and falls overall: {'yes' if falling else 'no'} "
        f"(goal: {goal(falling)})",
        flush=True,
    )


def output_sizes(prefix: str) -> Counter:
    """(width, height) of every PNG under prefix, from its header (a ranged GET of 64 KB)."""
    client = storage.get_client()

    def size(info: storage.ObjectInfo) -> tuple[int, int]:
        bucket, key = storage.split_s3(info.uri)
        head = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-65535")["Body"].read()
        return Image.open(io.BytesIO(head)).size

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(size, list(storage.list_objects(prefix))))


def memory_native(
    args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path, model: str
) -> None:
    """--size native: every 7000x7000 picture through the model in tiles, kept at 7000x7000."""
    n, side = args.big_count, args.big_side
    r = run_cli(server, tmp, "mem-native", inp="s3://bench/big-png", model=model,
                extra=("--size", "native"))  # fmt: skip
    print(cli_line(f"{n} x {side}x{side}, --size native", r, n), flush=True)
    sizes = {kind: output_sizes(f"{r['output']}/{kind}") for kind in ("stylized", "reconstructed")}
    right = {kind: found[(side, side)] for kind, found in sizes.items()}
    shown = "; ".join(
        f"{kind}: " + ", ".join(f"{n} at {w}x{h}" for (w, h), n in found.most_common())
        for kind, found in sizes.items()
    )
    met = r["ok"] == n and all(k == n for k in right.values()) and r["rss_mb"] <= GOAL_NATIVE_MB
    print(
        f"--size native: {r['ok']}/{n} ok; outputs' PNG headers read from S3: {shown or 'none'}; "
        f"peak RSS {r['rss_mb']:.0f} MB (goal {n}/{n} at {side}x{side} within "
        f"{GOAL_NATIVE_MB:.0f} MB: {goal(met)})",
        flush=True,
    )


def memory_faces(args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path, model: str) -> None:
    """200 vs 2,000 small faces: the peak must not grow with the input count."""
    sizes = {}
    few, many = args.faces
    for n in (few, many):
        put_faces(f"s3://bench/rss-{n}/in", n, 64)
        sizes[n] = run_cli(server, tmp, f"mem-faces-{n}", inp=f"s3://bench/rss-{n}/in", model=model)
        print(cli_line(f"{n:,} JPEG faces of 64x64, default options", sizes[n], n), flush=True)
    small, large = sizes[few], sizes[many]
    ratio = large["rss_mb"] / small["rss_mb"]
    print(
        f"64x64 faces: {small['rss_mb']:.0f} MB for {few:,} images ({small['ok']} ok), "
        f"{large['rss_mb']:.0f} MB for {many:,} ({large['ok']} ok) -> {ratio:.2f}x "
        f"(goal <= {GOAL_RSS_RATIO}x: {goal(ratio <= GOAL_RSS_RATIO)})",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Part "speed": native-size photos through the seed preset, tiles and all


def run_tiles(height: int, width: int, model_cfg) -> tuple[int, int, Grid]:
    """The tile and margin a `--size native` run uses (translate._geometry with the config's
    defaults) and the grid of one height x width picture."""
    from cyclegan_jobs.translation.translate import _geometry

    cfg = SimpleNamespace(size="native", tile=TranslateConfig.tile,
                          tile_margin=TranslateConfig.tile_margin)  # fmt: skip
    _, tile, margin = _geometry(SimpleNamespace(cfg=cfg, model_cfg=model_cfg))
    return tile, margin, Grid(height, width, tile, margin)


def after_first_batch(result: dict) -> tuple[int, float]:
    """(tiles, seconds) from the end of the first model call (load and compile included) to the
    last output written: the steady state, in tiles (the summary's images_per_sec takes the
    first batch's tiles off the image count, and falls back to the overall rate below it)."""
    calls, times = result.get("infer_calls") or [], result.get("output_times") or []
    if len(calls) < 2 or not times:
        return 0, float("nan")
    return sum(c[2] for c in calls[1:]), max(times[-1], calls[-1][1]) - calls[0][1]


def summary_tiles_per_call(result: dict) -> int:
    """Tiles per model call of a run (its summary's "tiles")."""
    return int(result["summary"]["tiles"]["batch"])


def model_alone_tiles(
    version_uri: str,
    model_cfg,
    precision: str,
    tiles: list[np.ndarray],
    reps: int,
) -> float:
    """Tiles per second of the generators alone (translate and reconstruct, as the run) on a
    batch of the run's tiles, after a compiling call."""
    from cyclegan_jobs.inference import Generators

    tile = tiles[0].shape[0]
    gens = Generators.load(version_uri, replace(model_cfg, image_size=tile), precision,
                           ("generator_BA", "generator_AB"))  # fmt: skip
    batch = np.stack(tiles)
    gens.translate(batch, "b2a", reconstruct=True)
    t = time.perf_counter()
    for _ in range(reps):
        gens.translate(batch, "b2a", reconstruct=True)
    return reps * len(batch) / (time.perf_counter() - t)


def part_speed(args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path) -> None:
    from cyclegan_jobs.runtime import resolve_precision

    store = "s3://bench/seed-models"
    version_uri = registry.version_uri(store, make_version(store, "seed", 256))
    model_cfg, _ = preset("seed", 256)
    precision = resolve_precision("auto")
    print(
        f"\n== speed: phone-photo JPEGs at native size through the seed preset (random weights), "
        f"auto precision ({precision} here), translate + reconstruct; (a) translate() in a fresh "
        f"process (translate_probe.py, --size native, --batch-size {args.speed_batch}), MP of "
        f"image area per s from the end of the first model call (load, compile) to the last "
        f"output; (b) the generators alone on a batch of the same tiles; {load_note()}",
        flush=True,
    )
    lines = []
    for size, n in zip(SPEED_SIZES, (args.speed_photos, args.speed_big), strict=True):
        if n:
            lines += speed_case(args, server, tmp, (store, version_uri, model_cfg), size, n)
    print("\nspeed summary\n" + "\n".join(lines), flush=True)


def speed_case(
    args: argparse.Namespace,
    server: local_s3.LocalS3,
    tmp: Path,
    model: tuple,
    size: tuple[int, int],
    n: int,
) -> list[str]:
    store, version_uri, model_cfg = model
    (width, height), t0 = size, time.perf_counter()
    files = photo_jpegs(n, seed=3, size=size)
    inp = f"s3://bench/speed-{width}x{height}"
    put_files(inp, files, n, "photo_{i:03d}.jpg")
    tile, margin, grid = run_tiles(height, width, model_cfg)
    mp_per_tile = width * height / 1e6 / len(grid)
    t1 = time.perf_counter()
    result = run_probe(server, tmp, f"speed-{width}x{height}", inp=inp, model=store,
                       batch_size=args.speed_batch, size="native")  # fmt: skip
    t2 = time.perf_counter()
    tiles_after, seconds = after_first_batch(result)
    a = tiles_after * mp_per_tile / seconds if tiles_after else float("nan")
    picture = np.asarray(Image.open(io.BytesIO(files[0])).convert("RGB"))
    cut_tiles = list(cut(picture, grid))
    per_call = summary_tiles_per_call(result)  # what the run put in each model call
    batch = [cut_tiles[i % len(cut_tiles)] for i in range(per_call)]
    b = model_alone_tiles(version_uri, model_cfg, precision_of(result), batch, args.speed_reps)
    b_mp = b * mp_per_tile
    t3 = time.perf_counter()
    summary = result["summary"]
    label = f"{width}x{height} x {n}"
    ratio = a / b_mp
    area = grid.area_ratio()
    out = [
        f"{label}: {result['ok']}/{n} ok, {len(grid)} tile(s) of {tile}x{tile} (margin {margin}) "
        f"per picture, {n * len(grid)} in all, {per_call} per model call, precision "
        f"{summary.get('precision')}; took {t3 - t0:.0f} s (inputs {t1 - t0:.0f} s, run "
        f"{t2 - t1:.0f} s, model alone {t3 - t2:.0f} s)",
        f"  (a) end to end: {a:.4f} MP/s after the first batch ({tiles_after} tiles in "
        f"{seconds:.1f} s; summary: {summary['images_per_sec']} images/s, timings "
        f"{summary['timings']}, {result['rss_mb']:.0f} MB peak RSS)",
        f"  (b) model alone: {b_mp:.4f} MP/s of image area ({b:.3f} tiles/s, batch {len(batch)}, "
        f"{args.speed_reps} timed call(s) after a compiling one)",
        f"  (c) a/b = {ratio:.2f} (goal >= {GOAL_SPEED_RATIO}: {goal(ratio >= GOAL_SPEED_RATIO)})",
        f"  (d) tiles' area / images' area = {area:.3f} (Grid.area_ratio; goal <= "
        f"{GOAL_AREA_RATIO}: {goal(area <= GOAL_AREA_RATIO)})",
    ]
    print("\n".join(out), flush=True)
    return out


def precision_of(result: dict) -> str:
    """The precision the run used (auto resolved), for the model-alone figure."""
    return result["summary"].get("precision") or "auto"


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    p.add_argument("--skip-memory", action="store_true", help="all parts but memory")
    p.add_argument("--images", type=int, default=256, help="images of the model part")
    p.add_argument("--feed-images", type=int, default=300, help="images per feed case")
    p.add_argument(
        "--feed-inputs", nargs="+", choices=tuple(FEED_INPUTS), default=["faces", "photos"]
    )
    p.add_argument("--formats", nargs="+", choices=("png", "jpeg"), default=["png", "jpeg"])
    p.add_argument("--repeat", type=int, default=1, help="runs per feed case (median shown)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--feed-processes", type=int, default=0, help="(d) with N worker processes (0: threads)"
    )
    p.add_argument(
        "--pixel-budget", type=int, help="memory: the first 7000x7000 case's (default: the CLI's)"
    )
    p.add_argument("--tiny-budget", type=int, default=50, help="memory: the smallest budget")
    p.add_argument("--big-count", type=int, default=20, help="memory: big PNGs per case")
    p.add_argument("--big-side", type=int, default=7000, help="memory: the big PNGs' side")
    p.add_argument(
        "--faces", type=int, nargs=2, default=[200, 2000], help="memory: the two face counts"
    )
    p.add_argument("--speed-photos", type=int, default=4, help="speed: 1024x768 JPEGs (0: none)")
    p.add_argument("--speed-big", type=int, default=1, help="speed: 4032x3024 JPEGs (0: none)")
    p.add_argument("--speed-batch", type=int, default=32,
                   help="speed: the runs' --batch-size (pictures of the model's size)")  # fmt: skip
    p.add_argument("--speed-reps", type=int, default=2, help="speed: timed model-alone calls")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        help="wait up to this many seconds for other processes to leave the CPUs idle",
    )
    p.add_argument(
        "--max-others",
        type=float,
        default=0.05,
        help="rerun a feed case when other processes took more than this share of the CPUs",
    )
    p.add_argument("--retries", type=int, default=2, help="reruns of a disturbed feed case")
    p.add_argument(
        "--workers", type=int, help="(d) TranslateConfig.workers: load and store threads, each"
    )
    p.add_argument(
        "--s3-backends",
        nargs="+",
        choices=("boto3", "obstore"),
        default=["boto3"],
        help="(d) each feed case with these S3 clients (obstore: benchmarks/obstore_store.py, "
        "GET and PUT through obstore; pip install obstore)",
    )
    p.add_argument("--top", type=int, default=20, help="functions listed by the profile")
    p.add_argument("--keep-profile", type=Path, help="copy py-spy's raw stacks to this folder")
    p.add_argument(
        "--profile-case",
        nargs="+",
        default=["photos:png"],
        help="INPUT:FORMAT cases to profile (faces|photos : png|jpeg)",
    )
    p.add_argument(
        "--ref",
        help="measure this commit's cyclegan_jobs (exported with git archive) instead of the "
        "working tree's",
    )
    p.add_argument(
        "--baseline-ref",
        help="also run the feed's 1024x768 -> PNG case with this commit's cyclegan_jobs "
        "(e.g. the one before the staged pipeline)",
    )
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    for case in args.profile_case:
        kind, _, fmt = case.partition(":")
        if kind not in FEED_INPUTS or fmt not in ("png", "jpeg", ""):
            p.error(f"--profile-case {case!r}: expected faces|photos[:png|jpeg]")
    if args.ref and os.environ.get("BENCH_REF") != args.ref:
        run_with_ref(args.ref)  # does not return
    if os.environ.get("BENCH_CODE_DIR"):
        atexit.register(shutil.rmtree, os.environ["BENCH_CODE_DIR"], ignore_errors=True)
    import cyclegan_jobs

    print(f"cyclegan_jobs from {Path(cyclegan_jobs.__file__).parent} ({CODE_LABEL})", flush=True)
    parts = [
        part for part in PARTS if part in args.only and not (args.skip_memory and part == "memory")
    ]
    if "memory" in parts:
        time_binary()  # before any work: installed if missing, or stop here
    taskset = shutil.which("taskset")
    affinity = sorted(os.sched_getaffinity(0))
    print(
        f"parts: {', '.join(parts)}; taskset: {taskset or 'MISSING (util-linux): runs unpinned'}; "
        f"cores available: {affinity}; {load_note()}",
        flush=True,
    )
    if not set(CORE_SETS[-1].split(",")) <= {str(c) for c in affinity}:
        print("warning: cores 0 and 1 are not both available: taskset -c 0,1 may fail", flush=True)
    wait_quiet(args.wait_quiet)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.update(AWS_ACCESS_KEY_ID=KEYS["access_key"], AWS_DEFAULT_REGION="us-east-1")
        os.environ["AWS_SECRET_ACCESS_KEY"] = KEYS["secret_key"]
        with local_s3.running(tmp / "s3", **KEYS) as server:
            print(
                f"S3: SeaweedFS at {server.endpoint_url}, pid {server.pid}, started by this "
                f"process and NOT pinned (it may run on the probes' cores)",
                flush=True,
            )
            storage.configure(endpoint_url=server.endpoint_url)
            storage.get_client().create_bucket(Bucket="bench")
            run_parts(args, parts, server, tmp)
            print(f"\nat the end: {load_note()}")


def run_parts(
    args: argparse.Namespace, parts: list[str], server: local_s3.LocalS3, tmp: Path
) -> None:
    if "model" in parts:
        part_model(args, tmp)
    if "feed" in parts or "profile" in parts:
        feed_model = "s3://bench/feed-models"
        make_version(feed_model, "tiny", 256)  # only its config is used (identity model)
        kinds = {c.partition(":")[0] for c in args.profile_case} if "profile" in parts else set()
        kinds |= set(args.feed_inputs) if "feed" in parts else set()
        prefixes = upload_feed_inputs(args.feed_images, tuple(sorted(kinds)))
        if "feed" in parts:
            part_feed(args, server, tmp, prefixes, feed_model)
        if "profile" in parts:
            part_profile(args, server, tmp, prefixes, feed_model)
    if "speed" in parts:  # before memory: its figures are the ones other load skews
        part_speed(args, server, tmp)
    if "memory" in parts:
        part_memory(args, server, tmp)


if __name__ == "__main__":
    main()

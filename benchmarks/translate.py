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
       images/s after the first batch (the summary's figure), per core, and the 2/1-core ratio.
profile (d) on 1 core, 1024x768 -> PNG, under py-spy (all threads; `pip install py-spy` into the
       venv, not a requirement) with the stage functions timed by per-thread CPU clocks: a table
       of ms per image per stage and the top functions.
memory Peak RSS of `translate` processes (tiny preset, 64 px): 200 vs 2,000 faces, and 20 PNGs of
       7000x7000 (49 MP each, ~64 KB on disk) with the default pixel budget.
Run: `.venv/bin/python benchmarks/translate.py [--only feed profile memory model]
      [--feed-images 300] [--images 256] [--ref REF] [--baseline-ref REF] [--wait-quiet 900]`.
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
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The development tools (cyclegan_local) are imported from the repository, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cyclegan_jobs import registry, storage  # noqa: E402
from cyclegan_jobs.config import TranslateConfig, preset  # noqa: E402
from cyclegan_jobs.sample_data import synthetic_faces  # noqa: E402
from cyclegan_local import local_s3  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from feed_inputs import gradient_pngs, photo_jpegs  # noqa: E402

PROBE = HERE / "translate_probe.py"
# What the figures are of: a commit given with --ref, or the working tree.
CODE_LABEL = os.environ.get("BENCH_CODE", "worktree")[:12]
KEYS = {"access_key": "bench-local", "secret_key": "bench-local-secret"}
PARTS = ("model", "feed", "profile", "memory")
CORE_SETS = ("0", "0,1")  # taskset -c lists: 1 core, 2 cores
# Goals of the staged pipeline, and what the pipeline before it did (1024x768 JPEG -> PNG).
GOAL_PER_CORE = {"png": 50.0, "jpeg": 100.0}
GOAL_SCALING = 1.8
OLD_FEED = {"0": 13.9, "0,1": 17.5}
GOAL_BIG_RSS_MB = 2.5 * 1024
OLD_BIG_RSS = "8.9-12.1 GB"
GOAL_RSS_RATIO = 1.2


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
    return "goal met" if met else "goal missed"


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


def model_alone(version_uri: str, model_cfg, precision: str, batch: int, n: int) -> float:  # noqa: ANN001
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
    from cyclegan_jobs.model import resolve_precision
    from cyclegan_jobs.translate import translate

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
    if cores is not None and shutil.which("taskset"):
        cmd = [shutil.which("taskset"), "-c", cores, *cmd]
    if profile_raw is not None:  # py-spy itself is not pinned: it runs beside the probe
        spy = [str(py_spy()), "record", "--rate", "100", "--format", "raw", "--threads"]
        cmd = [*spy, "--output", str(profile_raw), "--", *cmd]
    env = dict(os.environ)
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


def quiet_probe(args: argparse.Namespace, *pargs, **kw) -> dict:  # noqa: ANN002, ANN003
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


def part_feed(
    args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path, prefixes: dict, model: str
) -> None:
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
    mode = f"p{args.feed_processes}" if args.feed_processes else "thr"
    mode += f"-w{args.workers}" if args.workers else ""
    codes = [(f"{CODE_LABEL}-{mode}", None)]
    if args.baseline_ref:
        codes.append((f"{args.baseline_ref}", export_code(args.baseline_ref, tmp)))
    header = (
        f"{'input':<22}{'out':<5}{'code':<16}{'cores':>5}{'images/s':>10}{'per core':>10}"
        f"{'steady':>8}{'1st batch s':>12}{'overall':>9}{'CPU ms/img':>11}{'server ms/img':>14}"
        f"{'RSS MB':>8}{'others':>8}  goal"
    )
    lines, scaling = [header], []
    for kind in args.feed_inputs:
        for fmt in args.formats:
            for label, code in codes:
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
                        )
                        for rep in range(args.repeat)
                    ]
                    row = rows[cores] = feed_row(results, n_cores)
                    target = GOAL_PER_CORE[fmt]
                    line = (
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
                    lines.append(line)
                    print(line, flush=True)
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
# Part "memory"


def part_memory(args: argparse.Namespace, server: local_s3.LocalS3, tmp: Path) -> None:
    tiny = "s3://bench/tiny-models"
    make_version(tiny, "tiny", 64)
    print(
        "\n== memory: peak RSS (ru_maxrss) of translate processes, tiny preset at 64 px, "
        "default pixel budget, not pinned",
        flush=True,
    )
    pngs = gradient_pngs(7000)
    put_files("s3://bench/big-png", pngs, 20, "gradient_{i:02d}.png")
    big = run_probe(
        server, tmp, "rss-big", inp="s3://bench/big-png", model=tiny, pixel_budget=args.pixel_budget
    )
    kb = ", ".join(f"{len(p) / 1000:.0f}" for p in pngs)
    print(
        f"20 PNGs of 7000x7000 (49 MP, 147 MB decoded each; {kb} KB on disk): "
        f"{big['ok']}/20 translated ({big['summary']['counts']}), peak RSS "
        f"{big['rss_mb']:.0f} MB (goal <= {GOAL_BIG_RSS_MB:.0f} MB: "
        f"{goal(big['rss_mb'] <= GOAL_BIG_RSS_MB and big['ok'] == 20)}; old pipeline "
        f"{OLD_BIG_RSS}), pixel budget {big['pixel_budget']}, "
        f"{big['translate_wall_s']:.1f} s ({big['translate_wall_s'] / max(big['ok'], 1):.2f} s "
        f"per image)",
        flush=True,
    )
    sizes = {}
    for n in (200, 2000):
        put_faces(f"s3://bench/rss-{n}/in", n, 64)
        sizes[n] = run_probe(server, tmp, f"rss-{n}", inp=f"s3://bench/rss-{n}/in", model=tiny)
    small, large = sizes[200], sizes[2000]
    ratio = large["rss_mb"] / small["rss_mb"]
    print(
        f"64x64 faces: {small['rss_mb']:.0f} MB for 200 images ({small['ok']} ok), "
        f"{large['rss_mb']:.0f} MB for 2,000 ({large['ok']} ok) -> {ratio:.2f}x "
        f"(goal <= {GOAL_RSS_RATIO}x: {goal(ratio <= GOAL_RSS_RATIO)})",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------


def main() -> None:
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
        "--pixel-budget", type=int, help="for the 7000x7000 PNGs (default: the config's default)"
    )
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
            if "model" in parts:
                part_model(args, tmp)
            if "feed" in parts or "profile" in parts:
                feed_model = "s3://bench/feed-models"
                make_version(feed_model, "tiny", 256)  # only its config is used (identity model)
                kinds = (
                    {c.partition(":")[0] for c in args.profile_case}
                    if "profile" in parts
                    else set()
                )
                kinds |= set(args.feed_inputs) if "feed" in parts else set()
                prefixes = upload_feed_inputs(args.feed_images, tuple(sorted(kinds)))
                if "feed" in parts:
                    part_feed(args, server, tmp, prefixes, feed_model)
                if "profile" in parts:
                    part_profile(args, server, tmp, prefixes, feed_model)
            if "memory" in parts:
                part_memory(args, server, tmp)
            print(f"\nat the end: {load_note()}")


if __name__ == "__main__":
    main()

"""One `translate` run in a fresh process, for benchmarks/translate.py (which pins it with taskset).

    python benchmarks/translate_probe.py --endpoint URL --input URI --output URI --model URI \
        --work-dir DIR --result FILE [--format png|jpeg] [--batch-size N] [--pixel-budget N] \
        [--size native|N] [--identity] [--stages] [--s3-backend boto3|obstore]

--identity replaces the model by the identity function (Generators.load returns an object whose
translate gives the batch back), so the run measures the feed: listing, GET, decode, resize,
batching, encode and PUT. --stages times the stage functions (storage.read_bytes/write_bytes/head,
every public function of images.py, Pillow's open/load/resize/convert/transpose/tobytes/save/
fromarray, botocore's API calls) with per-thread CPU clocks; nested stages are recorded under
"outer > inner" and subtracted from their callers. The result file gets one JSON object: the
summary, the process's peak RSS and CPU time, and the stage times.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


# Functions timed as stages: (module or class, attribute) -> stage name. A stage called inside
# another is recorded under the path "outer > inner" and subtracted from the outer one.
def stage_functions() -> dict[tuple[Any, str], str]:
    from PIL import Image, ImageFile

    from cyclegan_jobs import images, storage

    named = {
        (storage, "read_bytes"): "GET",
        (storage, "write_bytes"): "PUT",
        (storage, "head"): "HEAD",
        (Image, "open"): "PIL open (header)",
        (ImageFile.ImageFile, "load"): "PIL decode (load)",
        (Image.Image, "resize"): "PIL resize",
        (Image.Image, "convert"): "PIL convert",
        (Image.Image, "transpose"): "PIL transpose",
        (Image.Image, "tobytes"): "PIL tobytes (to numpy)",
        (Image.Image, "save"): "PIL save (encode)",
        (Image, "fromarray"): "PIL fromarray",
    }
    # Every public function of images.py (decode_image, decode_at_size, resize, encode_*...).
    for attr, value in vars(images).items():
        if callable(value) and not attr.startswith("_") and value.__module__ == images.__name__:
            if isinstance(value, type):
                continue
            named[(images, attr)] = f"images.{attr}"
    return named


class StageClock:
    """Calls, CPU seconds (thread clock) and wall seconds per stage path, exclusive of the stages
    called inside it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self.threads: dict[str, set[str]] = defaultdict(set)

    def _stack(self) -> list[list]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def measure(self, stage: str, fn, *args, **kwargs):
        stack = self._stack()
        path = f"{stack[-1][0]} > {stage}" if stack else stage
        frame = [path, 0.0, 0.0]  # path, CPU and wall of the stages called inside
        stack.append(frame)
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            stack.pop()
            if stack:
                stack[-1][1] += cpu
                stack[-1][2] += wall
            thread = threading.current_thread().name.rstrip("0123456789").rstrip("_-")
            with self._lock:
                total = self.totals[path]
                total[0] += 1
                total[1] += cpu - frame[1]
                total[2] += wall - frame[2]
                self.threads[path].add(thread or "?")

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            return self.measure(stage, fn, *args, **kwargs)

        return timed

    def report(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                path: {
                    "calls": int(calls),
                    "cpu_s": round(cpu, 5),
                    "wall_s": round(wall, 5),
                    "threads": sorted(self.threads[path]),
                }
                for path, (calls, cpu, wall) in self.totals.items()
            }


def install_stage_clock(clock: StageClock) -> None:
    """Wrap the stage functions (before cyclegan_jobs.translation.translate is imported, so
    that names it imports with `from x import y` are the wrapped ones) and botocore's API
    calls."""
    for (owner, attr), stage in stage_functions().items():
        if hasattr(owner, attr):
            setattr(owner, attr, clock.wrap(stage, getattr(owner, attr)))

    from botocore.client import BaseClient

    make_api_call = BaseClient._make_api_call

    def api_call(self, operation_name, api_params):
        return clock.measure(
            f"S3 {operation_name}", make_api_call, self, operation_name, api_params
        )

    BaseClient._make_api_call = api_call


class IdentityGenerators:
    """Stands in for inference.Generators: translations are the inputs themselves."""

    precision = "identity"
    replicas = 1

    def __init__(self, image_size: int, clock: StageClock | None) -> None:
        self.image_size = image_size
        self._clock = clock

    def _identity(self, batch, reconstruct: bool):
        batch = np.asarray(batch)
        return batch, (batch if reconstruct else None)

    def translate(self, batch, direction: str, reconstruct: bool = True, stats=None):
        if self._clock is None:
            return self._identity(batch, reconstruct)
        return self._clock.measure("infer (identity)", self._identity, batch, reconstruct)


def use_identity_model(clock: StageClock | None) -> None:
    """Generators.load (the new pipeline) and Translator (the pipeline before it) -> identity."""
    from cyclegan_jobs import inference
    from cyclegan_jobs.translation import translate as job

    def load(cls, version_uri, model_cfg, precision="auto", names=None, **kw):
        return IdentityGenerators(model_cfg.image_size, clock)

    inference.Generators.load = classmethod(load)
    if hasattr(job, "Translator"):  # the old pipeline: Translator(...)(batch) -> [outs]

        class IdentityTranslator:
            precision = "identity"

            def __init__(self, version_uri, model_cfg, direction, precision, reconstruct, *a):
                self._gens = IdentityGenerators(model_cfg.image_size, clock)
                self._reconstruct = reconstruct

            def __call__(self, batch):
                outs = self._gens.translate(batch, "b2a", self._reconstruct)
                return [o for o in outs if o is not None]

        job.Translator = IdentityTranslator


def record_output_times(times: list[float]) -> None:
    """Note when each stylized output has been written (the work done, whatever the pipeline
    records and when: the manifest is written in bursts)."""
    from cyclegan_jobs import storage

    write_bytes = storage.write_bytes

    def timed_write(uri, *args, **kwargs):
        etag = write_bytes(uri, *args, **kwargs)
        if "/stylized/" in str(uri):
            times.append(time.perf_counter())
        return etag

    storage.write_bytes = timed_write


def steady_rate(times: list[float], skip: int) -> float | None:
    """Images/s between the `skip`-th and the last output (the first batch left out)."""
    times = sorted(times)
    if len(times) <= skip + 1:
        return None
    return (len(times) - 1 - skip) / (times[-1] - times[skip])


def record_infer_calls(calls: list[tuple[float, float, int]]) -> None:
    """Note each model call of the pipeline (start, end, tiles in the batch): the first one also
    loads and compiles; the rest is the steady state."""
    from cyclegan_jobs.translation import translate as job

    infer = job._infer

    def timed_infer(run, generators, batch, *rest):
        t0 = time.perf_counter()
        outs = infer(run, generators, batch, *rest)
        calls.append((t0, time.perf_counter(), len(batch)))
        return outs

    job._infer = timed_infer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    for name in ("endpoint", "input", "output", "model", "work-dir", "result"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--format", default="png", choices=("png", "jpeg"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pixel-budget", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--size", default=None, help="native or a long side (default: the model's)")
    p.add_argument("--feed-processes", type=int, default=0)
    p.add_argument("--identity", action="store_true")
    p.add_argument("--stages", action="store_true")
    p.add_argument("--s3-backend", default="boto3", choices=("boto3", "obstore"),
                   help="obstore: GETs and PUTs through benchmarks/obstore_store.py")  # fmt: skip
    return p.parse_args()


def make_config(args: argparse.Namespace) -> Any:
    """The TranslateConfig of the run (options this cyclegan_jobs lacks are an error)."""
    from cyclegan_jobs.config import TranslateConfig

    options: dict[str, Any] = dict(
        input=args.input,
        output=args.output,
        model=args.model,
        batch_size=args.batch_size,
        format=args.format,
        work_dir=args.work_dir,
    )
    fields = {f.name for f in dataclasses.fields(TranslateConfig)}
    size = args.size if args.size in (None, "native") else int(args.size)
    for name, value in (("pixel_budget", args.pixel_budget), ("workers", args.workers),
                        ("size", size)):  # fmt: skip
        if value is not None:
            if name not in fields:
                raise SystemExit(f"this cyclegan_jobs has no TranslateConfig.{name}")
            options[name] = value
    if args.feed_processes:
        options["feed_processes"] = args.feed_processes
    return TranslateConfig(**options)


def usage_delta(u0: Any, u1: Any, fields: tuple[str, ...] = ("ru_utime", "ru_stime")) -> float:
    return sum(getattr(u1, f) - getattr(u0, f) for f in fields)


def main() -> None:
    args = parse_args()
    clock = StageClock() if args.stages else None
    if clock is not None:
        install_stage_clock(clock)
    done_times: list[float] = []
    infer_calls: list[tuple[float, float, int]] = []
    record_output_times(done_times)
    record_infer_calls(infer_calls)
    from cyclegan_jobs import storage
    from cyclegan_jobs.translation.translate import translate

    if args.identity:
        use_identity_model(clock)
    storage.configure(endpoint_url=args.endpoint)
    if args.s3_backend == "obstore":
        from obstore_store import use_obstore  # beside this script

        use_obstore()
    cfg = make_config(args)

    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = translate(cfg)
    usage1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage_delta(usage0, usage1)
    children_cpu = usage_delta(children0, children1)  # worker processes, once they have ended
    result = {
        "summary": summary,
        "ok": summary["counts"]["ok"],
        "images_per_sec": summary["images_per_sec"],
        # From the first batch's last output to the last output: startup and the first batch
        # left out entirely (the summary removes the first batch's images but only the model
        # load's time, so its figure includes listing and the first fetches).
        "steady_images_per_sec": steady_rate(done_times, args.batch_size - 1),
        "output_times": [round(t - wall0, 4) for t in sorted(done_times)],  # from translate()
        # Model calls: [start, end, tiles] in s from the start of translate().
        "infer_calls": [[round(a - wall0, 4), round(b - wall0, 4), n] for a, b, n in infer_calls],
        "pixel_budget": summary.get("pixel_budget", getattr(cfg, "pixel_budget", None)),
        "rss_mb": usage1.ru_maxrss / 1024,
        "translate_wall_s": wall,
        "translate_cpu_s": cpu + children_cpu,
        "children_cpu_s": children_cpu,
        "children_rss_mb": children1.ru_maxrss / 1024,
        "user_s": usage1.ru_utime - usage0.ru_utime,
        "system_s": usage1.ru_stime - usage0.ru_stime,
        "voluntary_switches": usage1.ru_nvcsw - usage0.ru_nvcsw,
        "involuntary_switches": usage1.ru_nivcsw - usage0.ru_nivcsw,
        "cores": sorted(os.sched_getaffinity(0)),
        "stages": clock.report() if clock is not None else None,
    }
    # The whole process's CPU (imports and setup too), for the harness's count of what other
    # processes used meanwhile when py-spy, not the harness, is this process's parent.
    end, end_children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    result["process_cpu_s"] = sum(
        getattr(u, f) for u in (end, end_children) for f in ("ru_utime", "ru_stime")
    )
    with open(args.result, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    sys.exit(main())

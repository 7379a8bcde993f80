"""The translate job under sustained throttling (issue 19): 40 % of requests answered SlowDown.

A local SeaweedFS server holds 400 small JPEG faces and a tiny model (random weights, 32 px). The
job runs in this process with a botocore before-send hook on its S3 client that answers a share
of all its requests (model, listings, HEADs, GETs, PUTs, records) with 503 SlowDown before they
reach the server. The same workload and fault rate run side by side with two clients:

  before  botocore's standard retry mode as f88ac07 configured it: retries drawn from one
          RetryQuota per client, which sustained throttling drains (then RetryQuotaReached)
  now     storage's client: the same mode's conditions and backoff, budgeted per request

Each starts from an empty output, so there is no ledger. A run that reports failed inputs, or
stops, is run again (up to --max-runs), each on a fresh client (a new process's) and with the
ledger deleted first, so that triage asks every output already there (a HEAD each). Printed per
run: wall time, requests made and 503s injected, inputs ok / up to date / failed, HEADs, and how
it ended; then the runs needed until every input is done and whether the goal is met: every
input done in one run, or within --max-runs runs that each made progress.

Run: `.venv/bin/python benchmarks/throttle.py [--inputs 400] [--share 0.4] [--max-runs 5]
      [--only now|before] [--seed 19]`
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The development tools (cyclegan_local) are imported from the repository, not installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.s3_error: the tests' fault injection
sys.path.insert(0, str(ROOT / "benchmarks"))

from botocore.awsrequest import AWSResponse  # noqa: E402
from helpers import s3_error  # noqa: E402
from translate import KEYS, make_version, put_faces  # noqa: E402  (benchmarks/translate.py)

from cyclegan_jobs import storage  # noqa: E402
from cyclegan_jobs.config import TranslateConfig  # noqa: E402
from cyclegan_jobs.translation.translate import TranslateError, translate  # noqa: E402
from cyclegan_local import local_s3  # noqa: E402

BUCKET, SIZE = "bench", 32
MODES = ("before", "now")


class SlowDown:
    """A before-send hook: answers `share` of the requests 503 SlowDown (seeded), counts them."""

    def __init__(self, share: float, seed: int) -> None:
        self.share, self.random = share, random.Random(seed)
        self.requests = self.injected = 0
        self._lock = threading.Lock()

    def __call__(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        with self._lock:
            self.requests += 1
            if self.random.random() >= self.share:
                return None
            self.injected += 1
        return s3_error(request, 503, "SlowDown")


def f88ac07_client(endpoint_url: str, connections: int) -> Any:
    """The client f88ac07's storage built (standard mode, 6 retries), for the side by side."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 6, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=connections,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def job_client(mode: str, endpoint_url: str, cfg: TranslateConfig, hook: SlowDown) -> Any:
    """A fresh client for one run (as a new process has), with the fault hook on it."""
    connections = 2 * cfg.workers + 4  # what translate asks of the pool: no rebuild mid-run
    storage.configure(endpoint_url=endpoint_url)
    if mode == "before":
        storage.configure(client=f88ac07_client(endpoint_url, connections))
    else:
        storage.ensure_pool(connections)
    client = storage.get_client()
    client.meta.events.register_first("before-send.s3.*", hook)
    return client


def done_inputs(output: str, inputs: int) -> int:
    """Inputs with both outputs in place (listed without faults)."""
    stylized = {
        i.rel for i in storage.list_objects(storage.join(output, "stylized"), missing_ok=True)
    }
    rebuilt = storage.list_objects(storage.join(output, "reconstructed"), missing_ok=True)
    return min(inputs, len(stylized & {i.rel for i in rebuilt}))


def one_run(mode: str, run: int, endpoint_url: str, cfg: TranslateConfig, args: Any) -> dict:
    hook = SlowDown(args.share, args.seed * 100 + run)
    client = job_client(mode, endpoint_url, cfg, hook)
    started = time.perf_counter()
    try:
        summary, ended = translate(cfg), "finished"
    except TranslateError as err:
        summary, ended = None, f"stopped: {str(err).splitlines()[0][:160]}"
    wall = time.perf_counter() - started
    assert storage.get_client() is client, "the job used another client than the hooked one"
    counts = summary["counts"] if summary else {}
    return {
        "wall_s": wall,
        "requests": hook.requests,
        "injected": hook.injected,
        "ok": counts.get("ok", 0),
        "skipped": counts.get("skipped", 0),
        "failed": counts.get("failed", 0),
        "heads": summary["head_requests"] if summary else None,
        "ended": ended if summary is None or not counts.get("failed") else "finished, failures",
    }


def run_mode(mode: str, endpoint_url: str, tmp: Path, args: Any) -> dict:
    output = f"s3://{BUCKET}/out-{mode}"
    print(
        f"\n== {mode}: {args.inputs} inputs, {args.share:.0%} of requests 503 SlowDown", flush=True
    )
    runs, done = [], 0
    for run in range(1, args.max_runs + 1):
        storage.configure(endpoint_url=endpoint_url)
        storage.delete_prefix(storage.join(output, "_ledger"))  # no ledger: HEAD what is there
        cfg = TranslateConfig(
            input=f"s3://{BUCKET}/in", output=output, model=f"s3://{BUCKET}/models",
            batch_size=32, work_dir=str(tmp / f"work-{mode}-{run}"),
        )  # fmt: skip
        result = one_run(mode, run, endpoint_url, cfg, args)
        storage.configure(endpoint_url=endpoint_url)
        before, done = done, done_inputs(output, args.inputs)
        result["progress"] = done - before
        runs.append(result)
        heads = "-" if result["heads"] is None else result["heads"]
        print(
            f"run {run}: {result['wall_s']:6.1f} s  {result['requests']:5d} requests, "
            f"{result['injected']:4d} answered 503  | ok {result['ok']:3d}, up to date "
            f"{result['skipped']:3d}, failed {result['failed']:3d}, HEADs {heads}  | done "
            f"{done}/{args.inputs} (+{result['progress']})  {result['ended']}",
            flush=True,
        )
        if done == args.inputs and result["ended"] == "finished":
            break
    progressing = all(r["progress"] > 0 for r in runs)
    return {"runs": runs, "complete": done == args.inputs, "progressing": progressing}


def report(results: dict[str, dict], args: Any) -> None:
    print(f"\n== runs until all {args.inputs} inputs are done (at most {args.max_runs})")
    for mode, r in results.items():
        runs = r["runs"]
        wall = sum(x["wall_s"] for x in runs)
        needed = f"{len(runs)} run(s)" if r["complete"] else f"not done after {len(runs)} runs"
        requests = sum(x["requests"] for x in runs)
        injected = sum(x["injected"] for x in runs)
        met = r["complete"] and r["progressing"]
        goal = "goal met" if met else "goal missed"
        print(
            f"{mode:6s}: {needed}, {wall:.0f} s in all, {requests} requests, {injected} answered "
            f"503 ({injected / max(requests, 1):.0%}); {goal} (one run, or <= {args.max_runs} "
            "each making progress)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument("--share", type=float, default=0.4, help="share of requests answered 503")
    parser.add_argument("--max-runs", type=int, default=5)
    parser.add_argument("--only", choices=MODES, nargs="*", default=list(MODES))
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID=KEYS["access_key"], AWS_SECRET_ACCESS_KEY=KEYS["secret_key"]
    )
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory(prefix="bench-throttle-") as tmp_dir:
        tmp = Path(tmp_dir)
        with local_s3.running(tmp / "s3", **KEYS) as server:
            storage.configure(endpoint_url=server.endpoint_url)
            server.client().create_bucket(Bucket=BUCKET)
            make_version(f"s3://{BUCKET}/models", "tiny", SIZE)
            put_faces(f"s3://{BUCKET}/in", args.inputs, SIZE)
            print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; SeaweedFS")
            results = {m: run_mode(m, server.endpoint_url, tmp, args) for m in args.only}
            storage.configure()
    report(results, args)


if __name__ == "__main__":
    main()

"""The compose stack's s3-init job: create the buckets and, when asked, put sample data in them.

Runs in the job image against the stack's S3 server (or any S3):

    python /opt/cyclegan-jobs/init_s3.py

Environment: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (boto3's own chain);
CYCLEGAN_BUCKETS (comma-separated, default the four the DAGs' defaults use); CYCLEGAN_SAMPLE_DATA
("true": the training domains into s3://cyclegan-data/sample/ and CYCLEGAN_SAMPLE_FACES
generated faces into the input prefix, each only where missing; default "false"). Idempotent:
existing buckets and objects are left as they are, nothing is ever deleted.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cyclegan_jobs import storage

log = logging.getLogger("init_s3")
BUCKETS = "cyclegan-input,cyclegan-output,cyclegan-models,cyclegan-data"
DOMAINS = "s3://cyclegan-data/sample"
N_DOMAIN = 64
INPUT = os.environ.get("CYCLEGAN_INPUT_URI", "s3://cyclegan-input/faces/")


def wait_for_s3(client, timeout: float = 120.0) -> None:
    """The server answers a listing (it may still be starting when this job starts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() > deadline:
                raise SystemExit(f"S3 at {client.meta.endpoint_url} not ready: {err}") from err
            time.sleep(2)


def create_buckets(client, names: list[str]) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for name in names:
        if name in existing:
            log.info("bucket %s: already there", name)
        else:
            client.create_bucket(Bucket=name)
            log.info("bucket %s: created", name)


def put_sample_data(n_faces: int) -> None:
    """The training domains and `n_faces` generated input faces, each only when missing."""
    from cyclegan_jobs.sample_data import write_sample_domains, write_sample_faces

    if sum(1 for _ in storage.list_objects(DOMAINS)) >= 2 * N_DOMAIN:
        log.info("training data: %s already there", DOMAINS)
    else:
        write_sample_domains(DOMAINS, n_a=N_DOMAIN, n_b=N_DOMAIN, size=64)
        log.info("training data: %d paintings + %d faces under %s", N_DOMAIN, N_DOMAIN, DOMAINS)
    if next(storage.list_objects(INPUT), None) is not None:
        log.info("input: %s already has objects; left as is", INPUT)
        return
    write_sample_faces(INPUT, n_faces, 64)
    log.info("input: %d generated faces (64x64 JPEG) into %s", n_faces, INPUT)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    client = boto3.client("s3")
    wait_for_s3(client)
    create_buckets(client, [b for b in os.environ.get("CYCLEGAN_BUCKETS", BUCKETS).split(",") if b])
    if os.environ.get("CYCLEGAN_SAMPLE_DATA", "false").lower() in ("1", "true", "yes"):
        put_sample_data(int(os.environ.get("CYCLEGAN_SAMPLE_FACES", "6")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

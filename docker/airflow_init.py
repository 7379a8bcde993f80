"""The compose stack's airflow-init job: everything the other Airflow services need, idempotent.

1. `airflow db migrate` (the Postgres metadata DB);
2. the admin user (FAB), from _AIRFLOW_WWW_USER_USERNAME / _AIRFLOW_WWW_USER_PASSWORD, created
   once (an existing user keeps its password);
3. the pool CYCLEGAN_POOL (default cyclegan_gpu) with CYCLEGAN_GPU_SLOTS slots (default 1: one
   per GPU worker, so that each GPU runs one heavy task at a time);
4. the connection CYCLEGAN_AWS_CONN_ID (default aws_default) to the S3 server at
   CYCLEGAN_S3_ENDPOINT with the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, replaced on
   every run so that changed keys take effect. Without CYCLEGAN_S3_ENDPOINT (real AWS) the
   connection has no endpoint; without keys the workers use their own credential chain.

Secrets are passed to the Airflow CLI and never printed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

log = logging.getLogger("airflow_init")


def airflow(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["airflow", *args], capture_output=True, text=True, check=False)
    if check and done.returncode:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"`airflow {args[0]} {args[1] if len(args) > 1 else ''}` failed")
    return done


def json_output(stdout: str) -> list:
    """The JSON list in a CLI's stdout (Airflow prints warnings to stdout before it)."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("[")]
    return json.loads("\n".join(lines[starts[0] :])) if starts else []


def admin_user() -> None:
    username = os.environ.get("_AIRFLOW_WWW_USER_USERNAME", "airflow")
    password = os.environ.get("_AIRFLOW_WWW_USER_PASSWORD")
    if not password:
        raise SystemExit("_AIRFLOW_WWW_USER_PASSWORD is empty: set it in docker/.env")
    users = json_output(airflow("users", "list", "--output", "json").stdout)
    if any(u.get("username") == username for u in users):
        log.info("admin user %s: already there", username)
        return
    airflow(
        "users", "create", "--username", username, "--password", password, "--role", "Admin",
        "--firstname", "Airflow", "--lastname", "Admin", "--email", f"{username}@example.invalid",
    )  # fmt: skip
    log.info("admin user %s: created", username)


def pool() -> None:
    name = os.environ.get("CYCLEGAN_POOL", "cyclegan_gpu")
    slots = os.environ.get("CYCLEGAN_GPU_SLOTS", "1")
    airflow("pools", "set", name, slots, "CycleGAN heavy tasks: one slot per GPU worker")
    log.info("pool %s: %s slots", name, slots)


def connection() -> None:
    conn_id = os.environ.get("CYCLEGAN_AWS_CONN_ID", "aws_default")
    extra = {"region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint := os.environ.get("CYCLEGAN_S3_ENDPOINT"):
        extra["endpoint_url"] = endpoint
    conn = {"conn_type": "aws", "extra": extra}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        conn["login"] = os.environ["AWS_ACCESS_KEY_ID"]
        conn["password"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    airflow("connections", "delete", conn_id, check=False)
    airflow("connections", "add", conn_id, "--conn-json", json.dumps(conn))
    log.info("connection %s: endpoint %s", conn_id, extra.get("endpoint_url", "(AWS)"))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    airflow("db", "migrate")
    log.info("metadata DB migrated")
    admin_user()
    pool()
    connection()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Airflow images' HEALTHCHECK: probe whichever component this container runs.

PID 1 is `airflow <command>`; the probe is the one Airflow's own docker-compose uses for it:
api-server -> /api/v2/monitor/health, scheduler -> its health server (:8974/health, with
AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK), dag-processor and triggerer -> `airflow jobs check`,
celery worker -> `celery inspect ping`. Anything else (a one-shot command) counts as healthy.
Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"


def command(cmdline: Path = Path("/proc/1/cmdline")) -> list[str]:
    """The arguments after `airflow` in PID 1's command line."""
    args = [a for a in cmdline.read_bytes().decode().split("\0") if a]
    names = [Path(a).name for a in args]
    return args[names.index("airflow") + 1 :] if "airflow" in names else []


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status == 200
    except OSError:
        return False


def run_ok(*args: str) -> bool:
    return subprocess.run(args, capture_output=True, timeout=60, check=False).returncode == 0


def main() -> int:
    cmd = command()
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    if cmd[:1] == ["api-server"]:
        ok = http_ok("http://localhost:8080/api/v2/monitor/health")
    elif cmd[:1] == ["scheduler"]:
        ok = http_ok("http://localhost:8974/health")
    elif cmd[:1] == ["dag-processor"]:
        ok = run_ok("airflow", "jobs", "check", "--job-type", "DagProcessorJob", "--hostname", host)
    elif cmd[:1] == ["triggerer"]:
        ok = run_ok("airflow", "jobs", "check", "--job-type", "TriggererJob", "--hostname", host)
    elif cmd[:2] == ["celery", "worker"]:
        ok = run_ok("celery", "--app", CELERY_APP, "inspect", "ping", "-d", f"celery@{host}")
    else:
        ok = True
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

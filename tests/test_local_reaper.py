"""cyclegan_local.reaper: whatever ends a launcher (SIGKILL included), what it started stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import process_alive

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 2.0
# A launcher like `make airflow`'s: guard() first, then children of every kind that escapes a
# kill of the launcher's process group: in its own session (as SeaweedFS and `airflow
# standalone` are), re-parented to init (its parent exited), ignoring SIGTERM, and one without the
# launcher's environment (as a process that rewrites its title looks from /proc).
LAUNCHER = textwrap.dedent(
    f"""
    import subprocess, sys, time
    sys.path.insert(0, {str(REPO)!r})
    from cyclegan_local import reaper
    token = reaper.guard(grace={GRACE_S})
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    kids = [
        subprocess.Popen(["sleep", "300"]),
        subprocess.Popen(["sleep", "300"], start_new_session=True),
        subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True),
        subprocess.Popen(["sleep", "300"], env={{}}, start_new_session=True),  # no marker
    ]
    orphan = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                            capture_output=True, text=True, check=True).stdout.strip()
    time.sleep(3 * reaper.POLL_S)  # the watcher has noted the children by now
    print(token, *(k.pid for k in kids), orphan, flush=True)
    time.sleep(300)
    """
)


def _start_launcher(tmp_path: Path) -> tuple[subprocess.Popen, str, list[int]]:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    token, *pids = proc.stdout.readline().split()
    pids = [int(p) for p in pids]
    assert len(pids) == 5 and all(process_alive(p) for p in pids)
    return proc, token, pids


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if process_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_sigkill_of_the_launcher_stops_everything_it_started(tmp_path: Path) -> None:
    proc, _, pids = _start_launcher(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: no cleanup code of its runs
        proc.wait()
        left = _wait_gone(pids, GRACE_S + 10)
        assert not left, f"still running after the launcher's SIGKILL: {left}"
    finally:
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_the_watcher_the_same_children_outlive_the_launcher(tmp_path: Path) -> None:
    """The control: with this launcher's watcher gone, a kill of the launcher's process group
    leaves the children that the first test saw stopped."""
    proc, token, pids = _start_launcher(tmp_path)
    try:
        watchers = [
            int(e.name)
            for e in Path("/proc").iterdir()
            if e.name.isdigit() and token.encode() in _cmdline(e)
        ]
        assert len(watchers) == 1
        os.kill(watchers[0], signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        own_sessions = pids[1:4]  # the orphan is still in the group: the kill reached it
        assert [p for p in own_sessions if process_alive(p)] == own_sessions, (
            "they escape a group kill"
        )
    finally:
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""

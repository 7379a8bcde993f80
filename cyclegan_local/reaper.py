"""Nothing outlives a launcher: a watcher that stops what the launcher started once it is gone.

`make run` and `make airflow` start a SeaweedFS server, `airflow standalone` and its ~20
children (scheduler, DAG processor, API server, task processes; some start sessions of their
own). A launcher that is killed with SIGKILL (an impatient second Ctrl-C, `kill -9`, an OOM
kill) runs no cleanup code, and its descendants would be re-parented to init and keep their
ports for hours. So, before it starts anything, the launcher calls `guard()`:

- a random token goes into the launcher's environment (`CYCLEGAN_LOCAL_SESSION`), so every
  process it starts from then on, and their children, carry it (`/proc/<pid>/environ` keeps
  the environment a process was started with, whatever session or parent it has later);
- a watcher process (this module, in a session of its own, deaf to Ctrl-C) blocks on a pipe
  whose only writer is the launcher. The kernel closes that end when the launcher exits, by any
  means, so the read returns: the watcher then sends SIGTERM to every process that carries the
  token, waits up to `GRACE_S`, sends SIGKILL to what is left, and exits.

After a clean exit the launcher has stopped everything itself and the watcher finds nothing.
Linux only (it reads /proc), like the local stack.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER = "CYCLEGAN_LOCAL_SESSION"
GRACE_S = 15.0  # SIGTERM first: SeaweedFS and Airflow flush their state on it
_KEEP: list[int] = []  # the pipe's write end, held for the life of the launcher


def guard(grace: float = GRACE_S) -> str:
    """Mark this process's future children and start their watcher; returns the token."""
    token = secrets.token_hex(12)
    read_end, write_end = os.pipe()  # both non-inheritable: no other child holds the writer
    watcher_env = {k: v for k, v in os.environ.items() if k != MARKER}
    subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), token, str(read_end), str(grace)],
        pass_fds=(read_end,),
        env=watcher_env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the launcher's process group spares it
    )
    os.close(read_end)
    _KEEP.append(write_end)  # open until this process exits: then the watcher reads EOF
    os.environ[MARKER] = token
    return token


def marked(token: str) -> list[int]:
    """The live processes whose starting environment carries `token` (not this one)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or a zombie
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop_marked(token: str, grace: float = GRACE_S) -> int:
    """SIGTERM every marked process (again for any that appear), SIGKILL what is left after
    `grace` seconds; returns how many processes were found."""
    seen: set[int] = set()
    deadline = time.monotonic() + grace
    while (pids := marked(token)) and time.monotonic() < deadline:
        _signal_all([p for p in pids if p not in seen], signal.SIGTERM)
        seen.update(pids)
        time.sleep(0.2)
    for _ in range(50):  # a dying parent may still fork; a few rounds catch its children
        if not (pids := marked(token)):
            break
        seen.update(pids)
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.1)
    return len(seen)


def _watch(token: str, read_end: int, grace: float) -> None:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    while os.read(read_end, 1):  # nobody writes: this returns b"" when the launcher is gone
        pass
    left = stop_marked(token, grace)
    if left:
        try:
            print(
                f"[reaper] the launcher is gone; stopped {left} process(es) it had started",
                file=sys.stderr,
                flush=True,
            )
        except OSError:  # the terminal went away with the launcher
            pass


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))

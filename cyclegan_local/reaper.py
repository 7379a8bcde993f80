"""Nothing outlives a launcher: a watcher that stops what the launcher started once it is gone.

`make run` and `make airflow` start a SeaweedFS server, `airflow standalone` and its ~20
children (scheduler, DAG processor, API server, task processes; some start sessions of their
own). A launcher that is killed with SIGKILL (an impatient second Ctrl-C, `kill -9`, an OOM
kill) runs no cleanup code, and its descendants would be re-parented to init and keep their
ports for hours. So, before it starts anything, the launcher calls `guard()`, which starts a
watcher (this module, in a session of its own, deaf to Ctrl-C and SIGTERM):

- the watcher blocks on a pipe whose only writer is the launcher; the kernel closes that end
  when the launcher exits, by any means, and the read returns;
- meanwhile it notes the launcher's descendants once a second (pid and start time, so a reused
  pid is not mistaken for one of them): once the launcher is gone, its children belong to init
  and the process tree no longer leads to them;
- a random token in the launcher's environment (`CYCLEGAN_LOCAL_SESSION`) marks every process
  it starts, and their children, too (a process that rewrites its title, as Airflow's API server
  does, loses it: hence the notes above);
- when the launcher is gone: SIGTERM to every noted or marked process and their descendants,
  again for any that appear, up to `GRACE_S`; SIGKILL to what is left.

After a clean exit the launcher has stopped everything itself and the watcher finds nothing.
Linux only (it reads /proc), like the local stack.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

MARKER = "CYCLEGAN_LOCAL_SESSION"
GRACE_S = 15.0  # SIGTERM first: SeaweedFS and Airflow flush their state on it
POLL_S = 1.0  # how often the watcher notes the launcher's descendants
_KEEP: list[int] = []  # the pipe's write end, held for the life of the launcher


def guard(grace: float = GRACE_S) -> str:
    """Mark this process's future children and start their watcher; returns the token."""
    token = secrets.token_hex(12)
    read_end, write_end = os.pipe()  # both non-inheritable: no other child holds the writer
    watcher_env = {k: v for k, v in os.environ.items() if k != MARKER}
    args = [token, str(read_end), str(grace), str(os.getpid())]
    subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        pass_fds=(read_end,),
        env=watcher_env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the launcher's process group spares it
    )
    os.close(read_end)
    _KEEP.append(write_end)  # open until this process exits: then the watcher reads EOF
    os.environ[MARKER] = token
    return token


class Proc(NamedTuple):
    parent: int
    group: int
    start: str  # clock ticks after boot: with the pid, names a process (pids are reused)


def process_table() -> dict[int, Proc]:
    """pid -> parent, process group and start time of every live process (zombies left out)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z":
            table[int(entry.name)] = Proc(int(fields[1]), int(fields[2]), fields[19])
    return table


def descendants(roots: set[int], table: dict[int, Proc]) -> set[int]:
    """`roots` and every live process below them."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.parent, []).append(pid)
    found, todo = set(), [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


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


def _targets(token: str, noted: dict[int, str]) -> dict[int, str]:
    """What to stop: the noted processes still running (same start time), the marked ones,
    and everything below them; also noted, since their parents may be gone next time."""
    table = process_table()
    roots = {pid for pid, start in noted.items() if pid in table and table[pid].start == start}
    roots.update(marked(token))
    found = descendants(roots, table) - {os.getpid(), 1}
    noted.update({pid: table[pid].start for pid in found})
    return {pid: table[pid].start for pid in found}


def _signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop_all(token: str, noted: dict[int, str], grace: float = GRACE_S) -> int:
    """SIGTERM every target (again for any that appear), SIGKILL what is left after `grace`
    seconds; returns how many processes were stopped."""
    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while (targets := set(_targets(token, noted))) and time.monotonic() < deadline:
        _signal_all(targets - signalled, signal.SIGTERM)
        signalled |= targets
        time.sleep(0.2)
    for _ in range(50):  # a dying parent may still fork; a few rounds catch its children
        if not (targets := set(_targets(token, noted))):
            break
        signalled |= targets
        _signal_all(targets, signal.SIGKILL)
        time.sleep(0.1)
    return len(signalled)


def _watch(token: str, read_end: int, grace: float, launcher: int) -> None:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    noted: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([read_end], [], [], POLL_S)
        if ready and not os.read(read_end, 1):  # nobody writes: b"" once the launcher is gone
            break
        table = process_table()
        below = descendants({launcher}, table) - {launcher, os.getpid()}
        noted.update({pid: table[pid].start for pid in below})
    stopped = stop_all(token, noted, grace)
    if stopped:
        try:
            print(
                f"[reaper] the launcher is gone; stopped {stopped} process(es) it had started",
                file=sys.stderr,
                flush=True,
            )
        except OSError:  # the terminal went away with the launcher
            pass


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))

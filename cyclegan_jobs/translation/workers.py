"""Where the translate job's load and store stages run: threads, or worker processes.

Threads are the default: Pillow and zlib release the GIL, so decoding and encoding run in
parallel, but botocore's request handling (about 2.4 ms of Python per request here) does not,
which caps a process at roughly one core of requests. Worker processes (`feed_processes`) lift
that cap for machines with many cores feeding a GPU. Both give the same interface: submit a
job, take results in completion order, with the stall deadline applied while waiting.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cyclegan_jobs import storage
from cyclegan_jobs.errors import StalledError, SystemicError


class StallClock:
    """The stall deadline: any stage that finishes something resets it."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()

    def check(self) -> None:
        idle = time.monotonic() - self.last
        if idle > self.seconds:
            raise StalledError(
                f"no progress for {idle:.0f} s (stall deadline {self.seconds:g} s); "
                "is the object store answering"
            )


class _Number:
    """A thread-only stand-in for multiprocessing.Value."""

    def __init__(self) -> None:
        self.value = 0


class PixelBudget:
    """Decoded pixels in flight, across threads (or processes, with a multiprocessing context):
    a picture waits until it fits. One picture alone is always let in, so a single image larger
    than the budget still goes through."""

    def __init__(self, limit: int, context: Any = None):
        self.limit = limit
        if context is None:
            self._cond: Any = threading.Condition()
            self._used: Any = _Number()
            self._peak: Any = _Number()
        else:
            self._cond = context.Condition()
            self._used = context.Value("q", 0, lock=False)  # guarded by the condition's lock
            self._peak = context.Value("q", 0, lock=False)

    @property
    def used(self) -> int:
        return int(self._used.value)

    @property
    def peak(self) -> int:
        return int(self._peak.value)

    def acquire(self, pixels: int) -> None:
        """Wait until `pixels` fit (or nothing else is held), and take them."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._used.value == 0 or self._used.value + pixels <= self.limit
            )
            self._used.value += pixels
            self._peak.value = max(self._peak.value, self._used.value)

    def release(self, pixels: int) -> None:
        """Give back pixels taken by acquire() (in any thread or process sharing the budget)."""
        if pixels:
            with self._cond:
                self._used.value -= pixels
                self._cond.notify_all()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        self.acquire(pixels)
        try:
            yield
        finally:
            self.release(pixels)


class Producer:
    """Runs an iterator (listing pages, triage's requests) in a daemon thread and hands its
    items over through a bounded queue, so the consumer's waits respect the stall deadline
    wherever the producer blocks. An exception in the producer is raised in the consumer."""

    _END = object()

    def __init__(self, items: Iterator[Any], clock: StallClock, size: int):
        self._queue: queue.Queue = queue.Queue(size)
        self._clock, self.stopped = clock, False
        threading.Thread(target=self._run, args=(items,), name="triage", daemon=True).start()

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                self._clock.tick()
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as err:  # raised again in the consumer
            self._put(err)

    def _put(self, obj: Any) -> bool:
        while not self.stopped:
            try:
                self._queue.put(obj, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                obj = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._clock.check()
                continue
            if obj is self._END:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj

    def stop(self) -> None:
        self.stopped = True


class _Results:
    """Completion-ordered results of submitted jobs."""

    def __init__(self) -> None:
        self.results: queue.Queue = queue.Queue()
        self.pending = 0

    def next_result(self, clock: StallClock) -> Any:
        """The next result; StalledError when nothing at all progressed for the deadline."""
        while True:
            self.watch()
            try:
                result = self.results.get(timeout=1.0)
            except queue.Empty:
                clock.check()
                continue
            self.pending -= 1
            if isinstance(result, BaseException):  # a worker process died under the job
                raise SystemicError(f"worker process failed: {result!r}")
            return result

    def ready(self, wait_s: float = 0.0) -> bool:
        """Whether a result is waiting (after waiting up to `wait_s` for one)."""
        deadline = time.monotonic() + wait_s
        while self.results.empty() and time.monotonic() < deadline:
            self.watch()
            time.sleep(0.01)
        return not self.results.empty()

    def watch(self) -> None:
        """Raise SystemicError when the workers can no longer deliver (threads always can)."""


class Threads(_Results):
    """Daemon threads applying `fn` (which must not raise) to submitted jobs.

    Daemon threads, because a thread stuck in a stalled request must not keep the process
    alive after the stall deadline has stopped the run.
    """

    def __init__(self, name: str, fn: Callable[[Any], Any], count: int):
        super().__init__()
        self._inbox: queue.Queue = queue.Queue()
        self._fn, self._count = fn, count
        for i in range(count):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def _work(self) -> None:
        while (job := self._inbox.get()) is not None:
            result = self._fn(job)
            # Not kept until the next job comes: a store job holds a whole picture's outputs.
            del job
            self.results.put(result)

    def submit(self, job: Any) -> None:
        self.pending += 1
        self._inbox.put(job)

    def close(self) -> None:
        for _ in range(self._count):
            self._inbox.put(None)


class Processes:
    """A pool of spawned worker processes (no TensorFlow in them) shared by several stages.

    The children get the S3 settings and the shared pixel budget when they start; `stage(fn)`
    gives a Threads-like view whose jobs run `fn` in a child. `close()` terminates the children,
    so one stuck in a stalled request cannot outlive the run.

    A child that dies (the OOM killer, a crash in a decoder, kill -9) stops the run within
    about a second, naming the input it held: the pool would replace it, but its job would
    never answer, and a child killed inside the shared pixel budget or one of the pool's own
    locks leaves them held for every other child. The children say which job they start
    (`_started`), so the parent knows what a dead child held.
    """

    def __init__(self, count: int, budget_limit: int, start_timeout: float = 120.0):
        if storage.injected_client():
            raise ValueError(
                "worker processes build their own S3 clients: configure storage with an "
                "endpoint and credentials, not a ready client"
            )
        context = multiprocessing.get_context("spawn")
        self.budget = PixelBudget(budget_limit, context)
        self._started = context.SimpleQueue()  # (pid, ticket) from the children; 0: started
        self._lock = threading.Lock()
        self._holding: dict[int, int] = {}  # child pid -> the ticket it started last
        self._jobs: dict[int, tuple[str, Any]] = {}  # ticket -> (stage, job), until answered
        self._children: dict[int, Any] = {}  # pid -> Process, for the exit code of a dead one
        self._tickets = itertools.count(1)
        self._closed, self._watched = False, 0.0
        threading.Thread(target=self._read_starts, name="feed-starts", daemon=True).start()
        self._pool = context.Pool(
            count,
            initializer=_start_child,
            initargs=(storage.client_settings(), self.budget, self._started),
        )
        # Wait until every child has started (imports take seconds): that is not a stall. A
        # child whose start failed would be replaced forever by the pool: stop instead.
        try:
            failures = [
                e for e in self._pool.map_async(_ready, range(count), 1).get(start_timeout) if e
            ]
        except multiprocessing.TimeoutError:
            failures = [f"not started within {start_timeout:g} s"]
        if failures:
            self.close()
            raise SystemicError(f"worker processes failed to start: {failures[0]}")

    def stage(self, fn: Callable[[Any], Any]) -> _ProcessStage:
        return _ProcessStage(self, fn)

    def submit(self, stage: _ProcessStage, job: Any) -> None:
        """Run stage's function on `job` in a child; the answer goes to stage.results."""
        ticket = next(self._tickets)
        with self._lock:
            self._jobs[ticket] = (stage.name, job)

        def answer(result: Any) -> None:  # in the pool's result thread
            with self._lock:
                self._jobs.pop(ticket, None)
            stage.results.put(result)

        self._pool.apply_async(
            _run_job, (stage.fn, ticket, job), callback=answer, error_callback=answer
        )

    def watch(self) -> None:
        """SystemicError when a child died (looked at once a second at most)."""
        now = time.monotonic()
        if self._closed or now - self._watched < 1.0:
            return
        self._watched = now
        with self._lock:
            self._children.update((p.pid, p) for p in multiprocessing.active_children())
            for pid, ticket in self._holding.items():
                child = self._children.get(pid)
                if child is not None and child.exitcode is None:
                    continue
                job = self._jobs.get(ticket)
                held = f"in {job[0]} of {_describe(job[1])}" if job else "between jobs"
                raise SystemicError(
                    f"feed worker process {pid} died ({_exit_reason(child)}) {held}"
                )

    def _read_starts(self) -> None:
        # Polled, not a blocking get(): close() can then end this thread.
        while not self._closed:
            try:
                if self._started.empty():
                    time.sleep(0.05)
                    continue
                pid, ticket = self._started.get()
            except (OSError, EOFError):  # closed under us
                return
            with self._lock:
                self._holding[pid] = ticket

    def close(self) -> None:
        self._closed = True
        self._pool.terminate()


class _ProcessStage(_Results):
    def __init__(self, owner: Processes, fn: Callable[[Any], Any]):
        super().__init__()
        self._owner, self.fn = owner, fn
        self.name = getattr(fn, "__name__", None) or getattr(
            getattr(fn, "func", None), "__name__", type(fn).__name__.lower()
        )

    def submit(self, job: Any) -> None:
        self.pending += 1
        self._owner.submit(self, job)

    def watch(self) -> None:
        self._owner.watch()

    def close(self) -> None:
        """The pool is closed by its owner."""


def _describe(job: Any) -> str:
    """The input a stage's job is about: an Item, or a tuple that starts with one."""
    item = job[0] if isinstance(job, tuple) and job else job
    rel = getattr(getattr(item, "info", None), "rel", None)
    return rel if isinstance(rel, str) else type(job).__name__


def _exit_reason(child: Any) -> str:
    code = getattr(child, "exitcode", None)
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_child_budget: PixelBudget | None = None
_child_error: str | None = None
_child_started: Any = None


def _start_child(client_settings: dict[str, Any], budget: PixelBudget, started: Any) -> None:
    # Never raises: a failing initializer makes the pool respawn children forever.
    global _child_budget, _child_error, _child_started
    try:
        settings = dict(client_settings)
        storage.set_outage_wait(settings.pop("outage_wait"))
        storage.configure(**settings)
        _child_budget, _child_started = budget, started
        started.put((os.getpid(), 0))  # watched from now on, even before its first job
    except Exception as err:  # reported by _ready, then the parent stops the run
        _child_error = f"{type(err).__name__}: {err}"


def _run_job(fn: Callable[[Any], Any], ticket: int, job: Any) -> Any:
    """A stage's job in a child, announced first: if this child dies, the parent knows what
    it held."""
    _child_started.put((os.getpid(), ticket))
    return fn(job)


def _ready(_: int) -> str | None:
    """A job the pool answers once a child runs: why its start failed, or None."""
    return _child_error


def child_budget() -> PixelBudget | None:
    """In a worker process: the pixel budget shared with the parent's other workers."""
    return _child_budget

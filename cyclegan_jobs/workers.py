"""Where the translate job's load and store stages run: threads, or worker processes.

Threads are the default: Pillow and zlib release the GIL, so decoding and encoding run in
parallel, but botocore's request handling (about 2.4 ms of Python per request here) does not,
which caps a process at roughly one core of requests. Worker processes (`feed_processes`) lift
that cap for machines with many cores feeding a GPU. Both give the same interface: submit a
job, take results in completion order, with the stall deadline applied while waiting.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import storage


class Systemic(RuntimeError):
    """A failure that is not one image's: the run stops, keeps what it did, and exits 2."""


class Stalled(Systemic):
    """Nothing progressed for the stall deadline."""


class StallClock:
    """The stall deadline: any stage that finishes something resets it."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()

    def check(self) -> None:
        idle = time.monotonic() - self.last
        if idle > self.seconds:
            raise Stalled(
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

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(
                lambda: self._used.value == 0 or self._used.value + pixels <= self.limit
            )
            self._used.value += pixels
            self._peak.value = max(self._peak.value, self._used.value)
        try:
            yield
        finally:
            with self._cond:
                self._used.value -= pixels
                self._cond.notify_all()


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
        except BaseException as err:  # noqa: BLE001 - raised again in the consumer
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
        """The next result; Stalled when nothing at all progressed for the deadline."""
        while True:
            try:
                result = self.results.get(timeout=1.0)
            except queue.Empty:
                clock.check()
                continue
            self.pending -= 1
            if isinstance(result, BaseException):  # a worker process died under the job
                raise Systemic(f"worker process failed: {result!r}")
            return result


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
            self.results.put(self._fn(job))

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
    """

    def __init__(self, count: int, budget_limit: int, start_timeout: float = 120.0):
        if storage.injected_client():
            raise ValueError(
                "worker processes build their own S3 clients: configure storage with an "
                "endpoint and credentials, not a ready client"
            )
        context = multiprocessing.get_context("spawn")
        self.budget = PixelBudget(budget_limit, context)
        self._pool = context.Pool(
            count, initializer=_start_child, initargs=(storage.client_settings(), self.budget)
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
            self._pool.terminate()
            raise Systemic(f"worker processes failed to start: {failures[0]}")

    def stage(self, fn: Callable[[Any], Any]) -> _ProcessStage:
        return _ProcessStage(self._pool, fn)

    def close(self) -> None:
        self._pool.terminate()


class _ProcessStage(_Results):
    def __init__(self, pool: Any, fn: Callable[[Any], Any]):
        super().__init__()
        self._pool, self._fn = pool, fn

    def submit(self, job: Any) -> None:
        self.pending += 1
        self._pool.apply_async(
            self._fn, (job,), callback=self.results.put, error_callback=self.results.put
        )

    def close(self) -> None:
        """The pool is closed by its owner."""


_child_budget: PixelBudget | None = None
_child_error: str | None = None


def _start_child(client_settings: dict[str, Any], budget: PixelBudget) -> None:
    # Never raises: a failing initializer makes the pool respawn children forever.
    global _child_budget, _child_error
    try:
        storage.configure(**client_settings)
        _child_budget = budget
    except Exception as err:  # reported by _ready, then the parent stops the run
        _child_error = f"{type(err).__name__}: {err}"


def _ready(_: int) -> str | None:
    """A job the pool answers once a child runs: why its start failed, or None."""
    return _child_error


def child_budget() -> PixelBudget | None:
    """In a worker process: the pixel budget shared with the parent's other workers."""
    return _child_budget

"""Dynamic batching: images from concurrent requests share one forward pass.

One worker thread owns the model. Requests put their images on a bounded queue; the worker
takes up to ``max_batch`` of them, waiting at most ``max_wait_s`` after the oldest arrived for
more to come, and runs them together. Under load the queue fills while a batch runs, so the
next batch forms without waiting at all; a lone request waits at most ``max_wait_s``.

Why a thread and not the event loop: a forward pass holds the CPU for tens of milliseconds,
which would stall every other connection (uploads, health checks, metrics). Why one thread:
the model is one set of weights and its threads already use every core; and Grad-CAM hooks
the model's modules (``explain``), which must never see a scoring batch go through - so
exclusive jobs (:meth:`Batcher.call`) run on the same thread, between batches.

The queue is bounded in images: :meth:`Batcher.submit` raises :class:`QueueFull` (with a
``retry_after`` estimate from the measured time per image) instead of letting latency grow
without limit.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` images already; ``retry_after`` (s) is when to try again."""

    def __init__(self, depth: int, retry_after: float, why: str = "queue full", tasks: int = 0):
        self.depth = depth
        self.retry_after = retry_after
        waiting = f"{depth - tasks} image(s) and {tasks} explanation(s)" if tasks else f"{depth} images"
        super().__init__(f"{why} ({waiting} waiting); retry in {retry_after:.0f} s")


def _moving(mean: float | None, value: float) -> float:
    """A measured time's moving average (the first measurement alone at first)."""
    return value if mean is None else 0.8 * mean + 0.2 * value


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Job:
    """One request's images: their results are collected here and the future is set once."""

    items: list[Any]
    future: Future
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    enqueued: float = 0.0
    abandoned: bool = False

    def deliver(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            _settle(self.future, result=self.results)

    def fail(self, exc: BaseException) -> None:
        _settle(self.future, exc=exc)


def _settle(future: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Set a future's outcome unless its request already gave up on it (cancelled)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


@dataclass
class _Task:
    """An exclusive call on the worker thread (e.g. an explanation)."""

    fn: Callable[[], Any]
    future: Future
    enqueued: float = 0.0


class Batcher:
    """Runs ``run_batch(items) -> results`` (one result per item, in order) on batches of up
    to ``max_batch`` items gathered from concurrent :meth:`submit` calls.

    ``on_batch(size, seconds)`` is told about every batch run (metrics)."""

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "contentiqa-batcher",
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be 0 or more")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._queue: deque[tuple[_Job, int] | _Task] = deque()
        self._waiting_items = 0  # images and exclusive tasks waiting
        self._waiting_tasks = 0  # of which exclusive tasks (an explanation costs many images' time)
        self._running_items = 0  # in the batch being run (part of the wait of a newcomer)
        self._running_task = False
        self._cond = threading.Condition()
        self._closing = False
        self._seconds_per_item: float | None = None
        self._seconds_per_task: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False

    # -- the requests' side -----------------------------------------------------------------
    def start(self) -> "Batcher":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    @property
    def depth(self) -> int:
        """Images (and exclusive tasks) waiting, not counting the batch being run."""
        return self._waiting_items

    def retry_after(self) -> float:
        """Seconds until the queue has drained, from the measured times per image and per
        exclusive task (at least 1)."""
        return float(max(1, math.ceil(self._wait(0, 0, self._seconds_per_item or 0.1))))

    def expected_wait(self, n: int = 0, tasks: int = 0) -> float:
        """Seconds until ``n`` more images (and ``tasks`` more exclusive tasks) would be done,
        from the measured times per image and per task (0 before anything was measured)."""
        return self._wait(n, tasks, self._seconds_per_item or 0.0)

    def _wait(self, n: int, tasks: int, per_item: float) -> float:
        # a task not timed yet is priced as an image: the first explanation measures it
        per_task = self._seconds_per_task if self._seconds_per_task is not None else per_item
        images = self._waiting_items - self._waiting_tasks + self._running_items + n
        return images * per_item + (self._waiting_tasks + int(self._running_task) + tasks) * per_task

    def submit(self, items: Sequence[Any], within_s: float | None = None) -> Future:
        """Queue ``items`` as one job; the future gets their results as a list, in order.

        Raises :class:`QueueFull` when they do not fit (the whole job is refused, so a request
        is never half-scored), or when ``within_s`` is given and the queue ahead would take
        longer than that (a request that would time out anyway is told at once to come back
        later, instead of holding a place and failing at its deadline), and
        :class:`BatcherClosed` during shutdown."""
        items = list(items)
        fut: Future = Future()
        if not items:
            fut.set_result([])
            return fut
        with self._cond:
            self._admit(len(items), within_s)
            job = _Job(items=items, future=fut, results=[None] * len(items), remaining=len(items),
                       enqueued=time.monotonic())
            self._queue.extend((job, i) for i in range(len(items)))
            self._waiting_items += len(items)
            self._cond.notify()
        return fut

    def check(self, n: int = 1, within_s: float | None = None) -> None:
        """Raise what :meth:`submit` would raise for ``n`` images now: lets a request be
        turned away before its upload is read and decoded, which under overload is the CPU
        the model needs."""
        with self._cond:
            self._admit(n, within_s)

    def _admit(self, n: int, within_s: float | None, tasks: int = 0) -> None:
        if self._closing:
            raise BatcherClosed("shutting down")
        if self._waiting_items + n + tasks > self.max_queue:
            raise QueueFull(self._waiting_items, self.retry_after(), tasks=self._waiting_tasks)
        busy = self._waiting_items + self._running_items > 0 or self._running_task
        if within_s is not None and busy and self.expected_wait(n, tasks) > within_s:
            raise QueueFull(self._waiting_items, self.retry_after(), "the work ahead takes longer than the request timeout",
                            tasks=self._waiting_tasks)

    def call(self, fn: Callable[[], Any], within_s: float | None = None) -> Future:
        """Run ``fn()`` alone on the worker thread (between batches); it counts as one queued
        item, priced by the measured time of such calls. Raises :class:`QueueFull` /
        :class:`BatcherClosed` like :meth:`submit` (``within_s`` likewise)."""
        fut: Future = Future()
        with self._cond:
            self._admit(0, within_s, tasks=1)
            self._queue.append(_Task(fn, fut, time.monotonic()))
            self._waiting_items += 1
            self._waiting_tasks += 1
            self._cond.notify()
        return fut

    def cancel(self, future: Future) -> None:
        """The request gave up (timeout, client gone): drop its images still waiting."""
        with self._cond:
            kept: deque = deque()
            for entry in self._queue:
                if isinstance(entry, tuple) and entry[0].future is future:
                    entry[0].abandoned = True
                    self._waiting_items -= 1
                    continue
                if isinstance(entry, _Task) and entry.future is future:
                    self._waiting_items -= 1
                    self._waiting_tasks -= 1
                    continue
                kept.append(entry)
            self._queue = kept
        future.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------------------
    def _take(self) -> list[tuple[_Job, int]] | _Task | None:
        """The next batch (or exclusive task); None once closed and drained."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            head = self._queue[0]
            if isinstance(head, _Task):
                self._queue.popleft()
                self._waiting_items -= 1
                self._waiting_tasks -= 1
                self._running_task = True
                return head
            deadline = head[0].enqueued + self.max_wait_s
            while not self._closing:
                ready = 0
                for entry in self._queue:
                    if isinstance(entry, _Task) or ready >= self.max_batch:
                        break
                    ready += 1
                if ready >= self.max_batch or (ready < len(self._queue)):
                    break  # full, or a task waits behind these: run now
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[tuple[_Job, int]] = []
            while self._queue and len(batch) < self.max_batch and not isinstance(self._queue[0], _Task):
                batch.append(self._queue.popleft())  # type: ignore[arg-type]
            self._waiting_items -= len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            if isinstance(work, _Task):
                t0 = time.perf_counter()
                try:
                    if not work.future.set_running_or_notify_cancel():
                        continue
                    try:
                        _settle(work.future, result=work.fn())
                    except BaseException as exc:  # delivered to the caller, the worker goes on
                        _settle(work.future, exc=exc)
                    dt = time.perf_counter() - t0
                    self._seconds_per_task = _moving(self._seconds_per_task, dt)
                finally:
                    self._running_task = False
                continue
            batch = [(job, i) for job, i in work if not job.abandoned and not job.future.cancelled()]
            if not batch:
                continue
            t0 = time.perf_counter()
            self._running_items = len(batch)
            try:
                results = list(self.run_batch([job.items[i] for job, i in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # the model failed: every job in the batch hears it
                for job, _ in batch:
                    job.fail(exc)
                continue
            finally:
                self._running_items = 0
            dt = time.perf_counter() - t0
            per = dt / len(batch)
            self._seconds_per_item = _moving(self._seconds_per_item, per)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), dt)
                except Exception:  # metrics must never cost a result
                    pass
            for (job, i), r in zip(batch, results):
                job.deliver(i, r)

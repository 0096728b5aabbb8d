"""Batching across model pairs: negotiations of several pairs, each run by its own thread, advance in one batch.

Every pair's runner advances its negotiations in lockstep and asks its backend for one batch per turn. When several
pairs run at once in one process (one thread each, :func:`agreemate_lib.negotiation.runner.run_pairs`), each of
those calls is handed to a :class:`Batcher` instead: the call waits until every pair that is still negotiating has
a call pending (or ``wait_s`` has passed), and one thread then runs all pending calls that can share a forward
(same model, same generation settings) as one batch and hands each caller its own rows back. A pair whose turn
needs no model (a rule-based side) or another model simply comes back sooner with its next call.

A thread that never joins (a single pair, the naive path) finds nobody else to wait for: its call runs at once.

Every batch runs on the process's one compute thread (:func:`on_compute_thread`), whichever caller leads, and the
memory it freed is handed back to the system after it (glibc's ``malloc_trim``, where there is one): with 14 pairs'
threads taking turns to lead, each thread's malloc arena kept the freed buffers of the batches it had run, and the
study's resident memory grew past 10 GB with ~5 GB in use (2026-11-27, ``malloc_stats``).

One thread for all of it, not one per batcher, and measurements beside the batches on it too: PyTorch's CPU
operators run on an OpenMP team per calling thread, and once a second thread has run a parallel operator the
machine has more OpenMP threads than cores (2 here) and every team waits for its workers by sleeping instead of
spinning. Measured on the 2-core AMD EPYC (2026-11-28, docs/performance.md): SmolLM2's linear layers at 8 rows took
~35% longer on either thread after a second thread had run one parallel operator, for the rest of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    key: Hashable
    item: Any
    runner: Callable[[list[Any]], list[Any]]
    thread: int
    submitted: float = field(default_factory=time.monotonic)
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher did: batches run, the calls and rows they merged, the largest batch."""

    batches: int = 0
    calls: int = 0
    rows: int = 0
    max_rows: int = 0
    max_calls: int = 0
    waited_s: float = 0.0
    trim_s: float = 0.0  # handing freed memory back to the system after each batch

    def as_dict(self, since: dict | None = None) -> dict:
        """The counts as a dict; with ``since`` (an earlier ``as_dict()``), the counts since then (the maxima are
        this batcher's whole life)."""
        out = {"batches": self.batches, "calls": self.calls, "rows": self.rows, "max_rows": self.max_rows,
               "max_calls_merged": self.max_calls, "waited_s": round(self.waited_s, 3), "trim_s": round(self.trim_s, 3)}
        for k in ("batches", "calls", "rows", "waited_s", "trim_s"):
            out[k] = round(out[k] - (since or {}).get(k, 0), 3)
        out["mean_rows"] = round(out["rows"] / max(1, out["batches"]), 2)
        return out


class Batcher:
    """Merges calls from member threads. ``submit(key, item, runner)``: calls with equal ``key`` may be merged; the
    leading thread calls ``runner(items)`` (one result per item, in order) and every caller gets its own result (or
    the runner's exception)."""

    def __init__(self, wait_s: float = 2.0):
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._members: dict[int, int] = {}  # thread id -> how many times it joined (nested joins count once)
        self._pending: list[_Job] = []
        self._busy = False
        self.stats = BatchStats()

    @contextmanager
    def member(self) -> Iterator[None]:
        """The calling thread takes part until the block ends: others wait for its calls."""
        tid = threading.get_ident()
        with self._cond:
            self._members[tid] = self._members.get(tid, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._members[tid] -= 1
                if not self._members[tid]:
                    del self._members[tid]
                self._cond.notify_all()  # those waiting for this thread's call need not any more

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No batch runs while the block runs (e.g. while an adapter is injected into the shared model)."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @property
    def members(self) -> int:
        with self._cond:
            return len(self._members)

    def _everyone_waiting(self) -> bool:
        waiting = {j.thread for j in self._pending}
        return all(t in waiting for t in self._members)

    def submit(self, key: Hashable, item: Any, runner: Callable[[list[Any]], list[Any]]) -> Any:
        job = _Job(key, item, runner, threading.get_ident())
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()
            deadline = job.submitted + self.wait_s
            while not job.done:
                if not self._busy and self._pending and (self._everyone_waiting() or time.monotonic() >= deadline):
                    self._lead()
                    deadline = time.monotonic() + self.wait_s
                    continue
                self._cond.wait(timeout=max(0.001, deadline - time.monotonic()) if not self._busy else None)
        if job.error is not None:
            raise job.error
        return job.result

    def _lead(self) -> None:
        """Run the oldest pending call's group (called holding the lock; runs the batch without it)."""
        first = self._pending[0]
        batch = [j for j in self._pending if j.key == first.key]
        self._pending = [j for j in self._pending if j.key != first.key]
        self._busy = True
        waited = time.monotonic()
        self._cond.release()
        try:
            try:
                results = on_compute_thread(_run_and_trim, first.runner, [j.item for j in batch], self.stats)
                if len(results) != len(batch):
                    raise RuntimeError(f"batch runner returned {len(results)} results for {len(batch)} calls")
                for j, r in zip(batch, results):
                    j.result = r
            except BaseException as exc:  # noqa: BLE001 - every caller gets the failure of its batch
                for j in batch:
                    j.error = exc
        finally:
            self._cond.acquire()
            self._busy = False
            for j in batch:
                j.done = True
            s = self.stats
            s.batches += 1
            s.calls += len(batch)
            rows = sum(_rows(j.item) for j in batch)
            s.rows += rows
            s.max_rows = max(s.max_rows, rows)
            s.max_calls = max(s.max_calls, len(batch))
            s.waited_s += sum(max(0.0, waited - j.submitted) for j in batch)  # calls held back for the others
            self._cond.notify_all()


_COMPUTE: ThreadPoolExecutor | None = None
_COMPUTE_LOCK = threading.Lock()
_COMPUTE_IDENT: int | None = None  # the compute thread's ``threading.get_ident()``


def on_compute_thread(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` run on the process's one compute thread (made on first use; called from that thread
    itself, it runs at once), its result returned or its exception raised here. Every batch of every batcher runs
    there, and so should anything timed beside them (the bench's step profiles): see the module's docstring."""
    global _COMPUTE, _COMPUTE_IDENT
    if threading.get_ident() == _COMPUTE_IDENT:
        return fn(*args, **kwargs)
    with _COMPUTE_LOCK:
        if _COMPUTE is None:
            _COMPUTE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
            _COMPUTE_IDENT = _COMPUTE.submit(threading.get_ident).result()
    return _COMPUTE.submit(fn, *args, **kwargs).result()


def _forget_compute_thread() -> None:
    """In a forked child the compute thread does not exist: the next call makes the child's own."""
    global _COMPUTE, _COMPUTE_LOCK, _COMPUTE_IDENT
    _COMPUTE, _COMPUTE_LOCK, _COMPUTE_IDENT = None, threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_compute_thread)


def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
        return None


_MALLOC_TRIM = _libc_trim()


def _run_and_trim(runner: Callable[[list[Any]], list[Any]], items: list[Any], stats: BatchStats) -> list[Any]:
    try:
        return runner(items)
    finally:
        if _MALLOC_TRIM is not None:
            t0 = time.perf_counter()
            _MALLOC_TRIM(0)
            stats.trim_s += time.perf_counter() - t0


def _rows(item: Any) -> int:
    rows = getattr(item, "rows", None)
    return len(rows) if rows is not None else 1


#: Every batcher of this process, by the model it serves (see :func:`register`).
_REGISTRY: dict[str, Batcher] = {}


def register(name: str, batcher: Batcher) -> Batcher:
    """Name a batcher (its model) so :func:`batch_stats` reports it."""
    _REGISTRY[name] = batcher
    return batcher


def batch_stats(since: dict | None = None) -> dict[str, dict]:
    """Each named batcher's statistics; with ``since`` (an earlier result), the counts since then."""
    return {name: b.stats.as_dict((since or {}).get(name)) for name, b in _REGISTRY.items()}

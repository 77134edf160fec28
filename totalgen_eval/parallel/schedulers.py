"""Schedulers of ``map_cases``: the same function over the same items, in this process, in threads, in a
pool of local processes (each running its share of the cores' threads) or on a Dask cluster; each yields
(index into items, result) as results arrive. ``make_scheduler`` turns a ``--scheduler`` spec into one.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from ..errors import InputError, one_line_warnings


class Scheduler(Protocol):
    """Runs ``fn`` over ``items`` and yields (index into items, result) as results arrive.

    A scheduler is a context manager: resources (processes, a cluster) live between enter and exit.
    Closing the generator early cancels the work not yet started.
    """

    def __enter__(self) -> "Scheduler": ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...


class _Stateless:
    """A scheduler that holds nothing between runs: entering and leaving it do nothing."""

    def __enter__(self) -> "_Stateless":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class SerialScheduler(_Stateless):
    """One case after the other in this process."""

    name = "serial"

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            yield i, fn(item)


@dataclass
class ThreadScheduler(_Stateless):
    """``workers`` threads of this process: for work that releases the GIL (numpy, torch) on shared objects
    that are costly to send to processes (a loaded network)."""

    workers: int = 1
    name: str = "threads"

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            yield from _as_completed(pool, fn, items)


def _as_completed(pool: Executor, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """(index, result) of ``fn`` over ``items`` submitted to ``pool``, as they finish; pending work is
    cancelled when the consumer stops early."""
    pending = {pool.submit(fn, item): i for i, item in enumerate(items)}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        for fut in pending:
            fut.cancel()


def threads_allowed(default: int | None = None) -> int:
    """Threads this process may keep busy: OMP_NUM_THREADS when set to a positive whole number (a pool
    worker's share of the cores, see ``start_worker``), else ``default`` (None: the machine's cores)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else (default or os.cpu_count() or 1)


def start_worker(threads: int) -> None:
    """Start of a pool worker: warnings as one line each, and ``threads`` threads for torch and OpenMP (the
    cores shared out among the workers; an OMP_NUM_THREADS set by the user wins). Two workers of two
    threads each on two cores cost the segmenter 3.4x its CPU time (0.161 against 0.047 CPU s a case)."""
    one_line_warnings()
    threads = threads_allowed(default=threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch is imported
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def pool_context() -> multiprocessing.context.BaseContext:
    """fork when torch is not loaded in this process (cheap), spawn when it is (fork after torch can hang)."""
    return multiprocessing.get_context("spawn" if "torch" in sys.modules else "fork")


@dataclass
class PoolScheduler(_Stateless):
    """A pool of ``workers`` local processes (serial for one worker or one case)."""

    workers: int = 1
    name: str = "pool"

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if self.workers <= 1 or len(items) <= 1:
            yield from SerialScheduler().run(fn, items)
            return
        n = min(self.workers, len(items))
        pool = ProcessPoolExecutor(max_workers=n, mp_context=pool_context(), initializer=start_worker,
                                   initargs=(max(1, (os.cpu_count() or 1) // n),))
        try:
            yield from _as_completed(pool, fn, items)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class DaskScheduler:
    """A Dask cluster: ``address`` of a running scheduler, or a LocalCluster of ``n_workers`` processes
    (one thread each) started on enter and closed on exit. ``processes=False`` runs the workers as threads
    of this process (tests)."""

    address: str | None = None
    n_workers: int = 1
    processes: bool = True
    name: str = "dask"
    _client: Any = None
    _cluster: Any = None
    _depth: int = 0  # entered this many times: the cluster starts on the first enter, closes on the last exit

    def __enter__(self) -> "DaskScheduler":
        import logging

        from distributed import Client, LocalCluster
        self._depth += 1
        if self._depth > 1:
            return self
        if self.address is None:
            self._cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=self.processes,
                                         dashboard_address=":0", silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
            return self
        try:
            self._client = Client(self.address, timeout=30)
        except (OSError, TimeoutError) as exc:
            self._depth = 0
            raise InputError(f"cannot reach the Dask scheduler ({type(exc).__name__}: {exc})".splitlines()[0],
                             "--scheduler") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for resource in (self._client, self._cluster):
            if resource is not None:
                resource.close()
        self._client = self._cluster = None

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed

        futures = [self._client.submit(fn, item, pure=False) for item in items]
        index = {fut.key: i for i, fut in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                yield index[fut.key], fut.result()
        finally:
            self._client.cancel([f for f in futures if not f.done()])


def make_scheduler(spec: str | Scheduler | None = None, workers: int = 1) -> Scheduler:
    """The scheduler for a ``--scheduler`` spec (see the module docstring); nothing starts until it is
    entered. InputError naming ``--scheduler`` for an unknown spec or a Dask spec without dask installed."""
    if spec is not None and not isinstance(spec, str):
        return spec
    text = (spec or "pool").strip()
    if text == "pool":
        return PoolScheduler(max(1, int(workers)))
    if text == "serial":
        return SerialScheduler()
    if text == "threads":
        return ThreadScheduler(max(1, int(workers)))
    if text == "local" or text.startswith("local:"):
        count = text[len("local:"):] if ":" in text else str(workers)
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"{text!r}: write local:N with N >= 1 worker processes", "--scheduler")
        return _dask_checked(DaskScheduler(n_workers=int(count)))
    if "://" in text:
        return _dask_checked(DaskScheduler(address=text))
    raise InputError(f"unknown scheduler {text!r}: use pool, serial, threads, local:N (a Dask LocalCluster) or "
                     "tcp://host:port (a running Dask scheduler)", "--scheduler")


def _dask_checked(scheduler: DaskScheduler) -> DaskScheduler:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError("Dask schedulers need dask.distributed: pip install 'totalgen-eval[dask]'",
                         "--scheduler") from None
    return scheduler

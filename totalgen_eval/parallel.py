"""Map a function over the cases of a cohort: one progress bar, a choice of scheduler, and per-case
failure isolation (``--skip-bad``).

    mapped = map_cases(measure, cohort, scheduler="local:4", skip_bad=True, description="metrics")
    mapped.values      # [(case, result), ...] of the cases that finished, in input order
    mapped.excluded    # [Excluded(case_id, reason), ...] of the ones left out, in input order

Schedulers (``--scheduler``): ``None``/``"pool"`` the in-process pool of ``workers`` processes (serial
when ``workers`` is 1), ``"serial"``, ``"threads"`` (``workers`` threads of this process), ``"local:N"``
a ``dask.distributed.LocalCluster`` of N worker processes started for the run, ``"tcp://host:port"`` an
existing Dask cluster. Every scheduler runs
the same function on the same cases, so results do not depend on the choice; caches written by the
function (per-case files) are shared through the file system.

``skip_bad``: ``None`` lets any exception propagate (a plain loop); ``False`` stops the run at the first
bad case with one line that names ``--skip-bad``; ``True`` leaves bad cases out and lists them. A case is
bad when the function raises one of ``CASE_ERRORS`` for it (bad input, an unreadable or corrupt file,
memory) or when its id repeats an earlier one (the later rows are left out).
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import zlib
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import pandas as pd

from .errors import InputError, one_line_warnings

if TYPE_CHECKING:
    from rich.progress import Progress

EXCLUDED_CSV = "excluded.csv"
EXCLUDED_COLUMNS: tuple[str, ...] = ("case_id", "cohort", "reason")


def _case_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this case's data are bad", not "the program is wrong"."""
    errors: list[type[BaseException]] = [InputError, OSError, EOFError, ValueError, MemoryError, zlib.error]
    try:
        from isal.isal_zlib import IsalError
        errors.append(IsalError)
    except ImportError:  # pragma: no cover - isal is a dependency, but optional at run time
        pass
    from nibabel.filebasedimages import ImageFileError
    errors.append(ImageFileError)
    return tuple(errors)


CASE_ERRORS = _case_errors()


@dataclass(frozen=True)
class Excluded:
    """A case left out of a run and why (one line, naming the file where one is to blame)."""

    case_id: str
    reason: str


@dataclass(frozen=True)
class Mapped:
    """What :func:`map_cases` returns: (item, result) of finished cases and the excluded ones, in input order."""

    values: list[tuple[Any, Any]] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- progress

def progress_bar(enabled: bool = True, transient: bool = False) -> "Progress":
    """The project's one rich progress bar: description, bar, done/total, elapsed and remaining time.

    Use as ``with progress_bar(show) as bar: task = bar.add_task("metrics", total=n)``; disabled, it
    draws nothing but keeps the same methods.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=transient)


# ---------------------------------------------------------------------------------------------- schedulers

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


def threads_allowed() -> int:
    """Threads this process may keep busy: OMP_NUM_THREADS when set to a positive whole number (a pool
    worker's share of the cores, see ``start_worker``), else the machine's cores."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else (os.cpu_count() or 1)


def start_worker(threads: int) -> None:
    """Start of a pool worker: warnings as one line each, and ``threads`` threads for torch and OpenMP (the
    cores shared out among the workers; an OMP_NUM_THREADS set by the user wins). Two workers of two
    threads each on two cores cost the segmenter 3.4x its CPU time (0.161 against 0.047 CPU s a case)."""
    one_line_warnings()
    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else threads
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


# ---------------------------------------------------------------------------------------------- the map

@dataclass(frozen=True)
class _Failed:
    """The outcome of a case whose function raised a case error (picklable, unlike some exceptions)."""

    reason: str


def failure_reason(exc: BaseException) -> str:
    """One line saying what went wrong: an InputError's own text (it names the file), else type and text."""
    text = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _attempt(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except CASE_ERRORS as exc:
        return _Failed(failure_reason(exc))


def stop_error(case_id: str, reason: str, n_bad: int = 1) -> InputError:
    """The one-line error that stops a run at a bad case and says that ``--skip-bad`` exists."""
    more = f" ({n_bad} bad cases in all)" if n_bad > 1 else ""
    return InputError(f"case {case_id}: {reason}{more}; --skip-bad leaves bad cases out and lists them in "
                      f"{EXCLUDED_CSV}")


def require_good(problems: Iterable[tuple[str, str]], skip_bad: bool) -> None:
    """Raise :func:`stop_error` for the first of ``problems`` (case_id, reason) unless ``skip_bad``."""
    problems = list(problems)
    if problems and not skip_bad:
        raise stop_error(problems[0][0], problems[0][1], len(problems))


def load_checked(path: str | Path, skip_bad: bool, **options: Any):
    """A cohort whose cases were all validated cheaply first (headers, grids, demographics, duplicate ids: what
    ``cohort.load_cohort`` checks); bad ones are left out (listed in ``Cohort.problems``) with ``skip_bad``,
    else the first stops the run with :func:`stop_error`. ``options`` go to ``load_cohort``. The folder is
    made absolute, so workers of a Dask cluster find the files whatever their working folder."""
    from .cohort import load_cohort

    cohort = load_cohort(Path(path).expanduser().resolve(), skip_bad=True, **options)
    require_good(cohort.problems, skip_bad)
    return cohort


def _unique(ids: Sequence[str], skip_bad: bool | None) -> tuple[list[int], list[tuple[int, Excluded]]]:
    """Indices to run and the later rows of repeated ids (left out; a stop error unless ``skip_bad``)."""
    first: dict[str, int] = {}
    keep, dropped = [], []
    for i, case_id in enumerate(ids):
        if skip_bad is None or case_id not in first:
            first.setdefault(case_id, i)
            keep.append(i)
            continue
        reason = f"duplicate case id (row {i + 1} repeats row {first[case_id] + 1}; the later rows are left out)"
        if not skip_bad:
            raise stop_error(case_id, reason)
        dropped.append((i, Excluded(case_id, reason)))
    return keep, dropped


def map_cases(fn: Callable[[Any], Any], items: Iterable[Any], *, ids: Sequence[str] | None = None,
              scheduler: str | Scheduler | None = None, workers: int = 1, skip_bad: bool | None = None,
              progress: bool = True, description: str = "cases") -> Mapped:
    """Run ``fn(item)`` for every item under a scheduler, with a progress bar and failure isolation.

    Args:
        fn: a picklable function of one item (module-level, or a ``functools.partial`` of one).
        items: cases (anything with ``case_id``) or other picklable items; ``ids`` names them otherwise.
        scheduler: a spec or a :class:`Scheduler` (entered here when given as a spec).
        skip_bad: None (exceptions propagate), False (stop at the first bad case), True (leave it out).

    Example: ``map_cases(len, ["ab", "c"], ids=["x", "y"], progress=False).values`` is
    ``[("ab", 2), ("c", 1)]``.
    """
    items = list(items)
    names = [str(x) for x in ids] if ids is not None else [str(getattr(x, "case_id", i)) for i, x in enumerate(items)]
    if len(names) != len(items):
        raise ValueError(f"map_cases: {len(names)} ids for {len(items)} items")
    keep, excluded = _unique(names, skip_bad)
    call = fn if skip_bad is None else functools.partial(_attempt, fn)
    results: dict[int, Any] = {}
    with make_scheduler(scheduler, workers) as sched, progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(keep))
        runs = sched.run(call, [items[i] for i in keep])
        try:
            for index, value in runs:
                i = keep[index]
                if isinstance(value, _Failed):
                    if not skip_bad:
                        raise stop_error(names[i], value.reason)
                    excluded.append((i, Excluded(names[i], value.reason)))
                else:
                    results[i] = value
                bar.advance(task)
        finally:
            runs.close()
    return Mapped([(items[i], results[i]) for i in sorted(results)], [e for _, e in sorted(excluded, key=_first)])


def _first(pair: tuple[int, Excluded]) -> int:
    return pair[0]


# ---------------------------------------------------------------------------------------------- excluded.csv

def excluded_frame(excluded: Iterable[Excluded | tuple[str, str]], cohort: str) -> pd.DataFrame:
    """The excluded table (case_id, cohort, reason) of one cohort's left-out cases."""
    rows = [(e.case_id, cohort, e.reason) if isinstance(e, Excluded) else (str(e[0]), cohort, str(e[1]))
            for e in excluded]
    return pd.DataFrame(rows, columns=list(EXCLUDED_COLUMNS)).astype(object)


def write_excluded(frame: pd.DataFrame, folder: str | Path) -> Path:
    """Write ``folder/excluded.csv`` atomically (header only when nothing was excluded)."""
    from .provenance import write_table
    return write_table(frame.reindex(columns=list(EXCLUDED_COLUMNS)), Path(folder) / EXCLUDED_CSV)


def read_excluded(folder: str | Path) -> pd.DataFrame:
    """``folder/excluded.csv`` as a table (empty when the file is absent)."""
    path = Path(folder) / EXCLUDED_CSV
    if not path.is_file():
        return pd.DataFrame(columns=list(EXCLUDED_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)

"""Map a function over the cases of a cohort: one progress bar, a choice of scheduler (``schedulers``), and
per-case failure isolation (``--skip-bad``).

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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import pandas as pd

from ..errors import InputError
from .schedulers import (DaskScheduler, PoolScheduler, Scheduler, SerialScheduler, ThreadScheduler, make_scheduler,
                         pool_context, start_worker, threads_allowed)

__all__ = ["CASE_ERRORS", "EXCLUDED_COLUMNS", "EXCLUDED_CSV", "DaskScheduler", "Excluded", "Mapped", "PoolScheduler",
           "Scheduler", "SerialScheduler", "ThreadScheduler", "excluded_frame", "failure_reason", "load_checked",
           "make_scheduler", "map_cases", "pool_context", "progress_bar", "read_excluded", "require_good",
           "start_worker", "stop_error", "threads_allowed", "write_excluded"]

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
    from ..cohort import load_cohort

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
    from ..provenance import write_table
    return write_table(frame.reindex(columns=list(EXCLUDED_COLUMNS)), Path(folder) / EXCLUDED_CSV)


def read_excluded(folder: str | Path) -> pd.DataFrame:
    """``folder/excluded.csv`` as a table (empty when the file is absent)."""
    path = Path(folder) / EXCLUDED_CSV
    if not path.is_file():
        return pd.DataFrame(columns=list(EXCLUDED_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)

"""Organ metrics of a cohort: the organ_metrics table (DESIGN.md section 3), with a per-case cache so an
interrupted run resumes, a process pool, a progress bar, and an atomic CSV with a JSON sidecar."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..demographics import DEFAULT_AGE_BINS, age_group
from ..errors import InputError
from ..organs import ORGAN_NAMES
from ..volumes import Grid, read_volume
from .case import METRIC_COLUMNS, PEAK_RADIUS_MM, case_metrics

CASE_COLUMNS: tuple[str, ...] = ("case_id", "cohort", "age", "sex", "height_m", "weight_kg", "age_group")
TABLE_COLUMNS: tuple[str, ...] = CASE_COLUMNS + METRIC_COLUMNS
METRICS_VERSION = "1"  # bump when a definition changes: cached per-case results are then recomputed

def _file_identity(path: Path | None) -> list[Any] | None:
    """Path, size and modification time of a file: the cache key of an input (None for no file)."""
    if path is None:
        return None
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _case_key(case: Any, segmenter: str, organs: Sequence[str], device: str) -> str:
    """Hash of everything a case's metrics depend on (inputs by path, size, mtime; settings; version)."""
    if segmenter == "labels":
        seg: Any = ["labels", _file_identity(case.labels)]
    else:
        from ..segment import make_segmenter
        seg = [segmenter, make_segmenter(segmenter, device=device).settings()]
    payload = json.dumps([METRICS_VERSION, _file_identity(case.pet), _file_identity(case.ct), seg,
                          list(organs), device if segmenter != "labels" else None], sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def _case_cache_path(cache_dir: Path, case: Any, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(case.case_id))
    return Path(cache_dir) / "metrics" / f"{safe}-{key}.csv"


def compute_case(case: Any, segmenter: str = "labels", organs: Sequence[str] = ORGAN_NAMES,
                 cache_dir: Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """The METRIC_COLUMNS rows of one cohort case: labels from ``segmenter``, arrays read from disk.

    With ``cache_dir`` the labels of computing backends are cached under ``cache_dir/labels``.
    """
    from ..segment import case_labels

    pet, pet_affine = case.read_pet()
    grid = Grid(tuple(pet.shape), pet_affine)
    labels, labels_affine = case_labels(case, segmenter, cache_dir, device=device)
    ct, ct_affine = read_volume(case.ct, dtype=np.float32)
    try:
        return case_metrics(pet, ct, labels, grid, organs, labels_grid=Grid(tuple(labels.shape), labels_affine),
                            ct_grid=Grid(tuple(ct.shape), ct_affine))
    except InputError as exc:
        raise InputError(str(exc), f"case {case.case_id}") from None


def _cached_case(case: Any, segmenter: str, organs: tuple[str, ...], cache_dir: Path | None,
                 device: str, resume: bool) -> tuple[str, pd.DataFrame, bool]:
    """(case_id, rows, computed?) of one case, read from the per-case cache when present and ``resume``."""
    path = None
    if cache_dir is not None:
        path = _case_cache_path(cache_dir, case, _case_key(case, segmenter, organs, device))
        if resume and path.is_file():
            cached = pd.read_csv(path)
            if list(cached.columns) == list(METRIC_COLUMNS) and len(cached) == len(organs):
                return case.case_id, cached, False
    rows = compute_case(case, segmenter, organs, cache_dir, device)
    if path is not None:
        from ..provenance import write_table
        write_table(rows, path)
    return case.case_id, rows, True


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork when torch is not loaded in this process (cheap), spawn when it is (fork after torch can hang)."""
    return multiprocessing.get_context("spawn" if "torch" in sys.modules else "fork")


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def organ_metrics(cohort: Any, segmenter: str | None = "labels", workers: int = 1,
                  organs: Sequence[str] = ORGAN_NAMES, cache_dir: str | Path | None = None,
                  device: str = "cpu", cohort_name: str | None = None,
                  age_bins: Sequence[float] = DEFAULT_AGE_BINS, progress: bool = True,
                  resume: bool = True) -> pd.DataFrame:
    """The organ_metrics table of a cohort: one row per case x organ, columns TABLE_COLUMNS (DESIGN.md 3).

    ``segmenter``: "labels" | "totalsegmentator" | "model:PATH" | "model:bundled" (see segment.py); None
    picks :func:`segment.default_segmenter`.
    ``workers`` > 1 uses a process pool. With ``cache_dir`` every finished case is written to
    ``cache_dir/metrics/<case_id>-<hash>.csv`` (atomically) and a re-run with ``resume`` skips it; labels
    from computing backends are cached under ``cache_dir/labels``. The number of cases computed (not read
    from the cache) is in ``frame.attrs["n_computed"]``.
    """
    organs = tuple(organs)
    cases = list(cohort)
    if segmenter is None:
        from ..segment import default_segmenter
        segmenter = default_segmenter(cohort)
    name = cohort_name if cohort_name is not None else getattr(cohort, "name", None) or "cohort"
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is None and segmenter != "labels":
        import tempfile
        tmp = tempfile.TemporaryDirectory(prefix="totalgen-labels-")
        cache, resume_here = Path(tmp.name), False
    else:
        tmp, resume_here = None, resume
    results: dict[str, pd.DataFrame] = {}
    n_computed = 0
    try:
        with _progress(progress) as bar:
            task = bar.add_task(f"metrics ({segmenter})", total=len(cases))
            if workers <= 1 or len(cases) <= 1:
                for case in cases:
                    cid, rows, computed = _cached_case(case, segmenter, organs, cache, device, resume_here)
                    results[cid], n_computed = rows, n_computed + computed
                    bar.advance(task)
            else:
                with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                    futures = [pool.submit(_cached_case, case, segmenter, organs, cache, device, resume_here)
                               for case in cases]
                    for fut in as_completed(futures):
                        cid, rows, computed = fut.result()
                        results[cid], n_computed = rows, n_computed + computed
                        bar.advance(task)
    finally:
        if tmp is not None:
            tmp.cleanup()
    frame = assemble_table(cases, results, name, age_bins)
    frame.attrs["n_computed"] = n_computed
    return frame


def assemble_table(cases: Iterable[Any], results: dict[str, pd.DataFrame], cohort_name: str,
                   age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> pd.DataFrame:
    """Per-case metric rows joined with each case's demographics, in cohort order (TABLE_COLUMNS)."""
    parts = []
    for case in cases:
        rows = results[case.case_id].copy()
        for col, value in (("case_id", case.case_id), ("cohort", cohort_name), ("age", case.age),
                           ("sex", case.sex), ("height_m", case.height_m), ("weight_kg", case.weight_kg)):
            rows[col] = value
        parts.append(rows)
    if not parts:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    frame = pd.concat(parts, ignore_index=True)
    frame["age_group"] = age_group(frame["age"].astype(float), age_bins).to_numpy()
    frame["touches_border"] = frame["touches_border"].astype(bool)
    return frame[list(TABLE_COLUMNS)]


def write_metrics(cohort: Any, out_csv: str | Path, segmenter: str | None = None, workers: int = 1,
                  organs: Sequence[str] = ORGAN_NAMES, cache_dir: str | Path | None = None,
                  device: str = "cpu", cohort_name: str | None = None,
                  age_bins: Sequence[float] = DEFAULT_AGE_BINS, progress: bool = True,
                  resume: bool = True) -> pd.DataFrame:
    """Compute :func:`organ_metrics` and write it to ``out_csv`` atomically, with ``<out_csv>.json`` beside it.

    The cache (per-case rows and computed labels) defaults to ``<out_csv folder>/cache``; an interrupted
    run resumes from it. The JSON sidecar holds the parameters and package versions.
    """
    from ..provenance import stamp, write_json, write_table

    out_csv = Path(out_csv)
    if segmenter is None:
        from ..segment import default_segmenter
        segmenter = default_segmenter(cohort)
    cache = Path(cache_dir) if cache_dir is not None else out_csv.parent / "cache"
    frame = organ_metrics(cohort, segmenter=segmenter, workers=workers, organs=organs, cache_dir=cache,
                          device=device, cohort_name=cohort_name, age_bins=age_bins, progress=progress,
                          resume=resume)
    write_table(frame, out_csv)
    params = {"cohort": str(getattr(cohort, "root", "")), "cohort_name": frame["cohort"].iloc[0] if len(frame)
              else cohort_name, "n_cases": int(frame["case_id"].nunique()), "segmenter": segmenter,
              "organs": list(organs), "device": device, "age_bins": list(age_bins), "cache_dir": str(cache),
              "metrics_version": METRICS_VERSION, "peak_radius_mm": PEAK_RADIUS_MM, "suv_std_ddof": 0,
              "n_computed": frame.attrs.get("n_computed")}
    write_json(stamp(params), out_csv.with_name(out_csv.name + ".json"))
    return frame


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Read an organ_metrics CSV back with its column types; InputError if columns are missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    frame = pd.read_csv(path)
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"not an organ_metrics table (missing columns {', '.join(missing)})", path)
    frame["touches_border"] = frame["touches_border"].astype(bool)
    return frame

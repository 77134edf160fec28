"""Per-case organ metrics (volume mL, SUV statistics, HU mean) in one pass over the volume.

Arrays are NIfTI voxel order (i, j, k); labels hold TotalSegmentator "total" class ids. The label map is
turned into an organ-index map with one lookup table, bounding boxes come from ``scipy.ndimage.find_objects``
and every statistic is computed inside an organ's box only (no full-volume mask per organ). PET stays float.

Definitions (also in the README of the table, DESIGN.md section 3):
- ``volume_ml`` = voxel count x voxel volume (mL) of the PET grid.
- ``suv_std`` is the population standard deviation (ddof = 0) over the organ's voxels.
- ``suv_peak``: a sphere of 1 mL (radius (3 / 4 pi)^(1/3) cm = 6.20 mm) in physical units of the grid,
  the voxels whose centres lie within that radius of the centre voxel's; centred on each voxel of the organ,
  the mean of all PET voxels in the sphere (inside or outside the organ, NaN and out-of-array voxels left
  out); suv_peak is the highest such mean. On grids coarser than 6.2 mm the sphere is one voxel, so
  suv_peak = suv_max there.
- ``touches_border``: an organ voxel lies on the outermost layer of the array (the organ may be cut off).
- NaN PET voxels count towards ``n_voxels`` (the organ's size is geometric) but are left out of every SUV
  statistic; their number is in ``frame.attrs["n_nan_pet"]`` and logged as a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from .demographics import DEFAULT_AGE_BINS, age_group
from .errors import InputError
from .organs import N_TOTAL_CLASSES, ORGAN_NAMES, class_to_organ_lut
from .volumes import Grid, read_volume, resample_to_grid

log = logging.getLogger(__name__)

METRIC_COLUMNS: tuple[str, ...] = ("organ", "n_voxels", "volume_ml", "suv_mean", "suv_median", "suv_std",
                                   "suv_max", "suv_peak", "hu_mean", "touches_border")
CASE_COLUMNS: tuple[str, ...] = ("case_id", "cohort", "age", "sex", "height_m", "weight_kg", "age_group")
TABLE_COLUMNS: tuple[str, ...] = CASE_COLUMNS + METRIC_COLUMNS
PEAK_SPHERE_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm
METRICS_VERSION = "1"  # bump when a definition changes: cached per-case results are then recomputed


# --- one case -------------------------------------------------------------------------------------------

def sphere_kernel(spacing_mm: Sequence[float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (i, j, k) kernel: voxels whose centres lie within ``radius_mm`` of the centre voxel's."""
    half = [int(math.floor(radius_mm / s + 1e-9)) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_mm))
    return dist2 <= radius_mm ** 2 + 1e-9


def check_label_ids(labels: np.ndarray) -> np.ndarray:
    """The label map as a non-negative integer array; InputError naming ids that are not TS "total" classes."""
    if labels.size == 0:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError("label map holds non-integer values; expected TotalSegmentator class ids")
        labels = labels.astype(np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 0 and hi <= N_TOTAL_CLASSES:
        return labels
    if lo < 0 or hi > 1 << 16:
        bad = np.unique(labels[(labels < 0) | (labels > N_TOTAL_CLASSES)])
    else:
        counts = np.bincount(labels.ravel())
        bad = np.flatnonzero(counts[N_TOTAL_CLASSES + 1:]) + N_TOTAL_CLASSES + 1
    shown = ", ".join(str(int(b)) for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
    raise InputError(f"label ids {shown} are not TotalSegmentator 'total' classes (valid: 0..{N_TOTAL_CLASSES})")


def _sphere_rows(kernel: np.ndarray) -> list[tuple[int, int, int]]:
    """The sphere as rows along axis i: (dj, dk, h) for each column, covering i offsets -h..h."""
    cj, ck = kernel.shape[1] // 2, kernel.shape[2] // 2
    rows = []
    for j in range(kernel.shape[1]):
        for k in range(kernel.shape[2]):
            n = int(kernel[:, j, k].sum())
            if n:
                rows.append((j - cj, k - ck, (n - 1) // 2))
    return rows


def _sphere_sums(values: np.ndarray, centres: np.ndarray, rows: list[tuple[int, int, int]]) -> np.ndarray:
    """Sum of ``values`` (padded so no sphere leaves it) over the sphere at each centre (N x 3 indices).

    Each sphere row along axis i is a difference of two prefix sums: 2 gathers per row and centre.
    """
    prefix = np.zeros((values.shape[0] + 1,) + values.shape[1:], np.float64)
    np.cumsum(values, axis=0, dtype=np.float64, out=prefix[1:])
    s0, s1, s2 = (st // prefix.itemsize for st in prefix.strides)
    base = centres[:, 0] * s0 + centres[:, 1] * s1 + centres[:, 2]
    flat = prefix.ravel()
    total = np.zeros(len(centres), np.float64)
    for dj, dk, h in rows:
        off = dj * s1 + dk * s2
        total += flat[base + (off + (h + 1) * s0)] - flat[base + (off - h * s0)]
    return total


def _peak(pet_box: np.ndarray, valid_box: np.ndarray, organ_box: np.ndarray, kernel: np.ndarray,
          clipped: bool) -> float:
    """Highest sphere mean over the organ voxels of a box that holds the margin (or the array edge).

    ``clipped``: the box was cut by the array border, so spheres there hold fewer voxels.
    """
    if kernel.size == 1:
        vals = pet_box[organ_box & valid_box]
        return float(vals.max()) if vals.size else math.nan
    half = [k // 2 for k in kernel.shape]
    pad = [(h, h) for h in half]
    centres = np.argwhere(organ_box) + np.asarray(half)
    rows = _sphere_rows(kernel)
    sums = _sphere_sums(np.pad(np.where(valid_box, pet_box, 0.0), pad), centres, rows)
    if clipped or not valid_box.all():
        counts = _sphere_sums(np.pad(valid_box.astype(np.float64), pad), centres, rows)
        ok = counts > 0.5
        return float(np.max(sums[ok] / counts[ok])) if ok.any() else math.nan
    return float(np.max(sums)) / float(kernel.sum())


def _organ_row(name: str, box: tuple[slice, ...] | None, index: int, organ_map: np.ndarray, pet: np.ndarray,
               ct: np.ndarray | None, kernel: np.ndarray, voxel_ml: float) -> tuple[dict[str, Any], int]:
    """The metrics of one organ from its bounding box, and the number of NaN PET voxels in it."""
    row: dict[str, Any] = {"organ": name, "n_voxels": 0, "volume_ml": 0.0, "suv_mean": math.nan,
                           "suv_median": math.nan, "suv_std": math.nan, "suv_max": math.nan,
                           "suv_peak": math.nan, "hu_mean": math.nan, "touches_border": False}
    if box is None:
        return row, 0
    inside = organ_map[box] == index
    n = int(np.count_nonzero(inside))
    if n == 0:
        return row, 0
    row["n_voxels"] = n
    row["volume_ml"] = n * voxel_ml
    row["touches_border"] = any(s.start == 0 or s.stop == dim for s, dim in zip(box, organ_map.shape))
    suv = pet[box][inside]
    finite = ~np.isnan(suv)
    n_nan = int(n - np.count_nonzero(finite))
    if n_nan:
        suv = suv[finite]
    if suv.size:
        mean = float(suv.mean(dtype=np.float64))
        row.update(suv_mean=mean, suv_median=float(np.median(suv)),
                   suv_std=float(np.sqrt(np.mean((suv.astype(np.float64) - mean) ** 2))),
                   suv_max=float(suv.max()))
        half = [k // 2 for k in kernel.shape]
        wide = tuple(slice(max(s.start - h, 0), min(s.stop + h, dim))
                     for s, h, dim in zip(box, half, organ_map.shape))
        clipped = any(w.stop - w.start < s.stop - s.start + 2 * h for w, s, h in zip(wide, box, half))
        pet_wide = pet[wide]
        row["suv_peak"] = _peak(pet_wide, ~np.isnan(pet_wide), organ_map[wide] == index, kernel, clipped)
    if ct is not None:
        row["hu_mean"] = float(ct[box][inside].mean(dtype=np.float64))
    return row, n_nan


def case_metrics(pet: np.ndarray, ct: np.ndarray | None, labels: np.ndarray, grid: Grid,
                 organs: Sequence[str] = ORGAN_NAMES, labels_grid: Grid | None = None,
                 ct_grid: Grid | None = None) -> pd.DataFrame:
    """Organ metrics of one case: one row per organ in ``organs`` order (columns METRIC_COLUMNS).

    ``pet`` (SUV) defines ``grid`` (shape (i, j, k), affine); ``ct`` (HU, may be None: hu_mean NaN) and
    ``labels`` (TotalSegmentator class ids) are resampled onto it when their own grids (``ct_grid``,
    ``labels_grid``) differ: labels nearest-neighbour, CT linearly. Class ids outside 0..117 raise
    InputError; valid ids of classes outside ``organs`` are ignored. An absent organ gives n_voxels 0 and
    NaN statistics. Volumes in mL, SUV in g/mL, HU.
    """
    organs = tuple(organs)
    pet = np.asarray(pet)
    if pet.shape != tuple(grid.shape):
        raise InputError(f"PET shape {pet.shape} differs from its grid {tuple(grid.shape)}")
    if not np.issubdtype(pet.dtype, np.floating):
        pet = pet.astype(np.float32)
    labels = check_label_ids(np.asarray(labels))
    labels = _onto(labels, labels_grid, grid, order=0, what="label map")
    if ct is not None:
        ct = _onto(np.asarray(ct), ct_grid, grid, order=1, what="CT", cval=-1024.0)
    if labels.shape != pet.shape:
        raise InputError(f"label map shape {labels.shape} differs from the PET's {pet.shape} (give labels_grid)")
    if ct is not None and ct.shape != pet.shape:
        raise InputError(f"CT shape {ct.shape} differs from the PET's {pet.shape} (give ct_grid)")
    lut = class_to_organ_lut(organs, size=max(256, int(labels.max(initial=0)) + 1))
    organ_map = lut[labels]
    boxes = ndimage.find_objects(organ_map, max_label=len(organs))
    kernel = sphere_kernel(grid.spacing_mm)
    rows, n_nan = [], 0
    for index, (name, box) in enumerate(zip(organs, boxes), start=1):
        row, nan_here = _organ_row(name, box, index, organ_map, pet, ct, kernel, grid.voxel_ml)
        rows.append(row)
        n_nan += nan_here
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    frame["n_voxels"] = frame["n_voxels"].astype(np.int64)
    frame["touches_border"] = frame["touches_border"].astype(bool)
    frame.attrs["n_nan_pet"] = n_nan
    if n_nan:
        log.warning("%d NaN PET voxels inside the organs were left out of the SUV statistics", n_nan)
    return frame


def _onto(array: np.ndarray, source: Grid | None, target: Grid, order: int, what: str,
          cval: float = 0.0) -> np.ndarray:
    """``array`` resampled from ``source`` onto ``target`` (unchanged when ``source`` is None or the same)."""
    if source is None or source.same_as(target):
        return array
    if array.shape != tuple(source.shape):
        raise InputError(f"{what} shape {array.shape} differs from its grid {tuple(source.shape)}")
    try:
        return resample_to_grid(array, source, target, order=order, cval=cval)
    except ValueError:
        raise InputError(f"the {what} grid does not overlap the PET grid in space (check the affines)") from None


# --- a cohort -------------------------------------------------------------------------------------------

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
        from .segment import make_segmenter
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
    from .segment import case_labels

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
        from .provenance import write_table
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
        from .segment import default_segmenter
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
    from .provenance import stamp, write_json, write_table

    out_csv = Path(out_csv)
    if segmenter is None:
        from .segment import default_segmenter
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

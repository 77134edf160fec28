"""Per-case organ metrics (volume mL, SUV statistics, HU mean) in one pass over the volume.

Arrays are NIfTI voxel order (i, j, k); labels hold TotalSegmentator "total" class ids. The voxels of
each class come from one scan of the label map (``flatnonzero`` and a sort by class; faster here than
``scipy.ndimage.find_objects`` boxes), and every statistic is computed from those voxels only (no
full-volume mask per organ). PET stays float.

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

import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..organs import N_TOTAL_CLASSES, ORGAN_NAMES, organ
from ..volumes import Grid, resample_to_grid

log = logging.getLogger("totalgen_eval.metrics")

METRIC_COLUMNS: tuple[str, ...] = ("organ", "n_voxels", "volume_ml", "suv_mean", "suv_median", "suv_std",
                                   "suv_max", "suv_peak", "hu_mean", "touches_border")
PEAK_SPHERE_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm


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
    lo = 0 if np.issubdtype(labels.dtype, np.unsignedinteger) else int(labels.min())
    hi = int(labels.max())
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


def _sphere_sums(values: np.ndarray, centres: np.ndarray, rows: list[tuple[int, int, int]],
                 order: str = "C") -> np.ndarray:
    """Sum of ``values`` (padded so no sphere leaves it) over the sphere at each centre (N x 3 indices).

    Row sums along axis i of each half-length h come from prefix sums (one array per distinct h); the
    sphere is then one gather per row and centre. Arrays are laid out in ``order``, the order the centres
    come in, so the gathers walk memory forwards.
    """
    prefix = np.zeros((values.shape[0] + 1,) + values.shape[1:], np.float64, order=order)
    np.cumsum(values, axis=0, dtype=np.float64, out=prefix[1:])
    total = np.zeros(len(centres), np.float64)
    for h in sorted({r[2] for r in rows}):
        run = prefix[2 * h + 1:] - prefix[: prefix.shape[0] - 2 * h - 1]  # run[m] = sum of values[m .. m + 2h]
        s0, s1, s2 = (st // run.itemsize for st in run.strides)
        base = (centres[:, 0] - h) * s0 + centres[:, 1] * s1 + centres[:, 2] * s2
        flat = run.ravel(order="K")
        for dj, dk, hh in rows:
            if hh == h:
                total += flat[base + (dj * s1 + dk * s2)]
    return total


def _peak(pet_box: np.ndarray, valid_box: np.ndarray, centres: np.ndarray, kernel: np.ndarray,
          clipped: bool, order: str = "C") -> float:
    """Highest sphere mean over ``centres`` (N x 3 indices into a box that holds the margin or the array edge).

    ``clipped``: the box was cut by the array border, so spheres there hold fewer voxels.
    """
    if kernel.size == 1:
        vals = pet_box[tuple(centres.T)]
        vals = vals[~np.isnan(vals)]
        return float(vals.max()) if vals.size else math.nan
    half = np.asarray([k // 2 for k in kernel.shape])
    pad = [(h, h) for h in half]
    centres = centres + half
    rows = _sphere_rows(kernel)
    sums = _sphere_sums(np.pad(np.where(valid_box, pet_box, 0.0), pad), centres, rows, order)
    if clipped or not valid_box.all():
        counts = _sphere_sums(np.pad(valid_box.astype(np.float64), pad), centres, rows, order)
        ok = counts > 0.5
        return float(np.max(sums[ok] / counts[ok])) if ok.any() else math.nan
    return float(np.max(sums)) / float(kernel.sum())


def class_voxels(labels: np.ndarray, classes: Sequence[int]) -> dict[int, tuple[np.ndarray, ...]]:
    """Voxel indices (i, j, k arrays) of each class of ``classes`` present in ``labels``, from one scan.

    One ``flatnonzero`` over the array in its memory order, then a stable sort of the labelled voxels by
    class: no full-volume mask per class.
    """
    if labels.flags.c_contiguous:
        order = "C"
    elif labels.flags.f_contiguous:
        order = "F"
    else:
        labels, order = np.ascontiguousarray(labels), "C"
    flat = labels.ravel(order=order)  # a view
    idx = np.flatnonzero(flat)
    vals = flat[idx]
    wanted = np.zeros(max(256, int(vals.max(initial=0)) + 1), bool)
    wanted[list(classes)] = True
    keep = wanted[vals]
    idx, vals = idx[keep], vals[keep]
    by_class = np.argsort(vals, kind="stable")
    idx, vals = idx[by_class], vals[by_class]
    starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]]) if len(vals) else np.zeros(0, np.intp)
    ends = np.r_[starts[1:], len(vals)]
    coords = np.unravel_index(idx, labels.shape, order=order)
    return {int(vals[s]): tuple(c[s:e] for c in coords) for s, e in zip(starts, ends)}


def _organ_row(name: str, parts: list[tuple[np.ndarray, ...]], pet: np.ndarray, ct: np.ndarray | None,
               kernel: np.ndarray, voxel_ml: float, order: str = "C") -> tuple[dict[str, Any], int]:
    """The metrics of one organ from the voxel indices of its classes, and its number of NaN PET voxels.

    ``parts``: (i, j, k) index arrays of each class of the organ that is present. The peak search works in
    each class's own bounding box, which stays compact where an organ's classes lie apart (lung lobes,
    left and right muscles). ``order``: the memory order the indices are sorted in ("C" or "F").
    """
    row: dict[str, Any] = {"organ": name, "n_voxels": 0, "volume_ml": 0.0, "suv_mean": math.nan,
                           "suv_median": math.nan, "suv_std": math.nan, "suv_max": math.nan,
                           "suv_peak": math.nan, "hu_mean": math.nan, "touches_border": False}
    n = sum(len(p[0]) for p in parts)
    if n == 0:
        return row, 0
    where = tuple(np.concatenate([p[a] for p in parts]) for a in range(3))
    row["n_voxels"] = n
    row["volume_ml"] = n * voxel_ml
    row["touches_border"] = bool(any(c.min() == 0 or c.max() == dim - 1 for c, dim in zip(where, pet.shape)))
    suv = pet[where]
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
        peaks = []
        for part in parts:  # the sphere ignores the organ boundary: the max over classes is exact
            lo = [int(c.min()) for c in part]
            hi = [int(c.max()) + 1 for c in part]
            wide = tuple(slice(max(a - h, 0), min(b + h, dim)) for a, b, h, dim in zip(lo, hi, half, pet.shape))
            clipped = any(w.stop - w.start < b - a + 2 * h for w, a, b, h in zip(wide, lo, hi, half))
            pet_wide = pet[wide]
            centres = np.stack([c - w.start for c, w in zip(part, wide)], axis=1)
            peaks.append(_peak(pet_wide, ~np.isnan(pet_wide), centres, kernel, clipped, order))
        row["suv_peak"] = float(np.nanmax(peaks)) if not np.all(np.isnan(peaks)) else math.nan
    if ct is not None:
        row["hu_mean"] = float(ct[where].mean(dtype=np.float64))
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
    used = {name: organ(name).classes for name in organs}
    voxels = class_voxels(labels, [c for cs in used.values() for c in cs])
    order = "F" if labels.flags.f_contiguous and not labels.flags.c_contiguous else "C"
    kernel = sphere_kernel(grid.spacing_mm)
    rows, n_nan = [], 0
    for name in organs:
        parts = [voxels[c] for c in used[name] if c in voxels]
        row, nan_here = _organ_row(name, parts, pet, ct, kernel, grid.voxel_ml, order)
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



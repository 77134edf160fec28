"""Per-case organ metrics (volume mL, SUV statistics, HU mean) in one pass over the volume.

Arrays are NIfTI voxel order (i, j, k); labels hold TotalSegmentator "total" class ids. The voxels of
each class come from one scan of the label map (``flatnonzero`` and a sort by class; faster here than
``scipy.ndimage.find_objects`` boxes), and every statistic is computed from those voxels only (no
full-volume mask per organ). PET stays float.

Definitions (also in ARCHITECTURE.md, the organ_metrics table):
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
- Lesions (a lesion mask on the PET grid, e.g. AutoPET's SEG): with ``lesions="exclude"`` (the default) lesion
  voxels count towards ``n_voxels``/``volume_ml`` (geometric, as NaN voxels) but are left out of every SUV and
  HU statistic, and out of the SUVpeak spheres; ``"include"`` keeps them. ``lesion_ml`` = the lesion volume
  inside the organ (mL; 0 without lesions, NaN without a lesion mask).
- Per case (:func:`lesion_summary`): ``mtv_ml`` metabolic tumour volume = lesion voxels x voxel volume (mL);
  ``tlg`` total lesion glycolysis = MTV x SUVmean of the lesion voxels (mL x SUV); ``lesion_count`` = connected
  lesion components (26-connectivity).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import InputError, check_number
from ..organs import N_TOTAL_CLASSES, ORGAN_NAMES, organ
from ..volumes import Grid, resample_to_grid

log = logging.getLogger("totalgen_eval.metrics")

METRIC_COLUMNS: tuple[str, ...] = ("organ", "n_voxels", "volume_ml", "suv_mean", "suv_median", "suv_std",
                                   "suv_max", "suv_peak", "hu_mean", "touches_border", "lesion_ml")
LESION_COLUMNS: tuple[str, ...] = ("mtv_ml", "tlg", "lesion_count")  # per case (lesions.csv)
LESION_MODES = ("exclude", "include")
from .peak import peak_mean, sphere_kernel


# --- one case -------------------------------------------------------------------------------------------

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


def _organ_peak(parts: list[tuple[np.ndarray, ...]], pet: np.ndarray, kernel: np.ndarray, order: str,
                lesion: np.ndarray | None) -> float:
    """SUVpeak over the voxels ``parts`` (index arrays per class); ``lesion`` voxels (a bool volume, or None)
    are left out of the spheres as NaN voxels are. Each class is searched in its own bounding box, which
    stays compact where an organ's classes lie apart (lung lobes, left and right muscles)."""
    half = [k // 2 for k in kernel.shape]
    peaks = []
    for part in parts:  # the sphere ignores the organ boundary: the max over classes is exact
        if len(part[0]) == 0:
            continue
        lo = [int(c.min()) for c in part]
        hi = [int(c.max()) + 1 for c in part]
        wide = tuple(slice(max(a - h, 0), min(b + h, dim)) for a, b, h, dim in zip(lo, hi, half, pet.shape))
        clipped = any(w.stop - w.start < b - a + 2 * h for w, a, b, h in zip(wide, lo, hi, half))
        pet_wide = pet[wide]
        valid = ~np.isnan(pet_wide) if lesion is None else ~np.isnan(pet_wide) & ~lesion[wide]
        centres = np.stack([c - w.start for c, w in zip(part, wide)], axis=1)
        peaks.append(peak_mean(pet_wide, valid, centres, kernel, clipped, order))
    return float(np.nanmax(peaks)) if peaks and not np.all(np.isnan(peaks)) else math.nan


def _organ_row(name: str, parts: list[tuple[np.ndarray, ...]], pet: np.ndarray, ct: np.ndarray | None,
               kernel: np.ndarray, voxel_ml: float, order: str = "C", lesion: np.ndarray | None = None,
               exclude: np.ndarray | None = None) -> tuple[dict[str, Any], int]:
    """The metrics of one organ from the voxel indices of its classes, and its number of NaN PET voxels.

    ``parts``: (i, j, k) index arrays of each class of the organ that is present; ``order``: the memory order
    the indices are sorted in ("C" or "F"). ``lesion``: a bool lesion mask on the PET grid (or None), measured
    as ``lesion_ml``; ``exclude``: the bool mask of voxels left out of the SUV and HU statistics and of the peak
    spheres (the lesions, maybe grown by a margin; None: nothing left out). The volume keeps every voxel.
    """
    row: dict[str, Any] = {"organ": name, "n_voxels": 0, "volume_ml": 0.0, "suv_mean": math.nan,
                           "suv_median": math.nan, "suv_std": math.nan, "suv_max": math.nan,
                           "suv_peak": math.nan, "hu_mean": math.nan, "touches_border": False,
                           "lesion_ml": math.nan if lesion is None else 0.0}
    n = sum(len(p[0]) for p in parts)
    if n == 0:
        return row, 0
    where = tuple(np.concatenate([p[a] for p in parts]) for a in range(3))
    row["n_voxels"] = n
    row["volume_ml"] = n * voxel_ml
    row["touches_border"] = bool(any(c.min() == 0 or c.max() == dim - 1 for c, dim in zip(where, pet.shape)))
    if lesion is not None:
        row["lesion_ml"] = int(np.count_nonzero(lesion[where])) * voxel_ml
    if exclude is not None:
        inside = exclude[where]
        if inside.any():
            where = tuple(c[~inside] for c in where)
            parts = [tuple(c[keep] for c in part) for part, keep in ((q, ~exclude[q]) for q in parts)]
    suv = pet[where]
    finite = ~np.isnan(suv)
    n_nan = int(suv.size - np.count_nonzero(finite))
    if n_nan:
        suv = suv[finite]
    if suv.size:
        mean = float(suv.mean(dtype=np.float64))
        row.update(suv_mean=mean, suv_median=float(np.median(suv)),
                   suv_std=float(np.sqrt(np.mean((suv.astype(np.float64) - mean) ** 2))),
                   suv_max=float(suv.max()), suv_peak=_organ_peak(parts, pet, kernel, order, exclude))
    if ct is not None and len(where[0]):
        row["hu_mean"] = float(ct[where].mean(dtype=np.float64))
    return row, n_nan


def _as_image(array: np.ndarray, what: str) -> np.ndarray:
    """A PET or CT array as given, integers as float32; InputError for a complex or boolean array."""
    array = np.asarray(array)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{what} array of type {array.dtype} refused: expected real numbers")
    return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float32)


def _on_pet_grid(pet: np.ndarray, grid: Grid, ct, labels, lesion_mask, ct_grid, labels_grid, lesion_grid):
    """CT, labels and lesion mask checked and resampled onto the PET grid (CT linearly, the others nearest)."""
    if pet.shape != tuple(grid.shape):
        raise InputError(f"PET shape {pet.shape} differs from its grid {tuple(grid.shape)}")
    labels = _onto(check_label_ids(np.asarray(labels)), labels_grid, grid, order=0, what="label map")
    if ct is not None:
        ct = _onto(_as_image(ct, "CT"), ct_grid, grid, order=1, what="CT", cval=-1024.0)
    if lesion_mask is not None:
        lesion_mask = _onto((np.asarray(lesion_mask) != 0).view(np.uint8), lesion_grid, grid, order=0,
                            what="lesion mask") != 0
    for what, array in (("label map", labels), ("CT", ct), ("lesion mask", lesion_mask)):
        if array is not None and array.shape != pet.shape:
            raise InputError(f"{what} shape {array.shape} differs from the PET's {pet.shape} (give its grid)")
    return ct, labels, lesion_mask


def case_metrics(pet: np.ndarray, ct: np.ndarray | None, labels: np.ndarray, grid: Grid,
                 organs: Sequence[str] = ORGAN_NAMES, labels_grid: Grid | None = None,
                 ct_grid: Grid | None = None, lesion_mask: np.ndarray | None = None, lesions: str = "exclude",
                 lesion_grid: Grid | None = None, lesion_margin_mm: float = 0.0) -> pd.DataFrame:
    """Organ metrics of one case: one row per organ in ``organs`` order (columns METRIC_COLUMNS).

    ``pet`` (SUV) defines ``grid`` (shape (i, j, k), affine); ``ct`` (HU, may be None: hu_mean NaN),
    ``labels`` (TotalSegmentator class ids) and ``lesion_mask`` (non-zero = lesion; None: no lesion mask) are
    resampled onto it when their own grids (``ct_grid``, ``labels_grid``, ``lesion_grid``) differ: CT linearly,
    the others nearest-neighbour. ``lesions``: "exclude" (default) leaves lesion voxels out of the SUV and HU
    statistics, "include" keeps them; ``lesion_margin_mm`` > 0 also leaves out the voxels within that distance
    of a lesion (where PET blur spills lesion uptake; ``lesion_ml`` still counts lesion voxels only). Class ids
    outside 0..117 raise InputError, as do complex or boolean PET or CT arrays; valid ids of classes outside
    ``organs`` are ignored. An absent organ gives n_voxels 0 and NaN statistics. Volumes in mL, SUV in g/mL,
    HU. The per-case lesion figures (:func:`lesion_summary`) are in ``frame.attrs["lesions"]`` (a dict; NaN
    values without a lesion mask).
    """
    if lesions not in LESION_MODES:
        raise InputError(f"lesions={lesions!r}: choose {' or '.join(LESION_MODES)}", "--lesions")
    check_number(lesion_margin_mm, "--lesion-margin", 0.0, 1000.0)
    organs = tuple(organs)
    pet = _as_image(pet, "PET")
    ct, labels, lesion_mask = _on_pet_grid(pet, grid, ct, labels, lesion_mask, ct_grid, labels_grid, lesion_grid)
    exclude = None if lesion_mask is None or lesions == "include" else grow_mask(lesion_mask, grid.spacing_mm,
                                                                                  lesion_margin_mm)
    used = {name: organ(name).classes for name in organs}
    voxels = class_voxels(labels, [c for cs in used.values() for c in cs])
    order = "F" if labels.flags.f_contiguous and not labels.flags.c_contiguous else "C"
    kernel = sphere_kernel(grid.spacing_mm)
    rows, n_nan = [], 0
    for name in organs:
        parts = [voxels[c] for c in used[name] if c in voxels]
        row, nan_here = _organ_row(name, parts, pet, ct, kernel, grid.voxel_ml, order, lesion_mask, exclude)
        rows.append(row)
        n_nan += nan_here
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    frame["n_voxels"] = frame["n_voxels"].astype(np.int64)
    frame["touches_border"] = frame["touches_border"].astype(bool)
    frame.attrs["n_nan_pet"] = n_nan
    frame.attrs["lesions"] = lesion_summary(pet, lesion_mask, grid.voxel_ml)
    if n_nan:
        log.warning("%d NaN PET voxels inside the organs were left out of the SUV statistics", n_nan)
    return frame


def grow_mask(mask: np.ndarray, spacing_mm: Sequence[float], margin_mm: float) -> np.ndarray:
    """``mask`` (bool, (i, j, k)) plus every voxel whose centre lies within ``margin_mm`` of a mask voxel's centre
    (a Euclidean distance transform in mm over the mask's bounding box widened by the margin); ``mask`` itself
    when the margin is 0 or the mask empty."""
    if margin_mm <= 0 or not mask.any():
        return mask
    box = ndimage.find_objects(mask.view(np.uint8))[0]
    pad = [int(math.ceil(margin_mm / s)) for s in spacing_mm]
    wide = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, mask.shape))
    grown = mask.copy()
    grown[wide] = ndimage.distance_transform_edt(~mask[wide], sampling=tuple(spacing_mm)) <= margin_mm + 1e-6
    return grown


def lesion_summary(pet: np.ndarray, lesion_mask: np.ndarray | None, voxel_ml: float) -> dict[str, float]:
    """Per-case lesion figures: ``mtv_ml`` (lesion voxels x ``voxel_ml``, mL), ``tlg`` (MTV x SUVmean of the
    lesion voxels, mL x SUV; NaN PET voxels left out of the mean), ``lesion_count`` (connected components,
    26-connectivity). All NaN when ``lesion_mask`` is None (no mask); 0 for an empty mask.
    """
    if lesion_mask is None:
        return {"mtv_ml": math.nan, "tlg": math.nan, "lesion_count": math.nan}
    mask = np.asarray(lesion_mask) != 0
    n = int(np.count_nonzero(mask))
    if n == 0:
        return {"mtv_ml": 0.0, "tlg": 0.0, "lesion_count": 0}
    suv = pet[mask]
    suv = suv[~np.isnan(suv)]
    mtv = n * voxel_ml
    tlg = mtv * float(suv.mean(dtype=np.float64)) if suv.size else math.nan
    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    return {"mtv_ml": mtv, "tlg": tlg, "lesion_count": int(count)}


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



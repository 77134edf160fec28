"""Per-case organ metrics (volume mL, SUV statistics, HU mean) in one pass over the volume.

Arrays are NIfTI voxel order (i, j, k); labels hold TotalSegmentator "total" class ids. The voxels of
each class come from one scan of the label map (8-byte words at a time, then a sort of the labelled voxels
by class; faster here than ``np.flatnonzero`` or ``scipy.ndimage.find_objects``) as flat indices in the
arrays' memory order, and every statistic is computed from those voxels only (no full-volume mask per
organ, no cast of the volumes). PET stays float; a CT stored as integers stays integer.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import InputError, check_number
from ..organs import N_TOTAL_CLASSES, ORGAN_NAMES, organ, organ_classes
from ..parallel import threads_allowed
from ..volumes import Grid, resample_to_grid
from .peak import peak_mean, sphere_kernel

log = logging.getLogger("totalgen_eval.metrics")

METRIC_COLUMNS: tuple[str, ...] = ("organ", "n_voxels", "volume_ml", "suv_mean", "suv_median", "suv_std",
                                   "suv_max", "suv_peak", "hu_mean", "touches_border", "lesion_ml")
LESION_COLUMNS: tuple[str, ...] = ("mtv_ml", "tlg", "lesion_count")  # per case (lesions.csv)
LESION_MODES = ("exclude", "include")
ORGAN_THREADS = 2  # organs measured in two threads where the process may use two cores: on an AMD EPYC 1.41x
# faster (wall) at 1.24x the CPU time on a 2 mm phantom, 0.95x at 2.1x on the 200 x 200 x 300 noise PET, whose
# sphere sums are bound by memory traffic (in memory); never in pool workers that share the cores


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


def nonzero_flat(flat: np.ndarray) -> np.ndarray:
    """Ascending indices of the non-zero entries of a contiguous 1-D integer array: the array is scanned as
    8-byte words (several voxels at a time), then only the voxels of non-zero words are looked at; with a
    few per cent of the voxels labelled this is several times faster than ``np.flatnonzero``."""
    per = 8 // flat.itemsize if flat.itemsize in (1, 2, 4) and flat.flags.c_contiguous else 0
    if per < 2 or flat.size < 64:
        return np.flatnonzero(flat)
    n = flat.size - flat.size % per
    words = np.flatnonzero(flat[:n].view(np.uint64))
    candidates = (words[:, None] * per + np.arange(per)).ravel()
    found = candidates[flat[candidates] != 0]
    return np.concatenate([found, np.flatnonzero(flat[n:]) + n]) if n < flat.size else found


def class_voxels(flat_labels: np.ndarray, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """Flat indices (ascending) into ``flat_labels`` of the voxels of each class of ``classes`` present, from
    one scan: the labelled voxels are found once and sorted by class (no full-volume mask per class)."""
    idx = nonzero_flat(flat_labels)
    vals = flat_labels[idx]
    wanted = np.zeros(max(256, int(vals.max(initial=0)) + 1), bool)
    wanted[list(classes)] = True
    keep = wanted[vals]
    if not keep.all():
        idx, vals = idx[keep], vals[keep]
    by_class = np.argsort(vals, kind="stable")
    idx, vals = idx[by_class], vals[by_class]
    starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]]) if len(vals) else np.zeros(0, np.intp)
    ends = np.r_[starts[1:], len(vals)]
    return {int(vals[s]): idx[s:e] for s, e in zip(starts, ends)}


@dataclass(frozen=True)
class LabelScan:
    """The voxels of the classes ``classes`` of the label map ``source`` (flat indices in its memory ``order``),
    found once by :func:`scan_labels`, e.g. while the PET is still being read."""

    source: np.ndarray
    order: str
    classes: frozenset[int]
    voxels: dict[int, np.ndarray]

    def serves(self, labels: np.ndarray, organs: Sequence[str]) -> bool:
        """Whether this is the scan of the very array ``labels`` and covers the classes of ``organs``."""
        return self.source is labels and self.classes.issuperset(organ_classes(organs))


def scan_labels(labels: np.ndarray, organs: Sequence[str] = ORGAN_NAMES) -> LabelScan:
    """The :class:`LabelScan` of ``labels`` for the classes of ``organs``; InputError for ids that are not
    TotalSegmentator "total" classes (``check_label_ids``)."""
    return _scan(labels, check_label_ids(np.asarray(labels)), organs)


def _scan(source: np.ndarray, labels: np.ndarray, organs: Sequence[str]) -> LabelScan:
    """The :class:`LabelScan` of ``source`` from ``labels``, its ids checked (the same array, or a copy)."""
    ordered, order = _in_memory_order(labels)
    classes = organ_classes(organs)
    return LabelScan(source, order, frozenset(classes), class_voxels(ordered.reshape(-1, order=order), classes))


@dataclass(frozen=True)
class CaseArrays:
    """The arrays of one case on the PET grid (i, j, k), each also as a flat view in ``order`` (the label
    map's memory order, "C" or "F"; an array laid out otherwise is copied once). ``exclude``: voxels left out
    of the SUV and HU statistics and the peak spheres (None: none); ``kernel``: the SUVpeak sphere."""

    pet: np.ndarray
    ct: np.ndarray | None
    lesion: np.ndarray | None
    exclude: np.ndarray | None
    order: str
    kernel: np.ndarray
    voxel_ml: float
    flat_pet: np.ndarray
    flat_ct: np.ndarray | None
    flat_lesion: np.ndarray | None
    flat_exclude: np.ndarray | None


def case_arrays(pet: np.ndarray, ct: np.ndarray | None, lesion: np.ndarray | None, exclude: np.ndarray | None,
                order: str, grid: Grid) -> CaseArrays:
    """:class:`CaseArrays` of a case, with the flat views in memory ``order``."""
    def flat(array):
        return None if array is None else array.reshape(-1, order=order)

    return CaseArrays(pet, ct, lesion, exclude, order, sphere_kernel(grid.spacing_mm), grid.voxel_ml,
                      flat(pet), flat(ct), flat(lesion), flat(exclude))


def _organ_peak(coords: list[tuple[np.ndarray, ...]], arrays: CaseArrays) -> float:
    """SUVpeak over the voxels ``coords`` ((i, j, k) index arrays per class, in memory order; excluded voxels
    already left out), whose spheres leave out NaN and excluded voxels. Each class is searched in its own
    bounding box, which stays compact where an organ's classes lie apart (lung lobes, left and right muscles)."""
    pet, half = arrays.pet, [k // 2 for k in arrays.kernel.shape]
    peaks = []
    for where in coords:  # the sphere ignores the organ boundary: the max over classes is exact
        if len(where[0]) == 0:
            continue
        lo, hi = [int(c.min()) for c in where], [int(c.max()) + 1 for c in where]
        wide = tuple(slice(max(a - h, 0), min(b + h, dim)) for a, b, h, dim in zip(lo, hi, half, pet.shape))
        clipped = any(w.stop - w.start < b - a + 2 * h for w, a, b, h in zip(wide, lo, hi, half))
        pet_wide = pet[wide]
        centres = tuple(c - w.start for c, w in zip(where, wide))
        peaks.append(peak_mean(pet_wide, _valid(pet_wide, arrays, wide), centres, arrays.kernel, clipped,
                               arrays.order))
    return float(np.nanmax(peaks)) if peaks and not np.all(np.isnan(peaks)) else math.nan


def _valid(pet_box: np.ndarray, arrays: CaseArrays, box: tuple[slice, ...]) -> np.ndarray | None:
    """The voxels of a box the peak spheres hold: not NaN and not excluded; None when that is all of them
    (a NaN anywhere makes the box's sum NaN, so a clean box costs one sum)."""
    excluded = None if arrays.exclude is None else arrays.exclude[box]
    if not np.isnan(pet_box.sum()) and (excluded is None or not excluded.any()):
        return None
    valid = ~np.isnan(pet_box)
    return valid if excluded is None else valid & ~excluded


def _empty_row(name: str, has_lesion_mask: bool) -> dict[str, Any]:
    """The row of an absent organ: no voxels, NaN statistics (lesion_ml 0 with a lesion mask, else NaN)."""
    return {"organ": name, "n_voxels": 0, "volume_ml": 0.0, "suv_mean": math.nan, "suv_median": math.nan,
            "suv_std": math.nan, "suv_max": math.nan, "suv_peak": math.nan, "hu_mean": math.nan,
            "touches_border": False, "lesion_ml": 0.0 if has_lesion_mask else math.nan}


def _touches_border(coords: list[tuple[np.ndarray, ...]], shape: tuple[int, ...]) -> bool:
    """Whether any voxel of ``coords`` ((i, j, k) index arrays per class) lies on the outermost layer."""
    return bool(any(c.min() == 0 or c.max() == dim - 1 for where in coords for c, dim in zip(where, shape)))


def _suv_statistics(suv: np.ndarray) -> dict[str, float]:
    """suv_mean, suv_median, suv_std (ddof 0, two-pass in float64) and suv_max of non-NaN SUV values."""
    mean = float(suv.mean(dtype=np.float64))
    centred = suv.astype(np.float64) - mean
    return {"suv_mean": mean, "suv_median": float(np.median(suv)),
            "suv_std": float(np.sqrt(np.dot(centred, centred) / suv.size)), "suv_max": float(suv.max())}


def _kept(parts: list[np.ndarray], coords: list[tuple[np.ndarray, ...]],
          arrays: CaseArrays) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...]]]:
    """``parts`` (flat indices) and ``coords`` (index arrays) without the excluded voxels (themselves when
    nothing is excluded)."""
    if arrays.flat_exclude is None:
        return parts, coords
    keep = [~arrays.flat_exclude[part] for part in parts]
    return [p[k] for p, k in zip(parts, keep)], [tuple(c[k] for c in where) for where, k in zip(coords, keep)]


def _organ_row(name: str, parts: list[np.ndarray], arrays: CaseArrays) -> tuple[dict[str, Any], int]:
    """The metrics of one organ from the flat voxel indices of its classes (``parts``, in the arrays' memory
    order), and its number of NaN PET voxels. The volume and ``lesion_ml`` keep every voxel; the SUV and HU
    statistics and the peak spheres leave out ``arrays.exclude``."""
    row = _empty_row(name, arrays.lesion is not None)
    if not parts:
        return row, 0
    coords = [np.unravel_index(part, arrays.pet.shape, order=arrays.order) for part in parts]
    n = sum(len(part) for part in parts)
    row.update(n_voxels=n, volume_ml=n * arrays.voxel_ml, touches_border=_touches_border(coords, arrays.pet.shape))
    if arrays.flat_lesion is not None:
        row["lesion_ml"] = sum(int(np.count_nonzero(arrays.flat_lesion[p])) for p in parts) * arrays.voxel_ml
    parts, coords = _kept(parts, coords, arrays)
    kept = np.concatenate(parts) if len(parts) > 1 else parts[0]
    suv = arrays.flat_pet[kept]
    finite = ~np.isnan(suv)
    n_nan = int(suv.size - np.count_nonzero(finite))
    if n_nan:
        suv = suv[finite]
    if suv.size:
        row.update(_suv_statistics(suv), suv_peak=_organ_peak(coords, arrays))
    if arrays.flat_ct is not None and len(kept):
        row["hu_mean"] = float(arrays.flat_ct[kept].mean(dtype=np.float64))
    return row, n_nan


def _as_image(array: np.ndarray, what: str, keep_integers: bool = False) -> np.ndarray:
    """A PET or CT array as given, integers as float32 unless ``keep_integers`` (a CT in HU stored as
    integers: its mean is the same); InputError for a complex or boolean array."""
    array = np.asarray(array)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{what} array of type {array.dtype} refused: expected real numbers")
    if np.issubdtype(array.dtype, np.floating) or (keep_integers and np.issubdtype(array.dtype, np.integer)):
        return array
    return array.astype(np.float32)


def _on_pet_grid(pet: np.ndarray, grid: Grid, ct, labels, lesion_mask, ct_grid, labels_grid, lesion_grid,
                 checked: bool = False):
    """CT, labels and lesion mask checked and resampled onto the PET grid (CT linearly, the others nearest);
    ``checked``: the label ids were checked already (``scan_labels``)."""
    if pet.shape != tuple(grid.shape):
        raise InputError(f"PET shape {pet.shape} differs from its grid {tuple(grid.shape)}")
    labels = _onto(labels if checked else check_label_ids(np.asarray(labels)), labels_grid, grid, order=0,
                   what="label map")
    if ct is not None:
        ct = _onto(_as_image(ct, "CT", keep_integers=True), ct_grid, grid, order=1, what="CT", cval=-1024.0)
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
                 lesion_grid: Grid | None = None, lesion_margin_mm: float = 0.0,
                 scan: LabelScan | None = None) -> pd.DataFrame:
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
    values without a lesion mask). ``scan``: the :func:`scan_labels` of ``labels``, used when the labels
    need no resampling (else they are scanned here).
    """
    if lesions not in LESION_MODES:
        raise InputError(f"lesions={lesions!r}: choose {' or '.join(LESION_MODES)}", "--lesions")
    check_number(lesion_margin_mm, "--lesion-margin", 0.0, 1000.0)
    pet = _as_image(pet, "PET")
    scanned = scan is not None and scan.serves(labels, organs)
    given = labels
    ct, labels, lesion_mask = _on_pet_grid(pet, grid, ct, labels, lesion_mask, ct_grid, labels_grid, lesion_grid,
                                           checked=scanned)
    if not scanned or labels is not given:  # resampled labels are checked (if not yet) and scanned anew
        scan = _scan(labels, check_label_ids(labels) if scanned else labels, organs)
    exclude = None if lesion_mask is None or lesions == "include" else grow_mask(lesion_mask, grid.spacing_mm,
                                                                                  lesion_margin_mm)
    arrays = case_arrays(pet, ct, lesion_mask, exclude, scan.order, grid)
    frame = _organ_table(tuple(organs), scan.voxels, arrays)
    frame.attrs["lesions"] = lesion_summary(pet, lesion_mask, grid.voxel_ml)
    return frame


def _in_memory_order(labels: np.ndarray) -> tuple[np.ndarray, str]:
    """The label map and the order ("C" or "F") its memory is laid out in (a C copy when neither)."""
    if labels.flags.c_contiguous:
        return labels, "C"
    if labels.flags.f_contiguous:
        return labels, "F"
    return np.ascontiguousarray(labels), "C"


def _organ_table(organs: tuple[str, ...], voxels: dict[int, np.ndarray], arrays: CaseArrays) -> pd.DataFrame:
    """One row per organ (METRIC_COLUMNS) from the flat indices of each class's voxels (``LabelScan.voxels``);
    NaN PET voxels counted in ``attrs["n_nan_pet"]`` and logged."""
    used = {name: organ(name).classes for name in organs}
    def row_of(name: str) -> tuple[dict[str, Any], int]:
        return _organ_row(name, [voxels[c] for c in used[name] if c in voxels], arrays)

    threads = min(ORGAN_THREADS, threads_allowed())  # 1 in a pool worker of a busy machine: no CPU wasted
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="organ") as pool:  # numpy releases the GIL
            done = list(pool.map(row_of, organs))
    else:
        done = [row_of(name) for name in organs]
    rows, n_nan = [row for row, _ in done], sum(n for _, n in done)
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    frame["n_voxels"] = frame["n_voxels"].astype(np.int64)
    frame["touches_border"] = frame["touches_border"].astype(bool)
    frame.attrs["n_nan_pet"] = n_nan
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



"""SUVpeak: the highest mean of a 1 mL sphere centred in an organ, every sphere summed exactly.

Arrays are NIfTI voxel order (i, j, k). The sphere is the voxels whose centres lie within
``PEAK_RADIUS_MM`` (6.20 mm) of the centre voxel's, in the grid's physical units; the definition of the
organ table's ``suv_peak`` is in :mod:`.case`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PEAK_SPHERE_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm


def sphere_kernel(spacing_mm: Sequence[float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (i, j, k) kernel: voxels whose centres lie within ``radius_mm`` of the centre voxel's."""
    half = [int(math.floor(radius_mm / s + 1e-9)) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_mm))
    return dist2 <= radius_mm ** 2 + 1e-9


def _sphere_rows(kernel: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    """The sphere as rows along axis i, grouped by half-length: {h: [(dj, dk), ...]}, each row covering i
    offsets -h..h around the centre."""
    lengths = kernel.sum(axis=0)
    rows: dict[int, list[tuple[int, int]]] = {}
    for j, k in zip(*np.nonzero(lengths)):
        rows.setdefault(int(lengths[j, k] - 1) // 2, []).append((int(j) - kernel.shape[1] // 2,
                                                                 int(k) - kernel.shape[2] // 2))
    return rows


def _padded_prefix(values: np.ndarray, keep: np.ndarray | None, half: Sequence[int]) -> np.ndarray:
    """Cumulative sums along axis i (float64, F order) of ``values`` where ``keep`` (everywhere if None), zero
    elsewhere, padded by ``half`` on every side, after a zero row."""
    shape = (values.shape[0] + 2 * half[0] + 1, values.shape[1] + 2 * half[1], values.shape[2] + 2 * half[2])
    prefix = np.zeros(shape, np.float64, order="F")
    inside = tuple(slice(h + (a == 0), h + (a == 0) + n) for a, (h, n) in enumerate(zip(half, values.shape)))
    np.cumsum(values if keep is None else np.where(keep, values, 0.0), axis=0, dtype=np.float64, out=prefix[inside])
    end = inside[0].stop  # the rows after the data hold the last sums
    prefix[end:, inside[1], inside[2]] = prefix[end - 1:end, inside[1], inside[2]]
    return prefix


def sphere_sums(values: np.ndarray, keep: np.ndarray | None, kernel: np.ndarray, lo: Sequence[int],
                hi: Sequence[int]) -> np.ndarray:
    """Sums of ``values`` (F-ordered (i, j, k) box; where ``keep``, all if None) over the sphere ``kernel``
    centred at every voxel of the sub-box ``lo``..``hi`` (F order, float64); spheres are cut at the box edge.

    From the prefix sums along i: the row of half-length h at (j + dj, k + dk) sums to
    prefix[i + h + 1] - prefix[i - h]. Each half-length's row sums are taken once for the whole sub-box, then
    added at each of its rows' (dj, dk) offsets: one pass over the sub-box per row, no gathers.
    """
    half = [k // 2 for k in kernel.shape]
    prefix = _padded_prefix(values, keep, half)
    n = [b - a for a, b in zip(lo, hi)]
    total = np.zeros(n, np.float64, order="F")
    for h, offsets in _sphere_rows(kernel).items():
        start = lo[0] + half[0] - h  # the prefix row of the first centre's row start
        row_sums = prefix[start + 2 * h + 1:start + 2 * h + 1 + n[0]] - prefix[start:start + n[0]]
        for dj, dk in offsets:
            j, k = lo[1] + half[1] + dj, lo[2] + half[2] + dk
            total += row_sums[:, j:j + n[1], k:k + n[2]]
    return total


def peak_mean(pet_box: np.ndarray, valid_box: np.ndarray | None, centres: tuple[np.ndarray, ...], kernel: np.ndarray,
              clipped: bool, order: str = "C") -> float:
    """Highest sphere mean over ``centres`` ((i, j, k) index arrays into a box that holds the margin or the
    array edge); ``valid_box``: the voxels the spheres hold (None: all); spheres without a valid voxel are
    left out.

    ``clipped``: the box was cut by the array border, so spheres there hold fewer voxels. Exact: every sphere
    of the centres' bounding box is summed (``sphere_sums``), on the box in its memory ``order`` ("C" boxes
    are searched through their F-ordered transpose).
    """
    if kernel.size == 1:
        vals = pet_box[centres]
        vals = vals[~np.isnan(vals)]
        return float(vals.max()) if vals.size else math.nan
    if order == "C":
        return peak_mean(pet_box.T, None if valid_box is None else valid_box.T, centres[::-1], kernel.T,
                         clipped, "F")
    lo, hi = [int(c.min()) for c in centres], [int(c.max()) + 1 for c in centres]
    at = _flat_in(centres, lo, hi)
    if not clipped and valid_box is None:
        found = sphere_sums(pet_box, None, kernel, lo, hi).ravel(order="F")[at] / float(kernel.sum())
    else:
        valid = np.ones(pet_box.shape, bool, order="F") if valid_box is None else valid_box
        sums = sphere_sums(pet_box, valid, kernel, lo, hi).ravel(order="F")[at]
        counts = sphere_sums(valid.astype(np.float32), None, kernel, lo, hi).ravel(order="F")[at]
        found = sums[counts > 0.5] / counts[counts > 0.5]
    return float(found.max()) if found.size else math.nan


def _flat_in(centres: tuple[np.ndarray, ...], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Flat F-order positions of ``centres`` ((i, j, k) index arrays) in the sub-box ``lo``..``hi``."""
    n0, n1 = hi[0] - lo[0], hi[1] - lo[1]
    return (centres[0] - lo[0]) + n0 * ((centres[1] - lo[1]) + n1 * (centres[2] - lo[2]).astype(np.int64))

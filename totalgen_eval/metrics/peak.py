"""SUVpeak: the highest mean of a 1 mL sphere centred in an organ, found exactly without summing every sphere.

Arrays are NIfTI voxel order (i, j, k). The sphere is the voxels whose centres lie within
``PEAK_RADIUS_MM`` (6.20 mm) of the centre voxel's, in the grid's physical units; the definition of the
organ table's ``suv_peak`` is in :mod:`.case`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PEAK_SPHERE_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm
PEAK_BLOCK = 4  # SUVpeak search: centres bounded in blocks of 4 along i
PEAK_SEEDS = 64  # SUVpeak search: about this many centres (the blocks with the highest bounds) summed first



def sphere_kernel(spacing_mm: Sequence[float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (i, j, k) kernel: voxels whose centres lie within ``radius_mm`` of the centre voxel's."""
    half = [int(math.floor(radius_mm / s + 1e-9)) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_mm))
    return dist2 <= radius_mm ** 2 + 1e-9


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


def _padded_prefix(values: np.ndarray, keep: np.ndarray | None, half: np.ndarray) -> np.ndarray:
    """Cumulative sums along axis i (float64, F order) of ``values`` where ``keep`` (everywhere if None), zero
    elsewhere, padded by ``half`` on every side (PEAK_BLOCK more rows at the end of i), after a zero row."""
    shape = (values.shape[0] + 2 * half[0] + PEAK_BLOCK + 1, values.shape[1] + 2 * half[1],
             values.shape[2] + 2 * half[2])
    prefix = np.zeros(shape, np.float64, order="F")
    inside = tuple(slice(h + (a == 0), h + (a == 0) + n) for a, (h, n) in enumerate(zip(half, values.shape)))
    np.cumsum(values if keep is None else np.where(keep, values, 0.0), axis=0, dtype=np.float64, out=prefix[inside])
    end = inside[0].stop  # the rows after the data hold the last sums
    prefix[end:, inside[1], inside[2]] = prefix[end - 1:end, inside[1], inside[2]]
    return prefix


def _gather_rows(prefix: np.ndarray, at: np.ndarray, rows: list[tuple[int, int, int]]) -> np.ndarray:
    """Sphere sums at ``at`` (N x 3 indices into the padded array) from the prefix sums along i: per row of
    half-length h, prefix[i + h + 1] - prefix[i - h] at (j + dj, k + dk). With points in memory order the
    gathers walk memory forwards."""
    s0, s1, s2 = (st // prefix.itemsize for st in prefix.strides)
    flat = prefix.ravel(order="K")
    base = at[:, 0] * s0 + at[:, 1] * s1 + at[:, 2] * s2
    total = np.zeros(len(at), np.float64)
    for dj, dk, h in rows:
        here = base + (dj * s1 + dk * s2)
        total += flat[here + (h + 1) * s0] - flat[here - h * s0]
    return total


def _block_row_maxima(prefix: np.ndarray, half: np.ndarray, h: int, reduce: np.ufunc) -> np.ndarray:
    """Per block of PEAK_BLOCK positions along i (box rows 0, b, 2b, ...; every j, k of the padded prefix),
    ``reduce`` (np.maximum or np.minimum) of the row sums of half-length ``h`` over the block's positions.
    Row sums are the differences ``_gather_rows`` takes: prefix[i + h + 1] - prefix[i - h]."""
    b = PEAK_BLOCK
    nq = -(-(prefix.shape[0] - 2 * int(half[0]) - b - 1) // b)
    start = int(half[0]) - h  # the row-sum index of box row 0
    block = np.empty((nq,) + prefix.shape[1:], np.float64, order="F")
    part = np.empty_like(block)
    for t in range(b):
        lo = start + t
        np.subtract(prefix[lo + 2 * h + 1: lo + 2 * h + 1 + nq * b: b], prefix[lo: lo + nq * b: b],
                    out=block if t == 0 else part)
        if t:
            reduce(block, part, out=block)
    return block


def _block_bounds(prefix: np.ndarray, rows: list[tuple[int, int, int]], half: np.ndarray,
                  firsts: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """Bounds of the sphere sums of the blocks whose first centres (box indices) are ``firsts``.

    A block is PEAK_BLOCK consecutive positions along i. ``reduce`` np.maximum: per row of the sphere, the
    largest row sum over the block's positions, summed over the rows: no sphere sum in the block exceeds it;
    np.minimum: a lower bound. Row sums are the same float differences ``_gather_rows`` takes, and rounded
    additions are monotone, so the bounds hold for the sums it computes, not only for exact ones.
    """
    total = np.zeros(len(firsts), np.float64)
    for h in sorted({r[2] for r in rows}):
        block = _block_row_maxima(prefix, half, h, reduce)
        s0, s1, s2 = (st // block.itemsize for st in block.strides)
        base = (firsts[:, 0] // PEAK_BLOCK) * s0 + (firsts[:, 1] + half[1]) * s1 + (firsts[:, 2] + half[2]) * s2
        flat = block.ravel(order="K")
        for dj, dk, hh in rows:
            if hh == h:
                total += flat[base + (dj * s1 + dk * s2)]
    return total


@dataclass(frozen=True)
class _Spheres:
    """Prefix sums along i of one box's PET (and of its valid-voxel counts, None when every sphere holds
    ``n`` voxels), padded by ``half``; ``rows``: the sphere as rows along i."""

    sums: np.ndarray
    counts: np.ndarray | None
    rows: list[tuple[int, int, int]]
    half: np.ndarray
    n: float

    @classmethod
    def of(cls, pet_box: np.ndarray, valid_box: np.ndarray | None, kernel: np.ndarray, clipped: bool) -> "_Spheres":
        """The prefix sums of an F-ordered box; ``valid_box`` None: every voxel valid."""
        half = np.asarray([k // 2 for k in kernel.shape])
        if not clipped and valid_box is None:
            return cls(_padded_prefix(pet_box, None, half), None, _sphere_rows(kernel), half, float(kernel.sum()))
        valid = np.ones(pet_box.shape, bool, order="F") if valid_box is None else valid_box
        return cls(_padded_prefix(pet_box, valid, half), _padded_prefix(valid.astype(np.float32), None, half),
                   _sphere_rows(kernel), half, float(kernel.sum()))

    def means(self, centres: np.ndarray) -> np.ndarray:
        """Sphere means at ``centres`` (N x 3 box indices in memory order); spheres without a valid voxel
        are left out."""
        padded = centres + self.half
        sums = _gather_rows(self.sums, padded, self.rows)
        if self.counts is None:
            return sums / self.n
        counts = _gather_rows(self.counts, padded, self.rows)
        return sums[counts > 0.5] / counts[counts > 0.5]

    def bounds(self, firsts: np.ndarray) -> np.ndarray:
        """Upper bounds of the sphere means of the blocks whose first centres are ``firsts`` (inf where a
        sphere may hold no valid voxel)."""
        high = _block_bounds(self.sums, self.rows, self.half, firsts, np.maximum)
        if self.counts is None:
            return high / self.n
        fewest = _block_bounds(self.counts, self.rows, self.half, firsts, np.minimum)
        most = _block_bounds(self.counts, self.rows, self.half, firsts, np.maximum)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(fewest < 0.5, np.inf, np.where(high >= 0, high / fewest, high / most))


def peak_mean(pet_box: np.ndarray, valid_box: np.ndarray | None, centres: np.ndarray, kernel: np.ndarray,
              clipped: bool, order: str = "C") -> float:
    """Highest sphere mean over ``centres`` (N x 3 indices into a box that holds the margin or the array edge,
    sorted in the arrays' memory ``order``); ``valid_box``: the voxels the spheres hold (None: all).

    ``clipped``: the box was cut by the array border, so spheres there hold fewer voxels. Exact, but summed
    only near the hottest spheres: the centres fall into blocks of PEAK_BLOCK positions along the first
    (fastest) axis; a block's bound (per row of the sphere, the largest row sum over the block, summed; no
    sphere mean in the block exceeds it) is compared with the best mean of the centres of the PEAK_SEEDS /
    PEAK_BLOCK blocks with the highest bounds, and only the centres of blocks that could beat it are summed.
    """
    if kernel.size == 1:
        vals = pet_box[tuple(centres.T)]
        vals = vals[~np.isnan(vals)]
        return float(vals.max()) if vals.size else math.nan
    if order == "C":  # reversed axes make the arrays F-ordered and the centres sorted in F order
        return peak_mean(pet_box.T, None if valid_box is None else valid_box.T, centres[:, ::-1], kernel.T,
                         clipped, "F")
    spheres = _Spheres.of(pet_box, valid_box, kernel, clipped)
    firsts, sizes = _blocks_of(centres)
    bound = spheres.bounds(centres[firsts])
    seeds = np.sort(np.argpartition(-bound, PEAK_SEEDS // PEAK_BLOCK - 1)[:PEAK_SEEDS // PEAK_BLOCK]) \
        if len(bound) > PEAK_SEEDS // PEAK_BLOCK else np.arange(len(bound))
    found = spheres.means(centres[_centres_of(firsts, sizes, seeds)])
    best = float(found.max()) if found.size else -np.inf
    rivals = np.flatnonzero(bound >= best)
    found = spheres.means(centres[_centres_of(firsts, sizes, rivals)])
    return float(found.max()) if found.size else math.nan


def _centres_of(firsts: np.ndarray, sizes: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Indices of the centres of ``blocks`` (ascending block numbers), ascending: each block's centres are
    consecutive, from its first."""
    n = sizes[blocks]
    return np.repeat(firsts[blocks] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


def _blocks_of(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each block's first centre, centres per block) for centres sorted in F order: a block is the
    centres sharing j, k and i // PEAK_BLOCK (consecutive in that order)."""
    key = centres[:, 0] // PEAK_BLOCK + (centres[:, 1] + centres[:, 2].astype(np.int64) * (1 << 21)) * (1 << 21)
    firsts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return firsts, np.diff(np.r_[firsts, len(centres)])

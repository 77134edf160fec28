"""Common grids for image-level comparison: axis-aligned RAS+ grids, the body box, intensity scaling.

Two grids serve the image metrics. ``ras_grid`` keeps a volume's extent and puts it on RAS+ axes at a
given voxel size (the feature network's), so planes mean the same thing in every cohort: axis 0 = x
(sagittal slices are across it), 1 = y (coronal), 2 = z (axial). ``body_grid`` fits a fixed-shape grid to
the body's bounding box, so that volumes of different fields of view and body sizes can be compared voxel
by voxel (nearest-neighbour memorization distances, MS-SSIM between twins).
"""
from __future__ import annotations

import numpy as np

from ..segment.model import normalise_ct, normalise_pet
from ..volumes import Grid, resample_to_grid

CT_WINDOW: tuple[float, float] = (-1000.0, 1000.0)  # HU mapped to [0, 1] for distances and MS-SSIM
PET_MAX_SUV = 25.0  # SUV -> log2(clip(SUV, 0, 25) + 1) / log2(26), in [0, 1]
CT_FILL_HU = -1024.0
BODY_HU = -400.0  # CT above this is body (air -1000, lung about -850 lies inside the body's box anyway)
BODY_SHAPE: tuple[int, int, int] = (32, 24, 96)  # the body box grid (x, y, z), about 1.5 cm voxels for an adult
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}  # the array axis each plane's slices cross


def outer_box(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """RAS+ lower and upper corners (mm) of the box covered by the voxels (centres +- half a voxel)."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in grid.shape], indexing="ij")).reshape(3, -1)
    xyz = grid.affine[:3, :3] @ corners + grid.affine[:3, 3:4]
    return xyz.min(axis=1), xyz.max(axis=1)


def box_grid(lower: np.ndarray, upper: np.ndarray, shape: tuple[int, int, int]) -> Grid:
    """An axis-aligned RAS+ grid of ``shape`` voxels filling the box [lower, upper] (mm)."""
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    spacing = (upper - lower) / np.asarray(shape, float)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = lower + spacing / 2
    return Grid(tuple(int(n) for n in shape), affine)


def ras_grid(grid: Grid, voxel_mm: tuple[float, float, float]) -> Grid:
    """The RAS+ axis-aligned grid over ``grid``'s outer box with voxels of ``voxel_mm`` (at least one)."""
    lower, upper = outer_box(grid)
    voxel = np.asarray(voxel_mm, float)
    shape = tuple(max(1, int(round(e))) for e in (upper - lower) / voxel)
    upper = lower + voxel * np.asarray(shape)
    return box_grid(lower, upper, shape)


def to_ras(ct: np.ndarray, pet: np.ndarray, grid: Grid, voxel_mm: tuple[float, float, float]
           ) -> tuple[np.ndarray, np.ndarray, Grid]:
    """CT (HU) and PET (SUV) on the same source grid, resampled (linear) onto :func:`ras_grid`."""
    target = ras_grid(grid, voxel_mm)
    pet = np.nan_to_num(np.asarray(pet, np.float32))
    ct = np.asarray(ct, np.float32)
    if grid.same_as(target):
        return ct, pet, target
    return (resample_to_grid(ct, grid, target, order=1, cval=CT_FILL_HU),
            resample_to_grid(pet, grid, target, order=1, cval=0.0), target)


def _trimmed_span(counts: np.ndarray, trim: float) -> tuple[int, int]:
    """First and last index of a profile of voxel counts once ``trim`` of the total is cut at each end."""
    cdf = np.cumsum(counts, dtype=float)
    total = cdf[-1]
    return int(np.searchsorted(cdf, trim * total, side="right")), int(np.searchsorted(cdf, (1 - trim) * total))


def body_box(ct: np.ndarray, grid: Grid, threshold_hu: float = BODY_HU, trim: float = 0.001
             ) -> tuple[np.ndarray, np.ndarray]:
    """RAS+ box (mm) around the body: voxels with CT > ``threshold_hu``, ``trim`` of them cut at each end
    of every axis (stray noise voxels do not stretch it). The whole grid when no voxel is body.
    ``grid`` must be axis-aligned (as :func:`ras_grid` makes it)."""
    mask = ct > threshold_hu
    if mask.sum() < 8:
        return outer_box(grid)
    lo_idx, hi_idx = np.zeros(3), np.zeros(3)
    for axis in range(3):
        counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        lo_idx[axis], hi_idx[axis] = _trimmed_span(counts, trim)
    corners = np.stack([lo_idx - 0.5, hi_idx + 0.5], axis=1)  # outer faces of the first and last body voxels
    xyz = grid.affine[:3, :3] @ corners + grid.affine[:3, 3:4]
    return xyz.min(axis=1), xyz.max(axis=1)


def body_arrays(ct: np.ndarray, pet: np.ndarray, grid: Grid, shape: tuple[int, int, int] = BODY_SHAPE) -> np.ndarray:
    """(2, *shape) float32: CT and PET scaled to [0, 1] (CT_WINDOW, PET_MAX_SUV) on the body box grid."""
    target = box_grid(*body_box(ct, grid), shape)
    ct_b = resample_to_grid(np.asarray(ct, np.float32), grid, target, order=1, cval=CT_FILL_HU)
    pet_b = resample_to_grid(np.nan_to_num(np.asarray(pet, np.float32)), grid, target, order=1, cval=0.0)
    return np.stack([normalise_ct(ct_b, CT_WINDOW), normalise_pet(pet_b, PET_MAX_SUV)])


def scale_modality(volume: np.ndarray, modality: str, ct_window: tuple[float, float] = CT_WINDOW,
                   pet_max_suv: float = PET_MAX_SUV) -> np.ndarray:
    """A CT (HU) or PET (SUV) volume scaled to [0, 1] as the segmenters see it."""
    if modality == "ct":
        return normalise_ct(volume, ct_window)
    if modality == "pet":
        return normalise_pet(volume, pet_max_suv)
    raise ValueError(f"unknown modality {modality!r} (ct, pet)")

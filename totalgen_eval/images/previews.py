"""Preview images of a case: the PET's coronal maximum intensity projection and a coronal CT slice."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..volumes import Grid
from .grids import BODY_HU, body_box, to_ras

if TYPE_CHECKING:
    from ..cohort import Case


@dataclass(frozen=True)
class Preview:
    """Coronal views of one case, arrays (x, z) on RAS+ axes (x toward the patient's right, z up):
    ``pet_mip`` (SUV, maximum over y), ``ct_slice`` (HU, the slice through the body's centre in y);
    ``spacing_mm`` = (x, z) voxel size."""

    case_id: str
    pet_mip: np.ndarray
    ct_slice: np.ndarray
    spacing_mm: tuple[float, float]


def preview_arrays(case_id: str, ct: np.ndarray, pet: np.ndarray, affine: np.ndarray,
                   min_voxel_mm: float = 2.0) -> Preview:
    """A :class:`Preview` from CT (HU) and PET (SUV) on one grid (voxels no finer than ``min_voxel_mm``)."""
    grid = Grid(tuple(pet.shape), np.asarray(affine, float))
    voxel = tuple(max(min_voxel_mm, s) for s in grid.spacing_mm)
    ct_r, pet_r, ras = to_ras(ct, pet, grid, voxel)
    lower, upper = body_box(ct_r, ras, BODY_HU)
    centre_y = (lower[1] + upper[1]) / 2
    j = int(np.clip(round((centre_y - ras.affine[1, 3]) / ras.affine[1, 1]), 0, ct_r.shape[1] - 1))
    return Preview(case_id, pet_r.max(axis=1), ct_r[:, j, :], (ras.spacing_mm[0], ras.spacing_mm[2]))


def case_preview(case: Case, min_voxel_mm: float = 2.0) -> Preview:
    """A :class:`Preview` of one cohort Case."""
    pet, affine = case.read_pet()
    ct, _ = case.read_ct()
    return preview_arrays(case.case_id, ct, pet, affine, min_voxel_mm)

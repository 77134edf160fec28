"""One pass over a cohort's volumes: each case's features and its body-box arrays, read once."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..volumes import Grid
from .features import MODALITIES, CaseFeatures, FeatureExtractor, volume_features
from .grids import BODY_SHAPE, body_arrays, to_ras

if TYPE_CHECKING:
    from ..cohort import Case

DEFAULT_VOXEL_MM = (8.0, 8.0, 8.0)


@dataclass(frozen=True)
class CaseImages:
    """What the image metrics keep of one case: features per modality (empty without an extractor) and
    the (2, x, y, z) body-box arrays (CT, PET scaled to [0, 1])."""

    case_id: str
    body: np.ndarray
    features: dict[str, CaseFeatures] = field(default_factory=dict)


def arrays_images(case_id: str, ct: np.ndarray, pet: np.ndarray, affine: np.ndarray,
                  extractor: FeatureExtractor | None = None, body_shape: tuple[int, int, int] = BODY_SHAPE
                  ) -> CaseImages:
    """:class:`CaseImages` from CT (HU) and PET (SUV) arrays (i, j, k) on one grid with ``affine``."""
    voxel = extractor.voxel_mm if extractor is not None else DEFAULT_VOXEL_MM
    ct_r, pet_r, grid = to_ras(ct, pet, Grid(tuple(pet.shape), np.asarray(affine, float)), voxel)
    features = {} if extractor is None else {m: volume_features(extractor, v, m)
                                             for m, v in zip(MODALITIES, (ct_r, pet_r))}
    return CaseImages(case_id, body_arrays(ct_r, pet_r, grid, body_shape), features)


def case_images(case: Case, extractor: FeatureExtractor | None = None,
                body_shape: tuple[int, int, int] = BODY_SHAPE) -> CaseImages:
    """:class:`CaseImages` of one cohort Case (CT read onto the PET grid)."""
    pet, affine = case.read_pet()
    ct, _ = case.read_ct()
    return arrays_images(case.case_id, ct, pet, affine, extractor, body_shape)


def cohort_images(cohort: Sequence[Case], extractor: FeatureExtractor | None = None, workers: int = 1,
                  progress: bool = False, label: str = "images",
                  body_shape: tuple[int, int, int] = BODY_SHAPE) -> list[CaseImages]:
    """:func:`case_images` of every case, in cohort order (``workers`` threads)."""
    cases = list(cohort)
    bar = task = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        task = bar.add_task(label, total=len(cases))
        bar.start()
    out = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for item in pool.map(lambda c: case_images(c, extractor, body_shape), cases):
                out.append(item)
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return out

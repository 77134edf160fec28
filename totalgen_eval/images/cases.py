"""One pass over a cohort's volumes: each case's features and its body-box arrays, read once, and with a
cache folder kept per case (``<cache_dir>/<case_id>_<key>.npz``), so a comparison run again reads no volume
and runs no network for a case whose files, extractor and settings are unchanged."""
from __future__ import annotations

import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..cache import cache_file, cache_key, file_identity
from ..provenance import atomic_path
from ..volumes import Grid
from .features import MODALITIES, CaseFeatures, FeatureExtractor, modality_features
from .grids import BODY_SHAPE, PLANES, body_arrays, to_ras

if TYPE_CHECKING:
    from ..cohort import Case

DEFAULT_VOXEL_MM = (8.0, 8.0, 8.0)
IMAGES_VERSION = "2"  # bump when what a case's images hold changes: cached ones are then recomputed
# 2: CT and PET features from one batched forward pass (float32 rounding differs from "1" by ~1e-6 relative)


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
    features = {} if extractor is None else modality_features(extractor, dict(zip(MODALITIES, (ct_r, pet_r))))
    return CaseImages(case_id, body_arrays(ct_r, pet_r, grid, body_shape), features)


def case_images(case: Case, extractor: FeatureExtractor | None = None,
                body_shape: tuple[int, int, int] = BODY_SHAPE) -> CaseImages:
    """:class:`CaseImages` of one cohort Case (CT read onto the PET grid)."""
    pet, affine = case.read_pet()
    ct, _ = case.read_ct(pet_grid=Grid(tuple(pet.shape), affine))
    return arrays_images(case.case_id, ct, pet, affine, extractor, body_shape)


def images_key(case: Case, extractor: FeatureExtractor | None, body_shape: tuple[int, int, int]) -> str:
    """Key of a case's cached images: its PET and CT files by identity (cache.py), the extractor (its files,
    device and settings; None: body arrays only), the body box shape and IMAGES_VERSION."""
    settings = None if extractor is None else [
        extractor.name, extractor.source, extractor.spatial_dims, extractor.in_channels, list(extractor.voxel_mm),
        list(extractor.ct_window), extractor.pet_max_suv]
    return cache_key(IMAGES_VERSION, file_identity(case.pet), file_identity(case.ct), settings, list(body_shape))


def _arrays(item: CaseImages) -> dict[str, np.ndarray]:
    """The arrays of :class:`CaseImages` by name: ``body``, ``<modality>.<plane>``, ``<modality>.vector``."""
    out = {"body": item.body}
    for modality, feats in item.features.items():
        out.update({f"{modality}.{p}": a for p, a in feats.planes.items()})
        out[f"{modality}.vector"] = feats.vector
    return out


def _from_arrays(case_id: str, arrays: dict[str, np.ndarray], with_features: bool) -> CaseImages:
    """:class:`CaseImages` from :func:`_arrays`' names; KeyError when one is missing."""
    features = {m: CaseFeatures({p: arrays[f"{m}.{p}"] for p in PLANES}, arrays[f"{m}.vector"])
                for m in MODALITIES} if with_features else {}
    return CaseImages(case_id, arrays["body"], features)


def read_cached(path: Path, case_id: str, with_features: bool) -> CaseImages | None:
    """A case's cached images, or None when absent; a corrupt or incomplete file warns (it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return _from_arrays(case_id, {k: data[k] for k in data.files}, with_features)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"{path}: unusable cache file ({type(exc).__name__}); recomputed", RuntimeWarning,
                      stacklevel=2)
        return None


def cached_case_images(case: Case, extractor: FeatureExtractor | None = None,
                       body_shape: tuple[int, int, int] = BODY_SHAPE, cache_dir: Path | None = None) -> CaseImages:
    """:func:`case_images`, read from ``cache_dir`` when computed before with the same key, else computed
    and (with ``cache_dir``) saved there."""
    if cache_dir is None:
        return case_images(case, extractor, body_shape)
    path = cache_file(cache_dir, case.case_id, images_key(case, extractor, body_shape), ".npz")
    item = read_cached(path, case.case_id, extractor is not None)
    if item is None:
        item = case_images(case, extractor, body_shape)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **_arrays(item))
    return item


def cohort_images(cohort: Sequence[Case], extractor: FeatureExtractor | None = None, workers: int = 1,
                  progress: bool = False, label: str = "images",
                  body_shape: tuple[int, int, int] = BODY_SHAPE, cache_dir: Path | None = None) -> list[CaseImages]:
    """:func:`cached_case_images` of every case, in cohort order (``workers`` threads)."""
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
            for item in pool.map(lambda c: cached_case_images(c, extractor, body_shape, cache_dir), cases):
                out.append(item)
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return out

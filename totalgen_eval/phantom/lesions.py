"""Hot spherical lesions for phantoms, with known truth (volume mL, SUV): what lesion-aware metrics are tested on.

A case drawn with lesions carries 1-3 spheres: the first inside the liver, the others inside the lungs, the
muscles or the soft tissue between organs. Each sphere has a radius in ``RADIUS_MM`` and a uniform uptake in
``LESION_SUV`` (SUV), painted into the activity before the PET blur and noise, as the organs are; the CT is
left as it is. Its centre is a voxel centre where the host region reaches at least radius + one voxel in
every direction (a Euclidean distance transform), so every lesion voxel lies inside its host; lesions keep
``radius1 + radius2 + 2 sqrt(3) voxels`` apart, so no two touch even with 26-connectivity.

The mask is voxel-centre sampled like the organs (the voxels whose centres lie within the radius of the
centre), so its volume is known before rendering: ``sphere_voxels(radius, voxel) x voxel volume``; truth.csv
records it (``volume_ml``), the analytic 4/3 pi r^3 (``volume_analytic_ml``), the painted SUV (``suv_mean``),
the radius and the host. Case i's lesions come from the fifth child of its seed sequence
(``SeedSequence([seed, i], spawn_key=(4,))``; ``make.case_streams`` uses the first four), so adding lesions
changes nothing else of a case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from ..organs import organ

LESION_HOSTS = ("liver", "lungs", "muscle", "soft_tissue")  # the first lesion always goes to the liver
RADIUS_MM = (8.0, 14.0)
LESION_SUV = (4.0, 12.0)
MAX_LESIONS = 3
LESION_STREAM = 4  # spawn key of the lesion stream in a case's seed sequence
POSITIVE_DIAGNOSIS = "LYMPHOMA"  # the diagnosis written for a phantom with lesions (AutoPET's vocabulary)


@dataclass(frozen=True)
class LesionSpec:
    """One lesion: host region (an organ of ``organs.ORGANS`` or "soft_tissue"), radius (mm), SUV."""

    host: str
    radius_mm: float
    suv: float


@dataclass(frozen=True)
class LesionPlan:
    """The lesions of one case (maybe none) and the seed that places them (picklable for workers)."""

    lesions: tuple[LesionSpec, ...]
    seed: np.random.SeedSequence

    @property
    def diagnosis(self) -> str:
        """AutoPET's ``diagnosis`` value for the case: NEGATIVE without lesions."""
        return POSITIVE_DIAGNOSIS if self.lesions else "NEGATIVE"


def lesion_plan(seed: int, index: int, share: float = 1.0) -> LesionPlan:
    """Case ``index``'s lesions: with probability ``share`` 1-3 spheres (hosts, radii, SUVs drawn), else none."""
    stream = np.random.SeedSequence([seed, index], spawn_key=(LESION_STREAM,))
    draw_seed, place_seed = stream.spawn(2)
    rng = np.random.default_rng(draw_seed)
    if rng.random() >= share:
        return LesionPlan((), place_seed)
    n = int(rng.integers(1, MAX_LESIONS + 1))
    hosts = ["liver"] + [str(h) for h in rng.choice(LESION_HOSTS[1:], n - 1)]
    specs = tuple(LesionSpec(h, float(rng.uniform(*RADIUS_MM)), float(rng.uniform(*LESION_SUV))) for h in hosts)
    return LesionPlan(specs, place_seed)


def sphere_offsets(radius_mm: float, voxel_mm: float) -> np.ndarray:
    """(N, 3) integer voxel offsets whose centres lie within ``radius_mm`` of the centre voxel's (isotropic grid)."""
    h = int(math.floor(radius_mm / voxel_mm + 1e-9))
    grid = np.mgrid[-h:h + 1, -h:h + 1, -h:h + 1].reshape(3, -1).T
    return grid[(grid.astype(np.float64) ** 2).sum(axis=1) * voxel_mm ** 2 <= radius_mm ** 2 + 1e-9]


def sphere_voxels(radius_mm: float, voxel_mm: float) -> int:
    """Voxels of a lesion of ``radius_mm`` on an isotropic ``voxel_mm`` grid (voxel-centre sampling)."""
    return len(sphere_offsets(radius_mm, voxel_mm))


def lesion_truth(case_id: str, plan: LesionPlan, voxel_mm: float) -> pd.DataFrame:
    """Truth rows of a case's lesions, tidy like the organ truth: case_id, organ ("lesion_1", ...), volume_ml
    (the voxel-sampled sphere, mL), suv_mean (painted SUV), volume_analytic_ml (4/3 pi r^3), radius_mm, host."""
    voxel_ml = voxel_mm ** 3 / 1000.0
    rows = [{"case_id": case_id, "organ": f"lesion_{k}", "volume_ml": sphere_voxels(s.radius_mm, voxel_mm) * voxel_ml,
             "suv_mean": s.suv, "volume_analytic_ml": 4.0 / 3.0 * math.pi * s.radius_mm ** 3 / 1000.0,
             "radius_mm": s.radius_mm, "host": s.host} for k, s in enumerate(plan.lesions, start=1)]
    return pd.DataFrame(rows, columns=["case_id", "organ", "volume_ml", "suv_mean", "volume_analytic_ml",
                                       "radius_mm", "host"])


def _host_mask(host: str, labels: np.ndarray, soft_tissue: np.ndarray) -> np.ndarray:
    return soft_tissue if host == "soft_tissue" else np.isin(labels, organ(host).classes)


def _candidates(host: np.ndarray, min_depth_mm: float, voxel_mm: float) -> np.ndarray:
    """(N, 3) indices of the voxels of ``host`` at least ``min_depth_mm`` from any voxel outside it."""
    boxes = ndimage.find_objects(host.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return np.zeros((0, 3), np.intp)
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[0])
    depth = ndimage.distance_transform_edt(np.pad(host[box], 1), sampling=voxel_mm)[1:-1, 1:-1, 1:-1]
    return np.argwhere(depth >= min_depth_mm) + np.array([s.start for s in box])


def place_lesions(plan: LesionPlan, labels: np.ndarray, soft_tissue: np.ndarray,
                  voxel_mm: float) -> list[tuple[LesionSpec, np.ndarray]]:
    """(lesion, centre voxel index) of each lesion of ``plan``, drawn from its seed: inside the host (labels:
    TotalSegmentator ids; ``soft_tissue``: a bool mask of unlabelled soft tissue), apart from the others.
    RuntimeError when a host has no room (never on the phantom canvas with these radii)."""
    rng = np.random.default_rng(plan.seed)
    placed: list[tuple[LesionSpec, np.ndarray]] = []
    for spec in plan.lesions:
        spots = _candidates(_host_mask(spec.host, labels, soft_tissue), spec.radius_mm + voxel_mm, voxel_mm)
        for other, centre in placed:
            gap_mm = spec.radius_mm + other.radius_mm + 2 * math.sqrt(3) * voxel_mm
            spots = spots[np.linalg.norm((spots - centre) * voxel_mm, axis=1) > gap_mm]
        if len(spots) == 0:
            raise RuntimeError(f"no room for a lesion of radius {spec.radius_mm:.1f} mm in the {spec.host}")
        placed.append((spec, spots[int(rng.integers(len(spots)))]))
    return placed


def add_lesions(activity: np.ndarray, labels: np.ndarray, soft_tissue: np.ndarray, plan: LesionPlan,
                voxel_mm: float) -> np.ndarray:
    """Paint ``plan``'s lesions into ``activity`` (SUV, in place, before blur) and return their uint8 mask
    (1 = lesion, 0 elsewhere; all zero for a plan without lesions). Arrays (x, y, z) on one isotropic grid."""
    mask = np.zeros(labels.shape, np.uint8)
    for spec, centre in place_lesions(plan, labels, soft_tissue, voxel_mm):
        idx = tuple((sphere_offsets(spec.radius_mm, voxel_mm) + centre).T)
        activity[idx] = spec.suv
        mask[idx] = 1
    return mask

"""Rendering a subject's anatomy into CT (HU, int16), PET (SUV, float32) and labels (TS ids, uint8).

Sampling: voxel-centre sampling (a voxel takes the value of the solid containing its centre; no
supersampling), so organ voxel counts x voxel volume match the analytic volumes to within the
boundary-layer error (about surface area x voxel / 2 at worst; far less on average).
PET: the piecewise-constant activity (organ SUVs = subject truth) is blurred with a Gaussian of
``pet_fwhm_mm`` FWHM, multiplied by (1 + pet_noise_cv * N(0, 1)) per voxel and clipped at 0.
Outside the body: CT -1000 HU, SUV 0. Arrays are (x, y, z) in RAS+ on the fixed canvas.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from .anatomy import LUNG_LOBES, Anatomy, OrganPart, build_anatomy
from .lesions import LesionPlan, add_lesions
from .shapes import Shape

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548

# CT (HU) and background activity (SUV) of non-organ tissue; organ HU below (published non-contrast values)
HU = {"air": -1000, "fat": -100, "soft": 40, "bone_cortical": 900, "bone_spine": 350, "rib": 500,
      "femur": 700, "skull": 900}
ORGAN_HU = {"brain": 35, "lungs": -850, "heart": 40, "aorta": 40, "liver": 55, "spleen": 45, "kidneys": 30,
            "urinary_bladder": 5, "muscle": 50}
BACKGROUND_SUV = {"fat": 0.3, "soft": 0.7, "bone": 0.9}
RIB_PITCH_MM = 28.0


@dataclass(frozen=True)
class PhantomConfig:
    """Phantom rendering options (saved beside each cohort in phantom.json).

    voxel_mm: isotropic voxel edge (mm); fov_mm: canvas field of view (x, y, z) in mm;
    pet_fwhm_mm: PET resolution (Gaussian FWHM, mm; 0 = no blur); pet_noise_cv: multiplicative PET noise;
    ct_noise_hu: CT noise SD (HU); subject_variation: draw subject truth around the population
    expectation (False: every subject is exactly ``expected``).
    """

    voxel_mm: float = 8.0
    fov_mm: tuple[float, float, float] = (448.0, 320.0, 1152.0)
    pet_fwhm_mm: float = 7.0
    pet_noise_cv: float = 0.10
    ct_noise_hu: float = 12.0
    subject_variation: bool = True


@dataclass(frozen=True)
class PhantomCase:
    """One rendered case: CT (HU, int16), PET (SUV, float32), labels (TS class ids, uint8), all (x, y, z);
    ``lesions``: the lesion mask (uint8, 1 = lesion) when rendered with a lesion plan, else None."""

    ct: np.ndarray
    pet: np.ndarray
    labels: np.ndarray
    affine: np.ndarray = field(repr=False)
    lesions: np.ndarray | None = field(default=None, repr=False)


def canvas_shape(config: PhantomConfig = PhantomConfig()) -> tuple[int, int, int]:
    """Canvas array shape (x, y, z) = field of view / voxel (448x320x1152 mm at 8 mm -> (56, 40, 144))."""
    shape = tuple(int(round(f / config.voxel_mm)) for f in config.fov_mm)
    if any(abs(n * config.voxel_mm - f) > 1e-6 for n, f in zip(shape, config.fov_mm)):
        raise ValueError(f"voxel {config.voxel_mm} mm does not divide the field of view {config.fov_mm} mm")
    return shape


def canvas_affine(config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """Voxel -> RAS+ mm: diag(v, v, v) with the canvas centred in x, y and its top at z = 0."""
    v = config.voxel_mm
    fx, fy, fz = config.fov_mm
    aff = np.diag([v, v, v, 1.0])
    aff[:3, 3] = (-fx / 2 + v / 2, -fy / 2 + v / 2, -fz + v / 2)
    return aff


def voxel_centres(config: PhantomConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D voxel-centre coordinates (mm) along x, y, z."""
    aff, shape = canvas_affine(config), canvas_shape(config)
    return tuple(aff[i, 3] + aff[i, i] * np.arange(shape[i]) for i in range(3))


def _box(shape_obj, axes) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]] | None:
    """Index slices of the voxels whose centres lie in the solid's bounding box, and their coordinates."""
    lo, hi = shape_obj.bbox()
    sl = []
    for c, l, h in zip(axes, lo, hi):
        i0, i1 = np.searchsorted(c, l, "left"), np.searchsorted(c, h, "right")
        if i1 <= i0:
            return None
        sl.append(slice(i0, i1))
    x, y, z = (c[s] for c, s in zip(axes, sl))
    return tuple(sl), (x[:, None, None], y[None, :, None], z[None, None, :])


def _paint(target: np.ndarray, solid, axes, value) -> None:
    got = _box(solid, axes)
    if got is None:
        return
    sl, (x, y, z) = got
    m = solid.inside(x, y, z)
    target[sl][m] = value


def _lobe_labels(part: OrganPart, x, y, z) -> np.ndarray:
    """Lung lobe ids for points inside a lung: an oblique fissure (lower lobe posterior-inferior) and,
    on the right, a horizontal fissure separating the middle lobe (anterior, below the lung centre)."""
    cx, cy, cz = part.shape.center
    az = part.shape.axes[2]
    x, y, z = np.broadcast_arrays(x, y, z)
    oblique = 0.6 * (y - cy) + 0.8 * (z - cz + 0.15 * az)  # > 0: anterior-superior of the oblique fissure
    lobes = LUNG_LOBES[part.lung_side]
    out = np.where(oblique > 0, lobes["upper"], lobes["lower"]).astype(np.uint8)
    if part.lung_side == "right":
        out = np.where((oblique > 0) & (z < cz), lobes["middle"], out).astype(np.uint8)
    return out


def paint_labels(anatomy: Anatomy, config: PhantomConfig) -> np.ndarray:
    """Organ label map (uint8 TS class ids, 0 elsewhere) by voxel-centre sampling."""
    axes = voxel_centres(config)
    labels = np.zeros(canvas_shape(config), np.uint8)
    for part in anatomy.parts:
        got = _box(part.shape, axes)
        if got is None:
            continue
        sl, (x, y, z) = got
        m = part.shape.inside(x, y, z)
        view = labels[sl]
        if part.lung_side:
            view[m] = _lobe_labels(part, x, y, z)[m]
        else:
            view[m] = part.label
    return labels


def paint_tissues(anatomy: Anatomy, config: PhantomConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free CT (HU, float32), background activity (SUV, float32) and body mask, organs not yet painted."""
    axes = voxel_centres(config)
    shape = canvas_shape(config)
    ct = np.full(shape, HU["air"], np.float32)
    act = np.zeros(shape, np.float32)
    body = np.zeros(shape, bool)
    _paint_soft_tissue(ct, act, body, anatomy, axes)
    bones = dict(anatomy.bones)
    _paint_skull(ct, act, bones, axes)
    for kind, solid in anatomy.bones:
        if kind in ("spine", "femur"):
            _paint(ct, solid, axes, HU["bone_spine" if kind == "spine" else "femur"])
            _paint(act, solid, axes, BACKGROUND_SUV["bone"])
    _paint_ribs(ct, bones["rib_zone"], axes)
    _paint_pelvis(ct, act, bones["pelvis_zone"], axes)
    return ct, act, body


def _paint_soft_tissue(ct: np.ndarray, act: np.ndarray, body: np.ndarray, anatomy: Anatomy,
                       axes: tuple[np.ndarray, ...]) -> None:
    """Paint, in place, the body (fat outside, soft tissue in each core, a fat/soft mix in the visceral
    cavity) into CT (HU), activity (SUV) and the body mask."""
    for seg in anatomy.body:
        _paint(ct, seg.outer, axes, HU["fat"])
        _paint(act, seg.outer, axes, BACKGROUND_SUV["fat"])
        _paint(body, seg.outer, axes, True)
    f = anatomy.visceral_fat
    for seg in anatomy.body:
        _paint(ct, seg.core, axes, HU["soft"])
        _paint(act, seg.core, axes, BACKGROUND_SUV["soft"])
        if seg.visceral is not None:  # fat-marbled cavity: a fat/soft-tissue mix
            _paint(ct, seg.visceral, axes, f * HU["fat"] + (1 - f) * HU["soft"])
            _paint(act, seg.visceral, axes, f * BACKGROUND_SUV["fat"] + (1 - f) * BACKGROUND_SUV["soft"])


def _paint_skull(ct: np.ndarray, act: np.ndarray, bones: dict[str, Shape], axes: tuple[np.ndarray, ...]) -> None:
    """Paint, in place, the skull: a shell between two ellipsoids (CT in HU, activity in SUV)."""
    skull = np.zeros(ct.shape, bool)
    _paint(skull, bones["skull_outer"], axes, True)
    _paint(skull, bones["skull_inner"], axes, False)
    ct[skull], act[skull] = HU["skull"], BACKGROUND_SUV["bone"]


def _paint_ribs(ct: np.ndarray, zone: Shape, axes: tuple[np.ndarray, ...]) -> None:
    """Paint, in place, the ribs into CT (HU): bands of a thin elliptic shell just inside the thorax core."""
    got = _box(zone, axes)
    if got is None:
        return
    sl, (x, y, z) = got
    rho = zone.radius(x, y)
    ribs = (rho > 0.88) & (rho <= 0.95) & (np.sin(2 * np.pi * z / RIB_PITCH_MM) > 0.2)
    ribs = np.broadcast_to(ribs, ct[sl].shape) & zone.inside(x, y, z)
    ct[sl][ribs] = HU["rib"]


def _paint_pelvis(ct: np.ndarray, act: np.ndarray, zone: Shape, axes: tuple[np.ndarray, ...]) -> None:
    """Paint, in place, the pelvic bones (CT in HU, activity in SUV): the back and sides of a shell inside
    the pelvis core, its upper two thirds."""
    got = _box(zone, axes)
    if got is None:
        return
    sl, (x, y, z) = got
    rho = zone.radius(x, y)
    z_lo = zone.z0 + (zone.z1 - zone.z0) / 3
    wing = (rho > 0.80) & (rho <= 0.87) & (y < zone.center_xy[1] + 0.3 * zone.axes_xy[1]) & (z >= z_lo)
    wing = np.broadcast_to(wing, ct[sl].shape) & zone.inside(x, y, z)
    ct[sl][wing], act[sl][wing] = HU["bone_cortical"] * 0.7, BACKGROUND_SUV["bone"]


def blur_pet(activity: np.ndarray, config: PhantomConfig) -> np.ndarray:
    """Gaussian blur with FWHM ``pet_fwhm_mm`` (sigma_vox = fwhm / 2.3548 / voxel_mm); float32."""
    if config.pet_fwhm_mm <= 0:
        return activity.astype(np.float32, copy=True)
    sigma = config.pet_fwhm_mm / FWHM_PER_SIGMA / config.voxel_mm
    return ndimage.gaussian_filter(activity.astype(np.float32), sigma=sigma, mode="constant", cval=0.0, truncate=4.0)


def render_anatomy(anatomy: Anatomy, organ_suv: Mapping[str, float], config: PhantomConfig,
                   rng: np.random.Generator, lesions: LesionPlan | None = None) -> PhantomCase:
    """CT, PET and labels of an anatomy whose organs carry ``organ_suv`` (SUV) uptake; with ``lesions``
    also their hot spheres (painted before blur and noise) and mask (``phantom.lesions``)."""
    ct, act, body = paint_tissues(anatomy, config)
    labels = paint_labels(anatomy, config)
    axes = voxel_centres(config)
    for part in anatomy.parts:
        got = _box(part.shape, axes)
        if got is None:
            continue
        sl, (x, y, z) = got
        m = part.shape.inside(x, y, z)
        ct[sl][m] = ORGAN_HU[part.organ]
        act[sl][m] = organ_suv[part.organ]
    lesion_mask = None if lesions is None else add_lesions(
        act, labels, body & (labels == 0) & (ct == HU["soft"]), lesions, config.voxel_mm)
    if config.ct_noise_hu > 0:
        ct += rng.standard_normal(ct.shape, dtype=np.float32) * np.float32(config.ct_noise_hu)
    ct[~body] = HU["air"]
    pet = blur_pet(act, config)
    if config.pet_noise_cv > 0:
        pet *= 1.0 + np.float32(config.pet_noise_cv) * rng.standard_normal(pet.shape, dtype=np.float32)
    np.clip(pet, 0.0, None, out=pet)
    pet[~body] = 0.0
    ct_i16 = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
    return PhantomCase(ct_i16, pet.astype(np.float32, copy=False), labels, canvas_affine(config), lesion_mask)


def truth_dict(subject_truth: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """(organ -> volume_ml, organ -> suv_mean) from one case's tidy truth rows."""
    t = subject_truth.set_index("organ")
    return t["volume_ml"].astype(float).to_dict(), t["suv_mean"].astype(float).to_dict()


def render_case(demographics_row: Mapping, subject_truth: pd.DataFrame, config: PhantomConfig = PhantomConfig(),
                rng: np.random.Generator | None = None, lesions: LesionPlan | None = None) -> PhantomCase:
    """Render one subject: ``demographics_row`` (age, sex, height_m, weight_kg) and its tidy truth rows
    (organ, volume_ml, suv_mean) -> PhantomCase (CT HU int16, PET SUV float32, labels uint8, affine; the
    lesion mask with a ``lesions`` plan)."""
    rng = np.random.default_rng() if rng is None else rng
    volumes, suvs = truth_dict(subject_truth)
    return render_anatomy(build_anatomy(demographics_row, volumes, config.fov_mm), suvs, config, rng, lesions)

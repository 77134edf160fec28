"""The phantom population against truth computed here independently: analytic volumes from the solids'
parameters, published facts (FDG uptake, organ size, HU), Gaussian blur theory, truncated log-normal
moments by numerical integration. Cohorts on disk (the file contracts of ARCHITECTURE.md): test_phantom_make.py."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from totalgen_eval.organs import CLASSES, ORGAN_NAMES, ORGANS
from totalgen_eval.phantom import (PhantomConfig, build_anatomy, canvas_affine, canvas_shape, draw_subjects,
                                   expected, render_case, sample_demographics)
from totalgen_eval.phantom.population import TRUNCATE_SD, VOLUME_CV, SUV_CV, max_variation_factor
from totalgen_eval.phantom.render import blur_pet, paint_labels, paint_tissues, voxel_centres
from totalgen_eval.phantom.shapes import ArchTube, Ellipsoid, ZCylinder

ORGAN_CLASSES = {o.name: o.classes for o in ORGANS}
# published non-contrast CT HU of the organs
REFERENCE_HU = {"liver": 55, "spleen": 45, "kidneys": 30, "muscle": 50, "aorta": 40, "brain": 35, "lungs": -850}
EXTREMES = [dict(age=a, sex=s, height_m=h, weight_kg=w)
            for h, w, s, a in itertools.product((1.5, 2.0), (50.0, 130.0), "MF", (20.0, 90.0))]


# --- independent geometry -----------------------------------------------------------------------
def analytic_volume(shape) -> float:
    """mm^3 from the solid's parameters (formulas written here, not the module's)."""
    if isinstance(shape, Ellipsoid):
        a, b, c = shape.axes
        return 4 / 3 * math.pi * a * b * c
    if isinstance(shape, ZCylinder):
        return math.pi * shape.axes_xy[0] * shape.axes_xy[1] * (shape.z1 - shape.z0)
    if isinstance(shape, ArchTube):  # Pappus: cross-section area x path length of its centre
        return math.pi * shape.r**2 * math.pi * shape.R
    raise TypeError(type(shape))


def surface_bound(shape) -> float:
    """An upper bound on the solid's surface area (mm^2): Knud Thomsen's ellipsoid formula (error
    < 1.1%) + 2%; exact lateral + cap areas for tubes (the ellipse perimeter bounded by pi*sqrt(2(a^2+b^2)))."""
    if isinstance(shape, Ellipsoid):
        a, b, c = shape.axes
        p = 1.6075
        return 1.02 * 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    if isinstance(shape, ZCylinder):
        a, b = shape.axes_xy
        return math.pi * math.sqrt(2 * (a * a + b * b)) * (shape.z1 - shape.z0) + 2 * math.pi * a * b
    if isinstance(shape, ArchTube):
        return 2 * math.pi * shape.r * math.pi * shape.R + 2 * math.pi * shape.r**2
    raise TypeError(type(shape))


def voxel_tolerance_ml(parts, voxel_mm: float) -> float:
    """Voxel-centre sampling misclassifies only voxels cut by the surface; their net effect is bounded
    (generously, since errors of opposite sign cancel) by half the boundary shell: S x voxel / 2."""
    return sum(surface_bound(p.shape) for p in parts) * voxel_mm / 2 / 1000.0


def one_subject(seed: int = 0, **demo) -> tuple[pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    d = sample_demographics(1, rng)
    for k, v in demo.items():
        d[k] = v
    d["case_id"] = "s"
    return d.iloc[0], draw_subjects(d, rng)


def anatomy_of(row, truth):
    return build_anatomy(row, truth.set_index("organ")["volume_ml"].to_dict())


# --- canvas ---------------------------------------------------------------------------------------
def test_canvas_geometry_follows_the_contract():
    assert canvas_shape(PhantomConfig()) == (56, 40, 144)
    assert canvas_shape(PhantomConfig(voxel_mm=4.0)) == (112, 80, 288)
    for v in (2.0, 4.0, 8.0):
        aff = canvas_affine(PhantomConfig(voxel_mm=v))
        expect = np.diag([v, v, v, 1.0])
        expect[:3, 3] = (-224 + v / 2, -160 + v / 2, -1152 + v / 2)
        np.testing.assert_allclose(aff, expect)
    with pytest.raises(ValueError):
        canvas_shape(PhantomConfig(voxel_mm=7.0))


# --- volumes and uptake painted ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_organ_volumes_match_truth_within_voxelisation_error_at_4mm(seed):
    row, truth = one_subject(seed)
    anatomy = anatomy_of(row, truth)
    labels = paint_labels(anatomy, PhantomConfig(voxel_mm=4.0))
    t = truth.set_index("organ")
    for organ in ORGAN_NAMES:
        parts = [p for p in anatomy.parts if p.organ == organ]
        analytic_ml = sum(analytic_volume(p.shape) for p in parts) / 1000
        assert analytic_ml == pytest.approx(t.loc[organ, "volume_ml"], rel=1e-9), organ
        voxel_ml = np.isin(labels, ORGAN_CLASSES[organ]).sum() * 4.0**3 / 1000
        tol = voxel_tolerance_ml(parts, 4.0)
        assert abs(voxel_ml - analytic_ml) <= tol, (organ, voxel_ml, analytic_ml, tol)
        assert tol < 0.5 * analytic_ml or organ == "aorta", (organ, tol)  # the check has teeth


def test_organ_volumes_coarse_check_at_8mm():
    row, truth = one_subject(5)
    anatomy = anatomy_of(row, truth)
    labels = paint_labels(anatomy, PhantomConfig(voxel_mm=8.0))
    t = truth.set_index("organ")
    for organ in ORGAN_NAMES:
        parts = [p for p in anatomy.parts if p.organ == organ]
        voxel_ml = np.isin(labels, ORGAN_CLASSES[organ]).sum() * 8.0**3 / 1000
        assert abs(voxel_ml - t.loc[organ, "volume_ml"]) <= voxel_tolerance_ml(parts, 8.0), organ


def test_painted_activity_and_hu_equal_the_subject_truth():
    row, truth = one_subject(3)
    cfg = PhantomConfig(voxel_mm=4.0, pet_fwhm_mm=0.0, pet_noise_cv=0.0, ct_noise_hu=0.0)
    case = render_case(row, truth, cfg, np.random.default_rng(0))
    t = truth.set_index("organ")
    for organ in ORGAN_NAMES:
        m = np.isin(case.labels, ORGAN_CLASSES[organ])
        assert m.sum() > 0, organ
        np.testing.assert_allclose(case.pet[m], np.float32(t.loc[organ, "suv_mean"]), rtol=1e-6, err_msg=organ)
        if organ in REFERENCE_HU:
            assert np.all(case.ct[m] == REFERENCE_HU[organ]), organ
    _, _, body = paint_tissues(anatomy_of(row, truth), cfg)
    assert np.all(case.ct[~body] == -1000) and np.all(case.pet[~body] == 0)
    fat = body & (case.ct == -100)
    assert fat.any() and np.allclose(case.pet[fat], 0.3)


def test_rendered_case_types_noise_and_units():
    row, truth = one_subject(4)
    cfg = PhantomConfig()
    case = render_case(row, truth, cfg, np.random.default_rng(1))
    assert case.ct.dtype == np.int16 and case.pet.dtype == np.float32 and case.labels.dtype == np.uint8
    assert case.ct.shape == case.pet.shape == case.labels.shape == canvas_shape(cfg)
    np.testing.assert_allclose(case.affine, canvas_affine(cfg))
    assert case.pet.min() >= 0 and case.pet.max() < 500  # SUV, not Bq/mL
    # CT noise: the SD of a large uniform organ's interior matches ct_noise_hu
    liver = case.labels == 5
    inner = liver & np.roll(liver, 1, 0) & np.roll(liver, -1, 0) & np.roll(liver, 1, 2) & np.roll(liver, -1, 2)
    sd = case.ct[inner].astype(float).std()
    assert sd == pytest.approx(cfg.ct_noise_hu, rel=0.15)


def test_renders_at_2mm():
    row, truth = one_subject(6)
    cfg = PhantomConfig(voxel_mm=2.0)
    case = render_case(row, truth, cfg, np.random.default_rng(0))
    assert case.labels.shape == (224, 160, 576)
    anatomy = anatomy_of(row, truth)
    liver = [p for p in anatomy.parts if p.organ == "liver"]
    voxel_ml = (case.labels == 5).sum() * 8 / 1000
    assert abs(voxel_ml - analytic_volume(liver[0].shape) / 1000) <= voxel_tolerance_ml(liver, 2.0)


# --- PET blur -----------------------------------------------------------------------------------
@pytest.mark.parametrize("voxel,fwhm", [(2.0, 7.0), (4.0, 7.0), (4.0, 12.0), (8.0, 20.0)])
def test_point_response_has_the_configured_fwhm(voxel, fwhm):
    cfg = PhantomConfig(voxel_mm=voxel, pet_fwhm_mm=fwhm)
    point = np.zeros((41, 41, 41), np.float32)
    point[20, 20, 20] = 1.0
    psf = blur_pet(point, cfg)
    assert psf.sum() == pytest.approx(1.0, rel=1e-3)
    x = (np.arange(41) - 20) * voxel
    for axis in range(3):
        profile = psf.sum(axis=tuple(a for a in range(3) if a != axis))
        sigma = math.sqrt(np.sum(profile * x**2) / np.sum(profile))
        assert 2 * math.sqrt(2 * math.log(2)) * sigma == pytest.approx(fwhm, rel=0.10)


def test_edge_response_10_90_distance():
    """For a Gaussian PSF the 10-90% rise of an edge spans 2 * 1.2816 sigma."""
    voxel, fwhm = 2.0, 7.0
    step = np.zeros((8, 8, 64), np.float32)
    step[:, :, 32:] = 1.0
    edge = blur_pet(step, PhantomConfig(voxel_mm=voxel, pet_fwhm_mm=fwhm))[4, 4]
    z = np.arange(64) * voxel
    z10, z90 = np.interp(0.1, edge[16:48], z[16:48]), np.interp(0.9, edge[16:48], z[16:48])
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    assert z90 - z10 == pytest.approx(2 * stats.norm.ppf(0.9) * sigma, rel=0.10)


# --- the population model --------------------------------------------------------------------------
def _one(**kw) -> pd.DataFrame:
    base = dict(age=50.0, sex="M", height_m=1.75, weight_kg=75.0)
    return pd.DataFrame([{**base, **kw}])


def _value(frame, organ, col):
    return float(frame.loc[frame.organ == organ, col].iloc[0])


def test_liver_suv_rises_0066_per_bmi_unit():
    h = 1.75
    lo, hi = expected(_one(weight_kg=24 * h * h)), expected(_one(weight_kg=26 * h * h))
    slope = (_value(hi, "liver", "suv_mean") - _value(lo, "liver", "suv_mean")) / 2.0
    assert slope == pytest.approx(0.066, rel=1e-6)


def test_reference_levels_and_directions():
    e = expected(_one())
    # published ranges for an average adult
    assert 1.8 <= _value(e, "liver", "suv_mean") <= 2.3
    assert 1.4 <= _value(e, "aorta", "suv_mean") <= 1.9
    assert 6.0 <= _value(e, "brain", "suv_mean") <= 9.0
    assert 0.4 <= _value(e, "lungs", "suv_mean") <= 0.7
    assert 0.6 <= _value(e, "muscle", "suv_mean") <= 0.9
    assert 1.6 <= _value(e, "spleen", "suv_mean") <= 2.0
    assert 2.0 <= _value(e, "kidneys", "suv_mean") <= 3.0
    assert 1100 <= _value(e, "liver", "volume_ml") <= 1700
    young, old = expected(_one(age=40.0)), expected(_one(age=50.0))
    assert _value(old, "brain", "suv_mean") / _value(young, "brain", "suv_mean") == pytest.approx(0.92, abs=0.005)
    assert _value(old, "liver", "suv_mean") > _value(young, "liver", "suv_mean")
    assert _value(old, "aorta", "suv_mean") > _value(young, "aorta", "suv_mean")
    assert _value(old, "lungs", "suv_mean") < _value(young, "lungs", "suv_mean")
    assert _value(old, "kidneys", "volume_ml") == pytest.approx(_value(young, "kidneys", "volume_ml"))
    assert _value(expected(_one(age=80.0)), "brain", "volume_ml") < _value(young, "brain", "volume_ml")
    men, women = expected(_one(sex="M")), expected(_one(sex="F"))
    assert _value(men, "liver", "suv_mean") > _value(women, "liver", "suv_mean")
    for organ in ORGAN_NAMES:
        if organ != "urinary_bladder":
            assert _value(men, organ, "volume_ml") > _value(women, organ, "volume_ml"), organ
    # kidneys per kidney ~177 mL men / 146 women (REFERENCE), at typical sizes for each sex
    m = _value(expected(_one(sex="M", height_m=1.78, weight_kg=85.0)), "kidneys", "volume_ml") / 2
    f = _value(expected(_one(sex="F", height_m=1.65, weight_kg=68.0)), "kidneys", "volume_ml") / 2
    assert m == pytest.approx(177, rel=0.08) and f == pytest.approx(146, rel=0.08)
    big = expected(_one(height_m=1.9, weight_kg=100.0))
    assert _value(big, "liver", "volume_ml") > _value(e, "liver", "volume_ml")


def _truncated_lognormal_cv_of_sigma(sigma: float, c: float) -> float:
    """CV of exp(sigma Z), Z ~ N(0,1) truncated to [-c, c], by numerical integration."""
    mass = stats.norm.cdf(c) - stats.norm.cdf(-c)
    m1 = integrate.quad(lambda z: math.exp(sigma * z) * stats.norm.pdf(z), -c, c)[0] / mass
    m2 = integrate.quad(lambda z: math.exp(2 * sigma * z) * stats.norm.pdf(z), -c, c)[0] / mass
    return math.sqrt(m2 / m1**2 - 1)


def test_draw_subjects_average_to_expected_with_the_documented_cv():
    n = 4000
    demo = pd.concat([_one(sex="F", age=65.0)] * n, ignore_index=True)
    demo["case_id"] = [f"c{i}" for i in range(n)]
    drawn = draw_subjects(demo, np.random.default_rng(7))
    e = expected(demo.iloc[:1])
    for organ in ORGAN_NAMES:
        for col, cvs in (("volume_ml", VOLUME_CV), ("suv_mean", SUV_CV)):
            x = drawn.loc[drawn.organ == organ, col].to_numpy() / _value(e, organ, col)
            cv = cvs[organ]
            assert abs(x.mean() - 1) < 4 * cv / math.sqrt(n), (organ, col, x.mean())
            assert x.std() == pytest.approx(cv, rel=0.08), (organ, col)  # SE of an SD ~ 1/sqrt(2n) ~ 1%
            assert x.max() <= max_variation_factor(cvs[organ]) + 1e-12
            # the factor's law: log(x) is a normal truncated at +-TRUNCATE_SD SDs: its CV by integration
            sigma = (np.log(x).max() - np.log(x).min()) / (2 * TRUNCATE_SD)  # range of a truncated normal
            assert _truncated_lognormal_cv_of_sigma(sigma, TRUNCATE_SD) == pytest.approx(cv, rel=0.05)


def test_sample_demographics_is_autopet_like():
    d = sample_demographics(4000, np.random.default_rng(3))
    assert list(d.columns) == ["age", "sex", "height_m", "weight_kg"]
    assert d.age.between(20, 90).all() and d.height_m.between(1.5, 2.0).all() and d.weight_kg.between(50, 120).all()
    share = (d.sex == "M").mean()
    assert abs(share - 0.56) < 4 * math.sqrt(0.56 * 0.44 / len(d))
    assert 54 <= d.age.mean() <= 64
    men, women = d[d.sex == "M"], d[d.sex == "F"]
    assert men.height_m.mean() > women.height_m.mean() + 0.08
    assert men.weight_kg.mean() > women.weight_kg.mean()
    assert stats.pearsonr(d.height_m, d.weight_kg)[0] > 0.2


# --- anatomy: labels, overlap, fit --------------------------------------------------------------------
def _extreme_volumes(demo: dict, mode: str, seed: int = 0) -> dict:
    e = expected(pd.DataFrame([demo])).set_index("organ")["volume_ml"]
    if mode == "max":
        return {o: e[o] * max_variation_factor(VOLUME_CV[o]) for o in ORGAN_NAMES}
    if mode == "min":
        return {o: e[o] / max_variation_factor(VOLUME_CV[o]) for o in ORGAN_NAMES}
    flip = np.random.default_rng(seed).random(len(ORGAN_NAMES)) < 0.5
    return {o: e[o] * (max_variation_factor(VOLUME_CV[o]) if f else 1 / max_variation_factor(VOLUME_CV[o]))
            for o, f in zip(ORGAN_NAMES, flip)}


@pytest.mark.parametrize("mode", ["max", "min", "mixed"])
def test_extreme_subjects_fit_the_canvas_without_overlap(mode):
    cfg = PhantomConfig(voxel_mm=8.0)
    axes = voxel_centres(cfg)
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    valid = {0, *CLASSES}
    for i, demo in enumerate(EXTREMES):
        anatomy = build_anatomy(demo, _extreme_volumes(demo, mode, seed=i))
        _, _, body = paint_tissues(anatomy, cfg)
        labels = paint_labels(anatomy, cfg)
        # each solid painted on its own: no voxel claimed twice
        count = sum(p.shape.inside(*grid).astype(np.uint8) for p in anatomy.parts)
        assert count.max() <= 1, (demo, mode)
        assert set(np.unique(labels)) <= valid
        assert set(np.unique(labels)) == valid, "all 16 classes present"
        assert not np.any((labels > 0) & ~body), (demo, mode)
        for face in (body[0], body[-1], body[:, 0], body[:, -1], body[:, :, -1]):
            assert not face.any(), (demo, mode, "body touches the canvas")
        for face in (labels[:, :, 0], labels[:, :, -1], labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            assert not face.any()
        top = axes[2][np.nonzero(body.any(axis=(0, 1)))[0].max()]
        assert -60 < top < 0, "head vertex a little below the canvas top"


def _pairwise_overlap_points(anatomy, rng, k=4000) -> int:
    """Random points in each pair's bounding-box intersection that fall inside both solids (continuous
    check, no voxels)."""
    hits = 0
    for p, q in itertools.combinations(anatomy.parts, 2):
        (lo1, hi1), (lo2, hi2) = p.shape.bbox(), q.shape.bbox()
        lo, hi = np.maximum(lo1, lo2), np.minimum(hi1, hi2)
        if np.any(hi <= lo):
            continue
        x, y, z = (rng.uniform(lo, hi, size=(k, 3))).T
        hits += int(np.sum(p.shape.inside(x, y, z) & q.shape.inside(x, y, z)))
    return hits


def test_population_subjects_never_overlap_and_fit():
    rng = np.random.default_rng(21)
    demo = sample_demographics(60, rng)
    demo["case_id"] = [f"p{i}" for i in range(len(demo))]
    truth = draw_subjects(demo, rng)
    cfg = PhantomConfig(voxel_mm=8.0)
    for i, row in demo.iterrows():
        anatomy = anatomy_of(row, truth[truth.case_id == row.case_id])
        assert _pairwise_overlap_points(anatomy, rng, 500) == 0, row.to_dict()
        labels = paint_labels(anatomy, cfg)
        _, _, body = paint_tissues(anatomy, cfg)
        assert not np.any((labels > 0) & ~body)
    for i, demo_x in enumerate(EXTREMES):
        for mode in ("max", "min", "mixed"):
            anatomy = build_anatomy(demo_x, _extreme_volumes(demo_x, mode, seed=i))
            assert _pairwise_overlap_points(anatomy, rng) == 0, (demo_x, mode)


def test_anatomical_sides_and_levels():
    row, truth = one_subject(8)
    anatomy = anatomy_of(row, truth)
    c = {p.label: np.asarray(p.shape.center) for p in anatomy.parts if isinstance(p.shape, Ellipsoid) and p.label}
    lungs = [p.shape.center for p in anatomy.parts if p.lung_side]
    # RAS+: x grows toward the patient's right
    assert c[1][0] < 0 < c[5][0], "liver on the right (x > 0), spleen on the left"
    assert c[3][0] < 0 < c[2][0], "kidney_right at x > 0"
    assert c[80][0] < 0 < c[81][0] and c[88][0] < 0 < c[89][0], "gluteus / iliopsoas _right at x > 0"
    assert -30 < c[51][0] < 0, "heart slightly left"
    assert {p.lung_side: np.sign(p.shape.center[0]) for p in anatomy.parts if p.lung_side} == {"right": 1, "left": -1}
    assert c[2][1] < c[5][1] and c[3][1] < c[5][1], "kidneys posterior to the liver"
    assert c[90][2] > max(z for _, _, z in lungs) > c[5][2] > c[21][2], "brain > lungs > liver > bladder"
    assert c[21][2] < min(c[2][2], c[3][2])

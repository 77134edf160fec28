"""Lesion-aware organ metrics: phantoms with hot spheres of known size and SUV, exclusion vs inclusion checked
against numpy on the image and the masks, MTV against the voxel count and the analytic sphere, TLG, count."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from totalgen_eval import metrics, phantom
from totalgen_eval.cohort import load_cohort
from totalgen_eval.errors import InputError
from totalgen_eval.organs import organ
from totalgen_eval.phantom.lesions import LesionPlan, LesionSpec, lesion_plan, sphere_voxels
from totalgen_eval.volumes import Grid, write_volume


@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory):
    """Four 8 mm phantoms, every one with 1-3 lesions (the first in the liver)."""
    root = phantom.make_cohort(tmp_path_factory.mktemp("les") / "ph", n=4, seed=3, lesions=1.0, progress=False)
    return load_cohort(root)


def _liver_by_numpy(case, include: bool) -> tuple[float, float, float]:
    """(SUVmean, SUVmax, lesion mL) of the liver computed directly from the files with numpy."""
    pet, affine = case.read_pet()
    labels, _ = case.read_labels()
    lesion = case.read_lesions()
    liver = np.isin(labels, organ("liver").classes)
    keep = liver if include else liver & ~lesion
    voxel_ml = Grid(pet.shape, affine).voxel_ml
    return float(pet[keep].mean(dtype=np.float64)), float(pet[keep].max()), float((liver & lesion).sum() * voxel_ml)


def test_phantom_lesions_on_disk_and_in_truth(lesion_cohort):
    truth = pd.read_csv(lesion_cohort.root / "truth.csv")
    frame = pd.read_csv(lesion_cohort.root / "cohort.csv")
    assert set(frame["diagnosis"]) == {"LYMPHOMA"} and frame["lesions"].notna().all()
    for case in lesion_cohort:
        mask = case.read_lesions()
        rows = truth[(truth.case_id == case.case_id) & truth.organ.str.startswith("lesion_")]
        assert 1 <= len(rows) <= 3 and rows.iloc[0]["host"] == "liver"
        labels, _ = case.read_labels()
        # every voxel of the first lesion lies in the liver; the mask holds exactly the truth's voxels
        components, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        assert n == len(rows)
        assert mask.sum() * 0.512 == pytest.approx(rows["volume_ml"].sum())
        in_liver = [k for k in range(1, n + 1) if np.isin(labels[components == k], organ("liver").classes).all()]
        assert in_liver


def test_liver_lesion_excluded_by_default_and_kept_with_include(lesion_cohort):
    excluded = metrics.organ_metrics(lesion_cohort, progress=False).set_index(["case_id", "organ"])
    included = metrics.organ_metrics(lesion_cohort, progress=False, lesions="include").set_index(["case_id", "organ"])
    truth = pd.read_csv(lesion_cohort.root / "truth.csv").set_index(["case_id", "organ"])
    for case in lesion_cohort:
        key = (case.case_id, "liver")
        mean_ex, max_ex, lesion_ml = _liver_by_numpy(case, include=False)
        mean_in, max_in, _ = _liver_by_numpy(case, include=True)
        assert excluded.loc[key, "suv_mean"] == pytest.approx(mean_ex, rel=1e-6)
        assert excluded.loc[key, "suv_max"] == pytest.approx(max_ex, rel=1e-6)
        assert included.loc[key, "suv_mean"] == pytest.approx(mean_in, rel=1e-6)
        assert included.loc[key, "suv_max"] == pytest.approx(max_in, rel=1e-6)
        assert lesion_ml > 0
        assert excluded.loc[key, "lesion_ml"] == included.loc[key, "lesion_ml"] == pytest.approx(lesion_ml)
        # the volume is geometric (lesion voxels are liver voxels); only the intensities leave them out
        assert excluded.loc[key, "volume_ml"] == included.loc[key, "volume_ml"]
        # the lesion (SUV 4-12, liver ~2) pulls the mixed mean up; the lesion-free one stays near the truth
        assert included.loc[key, "suv_mean"] > excluded.loc[key, "suv_mean"]
        assert abs(excluded.loc[key, "suv_mean"] / truth.loc[key, "suv_mean"] - 1) < 0.06
        assert excluded.loc[key, "suv_peak"] < included.loc[key, "suv_peak"]


def test_mtv_tlg_and_count_against_the_mask(lesion_cohort):
    table = metrics.organ_metrics(lesion_cohort, progress=False)
    lesions = metrics.lesion_table(table).set_index("case_id")
    truth = pd.read_csv(lesion_cohort.root / "truth.csv")
    assert list(metrics.lesion_table(table).columns) == ["case_id", "cohort", "mtv_ml", "tlg", "lesion_count"]
    for case in lesion_cohort:
        pet, _ = case.read_pet()
        mask = case.read_lesions()
        rows = truth[(truth.case_id == case.case_id) & truth.organ.str.startswith("lesion_")]
        mtv = mask.sum() * 8.0 ** 3 / 1000
        got = lesions.loc[case.case_id]
        assert got.mtv_ml == pytest.approx(mtv) == pytest.approx(rows["volume_ml"].sum())
        assert got.tlg == pytest.approx(mtv * pet[mask].mean(dtype=np.float64), rel=1e-6)
        assert got.lesion_count == len(rows)
        # the voxel-sampled spheres against 4/3 pi r^3: within the boundary layer (8 mm voxels, r 8-14 mm)
        for r, vol, analytic in rows[["radius_mm", "volume_ml", "volume_analytic_ml"]].itertuples(index=False):
            assert vol == pytest.approx(sphere_voxels(r, 8.0) * 0.512)
            shell = 4 * math.pi * r ** 2 * (8.0 * math.sqrt(3) / 2) / 1000
            assert abs(vol - analytic) < shell


def test_sphere_volume_converges_to_the_analytic_one():
    """Voxel-centre sampling of a 14 mm sphere: the voxel count x volume approaches 4/3 pi r^3 as voxels shrink."""
    r = 14.0
    errors = [abs(sphere_voxels(r, v) * v ** 3 - 4 / 3 * math.pi * r ** 3) / (4 / 3 * math.pi * r ** 3)
              for v in (4.0, 2.0, 1.0)]
    assert errors[-1] < 0.01 and errors[-1] < errors[0]


def test_lesion_count_uses_26_connectivity():
    pet = np.ones((6, 6, 6), np.float32)
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner neighbours: one lesion with 26-connectivity
    mask[4, 4, 4] = 1
    pet[1, 1, 1], pet[2, 2, 2], pet[4, 4, 4] = 3.0, 5.0, 10.0
    got = metrics.lesion_summary(pet, mask, voxel_ml=0.008)
    assert got["lesion_count"] == 2
    assert got["mtv_ml"] == pytest.approx(3 * 0.008)
    assert got["tlg"] == pytest.approx(3 * 0.008 * 6.0)
    assert metrics.lesion_summary(pet, None, 0.008)["mtv_ml"] != metrics.lesion_summary(pet, None, 0.008)["mtv_ml"]
    assert metrics.lesion_summary(pet, np.zeros_like(mask), 0.008) == {"mtv_ml": 0.0, "tlg": 0.0, "lesion_count": 0}


def test_case_metrics_exclusion_on_a_hand_made_case():
    """A 4x4x4 liver of SUV 2 with one hot voxel (SUV 20) marked as lesion: 2.0 excluded, (63*2+20)/64 included."""
    pet = np.zeros((8, 8, 8), np.float32)
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 5
    pet[2:6, 2:6, 2:6] = 2.0
    pet[3, 3, 3] = 20.0
    lesion = np.zeros((8, 8, 8), bool)
    lesion[3, 3, 3] = True
    grid = Grid(pet.shape, np.diag([10.0, 10.0, 10.0, 1.0]))  # 1 mL voxels: the peak sphere is one voxel
    ex = metrics.case_metrics(pet, None, labels, grid, ["liver"], lesion_mask=lesion).iloc[0]
    inc = metrics.case_metrics(pet, None, labels, grid, ["liver"], lesion_mask=lesion, lesions="include").iloc[0]
    none = metrics.case_metrics(pet, None, labels, grid, ["liver"]).iloc[0]
    assert (ex.suv_mean, ex.suv_max, ex.suv_peak, ex.n_voxels) == (2.0, 2.0, 2.0, 64)
    assert ex.lesion_ml == pytest.approx(1.0) and inc.lesion_ml == pytest.approx(1.0)
    assert inc.suv_mean == pytest.approx((63 * 2 + 20) / 64) and inc.suv_max == 20.0
    assert none.suv_mean == inc.suv_mean and math.isnan(none.lesion_ml)
    with pytest.raises(InputError, match="--lesions"):
        metrics.case_metrics(pet, None, labels, grid, ["liver"], lesion_mask=lesion, lesions="drop")


def test_cache_key_holds_the_lesion_option(lesion_cohort, tmp_path):
    cache = tmp_path / "cache"
    first = metrics.organ_metrics(lesion_cohort[:1], cache_dir=cache, progress=False)
    again = metrics.organ_metrics(lesion_cohort[:1], cache_dir=cache, progress=False, lesions="include")
    assert first.attrs["n_computed"] == again.attrs["n_computed"] == 1
    third = metrics.organ_metrics(lesion_cohort[:1], cache_dir=cache, progress=False)
    assert third.attrs["n_computed"] == 0
    pd.testing.assert_frame_equal(first, third, check_exact=False, rtol=1e-12)
    assert metrics.lesion_table(third).equals(metrics.lesion_table(first))


def test_metrics_command_writes_lesions_csv(lesion_cohort, tmp_path):
    from typer.testing import CliRunner

    from totalgen_eval.cli import app

    out = tmp_path / "m" / "organ_metrics.csv"
    res = CliRunner().invoke(app, ["metrics", str(lesion_cohort.root), "-o", str(out), "--lesions", "include",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    table, lesions = pd.read_csv(out), pd.read_csv(out.parent / "lesions.csv")
    assert "lesion_ml" in table.columns and len(lesions) == len(lesion_cohort)
    assert (lesions["lesion_count"] >= 1).all()
    bad = CliRunner().invoke(app, ["metrics", str(lesion_cohort.root), "-o", str(out), "--lesions", "drop"])
    assert bad.exit_code != 0 and "--lesions" in bad.output
    grown_csv = tmp_path / "g" / "organ_metrics.csv"
    margin = CliRunner().invoke(app, ["metrics", str(lesion_cohort.root), "-o", str(grown_csv), "--lesion-margin", "8",
                                      "--no-progress"])
    assert margin.exit_code == 0, margin.output
    grown = pd.read_csv(grown_csv).set_index(["case_id", "organ"])
    plain = metrics.organ_metrics(lesion_cohort, progress=False).set_index(["case_id", "organ"])
    liver = grown.xs("liver", level="organ")
    assert (liver["suv_max"] <= plain.xs("liver", level="organ")["suv_max"]).all()
    assert (liver["lesion_ml"] == plain.xs("liver", level="organ")["lesion_ml"]).all()
    negative = CliRunner().invoke(app, ["metrics", str(lesion_cohort.root), "-o", str(out), "--lesion-margin", "-1"])
    assert negative.exit_code != 0 and "--lesion-margin" in negative.output


def test_tcia_layout_phantoms_carry_lesions_in_seg(tmp_path):
    root = phantom.make_cohort(tmp_path / "tcia", n=2, seed=4, lesions=1.0, layout="tcia", progress=False)
    cohort = load_cohort(root)
    truth = pd.read_csv(root / "truth.csv")
    for case in cohort:
        assert case.lesions.name == "SEG.nii.gz" and case.extra["diagnosis"] == "LYMPHOMA"
        rows = truth[(truth.case_id == case.case_id) & truth.organ.str.startswith("lesion_")]
        assert case.read_lesions().sum() * 0.512 == pytest.approx(rows["volume_ml"].sum())


def test_diagnosis_filter(tmp_path):
    root = phantom.make_cohort(tmp_path / "half", n=8, seed=2, lesions=0.5, progress=False)
    cohort = load_cohort(root)
    diagnoses = [c.extra["diagnosis"] for c in cohort]
    assert {"NEGATIVE", "LYMPHOMA"} == set(diagnoses)
    negative = cohort.with_diagnosis("negative")
    assert [c.case_id for c in negative] == [c.case_id for c, d in zip(cohort, diagnoses) if d == "NEGATIVE"]
    table = metrics.organ_metrics(negative, progress=False)
    assert (table["lesion_ml"] == 0).all()
    assert (metrics.lesion_table(table)["mtv_ml"] == 0).all()
    with pytest.raises(InputError, match="no case has it .*LYMPHOMA, NEGATIVE"):
        cohort.with_diagnosis("melanoma")


def test_lesion_plan_is_per_case_and_share():
    plans = [lesion_plan(0, i, 0.5) for i in range(200)]
    share = np.mean([bool(p.lesions) for p in plans])
    assert 0.38 < share < 0.62  # binomial(200, 0.5): 4 SD
    assert lesion_plan(0, 7, 1.0).lesions == lesion_plan(0, 7, 1.0).lesions
    assert all(p.lesions[0].host == "liver" for p in plans if p.lesions)
    assert isinstance(LesionPlan((LesionSpec("liver", 9.0, 5.0),), np.random.SeedSequence(0)).diagnosis, str)


def test_lesion_mask_on_another_grid_is_resampled(tmp_path):
    """A SEG at half the resolution of the PET is read nearest-neighbour onto the PET grid."""
    from totalgen_eval.cohort.case import Case

    pet = np.full((8, 8, 8), 1.0, np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[1, 1, 1] = 1
    write_volume(pet, aff, tmp_path / "pet.nii.gz")
    write_volume(np.full((8, 8, 8), -1000, np.int16), aff, tmp_path / "ct.nii.gz")
    coarse = np.diag([4.0, 4.0, 4.0, 1.0])
    coarse[:3, 3] = 1.0  # voxel centres of the coarse grid at the centre of 2x2x2 fine voxels
    write_volume(seg, coarse, tmp_path / "seg.nii.gz")
    case = Case("c", 50.0, "F", math.nan, math.nan, tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz",
                lesions=tmp_path / "seg.nii.gz")
    mask = case.read_lesions()
    assert mask.shape == (8, 8, 8) and mask.sum() == 8 and mask[2:4, 2:4, 2:4].all()


def test_compare_diagnosis_and_lesions_csv(tmp_path):
    """`compare --diagnosis negative` keeps the NEGATIVE real studies only; lesions.csv lists their (empty)
    lesion figures; the organ table of the real side holds exactly those cases."""
    from typer.testing import CliRunner

    from totalgen_eval.cli import app

    real = phantom.make_cohort(tmp_path / "real", n=12, seed=5, lesions=0.5, progress=False)
    synth = phantom.make_cohort(tmp_path / "synth", n=8, seed=6, progress=False)
    negative = {c.case_id for c in load_cohort(real) if c.extra["diagnosis"] == "NEGATIVE"}
    assert 0 < len(negative) < 12
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["compare", str(real), str(synth), "--out", str(out), "--organs", "liver",
                                   "--metrics", "suv_mean", "--diagnosis", "negative", "--no-progress"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "organ_metrics.csv")
    assert set(table.loc[table.cohort == "real", "case_id"]) == negative
    lesions = pd.read_csv(out / "lesions.csv")
    assert set(lesions["case_id"]) == negative and (lesions["mtv_ml"] == 0).all()
    bad = CliRunner().invoke(app, ["compare", str(real), str(synth), "--out", str(tmp_path / "r2"),
                                   "--diagnosis", "melanoma", "--no-progress"])
    assert bad.exit_code != 0 and "no case has it" in " ".join(bad.output.split())


def test_lesion_margin_leaves_the_spill_out():
    """A hot lesion voxel (SUV 20) whose six face neighbours carry spilled uptake (SUV 5) inside a liver of SUV 2:
    without a margin the spill is the liver's maximum; a 10 mm margin (10 mm voxels) leaves it out too."""
    pet = np.zeros((10, 10, 10), np.float32)
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:8, 2:8, 2:8], pet[2:8, 2:8, 2:8] = 5, 2.0
    lesion = np.zeros((10, 10, 10), bool)
    lesion[5, 5, 5] = True
    pet[5, 5, 5] = 20.0
    for axis in range(3):
        for step in (-1, 1):
            idx = [5, 5, 5]
            idx[axis] += step
            pet[tuple(idx)] = 5.0
    grid = Grid(pet.shape, np.diag([10.0, 10.0, 10.0, 1.0]))
    plain = metrics.case_metrics(pet, None, labels, grid, ["liver"], lesion_mask=lesion).iloc[0]
    margin = metrics.case_metrics(pet, None, labels, grid, ["liver"], lesion_mask=lesion, lesion_margin_mm=10.0).iloc[0]
    assert plain.suv_max == 5.0 and plain.suv_mean == pytest.approx((209 * 2 + 6 * 5) / 215)
    assert margin.suv_max == 2.0 and margin.suv_mean == 2.0
    assert plain.lesion_ml == pytest.approx(1.0) and margin.lesion_ml == pytest.approx(1.0)
    assert plain.n_voxels == margin.n_voxels == 216
    with pytest.raises(InputError, match="--lesion-margin"):
        metrics.case_metrics(pet, None, labels, grid, ["liver"], lesion_mask=lesion, lesion_margin_mm=-1.0)


def test_grow_mask_against_brute_force():
    from totalgen_eval.metrics.case import grow_mask

    rng = np.random.default_rng(0)
    mask = rng.random((14, 12, 9)) > 0.985
    spacing, margin = (2.0, 3.0, 4.5), 6.5
    got = grow_mask(mask, spacing, margin)
    pts = np.argwhere(mask) * np.array(spacing)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(mask.shape, spacing)], indexing="ij"), -1)
    dist = np.min(np.linalg.norm(grid[..., None, :] - pts, axis=-1), axis=-1)
    np.testing.assert_array_equal(got, dist <= margin)
    assert grow_mask(mask, spacing, 0.0) is mask

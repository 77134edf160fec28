"""Organ metrics: hand-checked values, TotalSegmentator's statistics on the same inputs, bad input, resume."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from totalgen_eval import metrics
from totalgen_eval.errors import InputError
from totalgen_eval.organs import ORGAN_NAMES, organ
from totalgen_eval.volumes import Grid

from conftest import TOY_SPACING, toy_affine, toy_volumes

def masks_by_organ(labels):
    return {name: np.isin(labels, organ(name).classes) for name in ORGAN_NAMES}


@pytest.mark.parametrize("threads", ["1", "2"])  # organs measured in turn or in two threads
def test_values_against_a_mask_per_organ(monkeypatch, threads):
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    pet, ct, labels = toy_volumes()
    grid = Grid(labels.shape, toy_affine())
    table = metrics.case_metrics(pet, ct, labels, grid).set_index("organ")
    assert list(table.reset_index().columns) == list(metrics.METRIC_COLUMNS)
    assert list(table.index) == list(ORGAN_NAMES)
    for name, mask in masks_by_organ(labels).items():
        row = table.loc[name]
        vals = pet[mask].astype(np.float64)
        assert row.n_voxels == mask.sum()
        assert row.volume_ml == pytest.approx(mask.sum() * 2.0 * 2.5 * 3.0 / 1000.0)
        assert row.suv_mean == pytest.approx(vals.mean())
        assert row.suv_median == pytest.approx(np.median(vals))
        assert row.suv_std == pytest.approx(vals.std(ddof=0))
        assert row.suv_max == vals.max()
        assert row.hu_mean == pytest.approx(ct[mask].mean())
    assert table.loc["urinary_bladder", "touches_border"]  # starts at k = 0
    assert table.loc["muscle", "touches_border"] is np.True_ or table.loc["muscle", "touches_border"]
    assert not table.loc["liver", "touches_border"]


def brute_force_peak(pet, mask, spacing, radius):
    idx = np.argwhere(mask)
    best = -np.inf
    all_idx = np.argwhere(np.ones(pet.shape, bool))
    for c in idx:
        d2 = (((all_idx - c) * np.asarray(spacing)) ** 2).sum(axis=1)
        sel = all_idx[d2 <= radius ** 2]
        v = pet[tuple(sel.T)]
        v = v[~np.isnan(v)]
        best = max(best, v.mean())
    return best


def test_suv_peak_against_brute_force():
    rng = np.random.default_rng(3)
    shape = (14, 12, 10)
    pet = rng.gamma(2.0, 1.0, size=shape).astype(np.float32)
    pet[0, 5, 5] = 40.0  # a hot voxel at the array border, beside the organ
    pet[6, 6, 6] = np.nan
    labels = np.zeros(shape, np.uint8)
    labels[0:7, 3:9, 2:8] = 5
    grid = Grid(shape, toy_affine((2.0, 2.5, 3.0)))
    row = metrics.case_metrics(pet, None, labels, grid, organs=("liver",)).iloc[0]
    assert metrics.sphere_kernel((2.0, 2.5, 3.0)).sum() > 20  # a real sphere, not one voxel
    expected = brute_force_peak(pet, labels == 5, (2.0, 2.5, 3.0), metrics.PEAK_RADIUS_MM)
    assert row.suv_peak == pytest.approx(expected, rel=1e-6)
    assert math.isnan(row.hu_mean)
    fortran = metrics.case_metrics(np.asfortranarray(pet), None, np.asfortranarray(labels), grid, organs=("liver",))
    assert fortran.iloc[0].suv_peak == pytest.approx(expected, rel=1e-6)  # NIfTI arrays come in F order


def sphere_offsets(spacing, radius):
    """Voxel offsets whose centres lie within ``radius`` mm of the origin (by distance, independently)."""
    reach = [int(radius // s) + 1 for s in spacing]
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    return grid[((grid * np.asarray(spacing)) ** 2).sum(1) <= radius ** 2 + 1e-9]


def brute_force_peaks(pet, centres, spacing, radius=metrics.PEAK_RADIUS_MM, chunk=4096):
    """Mean of the non-NaN voxels inside the array within ``radius`` of each centre (N x 3), vectorised."""
    offsets = sphere_offsets(spacing, radius)
    out = np.empty(len(centres))
    for s in range(0, len(centres), chunk):
        at = centres[s:s + chunk, None, :] + offsets[None]
        inside = ((at >= 0) & (at < np.asarray(pet.shape))).all(-1)
        vals = np.where(inside, pet[tuple(np.clip(at, 0, np.asarray(pet.shape) - 1).transpose(2, 0, 1))], np.nan)
        with np.errstate(invalid="ignore"):
            out[s:s + chunk] = np.nanmean(vals.astype(np.float64), axis=1)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_suv_peak_search_equals_the_brute_force_on_random_cases(seed):
    """Random grids and spacings, NaN voxels, negative values, organs at the array edge, two-class organs,
    C and F order: the search returns the brute-force maximum."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 28, 3))
    spacing = tuple(float(s) for s in rng.uniform(1.0, 3.5, 3))
    pet = ndimage.gaussian_filter(rng.gamma(2.0, 1.0, shape), 0.7).astype(np.float32)  # PET-like texture
    pet[tuple(rng.integers(0, shape))] += 30.0  # a hot spot somewhere (inside, outside or at the organ's edge)
    pet[rng.random(shape) < 0.002 * (seed % 4)] = np.nan
    if seed % 3 == 0:
        pet -= 1.5  # negative sums as well
    labels = np.zeros(shape, np.uint8)
    margin = 0 if seed % 2 else 4  # even seeds: organs away from the edge (full spheres everywhere)
    for cid in (5, 2, 3):
        lo = rng.integers(margin, np.asarray(shape) - margin - 2)
        hi = np.minimum(lo + rng.integers(2, 9, 3), np.asarray(shape) - margin)
        labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = cid
    grid = Grid(shape, toy_affine(spacing))
    for order in ("C", "F"):
        table = metrics.case_metrics(np.asarray(pet, order=order), None, np.asarray(labels, order=order), grid,
                                     organs=("liver", "kidneys")).set_index("organ")
        for name, classes in (("liver", [5]), ("kidneys", [2, 3])):
            expected = np.nanmax(brute_force_peaks(pet, np.argwhere(np.isin(labels, classes)), spacing))
            assert table.loc[name, "suv_peak"] == pytest.approx(expected, rel=1e-12, abs=1e-12), (name, order)


def test_suv_peak_search_equals_the_brute_force_on_a_phantom(tmp_path):
    """Every organ of a 4 mm phantom (a 19-voxel sphere): search and brute force agree; the peak lies
    between the organ's mean and its maximum."""
    from totalgen_eval.phantom import PhantomConfig, make_cohort

    root = make_cohort(tmp_path / "ph", n=1, seed=4, config=PhantomConfig(voxel_mm=4.0), progress=False)
    stem = root / "cases" / "phantom-0000"
    pet, affine = metrics.read_volume(f"{stem}_pet.nii.gz")
    labels, _ = metrics.read_volume(f"{stem}_labels.nii.gz", dtype=None)
    assert sphere_offsets((4.0,) * 3, metrics.PEAK_RADIUS_MM).shape[0] == metrics.sphere_kernel((4.0,) * 3).sum() == 19
    table = metrics.case_metrics(pet, None, labels, Grid(pet.shape, affine)).set_index("organ")
    for name in ORGAN_NAMES:
        centres = np.argwhere(np.isin(labels, organ(name).classes))
        expected = np.nanmax(brute_force_peaks(pet, centres, (4.0,) * 3))
        assert table.loc[name, "suv_peak"] == pytest.approx(expected, rel=1e-12), name
        assert table.loc[name, "suv_mean"] < table.loc[name, "suv_peak"] <= table.loc[name, "suv_max"]


def test_peak_radius_is_one_millilitre():
    assert 4 / 3 * math.pi * metrics.PEAK_RADIUS_MM ** 3 == pytest.approx(1000.0)
    assert metrics.sphere_kernel((8.0, 8.0, 8.0)).sum() == 1  # coarse grid: peak = max


def test_absent_organ_gives_zero_voxels_and_nan():
    pet, ct, labels = toy_volumes()
    labels[labels == 1] = 0
    table = metrics.case_metrics(pet, ct, labels, Grid(labels.shape, toy_affine())).set_index("organ")
    row = table.loc["spleen"]
    assert row.n_voxels == 0 and row.volume_ml == 0.0 and not row.touches_border
    for col in ("suv_mean", "suv_median", "suv_std", "suv_max", "suv_peak", "hu_mean"):
        assert math.isnan(row[col])
    assert table.loc["liver", "n_voxels"] > 0


def test_invalid_label_id_names_the_ids():
    pet, ct, labels = toy_volumes()
    labels[0, 0, 0] = 200
    labels[1, 0, 0] = 118
    with pytest.raises(InputError, match="118, 200"):
        metrics.case_metrics(pet, ct, labels, Grid(labels.shape, toy_affine()))


def test_nan_pet_is_counted_and_left_out(caplog):
    pet, ct, labels = toy_volumes()
    liver = labels == 5
    where = np.argwhere(liver)[:7]
    pet[tuple(where.T)] = np.nan
    pet[0, 0, 0] = np.nan  # outside every organ: not counted
    with caplog.at_level("WARNING"):
        table = metrics.case_metrics(pet, ct, labels, Grid(labels.shape, toy_affine()))
    assert table.attrs["n_nan_pet"] == 7
    assert "7 NaN PET voxels" in caplog.text
    row = table.set_index("organ").loc["liver"]
    vals = pet[liver]
    vals = vals[~np.isnan(vals)]
    assert row.n_voxels == liver.sum()
    assert row.suv_mean == pytest.approx(vals.mean()) and row.suv_max == vals.max()


def test_labels_on_a_coarser_grid_are_resampled_nearest():
    pet, ct, labels = toy_volumes(shape=(40, 36, 44))
    coarse = labels[::2, ::2, ::2].copy()
    # volumes.resample_to_grid (mode "constant") treats the outer half voxel as outside: keep borders empty
    coarse[[0, -1]] = 0
    coarse[:, [0, -1]] = 0
    coarse[:, :, [0, -1]] = 0
    fine_aff = toy_affine()
    coarse_aff = toy_affine(tuple(2 * s for s in TOY_SPACING))
    coarse_aff[:3, 3] = fine_aff[:3, 3] + 0.5 * np.asarray(TOY_SPACING)  # its voxel (0,0,0) covers fine 0..1
    expected_labels = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    grid = Grid(pet.shape, fine_aff)
    got = metrics.case_metrics(pet, ct, coarse, grid, labels_grid=Grid(coarse.shape, coarse_aff))
    want = metrics.case_metrics(pet, ct, expected_labels, grid)
    # fine voxel i sits at coarse coordinate (i - 0.5) / 2: nearest is i // 2, no ties
    pd.testing.assert_frame_equal(got, want)


def test_labels_on_the_same_extent_other_spacing_exact():
    """A label grid with an exact 2x refinement of the PET grid: nearest neighbour picks known voxels."""
    pet, ct, labels = toy_volumes(shape=(20, 18, 22))
    fine = np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2)
    aff = toy_affine()
    fine_aff = toy_affine(tuple(s / 2 for s in TOY_SPACING))
    fine_aff[:3, 3] = aff[:3, 3] - 0.25 * np.asarray(TOY_SPACING)  # fine voxel 2i+1 centre is 0.25 s beyond i
    grid = Grid(pet.shape, aff)
    got = metrics.case_metrics(pet, ct, fine, grid, labels_grid=Grid(fine.shape, fine_aff))
    want = metrics.case_metrics(pet, ct, labels, grid)
    pd.testing.assert_frame_equal(got, want)


def test_ct_on_another_grid_is_resampled_linearly():
    pet, ct, labels = toy_volumes(shape=(20, 18, 22))
    ct = np.full(labels.shape, 40.0, np.float32)
    ct_big = np.full((30, 30, 30), 40.0, np.float32)  # covers the PET box: linear resampling keeps 40
    aff = toy_affine()
    grid = Grid(pet.shape, aff)
    table = metrics.case_metrics(pet, ct_big, labels, grid, ct_grid=Grid(ct_big.shape, toy_affine(origin=(-25.0, 5.0, -55.0))))
    assert np.allclose(table["hu_mean"].dropna(), 40.0)


def test_no_overlap_is_an_input_error():
    pet, ct, labels = toy_volumes(shape=(20, 18, 22))
    grid = Grid(pet.shape, toy_affine())
    far = toy_affine(origin=(5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not overlap"):
        metrics.case_metrics(pet, ct, labels, grid, labels_grid=Grid(labels.shape, far))


def test_agrees_with_totalsegmentator_statistics():
    stats_mod = pytest.importorskip("totalsegmentator.statistics", reason="totalsegmentator is not installed")
    pet, ct, labels = toy_volumes()
    aff = toy_affine()
    grid = Grid(labels.shape, aff)
    ours = metrics.case_metrics(pet, ct, labels, grid).set_index("organ")
    for image, col in ((pet, "suv_mean"), (ct, "hu_mean")):
        ts = stats_mod.get_basic_statistics(labels, nib.Nifti1Image(image, aff), quiet=True,
                                            exclude_masks_at_border=False)
        from totalsegmentator.map_to_binary import class_map
        for name in ORGAN_NAMES:
            classes = organ(name).classes
            vols = np.array([ts[class_map["total"][c]]["volume"] for c in classes])  # mm^3
            means = np.array([ts[class_map["total"][c]]["intensity"] for c in classes])
            assert ours.loc[name, "volume_ml"] == pytest.approx(vols.sum() / 1000.0)
            assert ours.loc[name, col] == pytest.approx((vols * means).sum() / vols.sum(), abs=1e-4)


def test_float_labels_with_fractions_are_rejected():
    pet, ct, labels = toy_volumes(shape=(10, 10, 10))
    bad = labels.astype(np.float32)
    bad[0, 0, 0] = 2.5
    with pytest.raises(InputError, match="non-integer"):
        metrics.case_metrics(pet, ct, bad, Grid(bad.shape, toy_affine()))

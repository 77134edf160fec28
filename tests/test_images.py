"""Image-level metrics and the memorization check, on phantoms and on hand-made arrays.

Reference values come from MONAI's own metrics (FID, MMD with a linear kernel), numpy (means,
covariances) and the phantoms' construction (copies of training cases, blurred copies, independent draws).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from totalgen_eval.cohort import load_cohort
from totalgen_eval.errors import InputError
from totalgen_eval.images import (CaseImages, MomentStats, arrays_images, cohort_images, fid,
                                  image_metrics_from, load_extractor, memorization_from, mmd2, ms_ssim, nearest,
                                  preview_arrays, volume_features)
from totalgen_eval.images.distances import (case_weights, frechet_distances, kernel_matrix, mmd2_from_counts,
                                            mmd2_from_kernel)
from totalgen_eval.images.grids import BODY_SHAPE, body_box, box_grid, ras_grid, to_ras
from totalgen_eval.phantom import make_cohort
from totalgen_eval.volumes import Grid


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Three independent phantom draws at 8 mm: train (30), real (100), independent (30)."""
    root = tmp_path_factory.mktemp("phantoms")
    return {name: load_cohort(make_cohort(root / name, n=n, seed=seed, workers=2, progress=False))
            for name, n, seed in (("train", 30, 501), ("real", 100, 502), ("indep", 30, 503))}


@pytest.fixture(scope="module")
def bodies(phantoms):
    """Body-box arrays of every phantom (no features)."""
    return {name: cohort_images(cohort) for name, cohort in phantoms.items()}


@pytest.fixture(scope="module")
def bundled():
    return load_extractor("bundled")


def _read(case):
    pet, affine = case.read_pet()
    ct, _ = case.read_ct()
    return ct, pet, affine


def _noisy_copy(case, rng, share: float = 0.01) -> CaseImages:
    """A training case with 1 % noise: CT + N(0, 1 % of the 2000 HU window), PET x (1 + N(0, 1 %)).
    (additive PET noise scaled to the range would be about 0.3 SUV, most of the soft tissue's uptake)."""
    ct, pet, affine = _read(case)
    ct = ct + rng.normal(0, share * 2000.0, ct.shape)
    pet = pet * (1 + rng.normal(0, share, pet.shape))
    return arrays_images(f"copy-of-{case.case_id}", ct.astype(np.float32), pet.astype(np.float32), affine)


# ------------------------------------------------------------------------------------ memorization
@pytest.mark.slow  # the module's phantoms (160 cases) are made here: ~15 s alone, longer on a busy machine
def test_copies_of_training_cases_are_flagged_and_matched(phantoms, bodies):
    rng = np.random.default_rng(0)
    train, real = bodies["train"], bodies["real"]
    copies = [_noisy_copy(case, rng) for case in list(phantoms["train"])[:10]]
    check = memorization_from(copies, train, real)
    table = check.synthetic
    assert list(table.columns) == ["case_id", "nearest_train_id", "distance", "flagged"]
    assert int(table["flagged"].sum()) >= 9
    assert (table["nearest_train_id"] == table["case_id"].str.replace("copy-of-", "")).all()
    # the threshold is the smallest real distance (100 real cases, lower 1st percentile)
    assert check.threshold == pytest.approx(np.sort(check.real["distance"])[0])
    assert table["distance"].max() < 0.5 * check.threshold


def test_an_independent_draw_is_not_flagged(bodies):
    train, real, indep = bodies["train"], bodies["real"], bodies["indep"]
    check = memorization_from(indep, train, real)
    assert len(check.synthetic) == 30
    assert int(check.synthetic["flagged"].sum()) <= 1
    # same population: the median distances are alike
    assert check.synthetic["distance"].median() == pytest.approx(check.real["distance"].median(), rel=0.25)


def test_real_cases_found_in_training_leave_the_reference(bodies):
    train = bodies["train"][:5]
    real = train[:2] + bodies["indep"][:5]  # indep's case ids repeat train's: only the images tell
    check = memorization_from(train[:3], train, real)
    assert check.left_out == (train[0].case_id, train[1].case_id)
    assert len(check.real) == 5
    assert check.synthetic["flagged"].all()  # exact copies: distance 0


def test_nearest_matches_a_brute_force_search():
    rng = np.random.default_rng(3)
    q, r = rng.normal(size=(7, 50)), rng.normal(size=(11, 50))
    idx, dist = nearest(q, r, chunk=3)
    full = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).mean(-1))
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-9)


# ---------------------------------------------------------------------------------------- FID, MMD
def test_frechet_distance_equals_monai_fid():
    from monai.metrics import FIDMetric

    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.2, size=(300, 16)) @ rng.normal(size=(16, 16))
    expected = float(FIDMetric()(torch.from_numpy(b), torch.from_numpy(a)))
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_moment_stats_weights_equal_repeated_cases():
    rng = np.random.default_rng(2)
    cases = [rng.normal(size=(n, 5)) for n in (3, 6, 4)]
    stats = MomentStats.from_cases(cases)
    mean, cov = stats.gaussian()
    rows = np.concatenate(cases)
    np.testing.assert_allclose(mean, rows.mean(0))
    np.testing.assert_allclose(cov, np.cov(rows, rowvar=False))
    mean_w, cov_w = stats.gaussian(np.array([2.0, 0.0, 1.0]))
    rows_w = np.concatenate([cases[0], cases[0], cases[2]])
    np.testing.assert_allclose(mean_w, rows_w.mean(0))
    np.testing.assert_allclose(cov_w, np.cov(rows_w, rowvar=False))


def test_bootstrap_gaussians_and_distances_in_one_batch_equal_each_replicate():
    rng = np.random.default_rng(3)
    cases = [rng.normal(size=(n, 6)) for n in (4, 7, 5, 6)]
    stats = MomentStats.from_cases(cases)
    other = MomentStats.from_cases([rng.normal(0.4, 1.3, size=(n, 6)) for n in (5, 3, 8)])
    wa, wb = case_weights(4, 5, rng), case_weights(3, 5, rng)
    means, covs = stats.gaussians(wa)
    for k, w in enumerate(wa):  # each replicate: the cases repeated as often as drawn
        rows = np.concatenate([c for c, times in zip(cases, w) for _ in range(int(times))])
        np.testing.assert_allclose(means[k], rows.mean(0))
        np.testing.assert_allclose(covs[k], np.cov(rows, rowvar=False))
    batched = frechet_distances(*stats.gaussians(wa), *other.gaussians(wb))
    one_by_one = [_fid_by_sqrtm(*stats.gaussian(u), *other.gaussian(v)) for u, v in zip(wa, wb)]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-7, atol=1e-10)


def _fid_by_sqrtm(mu1, cov1, mu2, cov2) -> float:
    """FID as MONAI computes it: scipy's matrix square root of S1 S2."""
    from scipy.linalg import sqrtm

    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(sqrtm(cov1 @ cov2)).real)


def test_singular_covariances_keep_fid_finite():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 10)), rng.normal(size=(6, 10))  # fewer rows than features: no Cholesky
    assert np.isfinite(fid(a, b)) and fid(a, b) > 0
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_mmd_of_a_resample_given_as_counts_equals_the_repeated_rows():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(9, 4)), rng.normal(0.5, 1.0, size=(7, 4))
    k = kernel_matrix(np.concatenate([x, y]), "rbf")
    for _ in range(3):
        ix, iy = rng.choice(9, 9), rng.choice(7, 7)
        expected = mmd2_from_kernel(k, ix, iy + 9)  # the resampled rows themselves
        assert mmd2_from_counts(k, np.bincount(ix, minlength=9), np.bincount(iy, minlength=7)) == \
            pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_mmd_with_a_linear_kernel_equals_monai():
    from monai.metrics import MMDMetric

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 6)), rng.normal(0.5, 1.0, size=(12, 6))
    expected = float(MMDMetric()(torch.from_numpy(x), torch.from_numpy(y)))
    assert mmd2(x, y, kernel="linear", standardize=False) == pytest.approx(expected, rel=1e-9)
    # the Gaussian-kernel estimate is ~0 for samples of one distribution and clearly positive for shifted ones
    same = mmd2(rng.normal(size=(60, 6)), rng.normal(size=(60, 6)))
    shifted = mmd2(rng.normal(size=(60, 6)), rng.normal(1.0, 1.0, size=(60, 6)))
    assert abs(same) < 0.05 < shifted


def _blurred(cohort, extractor, sigma_voxels: float) -> list[CaseImages]:
    out = []
    for case in cohort:
        ct, pet, affine = _read(case)
        out.append(arrays_images(case.case_id, ndimage.gaussian_filter(ct, sigma_voxels),
                                 ndimage.gaussian_filter(pet, sigma_voxels), affine, extractor))
    return out


@pytest.mark.slow  # 60 cases through the encoder: ~15 s, more on a busy machine
def test_fid_ranks_a_blurred_copy_further_than_an_independent_draw(phantoms, bundled):
    real = cohort_images(phantoms["real"][:20], bundled)
    indep = cohort_images(phantoms["indep"][:20], bundled)
    blurred = _blurred(phantoms["real"][:20], bundled, 1.0)  # 8 mm Gaussian sigma
    far = image_metrics_from(real, blurred, n_boot=0, reference=False).set_index(["metric", "modality"])["value"]
    near = image_metrics_from(real, indep, n_boot=0, reference=False).set_index(["metric", "modality"])["value"]
    for modality in ("ct", "pet"):
        assert far[("fid_2.5d", modality)] > 1.5 * near[("fid_2.5d", modality)], modality
    itself = image_metrics_from(real, real, n_boot=0, reference=False).set_index(["metric", "modality"])["value"]
    for modality in ("ct", "pet"):
        assert itself[("fid_2.5d", modality)] == pytest.approx(0.0, abs=1e-7 * near[("fid_2.5d", modality)] + 1e-12)


def test_image_metrics_table_with_twins_and_reference(phantoms, bundled):
    real = cohort_images(phantoms["real"][:8], bundled)
    synth = [CaseImages(f"s{k}", c.body, c.features) for k, c in enumerate(real[:4])] + \
        cohort_images(phantoms["indep"][:4], bundled)
    twins = {f"s{k}": real[k].case_id for k in range(4)}
    table = image_metrics_from(real, synth, "bundled", twins=twins, n_boot=20, seed=1)
    assert list(table.columns) == ["metric", "modality", "value", "ci_low", "ci_high", "features"]
    rows = table.set_index(["metric", "modality"])
    for modality in ("ct", "pet"):
        for metric in ("fid_2.5d", "fid_axial", "fid_coronal", "fid_sagittal", "mmd_3d", "fid_2.5d_real_halves",
                       "mmd_3d_real_halves", "fid_2.5d_synth_half", "ms_ssim_real_pairs"):
            assert (metric, modality) in rows.index
        # identical twins: MS-SSIM 1 exactly
        assert rows.loc[("ms_ssim_twins", modality), "value"] == pytest.approx(1.0, abs=1e-5)
        plane_mean = np.mean([rows.loc[(f"fid_{p}", modality), "value"] for p in ("axial", "coronal", "sagittal")])
        assert rows.loc[("fid_2.5d", modality), "value"] == pytest.approx(plane_mean)
        fid_row = rows.loc[("fid_2.5d_real_halves", modality)]
        assert 0 <= fid_row["ci_low"] <= fid_row["ci_high"]
    assert rows.loc[("fid_2.5d", "ct"), "features"] == "bundled"


# --------------------------------------------------------------------------------- MS-SSIM, grids
def test_ms_ssim_is_one_for_identical_volumes_and_falls_with_noise():
    rng = np.random.default_rng(5)
    base = ndimage.gaussian_filter(rng.uniform(size=(2, 32, 24, 96)), (0, 2, 2, 2)).astype(np.float32)
    base = (base - base.min()) / np.ptp(base)
    values = [ms_ssim(base, np.clip(base + rng.normal(0, s, base.shape), 0, 1)) for s in (0.0, 0.02, 0.1)]
    np.testing.assert_allclose(values[0], 1.0, atol=1e-5)
    assert np.all(values[0] > values[1]) and np.all(values[1] > values[2])


def test_body_box_and_ras_grid():
    affine = np.diag([4.0, 4.0, 5.0, 1.0])
    affine[:3, 3] = (-40.0, -30.0, -100.0)
    ct = np.full((20, 16, 40), -1000.0, np.float32)
    ct[5:15, 4:12, 10:30] = 40.0
    grid = Grid(ct.shape, affine)
    lower, upper = body_box(ct, grid, trim=0.0)
    np.testing.assert_allclose(lower, [-40 + 5 * 4 - 2, -30 + 4 * 4 - 2, -100 + 10 * 5 - 2.5])
    np.testing.assert_allclose(upper, [-40 + 14 * 4 + 2, -30 + 11 * 4 + 2, -100 + 29 * 5 + 2.5])
    # a grid whose x axis runs the other way gives the same RAS+ volume
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -4.0, -40.0 + 19 * 4.0
    ct_r, _, g = to_ras(ct[::-1].copy(), np.zeros_like(ct), Grid(ct.shape, flipped), (4.0, 4.0, 5.0))
    np.testing.assert_allclose(g.affine, affine)
    np.testing.assert_allclose(ct_r, ct, atol=1e-4)
    assert ras_grid(grid, (8.0, 8.0, 10.0)).shape == (10, 8, 20)
    assert box_grid(np.zeros(3), np.array([32.0, 24.0, 96.0]), (32, 24, 96)).spacing_mm == (1.0, 1.0, 1.0)


def test_preview_is_the_coronal_mip_and_a_centre_slice():
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    ct = np.full((10, 12, 20), -1000.0, np.float32)
    ct[2:8, 3:9, 2:18] = 40.0
    pet = np.zeros(ct.shape, np.float32)
    pet[4, 7, 10] = 9.0
    prev = preview_arrays("c", ct, pet, affine)
    assert prev.pet_mip.shape == (10, 20) and prev.pet_mip[4, 10] == 9.0
    np.testing.assert_array_equal(prev.ct_slice, ct[:, 6, :])  # body spans y 3..8: centre voxel 6 (5.5 rounded)
    assert prev.spacing_mm == (8.0, 8.0)


# --------------------------------------------------------------------------------------- extractors
def test_bundled_extractor_gives_bottleneck_features(phantoms, bundled):
    ct, pet, affine = _read(phantoms["real"][0])
    feats = volume_features(bundled, ct, "ct")
    assert feats.vector.shape == (128,)
    assert {p: v.shape for p, v in feats.planes.items()} == {"axial": (18, 128), "coronal": (5, 128),
                                                             "sagittal": (7, 128)}
    np.testing.assert_allclose(feats.planes["axial"].mean(0), feats.vector, rtol=1e-5, atol=1e-7)
    assert "phantoms" in bundled.description


def test_both_modalities_in_one_pass_equal_one_pass_each(phantoms, bundled):
    from totalgen_eval.images.features import modality_features

    ct, pet, affine = _read(phantoms["real"][1])
    ct_r, pet_r, _ = to_ras(ct, pet, Grid(tuple(pet.shape), affine), bundled.voxel_mm)
    both = modality_features(bundled, {"ct": ct_r, "pet": pet_r})
    for modality, volume in (("ct", ct_r), ("pet", pet_r)):
        alone = volume_features(bundled, volume, modality)
        # one batch of two or two of one: the same network, float32 sums in another order
        np.testing.assert_allclose(both[modality].vector, alone.vector, rtol=1e-5, atol=1e-6)
        for plane, values in alone.planes.items():
            np.testing.assert_allclose(both[modality].planes[plane], values, rtol=1e-5, atol=1e-6)


def test_the_bundled_network_is_built_at_its_first_pass_only(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from totalgen_eval.images import load_extractor; e = load_extractor('bundled'); "
            "print('torch' in sys.modules, 'monai' in sys.modules, e.spatial_dims, e.in_channels)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "3", "2"]  # a comparison with cached features never needs torch


def test_a_cut_weights_file_fails_when_the_extractor_is_loaded(tmp_path):
    from totalgen_eval.segment.model import resolve_model_path

    config, weights = resolve_model_path("bundled")
    (tmp_path / "m.json").write_bytes(config.read_bytes())
    raw = weights.read_bytes()
    (tmp_path / "m.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="corrupt or truncated safetensors"):
        load_extractor(f"model:{tmp_path / 'm.json'}")


class _Slices(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x))


class _Volume(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 6, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_extractors_2d_and_3d(tmp_path):
    torch.manual_seed(0)
    volume = np.random.default_rng(6).uniform(-1000, 1000, size=(12, 10, 16)).astype(np.float32)
    path2, path3 = tmp_path / "slices.pt", tmp_path / "volume.pt"
    torch.jit.script(_Slices()).save(str(path2))
    torch.jit.script(_Volume()).save(str(path3))
    two = load_extractor(f"model:{path2}")
    assert (two.spatial_dims, two.in_channels) == (2, 3)
    feats = volume_features(two, volume, "ct")
    assert {p: v.shape for p, v in feats.planes.items()} == {"axial": (16, 4), "coronal": (10, 4),
                                                             "sagittal": (12, 4)}
    assert feats.vector.shape == (12,)
    three = load_extractor(f"model:{path3}")
    assert (three.spatial_dims, three.in_channels) == (3, 1)
    feats = volume_features(three, volume, "pet")
    assert feats.planes["axial"].shape == (8, 6) and feats.planes["sagittal"].shape == (6, 6)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_bad_feature_specs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="--features"):
        load_extractor("resnet")
    with pytest.raises(InputError, match="not found"):
        load_extractor(f"model:{tmp_path / 'absent.pt'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="TorchScript"):
        load_extractor(f"model:{junk}")


# ------------------------------------------------------------------------------------------- figures
def _twin_table() -> tuple[pd.DataFrame, dict[str, str]]:
    """Hand-made organ_metrics rows: 6 real cases and their twins (synthetic = real x 1.1 + k), 2 organs."""
    rows = []
    for k in range(6):
        for organ, base in (("liver", 2.0), ("spleen", 1.5)):
            real = base + 0.1 * k
            rows.append(dict(case_id=f"r{k}", cohort="real", organ=organ, suv_mean=real, suv_max=3 * real,
                             n_voxels=100, age=40 + 5 * k, sex="MF"[k % 2], height_m=1.7, weight_kg=70 + k))
            rows.append(dict(case_id=f"s{k}", cohort="synth", organ=organ, suv_mean=1.1 * real + 0.01 * k,
                             suv_max=4 * real, n_voxels=100, age=40 + 5 * k, sex="MF"[k % 2], height_m=1.7,
                             weight_kg=70 + k))
    return pd.DataFrame(rows), {f"s{k}": f"r{k}" for k in range(6)}


def test_twin_figures_show_the_pairs():
    from totalgen_eval import plots
    from totalgen_eval.plots.twins import concordance_ccc, paired_values

    table, twins = _twin_table()
    pairs = paired_values(table, twins, "suv_mean")
    assert len(pairs) == 12
    liver = pairs[pairs["organ"] == "liver"]
    x, y = liver["real"].to_numpy(), liver["synth"].to_numpy()
    expected = 2 * np.cov(x, y)[0, 1] / (x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2)
    assert concordance_ccc(x, y) == pytest.approx(expected)
    fig = plots.bland_altman(table, twins, "suv_mean")
    assert len(fig.axes) == 2
    bias = [ln.get_ydata()[0] for ln in fig.axes[0].lines if ln.get_gid() == "bias"][0]
    assert bias == pytest.approx(np.mean(100 * (y - x) / ((x + y) / 2)))
    assert len(plots.twin_scatter(table, twins, "suv_mean").axes) == 2
    medians = [ln.get_ydata()[0] for ln in plots.suvmax_figure(table).axes[0].lines if ln.get_gid() == "median"]
    assert medians[:2] == pytest.approx([np.median(3 * x), np.median(4 * x)])
    with pytest.raises(ValueError, match="twin"):
        paired_values(table, {}, "suv_mean")


def test_table_one_counts_and_means():
    from totalgen_eval import plots

    table, _ = _twin_table()
    t1 = plots.table_one(table[table.cohort == "real"], table[table.cohort == "synth"], (50,))
    t1 = t1.set_index("characteristic")
    ages = np.array([40 + 5 * k for k in range(6)], float)
    assert t1.loc["n", "real"] == "6"
    assert t1.loc["age (years), mean ± SD", "synthetic"] == f"{ages.mean():.1f} ± {ages.std(ddof=1):.1f}"
    assert t1.loc["sex, F / M", "real"] == "3 / 3"
    # one edge: groups "<=50" and ">50"; men are cases 0, 2, 4 (ages 40, 50, 60), women 1, 3, 5 (45, 55, 65)
    assert (t1.loc["n, M <=50", "real"], t1.loc["n, M >50", "synthetic"], t1.loc["n, F <=50", "real"]) == ("2", "1", "1")



def test_compare_images_with_one_synthetic_case_says_why(phantoms, bundled):
    from totalgen_eval.images.compare import compare_images

    result = compare_images(phantoms["real"][:3], phantoms["indep"][:1], phantoms["train"][:3], bundled, n_boot=0)
    assert result.table.empty and list(result.table.columns) == ["metric", "modality", "value", "ci_low", "ci_high",
                                                                  "features"]
    assert "fewer than two" in result.summary()["note"]
    assert result.summary()["memorization"]["n_synthetic"] == 1


# ------------------------------------------------------------------------------------------ cache
def test_cached_case_images_equal_computed_ones_and_follow_the_files(phantoms, bundled, tmp_path):
    import os
    import warnings

    cases = phantoms["indep"][:3]
    fresh = cohort_images(cases, bundled)
    first = cohort_images(cases, bundled, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 3
    again = cohort_images(cases, bundled, cache_dir=tmp_path)
    for a, b, c in zip(fresh, first, again):
        assert a.case_id == b.case_id == c.case_id
        np.testing.assert_array_equal(a.body, c.body)
        for m in ("ct", "pet"):
            np.testing.assert_array_equal(a.features[m].vector, c.features[m].vector)
            for plane, rows in a.features[m].planes.items():
                np.testing.assert_array_equal(rows, c.features[m].planes[plane])
    assert sorted(tmp_path.glob("*.npz")) == files  # read, not written again
    bodies_only = cohort_images(cases, None, cache_dir=tmp_path)  # no extractor: its own entries
    assert not bodies_only[0].features and len(list(tmp_path.glob("*.npz"))) == 6
    from totalgen_eval.cache import cache_file, safe_name
    from totalgen_eval.images.cases import images_key

    cache_file(tmp_path, cases[0].case_id, images_key(cases[0], bundled, BODY_SHAPE), ".npz").write_bytes(b"not a zip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repaired = cohort_images(cases[:1], bundled, cache_dir=tmp_path)
    assert any("unusable cache file" in str(w.message) for w in caught)
    np.testing.assert_array_equal(repaired[0].body, fresh[0].body)
    os.utime(cases[0].pet)  # the input file changed (its identity): a new key
    cohort_images(cases[:1], bundled, cache_dir=tmp_path)
    assert len(list(tmp_path.glob(f"{safe_name(cases[0].case_id)}_*.npz"))) == 3


def test_compare_images_run_again_reads_its_table_and_no_volume(phantoms, bundled, tmp_path, monkeypatch):
    from totalgen_eval.images import compare as module

    real, synth = phantoms["real"][:4], phantoms["indep"][:3]
    first = module.compare_images(real, synth, None, bundled, n_boot=5, cache_dir=tmp_path)
    assert len(list((tmp_path / "real" / "images").glob("*.npz"))) == 4
    assert len(list((tmp_path / "synth" / "images").glob("*.npz"))) == 3

    def no_reading(*args, **kwargs):
        raise AssertionError("read the cases again")

    monkeypatch.setattr(module, "cohort_images", no_reading)
    again = module.compare_images(real, synth, None, bundled, n_boot=5, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(again.table, first.table, check_dtype=False)
    with pytest.raises(AssertionError, match="again"):  # another seed is another table
        module.compare_images(real, synth, None, bundled, n_boot=5, seed=1, cache_dir=tmp_path)

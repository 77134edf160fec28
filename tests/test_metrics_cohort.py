"""The organ_metrics table of a cohort (``metrics/cohort.py``): resume from the per-case cache, recomputation
of a changed input, workers, the CSV and its sidecar; agreement with the phantom's own truth; the metrics
command resumed after a kill."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from totalgen_eval import metrics
from totalgen_eval.organs import ORGAN_NAMES, organ
from totalgen_eval.volumes import write_volume

from conftest import toy_affine, toy_volumes


# --- a cohort: the table, resume, workers -------------------------------------------------------------

def _write_cases(tmp_path, n=3):
    from totalgen_eval.cohort.case import Case

    cases = []
    for i in range(n):
        pet, ct, labels = toy_volumes(seed=i, shape=(24, 20, 22))
        aff = toy_affine()
        d = tmp_path / "cases"
        write_volume(pet, aff, d / f"c{i}_pet.nii.gz")
        write_volume(ct.astype(np.int16), aff, d / f"c{i}_ct.nii.gz")
        write_volume(labels, aff, d / f"c{i}_labels.nii.gz")
        cases.append(Case(f"c{i}", 30.0 + 20 * i, "FM"[i % 2], 1.7, 70.0, d / f"c{i}_ct.nii.gz",
                          d / f"c{i}_pet.nii.gz", d / f"c{i}_labels.nii.gz"))
    return cases


def test_organ_metrics_table_and_resume(tmp_path):
    cases = _write_cases(tmp_path)
    cache = tmp_path / "cache"
    first = metrics.organ_metrics(cases[:2], cache_dir=cache, progress=False, cohort_name="toy")
    assert first.attrs["n_computed"] == 2
    full = metrics.organ_metrics(cases, cache_dir=cache, progress=False, cohort_name="toy")
    assert full.attrs["n_computed"] == 1  # the two finished cases were read back, only the third computed
    assert list(full.columns) == list(metrics.TABLE_COLUMNS)
    assert len(full) == 3 * len(ORGAN_NAMES)
    assert list(full["age_group"].unique()) == ["18-40", "40-60", "60-80"]
    fresh = metrics.organ_metrics(cases, progress=False, cohort_name="toy")
    pd.testing.assert_frame_equal(full, fresh, check_exact=False, rtol=1e-12)
    # a per-case file from an interrupted write is never half-written: only finished cases are on disk
    assert len(list((cache / "metrics").glob("*.csv"))) == 3
    assert not list((cache / "metrics").glob(".*tmp"))


def test_changed_input_is_recomputed(tmp_path):
    cases = _write_cases(tmp_path, n=1)
    cache = tmp_path / "cache"
    metrics.organ_metrics(cases, cache_dir=cache, progress=False)
    from totalgen_eval.volumes import read_volume
    pet, aff = read_volume(cases[0].pet)
    write_volume(pet * 1.5, aff, cases[0].pet)
    again = metrics.organ_metrics(cases, cache_dir=cache, progress=False)
    assert again.attrs["n_computed"] == 1


def test_workers_and_write_metrics(tmp_path):
    cases = _write_cases(tmp_path)
    one = metrics.organ_metrics(cases, progress=False, cohort_name="toy")
    out = tmp_path / "out" / "organ_metrics.csv"
    two = metrics.write_metrics(cases, out, segmenter="labels", workers=2, progress=False, cohort_name="toy")
    pd.testing.assert_frame_equal(one, two)
    back = metrics.read_metrics(out)
    pd.testing.assert_frame_equal(back, two, check_dtype=False)
    assert (out.parent / "organ_metrics.csv.json").is_file()


# --- phantoms: agreement with the phantom's own truth -------------------------------------------------

def _phantom_table(tmp_path, n, seed, **config):
    from totalgen_eval import phantom
    from totalgen_eval.cohort import load_cohort

    root = phantom.make_cohort(tmp_path / "ph", n=n, seed=seed, config=phantom.PhantomConfig(**config),
                               progress=False)
    cohort = load_cohort(root)
    table = metrics.organ_metrics(cohort, progress=False)
    truth = pd.read_csv(root / "truth.csv")[["case_id", "organ", "volume_ml", "suv_mean"]]
    return cohort, table.merge(truth, on=["case_id", "organ"], suffixes=("", "_true"))


def boundary_faces(mask):
    """Number of voxel faces between the mask and its outside (the voxelised surface, in faces)."""
    padded = np.pad(mask, 1)
    return int(sum(np.count_nonzero(np.diff(padded.astype(np.int8), axis=a)) for a in range(3)))


def test_noise_free_phantom_matches_its_truth(tmp_path):
    """Without blur and noise every organ voxel carries exactly the subject's SUV: suv_mean equals the truth.
    Voxel-centre sampling misplaces at most the voxels the surface cuts: |volume error| <= surface x voxel / 2,
    with the surface taken as the voxelised one (faces x voxel^2, an overestimate of the smooth surface)."""
    cohort, m = _phantom_table(tmp_path, 3, 5, voxel_mm=4.0, pet_fwhm_mm=0.0, pet_noise_cv=0.0, ct_noise_hu=0.0)
    np.testing.assert_allclose(m["suv_mean"], m["suv_mean_true"], rtol=1e-5)
    np.testing.assert_allclose(m["suv_median"], m["suv_mean_true"], rtol=1e-5)
    for case in cohort:
        labels, _ = case.read_labels()
        for name in ORGAN_NAMES:
            row = m[(m.case_id == case.case_id) & (m.organ == name)].iloc[0]
            bound_ml = boundary_faces(np.isin(labels, organ(name).classes)) * 4.0 ** 3 / 2 / 1000
            assert abs(row.volume_ml - row.volume_ml_true) <= bound_ml, (case.case_id, name)
    big = m[m.organ.isin(["brain", "lungs", "liver", "muscle", "heart"])]
    assert (100 * (big.volume_ml / big.volume_ml_true - 1)).abs().mean() < 1.0  # large organs: < 1 % on average


def test_default_phantom_suv_means_within_blur(tmp_path):
    """At 8 mm with 7 mm FWHM blur and 10 % noise: noise is zero-mean (multiplicative), so the SUVmean error is
    the blur's spill across organ borders, ~ (share of border voxels) x (contrast) x (spilled fraction); for
    the nine organs on the phantom grid it stays within 6 % (worst: thin aorta and small hot bladder)."""
    _, m = _phantom_table(tmp_path, 4, 11)
    err = (100 * (m["suv_mean"] / m["suv_mean_true"] - 1)).abs()
    assert err.max() < 6.0, m.assign(err=err).sort_values("err").tail(3)
    assert (m["n_voxels"] > 0).all() and not m["touches_border"].any()
    assert (m["suv_max"] >= m["suv_peak"]).all() and (m["suv_peak"] >= m["suv_mean"]).all()


def test_metrics_command_resumes_after_a_kill(tmp_path):
    """SIGKILL `totalgen-eval metrics` once some cases are cached; the re-run computes only the rest and its
    table equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import make_cohort

    cohort = make_cohort(tmp_path / "p", n=30, seed=4, progress=False)
    out = tmp_path / "m" / "organ_metrics.csv"
    cached = tmp_path / "m" / "organ_metrics-cache" / "metrics"
    proc = subprocess.Popen([sys.executable, "-m", "totalgen_eval", "metrics", str(cohort), "-o", str(out),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(cached.glob("*.csv"))) < 3:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail("the metrics run finished before it could be killed; use more cases")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cached.glob("*.csv")))
    assert 3 <= done < 30 and not out.exists()
    again = metrics.write_metrics(load_cohort(cohort), out, segmenter="labels", progress=False)
    assert again.attrs["n_computed"] == 30 - done
    fresh = metrics.organ_metrics(load_cohort(cohort), segmenter="labels", progress=False)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), fresh.reset_index(drop=True), check_exact=False,
                                  rtol=1e-12, check_dtype=False)


def test_case_files_read_together_equal_nibabel_and_report_the_pet_first(tmp_path):
    """PET and CT are decompressed in threads beside the labels: the arrays are nibabel's, and with both the
    PET and the labels damaged the error names the PET, as a sequential read would."""
    import dataclasses

    import nibabel as nib

    from totalgen_eval.errors import InputError

    case = _write_cases(tmp_path, n=1)[0]
    (pet, _), (ct, _), (labels, _), lesions, scan = metrics.cohort.read_case_arrays(case, "labels", None, "cpu")
    np.testing.assert_array_equal(pet, nib.load(case.pet).get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(ct, np.asanyarray(nib.load(case.ct).dataobj))
    assert ct.dtype == np.int16 and lesions is None
    np.testing.assert_array_equal(labels, np.asanyarray(nib.load(case.labels).dataobj))
    bad_pet = tmp_path / "bad_pet.nii.gz"
    bad_pet.write_bytes(case.pet.read_bytes()[:-200])  # truncated: gzip cannot finish it
    broken = dataclasses.replace(case, pet=bad_pet, labels=tmp_path / "missing_labels.nii.gz")
    with pytest.raises(InputError, match="bad_pet"):
        metrics.compute_case(broken)
    with pytest.raises(InputError, match="missing_labels"):
        metrics.compute_case(dataclasses.replace(case, labels=tmp_path / "missing_labels.nii.gz"))


def test_a_label_scan_made_while_reading_is_the_labels_own(tmp_path):
    """read_case_arrays scans the labels while PET and CT decompress: each class's voxels are the flat
    indices (memory order) of that class; case_metrics uses the scan of the very array it is given and scans
    any other array itself, so a scan of other labels changes nothing; bad ids leave the scan None."""
    from totalgen_eval.metrics.case import LabelScan, scan_labels
    from totalgen_eval.volumes import Grid

    case = _write_cases(tmp_path, n=1)[0]
    (pet, affine), (ct, _), (labels, _), _, scan = metrics.cohort.read_case_arrays(case, "labels", None, "cpu")
    assert scan.source is labels and scan.order == ("F" if labels.flags.f_contiguous else "C")
    flat = labels.reshape(-1, order=scan.order)
    assert set(scan.voxels) == set(np.unique(labels[labels > 0]).tolist()) & scan.classes
    for cid, where in scan.voxels.items():
        np.testing.assert_array_equal(where, np.flatnonzero(flat == cid))
    grid = Grid(pet.shape, affine)
    plain = metrics.case_metrics(pet, ct, labels, grid)
    pd.testing.assert_frame_equal(metrics.case_metrics(pet, ct, labels, grid, scan=scan), plain)
    emptied = scan_labels(np.zeros_like(labels))  # no organ at all: used only for its own (empty) array
    pd.testing.assert_frame_equal(metrics.case_metrics(pet, ct, labels, grid, scan=emptied), plain)
    pd.testing.assert_frame_equal(metrics.case_metrics(pet, ct, labels, grid, scan=scan_labels(labels, ["liver"])),
                                  plain)  # a scan of too few classes is not used
    trusted = LabelScan(labels, scan.order, scan.classes, {})  # the same array's scan is used as it is
    assert (metrics.case_metrics(pet, ct, labels, grid, scan=trusted)["n_voxels"] == 0).all()
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0]  # labels one voxel along i off the PET grid: resampled, then scanned anew
    moved = {"labels_grid": Grid(labels.shape, shifted)}
    pd.testing.assert_frame_equal(metrics.case_metrics(pet, ct, labels, grid, scan=scan, **moved),
                                  metrics.case_metrics(pet, ct, labels, grid, **moved))
    assert not metrics.case_metrics(pet, ct, labels, grid, **moved).equals(plain)
    bad = labels.copy()
    bad.flat[0] = 200  # not a "total" class
    assert metrics.cohort._scan_or_none(bad, ORGAN_NAMES) is None

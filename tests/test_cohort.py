"""Cohort I/O: the three layouts round-trip what was written; every bad input is one clear InputError."""
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import (TCIA_STUDIES, fixture_affine, fixture_arrays, write_nnunet, write_ours, write_tcia)
from totalgen_eval import volumes
from totalgen_eval.cohort import (Cohort, check_cohort, inspect_frame, load_cohort, summarize, tcia_case_id,
                                  write_cohort_csv)
from totalgen_eval.errors import InputError
from totalgen_eval.volumes import write_volume


def assert_case_arrays(case, expected):
    pet, pet_aff = case.read_pet()
    ct, ct_aff = case.read_ct()
    assert pet.dtype == np.float32 and ct.dtype == np.float32
    np.testing.assert_array_equal(pet, expected["pet"])
    np.testing.assert_array_equal(ct, expected["ct"].astype(np.float32))
    np.testing.assert_allclose(pet_aff, expected["affine"])
    np.testing.assert_allclose(ct_aff, expected["affine"])
    assert case.grid().shape == expected["pet"].shape


def one_line_error(excinfo, *fragments):
    text = str(excinfo.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return text


# ------------------------------------------------------------------------------------------ layouts

def test_ours_round_trip(ours_cohort):
    cohort = load_cohort(ours_cohort.root)
    assert cohort.layout == "ours" and cohort.name == "ours" and len(cohort) == 3
    assert cohort.problems == () and not cohort.is_phantom
    frame = cohort.to_frame()
    assert list(frame.columns[:8]) == ["case_id", "age", "sex", "height_m", "weight_kg", "ct", "pet", "labels"]
    assert list(frame["split"]) == ["test", "train", "train"]
    for case in cohort:
        want = ours_cohort.cases[case.case_id]
        assert (case.age, case.sex, case.height_m, case.weight_kg) == (
            want["age"], want["sex"], want["height_m"], want["weight_kg"])
        assert case.pet == ours_cohort.root / want["paths"]["pet"]
        assert_case_arrays(case, want)
        labels, _ = case.read_labels()
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, want["labels"])
    assert cohort["case-01"].sex == "F" and len(cohort[1:]) == 2 and isinstance(cohort[1:], Cohort)
    # a cohort.csv given directly is its folder
    assert len(load_cohort(ours_cohort.root / "cohort.csv")) == 3


def test_tcia_round_trip_with_spaces_and_dicom_ages(tcia_cohort):
    cohort = load_cohort(tcia_cohort.root)
    assert cohort.layout == "tcia"
    # the case is the study: subject folder + the study folder's date, in date order per subject
    assert [c.case_id for c in cohort] == ["PETCT_0af7ffe12a_08-12-2005", "PETCT_0af7ffe12a_03-01-2006",
                                           "PETCT_1b2c3d4e5f_11-23-2001"]
    assert [c.age for c in cohort] == [57.0, 58.0, 71.0]  # "057Y", "058Y", "071Y"
    assert [c.sex for c in cohort] == ["M", "M", "F"]
    assert all(math.isnan(c.height_m) and math.isnan(c.weight_kg) for c in cohort)
    frame = cohort.to_frame()
    assert list(frame["diagnosis"]) == ["MELANOMA", "MELANOMA", "NEGATIVE"]
    assert list(frame["study_date"]) == ["2005-08-12", "2006-03-01", "2001-11-23"]
    for case in cohort:
        want = tcia_cohort.cases[case.case_id]
        assert " " in case.pet.parent.name and case.pet.name == "SUV.nii.gz" and case.ct.name == "CTres.nii.gz"
        assert case.extra["study"] == want["study"]
        assert_case_arrays(case, want)
        np.testing.assert_array_equal(case.read_labels()[0], want["labels"])


def test_tcia_data_folder_below_root_and_fdg_metadata_name(tmp_path):
    built = write_tcia(tmp_path / "dl", metadata_name="fdg_metadata.csv", data_folder="FDG-PET-CT-Lesions",
                       organs=False)
    cohort = load_cohort(built.root)
    assert cohort.layout == "tcia" and len(cohort) == 3
    assert all(c.labels is None and c.read_labels() is None for c in cohort)


def test_tcia_rows_matched_by_subject_and_date_without_file_location(tmp_path):
    built = write_tcia(tmp_path / "t")
    csv = built.root / "Clinical Metadata FDG PET_CT Lesions.csv"
    pd.read_csv(csv).drop(columns=["File Location"]).to_csv(csv, index=False)
    cohort = load_cohort(built.root)
    assert [(c.case_id, c.age) for c in cohort] == [(cid, built.cases[cid]["age"]) for cid in
                                                    ["PETCT_0af7ffe12a_08-12-2005", "PETCT_0af7ffe12a_03-01-2006",
                                                     "PETCT_1b2c3d4e5f_11-23-2001"]]


def test_tcia_two_studies_on_one_day_get_distinct_ids(tmp_path):
    studies = [TCIA_STUDIES[0], ("0af7ffe12a", "08-12-2005-NA-PET-CT Teilkoerper-55555", "8/12/2005", "057Y",
                                 "M", "MELANOMA")]
    cohort = load_cohort(write_tcia(tmp_path / "t", studies=studies).root)
    assert sorted(c.case_id for c in cohort) == ["PETCT_0af7ffe12a_08-12-2005-10445",
                                                 "PETCT_0af7ffe12a_08-12-2005-55555"]
    assert tcia_case_id("PETCT_0af7ffe12a", TCIA_STUDIES[0][1]) == "PETCT_0af7ffe12a_08-12-2005"


def test_tcia_per_class_mask_folder(tmp_path):
    built = write_tcia(tmp_path / "t", organs=False)
    case_id = "PETCT_1b2c3d4e5f_11-23-2001"
    study = built.root / "PETCT_1b2c3d4e5f" / built.cases[case_id]["study"]
    want = built.cases[case_id]["labels"]
    for class_id, name in ((5, "liver"), (90, "brain"), (1, "spleen"), (3, "kidney_left")):
        write_volume((want == class_id).astype(np.uint8), fixture_affine(), study / "organs" / f"{name}.nii.gz")
    case = load_cohort(built.root)[case_id]
    assert case.labels.name == "organs"
    np.testing.assert_array_equal(case.read_labels()[0], want)


@pytest.mark.parametrize("naming", ["autopet3", "autopet2", "hex"])
def test_nnunet_round_trip(tmp_path, naming):
    built = write_nnunet(tmp_path / "nn", naming=naming)
    cohort = load_cohort(built.root)
    assert cohort.layout == "nnunet" and sorted(c.case_id for c in cohort) == sorted(built.cases)
    for case in cohort:
        want = built.cases[case.case_id]
        assert (case.age, case.sex, case.extra["diagnosis"]) == (want["age"], want["sex"], want["diagnosis"])
        assert case.ct.name.endswith("_0000.nii.gz") and case.pet.name.endswith("_0001.nii.gz")
        assert case.lesions.parent.name == "labelsTr"
        assert_case_arrays(case, want)


def test_nnunet_channel_order_pet_first(tmp_path):
    built = write_nnunet(tmp_path / "nn", channel_order="pet,ct")
    cohort = load_cohort(built.root, channel_order="pet,ct")
    for case in cohort:
        assert case.pet.name.endswith("_0000.nii.gz")
        assert_case_arrays(case, built.cases[case.case_id])
    with pytest.raises(InputError) as err:  # the default order reads SUV as CT and CT as PET: HU > 500
        load_cohort(built.root)[0].read_pet()
    one_line_error(err, "_0001.nii.gz", "Bq/mL")
    with pytest.raises(InputError) as err:
        load_cohort(built.root, channel_order="ct,suv")
    one_line_error(err, "ct,suv", "pet,ct")


def test_nnunet_unmatched_case_is_a_problem(tmp_path):
    built = write_nnunet(tmp_path / "nn")
    arrays = fixture_arrays(7)
    for k, role in enumerate(("ct", "pet")):
        write_volume(arrays[role], fixture_affine(), built.root / "imagesTr" / f"psma_95b833d46f153cd2_2018-04-16_000{k}.nii.gz")
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    one_line_error(err, "fdg_metadata.csv", "psma_95b833d46f153cd2_2018-04-16", "no study")
    cohort = load_cohort(built.root, skip_bad=True)
    assert len(cohort) == 3 and [p[0] for p in cohort.problems] == ["psma_95b833d46f153cd2_2018-04-16"]


# --------------------------------------------------------------------------------------- bad input

def test_folder_in_no_known_layout(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError) as err:
        load_cohort(tmp_path / "empty")
    one_line_error(err, "empty", "cohort.csv", "PETCT_", "imagesTr")
    with pytest.raises(InputError) as err:
        load_cohort(tmp_path / "missing")
    one_line_error(err, "missing", "not found")


@pytest.mark.parametrize("drop", ["age", "sex"])
def test_metadata_missing_age_or_sex(tmp_path, drop):
    built = write_tcia(tmp_path / "t")
    csv = built.root / "Clinical Metadata FDG PET_CT Lesions.csv"
    pd.read_csv(csv).drop(columns=[drop]).to_csv(csv, index=False)
    with pytest.raises(InputError) as err:
        load_cohort(built.root, skip_bad=True)  # a cohort-level problem: skip_bad cannot help
    one_line_error(err, "Clinical Metadata FDG PET_CT Lesions.csv", f"lacks column(s) {drop}")


def test_unparseable_age_names_row_and_subject(tmp_path):
    built = write_nnunet(tmp_path / "nn")
    csv = built.root / "fdg_metadata.csv"
    meta = pd.read_csv(csv)
    meta.loc[meta["Subject ID"] == "PETCT_1b2c3d4e5f", "age"] = "seventy"
    meta.to_csv(csv, index=False)
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    line = int(np.flatnonzero((meta["Subject ID"] == "PETCT_1b2c3d4e5f") & (meta["Modality"] == "PT"))[0]) + 2
    one_line_error(err, "fdg_metadata.csv", f"row {line}", "PETCT_1b2c3d4e5f", "seventy")
    cohort = load_cohort(built.root, skip_bad=True)
    assert len(cohort) == 2 and cohort.problems[0][0].startswith("fdg_1b2c3d4e5f")


def test_cohort_csv_missing_column_and_bad_values(tmp_path):
    built = write_ours(tmp_path / "o")
    frame = pd.read_csv(built.root / "cohort.csv")
    frame.drop(columns=["sex"]).to_csv(built.root / "cohort.csv", index=False)
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    one_line_error(err, "cohort.csv", "lacks column(s) sex")
    frame["age"] = frame["age"].astype(object)
    frame.loc[1, "age"] = "old"
    frame.loc[2, "sex"] = "X"
    frame.to_csv(built.root / "cohort.csv", index=False)
    cohort = load_cohort(built.root, skip_bad=True)
    assert [c.case_id for c in cohort] == ["case-00"]
    assert [p[0] for p in cohort.problems] == ["case-01", "case-02"]
    assert "row 3 (case case-01)" in cohort.problems[0][1] and "'old'" in cohort.problems[0][1]
    assert "unknown sex 'X'" in cohort.problems[1][1]


def test_duplicate_case_ids(tmp_path):
    built = write_ours(tmp_path / "o")
    frame = pd.read_csv(built.root / "cohort.csv")
    frame.loc[2, "case_id"] = "case-00"
    frame.to_csv(built.root / "cohort.csv", index=False)
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    one_line_error(err, "cohort.csv", "duplicate case id 'case-00'", "rows 2 and 4")
    cohort = load_cohort(built.root, skip_bad=True)
    assert [c.case_id for c in cohort] == ["case-00", "case-01"] and len(cohort.problems) == 1


def _rewrite_ct(built, case_id, array, affine):
    write_volume(array, affine, built.root / built.cases[case_id]["paths"]["ct"])


def test_ct_on_another_grid_is_an_error_or_resampled(tmp_path):
    built = write_ours(tmp_path / "o")
    pet_affine = fixture_affine()
    # CT at half the voxel size, sharing voxel (0,0,0)'s centre: PET voxel centres land on CT voxel centres
    fine = np.random.default_rng(3).normal(40, 100, (16, 16, 20)).astype(np.float32)
    _rewrite_ct(built, "case-01", fine, fixture_affine(spacing=(1.0, 1.0, 1.5)))
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    one_line_error(err, "case-01_ct.nii.gz", "differ in shape", "(16, 16, 20)", "(8, 8, 10)", "--resample-ct")
    cohort = load_cohort(built.root, resample_ct=True)
    ct, affine = cohort["case-01"].read_ct()
    np.testing.assert_allclose(affine, pet_affine)
    np.testing.assert_allclose(ct, fine[::2, ::2, ::2], atol=1e-3)
    with pytest.raises(InputError) as err:  # asked per call, overriding the cohort's choice
        cohort["case-01"].read_ct(resample=False)
    one_line_error(err, "case-01_ct.nii.gz", "--resample-ct")


def test_ct_with_shifted_affine_and_outside_fill(tmp_path):
    built = write_ours(tmp_path / "o")
    ct = np.full((8, 8, 10), 50, np.int16)
    _rewrite_ct(built, "case-02", ct, fixture_affine(origin=(-8.0, -8.0, 0.0)))  # 5 slices higher
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    one_line_error(err, "case-02_ct.nii.gz", "differ in affine", "origin (-8.0,-8.0,0.0)")
    got, _ = load_cohort(built.root, resample_ct=True)["case-02"].read_ct()
    assert np.all(got[:, :, 5:] == 50) and np.all(got[:, :, :5] == -1024)
    skipped = load_cohort(built.root, skip_bad=True)
    assert len(skipped) == 2 and skipped.problems[0][0] == "case-02"


def test_truncated_and_corrupt_files_found_at_load_time(tmp_path):
    built = write_ours(tmp_path / "o")
    big = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)  # incompressible
    pet_path = built.root / built.cases["case-01"]["paths"]["pet"]
    write_volume(big, fixture_affine(), pet_path)
    write_volume(np.zeros((40, 40, 40), np.int16), fixture_affine(), built.root / built.cases["case-01"]["paths"]["ct"])
    raw = pet_path.read_bytes()
    pet_path.write_bytes(raw[: len(raw) // 2])  # the header survives, the voxel data do not
    assert nib.load(pet_path).shape == (40, 40, 40)
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    one_line_error(err, "case-01_pet.nii.gz", "truncated")
    (built.root / built.cases["case-02"]["paths"]["ct"]).write_bytes(b"not a nifti at all")
    cohort = load_cohort(built.root, skip_bad=True)
    assert [c.case_id for c in cohort] == ["case-00"]
    assert [p[0] for p in cohort.problems] == ["case-01", "case-02"]
    assert "case-02_ct.nii.gz" in cohort.problems[1][1]


def test_header_check_of_complete_files_reads_no_voxel_data(ours_cohort, monkeypatch):
    from totalgen_eval.cohort import case as case_module

    def no_decompression(path):
        raise AssertionError(f"decompressed {path}: the gzip trailer should have sufficed")

    monkeypatch.setattr(case_module, "decompressed_size", no_decompression)
    assert len(load_cohort(ours_cohort.root)) == 3


def test_complete_multimember_gzip_is_not_called_truncated(tmp_path):
    built = write_ours(tmp_path / "o")
    import gzip
    pet_path = built.root / built.cases["case-00"]["paths"]["pet"]
    raw = gzip.decompress(pet_path.read_bytes())
    pet_path.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]))  # trailer holds a partial size
    cohort = load_cohort(built.root)
    np.testing.assert_array_equal(cohort["case-00"].read_pet()[0], built.cases["case-00"]["pet"])


def test_bq_per_ml_pet_and_nans_found_by_deep_check(tmp_path):
    built = write_ours(tmp_path / "o")
    bq = built.cases["case-00"]["pet"] * 5000.0
    write_volume(bq, fixture_affine(), built.root / built.cases["case-00"]["paths"]["pet"])
    nan_pet = built.cases["case-02"]["pet"].copy()
    nan_pet[0, 0, 0] = np.nan
    write_volume(nan_pet, fixture_affine(), built.root / built.cases["case-02"]["paths"]["pet"])
    cohort = load_cohort(built.root)  # header checks cannot see either
    assert check_cohort(cohort) == []
    with pytest.raises(InputError) as err:
        cohort["case-00"].read_pet()
    text = one_line_error(err, "case-00_pet.nii.gz", "looks like Bq/mL", "> 500); convert to SUV")
    assert f"max {float(bq.max()):.1f}" in text
    problems = check_cohort(cohort, deep=True, workers=2)
    assert [p[0] for p in problems] == ["case-00", "case-02"]
    assert "Bq/mL" in problems[0][1] and "1 voxel is not finite (1 NaN)" in problems[1][1]


def test_isal_absent_falls_back_with_identical_arrays(ours_cohort, monkeypatch):
    if volumes._gzip is None:
        pytest.skip("isal is not installed: nothing to compare the fallback with")
    cohort = load_cohort(ours_cohort.root)
    with_isal = [(c.read_pet()[0], c.read_ct()[0], c.read_labels()[0]) for c in cohort]
    monkeypatch.setattr(volumes, "_gzip", None)
    cohort = load_cohort(ours_cohort.root)
    for case, arrays in zip(cohort, with_isal):
        for got, want in zip((case.read_pet()[0], case.read_ct()[0], case.read_labels()[0]), arrays):
            np.testing.assert_array_equal(got, want)
    assert check_cohort(cohort, deep=True) == []


# ------------------------------------------------------------------------------ writing, inspecting

def test_write_cohort_csv_round_trip_from_tcia(tcia_cohort):
    cohort = load_cohort(tcia_cohort.root)
    path = write_cohort_csv(cohort.root, cohort.to_frame())
    text = path.read_text()
    assert str(tcia_cohort.root) not in text  # paths are relative
    again = load_cohort(cohort.root)  # cohort.csv now wins
    assert again.layout == "ours"
    pd.testing.assert_frame_equal(again.to_frame(), cohort.to_frame(), check_dtype=False)
    for case in again:
        assert_case_arrays(case, tcia_cohort.cases[case.case_id])
    assert not [p for p in cohort.root.iterdir() if p.name.startswith(".cohort.csv")]  # written atomically


def test_summary_and_phantom_flag(ours_cohort):
    cohort = load_cohort(ours_cohort.root)
    facts = summarize(cohort)
    ages = [c["age"] for c in ours_cohort.cases.values()]
    assert facts["n_cases"] == 3 and facts["layout"] == "ours" and facts["phantom"] is False
    assert facts["age"]["mean"] == pytest.approx(np.mean(ages)) and facts["age"]["sd"] == pytest.approx(np.std(ages, ddof=1))
    assert facts["sex"] == {"M": 2, "F": 1, "missing": 0} and facts["with_labels"] == 3
    grids = inspect_frame(cohort)
    assert list(grids["pet_shape"]) == ["8x8x10"] * 3 and grids["voxel_ml"][0] == pytest.approx(0.012)
    (ours_cohort.root / "phantom.json").write_text("{}")
    assert load_cohort(ours_cohort.root).is_phantom


def test_source_column_marks_phantoms(tmp_path):
    assert load_cohort(write_ours(tmp_path / "p", extra={"source": "phantom"}).root).is_phantom


def test_phantom_cohorts_load_in_both_layouts(tmp_path):
    from totalgen_eval import phantom

    config = phantom.PhantomConfig(voxel_mm=16.0)
    ours = load_cohort(phantom.make_cohort(tmp_path / "ours", n=3, seed=1, config=config, layout="ours",
                                           progress=False))
    tcia = load_cohort(phantom.make_cohort(tmp_path / "tcia", n=3, seed=1, config=config, layout="tcia",
                                           progress=False))
    assert ours.is_phantom and tcia.is_phantom and len(ours) == len(tcia) == 3
    a = ours.to_frame().sort_values("age").reset_index(drop=True)
    b = tcia.to_frame().sort_values("age").reset_index(drop=True)
    assert list(a["sex"]) == list(b["sex"])
    assert np.all(b["age"] == np.round(b["age"]))  # DICOM ages ("057Y") are whole years
    assert np.all(np.abs(a["age"] - b["age"]) < 1.0)
    for cohort in (ours, tcia):  # the phantom's truth is keyed by the case ids the reader gives
        assert set(pd.read_csv(cohort.root / "truth.csv")["case_id"]) == {c.case_id for c in cohort}
    for case in list(ours)[:1] + list(tcia)[:1]:
        pet, _ = case.read_pet()
        labels, _ = case.read_labels()
        assert pet.shape == labels.shape == case.grid().shape


def test_case_names_matched_by_subject_ids_of_other_shapes(tmp_path):
    from totalgen_eval.cohort.autopet import StudyIndex, read_metadata
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"Subject ID": ["ABC-12", "ABC-12", "ABC-123"], "Study Date": ["8/12/2005", "1/2/2007", "8/12/2005"],
                  "age": ["050Y", "052Y", "060Y"], "sex": ["F", "F", "M"]}).to_csv(csv, index=False)
    index = StudyIndex(read_metadata(csv), csv)
    assert index.study_of_case_name("ABC-12_2007-01-02") == ("ABC-12", None, "2007-01-02")
    assert index.study_of_case_name("case_ABC-123") == ("ABC-123", None, "2005-08-12")
    with pytest.raises(InputError) as err:  # two studies, no date to choose
        index.study_of_case_name("ABC-12")
    one_line_error(err, "meta.csv", "2 studies")


# ------------------------------------------------------------------------------------------ header-check cache

def _count_checks(monkeypatch) -> list[str]:
    """The ids of the cases whose headers are checked from here on (cohort.checks calls case_problems)."""
    from totalgen_eval.cohort import checks

    seen, real = [], checks.case_problems
    monkeypatch.setattr(checks, "case_problems", lambda case: seen.append(case.case_id) or real(case))
    return seen


def test_passed_header_checks_are_remembered_by_file_identity(ours_cohort, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "header_checks.json"
    first = load_cohort(ours_cohort.root, check_cache=cache)
    assert cache.is_file()
    seen = _count_checks(monkeypatch)
    again = load_cohort(ours_cohort.root, check_cache=cache)
    assert seen == [] and [c.case_id for c in again] == [c.case_id for c in first] == ["case-00", "case-01", "case-02"]
    assert load_cohort(ours_cohort.root).cases == again.cases  # what an unremembered load finds


def test_a_changed_size_or_mtime_is_checked_again(ours_cohort, tmp_path, monkeypatch):
    import os

    cache = tmp_path / "header_checks.json"
    load_cohort(ours_cohort.root, check_cache=cache)
    seen = _count_checks(monkeypatch)
    ct = ours_cohort.root / ours_cohort.cases["case-02"]["paths"]["ct"]
    st = ct.stat()
    os.utime(ct, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, a new mtime
    assert len(load_cohort(ours_cohort.root, check_cache=cache)) == 3 and seen == ["case-02"]
    pet = ours_cohort.root / ours_cohort.cases["case-01"]["paths"]["pet"]
    pst, raw = pet.stat(), pet.read_bytes()
    pet.write_bytes(raw[: len(raw) - 40])  # cut short: a new size ...
    os.utime(pet, ns=(pst.st_atime_ns, pst.st_mtime_ns))  # ... under the old mtime
    with pytest.raises(InputError) as err:
        load_cohort(ours_cohort.root, check_cache=cache)
    one_line_error(err, "case-01_pet.nii.gz", "truncated")
    assert seen == ["case-02", "case-01"]


def test_a_rewritten_file_with_size_and_mtime_restored_is_checked_again(ours_cohort, tmp_path, monkeypatch):
    import os

    cache = tmp_path / "header_checks.json"
    load_cohort(ours_cohort.root, check_cache=cache)
    seen = _count_checks(monkeypatch)
    pet = ours_cohort.root / ours_cohort.cases["case-00"]["paths"]["pet"]
    st, raw = pet.stat(), pet.read_bytes()
    pet.write_bytes(raw[:100] + bytes(len(raw) - 100))  # same size, the data zeroed
    os.utime(pet, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime: only ctime tells
    cohort = load_cohort(ours_cohort.root, check_cache=cache, skip_bad=True)
    assert "case-00" in seen and [p[0] for p in cohort.problems] == ["case-00"]


def test_failed_cases_are_not_remembered(ours_cohort, tmp_path, monkeypatch):
    cache = tmp_path / "header_checks.json"
    (ours_cohort.root / ours_cohort.cases["case-01"]["paths"]["ct"]).write_bytes(b"not a nifti at all")
    first = load_cohort(ours_cohort.root, skip_bad=True, check_cache=cache)
    seen = _count_checks(monkeypatch)
    again = load_cohort(ours_cohort.root, skip_bad=True, check_cache=cache)
    assert seen == ["case-01"] and again.problems == first.problems and len(again) == 2


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_damaged_check_cache_is_not_trusted_and_is_rewritten(ours_cohort, tmp_path, monkeypatch, damage):
    from totalgen_eval.provenance import read_checked_json

    cache = tmp_path / "header_checks.json"
    load_cohort(ours_cohort.root, check_cache=cache)
    whole = read_checked_json(cache)
    raw = cache.read_bytes()
    cache.write_bytes(raw[: len(raw) // 2] if damage == "cut" else b"\x00\xff garbage")
    seen = _count_checks(monkeypatch)
    with pytest.warns(RuntimeWarning, match="unusable cache file"):
        load_cohort(ours_cohort.root, check_cache=cache)
    assert seen == ["case-00", "case-01", "case-02"] and read_checked_json(cache) == whole


def test_an_interrupted_check_cache_write_keeps_the_old_file(ours_cohort, tmp_path, monkeypatch):
    import os

    from totalgen_eval import provenance as cache_module
    from totalgen_eval.provenance import read_checked_json

    cache = tmp_path / "cache" / "header_checks.json"
    load_cohort(ours_cohort.root, check_cache=cache)
    before = read_checked_json(cache)
    ct = ours_cohort.root / ours_cohort.cases["case-02"]["paths"]["ct"]
    os.utime(ct, ns=(ct.stat().st_atime_ns, ct.stat().st_mtime_ns + 10**9))  # a new key to write

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        load_cohort(ours_cohort.root, check_cache=cache)
    monkeypatch.undo()
    assert read_checked_json(cache) == before and [p.name for p in cache.parent.iterdir()] == ["header_checks.json"]
    seen = _count_checks(monkeypatch)
    assert len(load_cohort(ours_cohort.root, check_cache=cache)) == 3 and seen == ["case-02"]

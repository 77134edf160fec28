"""Plausibility checks: each on a made-up case (small arrays written with nibabel), each one line naming the
file and what is wrong; a plausible case passes every check."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from totalgen_eval import metrics
from totalgen_eval.cohort import check_cohort, load_cohort
from totalgen_eval.cohort import plausibility as pl
from totalgen_eval.errors import InputError
from totalgen_eval.volumes import Grid, write_volume

SHAPE = (12, 10, 14)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def made_up_arrays() -> dict[str, np.ndarray]:
    """A plausible FDG PET/CT: air around a body box (40 HU, SUV 0.8), a brain (SUV 8) and a liver (SUV 2)."""
    ct = np.full(SHAPE, -1000, np.int16)
    pet = np.zeros(SHAPE, np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    body = (slice(2, 10), slice(2, 8), slice(1, 13))
    ct[body], pet[body] = 40, 0.8
    labels[3:6, 3:7, 9:12], pet[3:6, 3:7, 9:12] = 90, 8.0   # brain
    labels[5:9, 3:7, 3:6], pet[5:9, 3:7, 3:6] = 5, 2.0      # liver
    return {"ct": ct, "pet": pet, "labels": labels}


def write_case(root, *, pet=None, ct=None, labels=True, row: dict | None = None, n: int = 1) -> "Path":
    """A cohort.csv folder of ``n`` copies of the made-up case, with the given PET/CT (arrays, written as
    they are: their dtype is the file's) and extra cohort.csv values."""
    arrays = made_up_arrays()
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        files = {}
        for role, array in (("pet", pet if pet is not None else arrays["pet"]),
                            ("ct", ct if ct is not None else arrays["ct"]),
                            ("labels", arrays["labels"] if labels else None)):
            if array is None:
                continue
            path = root / f"c{i}_{role}.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), path)
            files[role] = path.name
        rows.append({"case_id": f"c{i}", "age": 50, "sex": "F", "height_m": 1.65, "weight_kg": 60.0, **files,
                     **(row or {})})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    return root


def one_line(text: str) -> str:
    assert "\n" not in text and "Traceback" not in text
    return text


def deep_problems(root) -> list[str]:
    return [one_line(p) for _, p in check_cohort(load_cohort(root), deep=True)]


def test_a_plausible_case_passes_every_check(tmp_path):
    root = write_case(tmp_path / "ok")
    assert deep_problems(root) == []
    table = metrics.organ_metrics(load_cohort(root), organs=["brain", "liver"], progress=False)
    assert list(table["suv_mean"]) == pytest.approx([8.0, 2.0])


def test_nan_and_inf_voxels_counted(tmp_path):
    pet = made_up_arrays()["pet"]
    pet[0, 0, :3] = np.nan
    pet[0, 1, 0] = np.inf
    pet[0, 1, 1:3] = -np.inf
    root = write_case(tmp_path / "inf", pet=pet)
    problems = deep_problems(root)
    assert any("c0_pet.nii.gz: 6 voxels are not finite (3 NaN, 1 +inf, 2 -inf)" in p for p in problems), problems
    with pytest.raises(InputError, match=r"c0_pet.nii.gz: 3 voxels are not finite \(1 \+inf, 2 -inf\)"):
        load_cohort(root)[0].read_pet()
    only_nan = made_up_arrays()["pet"]
    only_nan[0, 0, :2] = np.nan
    root = write_case(tmp_path / "nan", pet=only_nan)
    assert load_cohort(root)[0].read_pet()[0].shape == SHAPE  # NaN alone is tolerated by the metrics...
    assert any("2 voxels are not finite (2 NaN)" in p for p in deep_problems(root))  # ...and reported


def test_all_zero_pet(tmp_path):
    root = write_case(tmp_path / "zero", pet=np.zeros(SHAPE, np.float32))
    problems = deep_problems(root)
    assert problems == [f"{root / 'c0_pet.nii.gz'}: PET is all zero: no uptake to measure"]
    with pytest.raises(InputError, match="all zero"):
        metrics.organ_metrics(load_cohort(root), progress=False)


def test_negative_pet_beyond_noise_but_not_noise(tmp_path):
    noisy = made_up_arrays()["pet"]
    noisy[0, :, :] = -0.2  # background noise around zero: accepted
    assert deep_problems(write_case(tmp_path / "noise", pet=noisy)) == []
    flipped = -made_up_arrays()["pet"]
    problems = deep_problems(write_case(tmp_path / "neg", pet=flipped))
    assert len(problems) == 1 and "negative PET beyond noise" in problems[0] and "minimum -8" in problems[0]


@pytest.mark.parametrize("labels", [True, False])
def test_pet_30x_too_high_refused(tmp_path, labels):
    """Brain SUVmean 240 and liver 60 (labels), or a body median of 24 (from the CT, without labels)."""
    pet = made_up_arrays()["pet"] * 30
    root = write_case(tmp_path / "x30", pet=pet, labels=labels)
    problems = deep_problems(root)
    assert problems and all("PET uptake far outside FDG ranges" in p for p in problems), problems
    assert ("brain SUVmean 240" in problems[0] and "liver SUVmean 60" in problems[1]) if labels else (
        len(problems) == 1 and "median SUV over the body (CT > -300 HU) is 24" in problems[0])
    if labels:
        with pytest.raises(InputError, match="brain SUVmean 240"):
            metrics.organ_metrics(load_cohort(root), progress=False)
    else:
        ok = write_case(tmp_path / "ok", labels=False)
        assert pl.body_uptake_problem(load_cohort(ok)[0].read_pet()[0], made_up_arrays()["ct"]) is None


def test_ct_stored_without_its_offset(tmp_path):
    ct = made_up_arrays()["ct"].astype(np.int32) + 1024  # air at 24, soft tissue at 1064
    root = write_case(tmp_path / "offset", ct=ct)
    problems = deep_problems(root)
    assert len(problems) == 1 and problems[0].startswith(f"{root / 'c0_ct.nii.gz'}: CT not in HU")
    assert "lie at 24 or above" in problems[0] and "-1024 offset" in problems[0]
    with pytest.raises(InputError, match="CT not in HU"):
        metrics.organ_metrics(load_cohort(root), progress=False)


@pytest.mark.parametrize("column,value,expected", [
    ("age", -5, "implausible age -5: expected 0-120 years"),
    ("age", 300, "implausible age 300: expected 0-120 years"),
    ("height_m", 175, "implausible height_m 175: expected 0.5-2.5 m (cm? 175 cm is 1.75 m)"),
    ("weight_kg", 0, "implausible weight_kg 0: expected 2-400 kg"),
    ("weight_kg", 500, "implausible weight_kg 500: expected 2-400 kg"),
])
def test_implausible_demographics_in_cohort_csv(tmp_path, column, value, expected):
    root = write_case(tmp_path / "demo", row={column: value})
    with pytest.raises(InputError) as err:
        load_cohort(root)
    assert one_line(str(err.value)) == f"{root / 'cohort.csv'}: row 2 (case c0): {expected}"
    assert load_cohort(root, skip_bad=True).problems[0][1] == str(err.value)


def test_complex_and_boolean_voxel_types_refused(tmp_path):
    pet = made_up_arrays()["pet"].astype(np.complex64)
    root = write_case(tmp_path / "complex", pet=pet)
    with pytest.raises(InputError, match="c0_pet.nii.gz: complex voxel type complex64 refused"):
        load_cohort(root)
    # a 1-bit (NIfTI "binary", datatype 1) CT: nibabel cannot write bool, so the header is patched
    root = write_case(tmp_path / "binary")
    path = root / "c0_ct.nii.gz"
    img = nib.load(path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[70:72] = np.int16(1).tobytes()   # datatype: DT_BINARY
    raw[72:74] = np.int16(1).tobytes()   # bitpix
    path.write_bytes(gzip.compress(bytes(raw)))
    assert img.get_data_dtype() == np.int16
    with pytest.raises(InputError, match="c0_ct.nii.gz: 1-bit .* voxel type refused: a CT image holds HU values"):
        load_cohort(root)
    grid = Grid(SHAPE, AFFINE)
    arrays = made_up_arrays()
    with pytest.raises(InputError, match="PET array of type bool refused"):
        metrics.case_metrics(arrays["pet"] > 1, arrays["ct"], arrays["labels"], grid)
    with pytest.raises(InputError, match="CT array of type complex128 refused"):
        metrics.case_metrics(arrays["pet"], arrays["ct"].astype(complex), arrays["labels"], grid)


def test_autopet_rows_disagreeing_on_sex_or_age(tmp_path):
    from conftest import TCIA_STUDIES, write_tcia

    built = write_tcia(tmp_path / "tcia")
    meta = tmp_path / "tcia" / "Clinical Metadata FDG PET_CT Lesions.csv"
    frame = pd.read_csv(meta, dtype=str)
    frame.loc[8, "sex"] = "M"   # the SEG row (line 10) of the third study (a woman) says M
    frame.to_csv(meta, index=False)
    with pytest.raises(InputError) as err:
        load_cohort(built.root)
    text = one_line(str(err.value))
    assert text == (f"{meta}: subject PETCT_{TCIA_STUDIES[2][0]}: the series rows of one study disagree on sex "
                    "('F' in rows 8, 9; 'M' in row 10)")
    frame.loc[8, "sex"] = "F"
    frame.loc[6, "age"] = "072Y"  # CT row of the same study: 72 instead of 71
    frame.to_csv(meta, index=False)
    cohort = load_cohort(built.root, skip_bad=True)
    assert len(cohort) == 2 and "disagree on age ('072Y' in row 8; '071Y' in rows 9, 10)" in cohort.problems[0][1]
    frame.loc[6, "age"] = "71"  # the same age written another way is no disagreement
    frame.to_csv(meta, index=False)
    assert len(load_cohort(built.root)) == 3


def test_implausible_autopet_age(tmp_path):
    from conftest import write_tcia

    built = write_tcia(tmp_path / "tcia")
    meta = tmp_path / "tcia" / "Clinical Metadata FDG PET_CT Lesions.csv"
    frame = pd.read_csv(meta, dtype=str)
    frame.loc[6:8, "age"] = "130Y"
    frame.to_csv(meta, index=False)
    with pytest.raises(InputError, match=r"implausible age 130: expected 0-120 years \(from '130Y'\)"):
        load_cohort(built.root)


def test_inspect_deep_lists_every_problem(tmp_path):
    """`inspect --deep --skip-bad`: one line per problem, naming the file."""
    from typer.testing import CliRunner

    from totalgen_eval.cli import app

    pet = made_up_arrays()["pet"] * 30
    pet[0, 0, 0] = np.inf
    root = write_case(tmp_path / "bad", pet=pet, ct=made_up_arrays()["ct"].astype(np.int32) + 1024)
    res = CliRunner().invoke(app, ["inspect", str(root), "--deep"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for fragment in ("1 voxel is not finite (1 +inf)", "CT not in HU"):
        assert fragment in text, res.output


def test_check_functions_on_arrays():
    assert pl.pet_problems(np.ones((4, 4, 4), np.float32)) == []
    assert pl.ct_problems(np.full((4, 4, 4), -1000.0)) == []
    assert pl.organ_uptake_problems({"liver": 2.0, "brain": float("nan")}) == []
    assert "liver SUVmean 30" in pl.organ_uptake_problems({"liver": 30.0})[0]
    assert pl.dtype_problem(np.dtype(np.uint8), "lesions") is None
    assert pl.dtype_problem(np.dtype(np.complex128), "labels").startswith("complex voxel type")


def test_metrics_skip_bad_leaves_the_implausible_case_out_and_names_it(tmp_path):
    from typer.testing import CliRunner

    from totalgen_eval.cli import app

    root = write_case(tmp_path / "three", n=3)
    arrays = made_up_arrays()
    nib.save(nib.Nifti1Image(arrays["pet"] * 30, AFFINE), root / "c1_pet.nii.gz")  # c1: a PET 30x too high
    out = tmp_path / "m" / "organ_metrics.csv"
    stopped = CliRunner().invoke(app, ["metrics", str(root), "-o", str(out), "--no-progress"])
    assert stopped.exit_code != 0 and "brain SUVmean 240" in " ".join(stopped.output.split())
    res = CliRunner().invoke(app, ["metrics", str(root), "-o", str(out), "--skip-bad", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert sorted(pd.read_csv(out)["case_id"].unique()) == ["c0", "c2"]
    excluded = pd.read_csv(out.parent / "excluded.csv")
    assert list(excluded["case_id"]) == ["c1"] and "PET uptake far outside FDG ranges" in excluded["reason"][0]


# ------------------------------------------------------------------------------------------ cheap paths

def _pet_problems_counted(pet: np.ndarray) -> list[str]:
    """The PET findings from plain counts over the array (no shortcut): the definitions of the module docstring."""
    out, finite = [], pet[np.isfinite(pet)]
    n_nan, n_pos, n_neg = int(np.isnan(pet).sum()), int((pet == np.inf).sum()), int((pet == -np.inf).sum())
    if n_nan or n_pos or n_neg:
        out.append("not finite")
    if finite.size == 0 or not finite.any():
        return out + ["empty"]
    if finite.max() > pl.BQML_MAX_SUV:
        out.append("Bq/mL")
    if (finite < pl.NEGATIVE_SUV).sum() > pl.NEGATIVE_SHARE * np.count_nonzero(finite):
        out.append("negative")
    return out


@pytest.mark.parametrize("seed", range(6))
def test_pet_findings_equal_plain_counts_near_every_edge(seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 12, (20, 20, 25)).astype(np.float32)  # 10 000 voxels: 10 may lie below -0.5 SUV
    cases = {"plausible": base, "zero": np.zeros_like(base), "max at the limit": base.copy(),
             "just above": base.copy(), "noise below": base.copy(), "beyond noise": base.copy(),
             "at -0.5": base.copy(), "nan": base.copy(), "inf": base.copy(), "negative zero only": -np.zeros_like(base)}
    cases["max at the limit"].flat[7] = pl.BQML_MAX_SUV
    cases["just above"].flat[7] = np.nextafter(np.float32(pl.BQML_MAX_SUV), np.float32(1e9))
    cases["noise below"].flat[:10] = -0.6
    cases["beyond noise"].flat[:11] = -0.6
    cases["at -0.5"].flat[:50] = pl.NEGATIVE_SUV
    cases["nan"].flat[3] = np.nan
    cases["inf"].flat[3] = np.inf
    for name, pet in cases.items():
        got = pl.pet_problems(pet)
        expected = _pet_problems_counted(pet)
        assert len(got) == len(expected), (name, got, expected)


@pytest.mark.parametrize("n", [1, 2, 99, 100, 101, 250, 1000, 4321])
def test_ct_air_check_equals_the_percentile_at_every_count_of_air(n):
    rng = np.random.default_rng(n)
    for n_air in sorted({0, 1, 2, 3, n // 100, n // 100 + 1, n // 100 + 2, n // 100 + 3, n // 50, n}):
        if n_air > n:
            continue
        ct = rng.uniform(-400, 300, n)
        ct[rng.permutation(n)[:n_air]] = rng.choice([-1000.0, -500.0], n_air)  # at or below the air limit
        flagged = float(np.percentile(ct, pl.AIR_PERCENTILE)) > pl.AIR_MAX_HU
        assert bool(pl.ct_problems(ct)) == flagged, (n, n_air)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.complex64, np.float64])
def test_header_dtype_reads_what_nibabel_reads(tmp_path, suffix, dtype):
    path = tmp_path / f"v{suffix}"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), dtype), AFFINE), path)
    assert pl.header_dtype(path) == nib.load(path).get_data_dtype() == np.dtype(dtype)
    path2 = tmp_path / f"w{suffix}"
    nib.save(nib.Nifti2Image(np.zeros((3, 4, 5), dtype), AFFINE), path2)
    assert pl.header_dtype(path2) == np.dtype(dtype)


def test_header_dtype_of_a_cut_or_foreign_file_raises_and_the_check_passes_it_on(tmp_path):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + bytes(100)))  # a NIfTI-1 size, then too little header
    with pytest.raises(Exception):
        pl.header_dtype(path)
    pl.check_file_dtype(path, "pet")  # an unreadable header is the header checks' to report
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti at all" * 40)
    with pytest.raises(Exception):
        pl.header_dtype(junk)

"""Phantom cohorts on disk (``phantom/make.py``): our cohort.csv layout and the TCIA layout, determinism,
independence of n and workers, resume, given demographics; the truth written is what the labels hold."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from totalgen_eval.errors import InputError
from totalgen_eval.organs import ORGAN_NAMES
from totalgen_eval.phantom import PhantomConfig, canvas_affine, make_cohort
from totalgen_eval.volumes import read_volume


def _arrays(root, files):
    return [read_volume(root / f, dtype=None)[0] for f in files]


def test_make_cohort_ours_files_determinism_and_independence(tmp_path):
    a = make_cohort(tmp_path / "a", n=3, seed=11, progress=False)
    b = make_cohort(tmp_path / "b", n=4, seed=11, workers=2, progress=False)
    cohort = pd.read_csv(a / "cohort.csv")
    assert list(cohort.columns) == ["case_id", "age", "sex", "height_m", "weight_kg", "ct", "pet", "labels", "source"]
    assert list(cohort.case_id) == ["phantom-0000", "phantom-0001", "phantom-0002"]
    assert (cohort.source == "phantom").all()
    for rec in cohort.to_dict("records"):
        files = [rec["ct"], rec["pet"], rec["labels"]]
        for x, y in zip(_arrays(a, files), _arrays(b, files)):  # case i does not depend on n or workers
            np.testing.assert_array_equal(x, y)
    truth_a, truth_b = pd.read_csv(a / "truth.csv"), pd.read_csv(b / "truth.csv")
    assert list(truth_a.columns[:4]) == ["case_id", "organ", "volume_ml", "suv_mean"]
    assert len(truth_a) == 3 * len(ORGAN_NAMES)
    pd.testing.assert_frame_equal(truth_a, truth_b.iloc[:len(truth_a)])
    ct, aff = read_volume(a / cohort.ct[0], dtype=None)
    assert ct.dtype == np.int16 and ct.shape == (56, 40, 144)
    np.testing.assert_allclose(aff, canvas_affine(PhantomConfig()))
    meta = json.loads((a / "phantom.json").read_text())
    assert meta["seed"] == 11 and meta["parameters"]["config"]["voxel_mm"] == 8.0 and meta["source"] == "phantom"
    # the truth in truth.csv is what the labels hold
    labels = read_volume(a / cohort.labels[1], dtype=None)[0]
    liver_ml = (labels == 5).sum() * 0.512
    t = truth_a[(truth_a.case_id == "phantom-0001") & (truth_a.organ == "liver")].volume_ml.iloc[0]
    assert abs(liver_ml - t) < 0.15 * t


def test_make_cohort_resumes_and_keeps_finished_cases(tmp_path):
    root = make_cohort(tmp_path / "c", n=2, seed=3, progress=False)
    first, second = root / "cases/phantom-0000_pet.nii.gz", root / "cases/phantom-0001_ct.nii.gz"
    stamp, before = first.stat().st_mtime_ns, read_volume(second, dtype=None)[0]
    second.unlink()
    make_cohort(root, n=2, seed=3, progress=False)
    assert first.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(read_volume(second, dtype=None)[0], before)


def test_make_cohort_tcia_layout(tmp_path):
    root = make_cohort(tmp_path / "t", n=3, seed=0, layout="tcia", progress=False)
    meta = pd.read_csv(root / "Clinical Metadata FDG PET_CT Lesions.csv", dtype=str)
    for col in ("Subject ID", "Study UID", "Study Date", "Modality", "File Location", "diagnosis", "age", "sex"):
        assert col in meta.columns
    assert "height_m" not in meta.columns and "weight_kg" not in meta.columns
    assert (meta.groupby("Study UID").Modality.apply(sorted) == pd.Series([["CT", "PT", "SEG"]] * 3,
                                                                        index=sorted(meta["Study UID"].unique()))).all()
    assert meta.age.str.fullmatch(r"\d{3}Y").all() and set(meta.sex) <= {"M", "F"}
    assert meta["Study Date"].str.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}").all()
    studies = sorted(root.glob("PETCT_*/*"))
    assert len(studies) == 3
    for study in studies:
        assert re.fullmatch(r"\d{2}-\d{2}-\d{4}-NA-PET-CT Ganzkoerper  primaer mit KM-\d{5}", study.name)
        assert re.fullmatch(r"PETCT_[0-9a-f]{10}", study.parent.name)
        assert {p.name for p in study.iterdir()} == {"CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz", "organs.nii.gz", "organs.ctbl"}
        rows = meta[meta["Subject ID"] == study.parent.name]
        assert len(rows) == 3 and rows["File Location"].str.contains(study.name, regex=False).all()
    truth = pd.read_csv(root / "truth.csv")
    assert {"height_m", "weight_kg"} <= set(truth.columns) and truth.height_m.notna().all()
    # same seed, other layout: the same subjects
    ours = pd.read_csv(make_cohort(tmp_path / "o", n=3, seed=0, progress=False) / "truth.csv")
    np.testing.assert_allclose(truth.volume_ml, ours.volume_ml)
    from totalgen_eval.cohort import load_cohort

    loaded = load_cohort(root)
    assert loaded.layout == "tcia" and len(loaded) == 3
    assert set(loaded.to_frame().case_id) == set(truth.case_id)


def test_make_cohort_with_given_demographics(tmp_path):
    demo = pd.DataFrame({"age": [30.0, 70.0], "sex": ["F", "M"], "height_m": [1.6, np.nan],
                         "weight_kg": [55.0, 90.0]})
    root = make_cohort(tmp_path / "d", n=None, seed=1, demographics=demo, progress=False)
    cohort = pd.read_csv(root / "cohort.csv")
    assert len(cohort) == 2 and list(cohort.sex) == ["F", "M"] and list(cohort.age) == [30.0, 70.0]
    assert cohort.height_m[0] == 1.6 and 1.5 <= cohort.height_m[1] <= 2.0
    with pytest.raises(InputError):
        make_cohort(tmp_path / "x", n=2, layout="nnunet", progress=False)
    with pytest.raises(InputError):
        make_cohort(tmp_path / "x", demographics=demo.drop(columns="sex"), progress=False)
    with pytest.raises(InputError, match="other parameters"):  # same folder, other seed
        make_cohort(root, n=None, seed=2, demographics=demo, progress=False)
    with pytest.raises(InputError, match="other parameters"):  # same folder, other demographics
        make_cohort(root, n=None, seed=1, demographics=demo.assign(age=[31.0, 70.0]), progress=False)
    dicom = make_cohort(tmp_path / "y", n=None, seed=1, demographics=demo.assign(age=["030Y", "070Y"],
                                                                                     sex=["female", "M"]), progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(dicom / "truth.csv"), pd.read_csv(root / "truth.csv"))

"""`generate` (totalgen_eval.synthesis) with a tiny random-weight cascade, and the training-data glue."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from totalgen_eval.cohort import load_cohort, write_cohort_csv
from totalgen_eval.errors import InputError
from totalgen_eval.synthesis import generate_cohort, parse_range
from totalgen_eval.training_data import TOP_MARGIN_MM, canvas_grid, place_on_canvas
from totalgen_eval.volumes import Grid, write_volume


pytestmark = pytest.mark.usefixtures("one_thread")


def test_generate_writes_a_cohort_with_correct_affines(tmp_path, cascade):
    out = generate_cohort(tmp_path / "synth", n=2, seed=3, cascade=cascade, progress=False)
    table = pd.read_csv(out / "cohort.csv")
    assert list(table.columns[:8]) == ["case_id", "age", "sex", "height_m", "weight_kg", "ct", "pet", "labels"]
    assert {"source", "generator", "seed"} <= set(table.columns)
    assert (table["source"] == "synthetic").all() and (table["seed"] == 3).all()
    assert (table["generator"] == cascade.checkpoint_id).all() and table["sex"].isin(["F", "M"]).all()
    for _, row in table.iterrows():
        ct, pet = nib.load(out / row["ct"]), nib.load(out / row["pet"])
        np.testing.assert_allclose(ct.affine, cascade.affine)
        np.testing.assert_allclose(pet.affine, cascade.affine)
        assert ct.shape == pet.shape == cascade.shape
        assert ct.get_data_dtype() == np.int16 and pet.get_data_dtype() == np.float32
        assert np.asanyarray(pet.dataobj).min() >= 0
        assert int(ct.header["sform_code"]) == 1
    info = json.loads((out / "generate.json").read_text())
    assert info["status"] == "complete" and info["settings"]["seed"] == 3
    assert info["settings"]["checkpoint_id"] == cascade.checkpoint_id and "torch" in info["versions"]
    interval = cascade.lowres_config.schedule.guidance_sigma
    assert info["settings"]["guidance_sigma"] == (None if interval is None else list(interval))
    cohort = load_cohort(out)
    assert len(cohort) == 2 and not cohort.is_phantom
    # the written volumes are those of Cascade.generate for the same seed and case index
    ct0, pet0, _ = cascade.generate(table.iloc[:1][["age", "sex", "height_m", "weight_kg"]], seed=3)[0]
    # (up to float32 rounding: a batch of two and a batch of one round the convolutions differently)
    np.testing.assert_allclose(np.asanyarray(nib.load(out / table["pet"][0]).dataobj), pet0, rtol=1e-5, atol=1e-4)


def test_resume_skips_finished_cases_and_refuses_other_settings(tmp_path, cascade):
    out = generate_cohort(tmp_path / "s", n=3, seed=0, cascade=cascade, progress=False)
    files = sorted((out / "cases").glob("*.nii.gz"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    before = np.asanyarray(nib.load(out / "cases" / "synth-0001_pet.nii.gz").dataobj).copy()
    (out / "cases" / "synth-0001_pet.nii.gz").unlink()
    generate_cohort(out, n=3, seed=0, cascade=cascade, progress=False, batch_size=1)
    for p in files:
        if not p.name.startswith("synth-0001"):  # the incomplete case is redone, the others kept
            assert p.stat().st_mtime_ns == mtimes[p], p.name
    np.testing.assert_allclose(np.asanyarray(nib.load(out / "cases" / "synth-0001_pet.nii.gz").dataobj), before, atol=1e-4)
    assert json.loads((out / "generate.json").read_text())["generated_this_run"] == 1
    with pytest.raises(InputError, match="other settings.*seed"):
        generate_cohort(out, n=3, seed=1, cascade=cascade, progress=False)
    generate_cohort(out, n=2, seed=1, cascade=cascade, progress=False, force=True)
    assert len(pd.read_csv(out / "cohort.csv")) == 2 and len(list((out / "cases").glob("*.nii.gz"))) == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        generate_cohort(foreign, n=1, cascade=cascade, progress=False)


def test_n_2_is_the_first_two_cases_of_n_6(tmp_path, cascade):
    two = generate_cohort(tmp_path / "two", n=2, seed=5, cascade=cascade, progress=False)
    six = generate_cohort(tmp_path / "six", n=6, seed=5, cascade=cascade, progress=False)
    a, b = pd.read_csv(two / "cohort.csv"), pd.read_csv(six / "cohort.csv")
    cols = ["case_id", "age", "sex", "height_m", "weight_kg", "case_index"]
    pd.testing.assert_frame_equal(a[cols], b[cols].iloc[:2])
    assert b["age"].nunique() == 6
    for role in ("ct", "pet"):
        for rel in a[role]:
            np.testing.assert_allclose(np.asanyarray(nib.load(two / rel).dataobj),
                                       np.asanyarray(nib.load(six / rel).dataobj), atol=1.0 if role == "ct" else 1e-3)


def test_constrained_demographics_and_bad_options(tmp_path, cascade):
    out = generate_cohort(tmp_path / "c", n=3, sex="f", age="40-50", weight="60-70", cascade=cascade, progress=False)
    table = pd.read_csv(out / "cohort.csv")
    assert (table["sex"] == "F").all() and table["age"].between(40, 50).all()
    assert table["weight_kg"].between(60, 70).all()
    with pytest.raises(InputError, match="--sex.*unknown sex"):
        generate_cohort(tmp_path / "x", n=1, sex="X", cascade=cascade, progress=False)
    with pytest.raises(InputError, match="--age"):
        generate_cohort(tmp_path / "y", n=1, age="old", cascade=cascade, progress=False)
    assert parse_range("1.6-1.8", "--height") == (1.6, 1.8) and parse_range("75", "--weight") == (75.0, 75.0)
    with pytest.raises(InputError, match="low <= high"):
        parse_range("80-40", "--age")


def test_match_makes_one_twin_per_case_and_fills_missing_height(tmp_path, cascade):
    real = tmp_path / "real"
    (real / "cases").mkdir(parents=True)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    rows = []
    for i, (age, sex, h, w) in enumerate([(45.0, "F", 1.62, 58.0), (63.0, "M", np.nan, 90.0), (95.0, "M", 1.75, 80.0)]):
        write_volume(np.zeros((4, 4, 4), np.int16), affine, real / "cases" / f"r{i}_ct.nii.gz")
        write_volume(np.zeros((4, 4, 4), np.float32), affine, real / "cases" / f"r{i}_pet.nii.gz")
        rows.append({"case_id": f"r{i}", "age": age, "sex": sex, "height_m": h, "weight_kg": w,
                     "ct": f"cases/r{i}_ct.nii.gz", "pet": f"cases/r{i}_pet.nii.gz"})
    write_cohort_csv(real, pd.DataFrame(rows))
    with pytest.warns(UserWarning, match="clamped"):
        out = generate_cohort(tmp_path / "twins", match=real, cascade=cascade, progress=False)
    table = pd.read_csv(out / "cohort.csv")
    assert list(table["twin_of"]) == ["r0", "r1", "r2"]
    assert table.loc[0, "age"] == 45.0 and table.loc[0, "height_m"] == 1.62
    assert np.isfinite(table.loc[1, "height_m"]) and table.loc[1, "weight_kg"] == 90.0
    lo, hi = cascade.population.ranges()["age"]
    assert table.loc[2, "age"] == hi and bool(table.loc[2, "clamped"]) and not bool(table.loc[0, "clamped"])


def test_place_on_canvas_centres_the_body_and_keeps_phantom_grids():
    canvas = canvas_grid(8.0)
    ct = np.full(canvas.shape, -1000.0, np.float32)
    pet = np.zeros(canvas.shape, np.float32)
    same = place_on_canvas(ct, pet, canvas, canvas)
    assert same[0] is not ct and np.array_equal(same[0], ct)
    # a "real" scan on a 4 mm grid elsewhere in space: a box body 160 x 120 x 400 mm
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (100.0, -50.0, 300.0)
    grid = Grid((80, 60, 150), affine)
    ct = np.full(grid.shape, -1000.0, np.float32)
    ct[20:60, 15:45, 40:140] = 40.0  # x 180..336, y 10..126, z 460..856 mm (voxel centres)
    pet = np.where(ct > 0, 2.0, 0.0).astype(np.float32)
    ct_c, pet_c = place_on_canvas(ct, pet, grid, canvas)
    body = np.argwhere(ct_c > -500)
    xyz = body @ canvas.affine[:3, :3].T + canvas.affine[:3, 3]
    assert abs(xyz[:, 0].mean()) < 8 and abs(xyz[:, 1].mean()) < 8
    assert -TOP_MARGIN_MM - 12 <= xyz[:, 2].max() <= -TOP_MARGIN_MM + 4
    assert abs(len(body) * 0.512 - 160 * 120 * 400 / 1000) / (160 * 120 * 400 / 1000) < 0.15  # volume kept
    assert 1.5 < pet_c[ct_c > 0].mean() < 2.1


def test_train_stage_on_a_phantom_cohort_writes_a_resumable_cascade_folder(tmp_path):
    from totalgen_eval import phantom

    cohort = phantom.make_cohort(tmp_path / "ph", n=3, seed=2, progress=False)
    from totalgen_eval.training_data import cohort_arrays, train_stage

    volumes, demo = cohort_arrays(cohort)
    assert volumes.shape == (3, 2, 56, 40, 144) and list(demo["case_id"]) == ["phantom-0000", "phantom-0001", "phantom-0002"]
    ct, _ = load_cohort(cohort)[0].read_ct()
    from generator.intensity import unit_to_ct
    np.testing.assert_allclose(unit_to_ct(volumes[0, 0]).numpy(), ct, atol=0.05)  # phantoms are used as they are
    path = train_stage(cohort, "lowres", tmp_path / "run", steps=2, batch_size=2, progress=False, threads=1)
    assert path.name == "lowres.safetensors" and (tmp_path / "run" / "population.json").is_file()
    info = json.loads((tmp_path / "run" / "train-lowres.json").read_text())
    assert info["settings"]["n_cases"] == 3 and info["final"]["step"] == 2
    train_stage(cohort, "lowres", tmp_path / "run", steps=3, batch_size=2, progress=False, threads=1)
    assert json.loads((tmp_path / "run" / "lowres.json").read_text())["meta"]["step"] == 3
    with pytest.raises(InputError, match="unknown stage"):
        train_stage(cohort, "middle", tmp_path / "run", steps=1, progress=False)

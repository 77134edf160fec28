"""Shared test helpers. Cohort fixtures: small cohorts written to disk in each of the three layouts.

``ours_cohort``, ``tcia_cohort``, ``nnunet_cohort`` each return a ``FixtureCohort``: the folder and, per
case, the demographics and arrays that were written (so readers can be checked against them).
The builders ``write_ours``, ``write_tcia``, ``write_nnunet`` take a folder and are importable too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from totalgen_eval.demographics import age_group
from totalgen_eval.volumes import write_volume

SHAPE = (8, 8, 10)


def fixture_affine(spacing=(2.0, 2.0, 3.0), origin=(-8.0, -8.0, -15.0)) -> np.ndarray:
    """Diagonal RAS+ affine with voxel ``spacing`` (mm) and voxel (0, 0, 0) at ``origin`` (mm)."""
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def fixture_arrays(seed: int, shape=SHAPE) -> dict[str, np.ndarray]:
    """Random but reproducible PET (SUV float32), CT (HU int16) and labels (TotalSegmentator ids uint8)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 1:4, 1:5] = 5    # liver
    labels[5:7, 5:7, 6:9] = 90   # brain
    labels[5:7, 1:3, 1:3] = 1    # spleen
    return {"pet": rng.gamma(2.0, 1.0, shape).astype(np.float32),
            "ct": rng.integers(-1000, 1000, shape).astype(np.int16),
            "labels": labels}


@dataclass
class FixtureCohort:
    root: Path
    cases: dict[str, dict] = field(default_factory=dict)  # case_id -> demographics + arrays + affine


# (subject hex, study folder, study date as in the CSV, age string, sex, diagnosis)
TCIA_STUDIES = [
    ("0af7ffe12a", "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445", "8/12/2005", "057Y", "M", "MELANOMA"),
    ("0af7ffe12a", "03-01-2006-NA-PET-CT Ganzkoerper  primaer mit KM-22331", "3/1/2006", "058Y", "M", "MELANOMA"),
    ("1b2c3d4e5f", "11-23-2001-NA-Unspecified CT ABDOMEN-93772", "11/23/2001", "071Y", "F", "NEGATIVE"),
]


def write_ours(root: Path, n: int = 3, labels: bool = True, extra: dict | None = None) -> FixtureCohort:
    """Our layout: cases/<id>_{ct,pet,labels}.nii.gz and cohort.csv (relative paths)."""
    out = FixtureCohort(Path(root))
    rows = []
    for i in range(n):
        case_id = f"case-{i:02d}"
        arrays = fixture_arrays(i)
        demo = {"age": 30.5 + 10 * i, "sex": "MF"[i % 2], "height_m": 1.6 + 0.05 * i,
                "weight_kg": 60.0 + 7 * i}
        paths = {}
        for role in ("ct", "pet", "labels") if labels else ("ct", "pet"):
            rel = f"cases/{case_id}_{role}.nii.gz"
            write_volume(arrays[role], fixture_affine(), root / rel)
            paths[role] = rel
        rows.append({"case_id": case_id, **demo, **paths, "split": "train" if i else "test",
                     **(extra or {})})
        out.cases[case_id] = {**demo, **arrays, "affine": fixture_affine(), "paths": paths}
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    return out


def tcia_rows(hexid: str, folder: str, date: str, age: str, sex: str, diagnosis: str) -> list[dict]:
    """The three metadata rows (CT, PT, SEG) NBIA lists for one study."""
    rows = []
    for k, (modality, series) in enumerate((("CT", "2.000000-CT IMAGES-1"), ("PT", "3.000000-PET corr.-2"),
                                            ("SEG", "300.000000-Segmentation-3"))):
        rows.append({"Series UID": f"1.2.3.{hexid}.{k}", "Collection": "FDG-PET-CT-Lesions",
                     "Subject ID": f"PETCT_{hexid}", "Study UID": f"1.2.840.{hexid}.{date.replace('/', '')}",
                     "Study Description": folder.split("-NA-")[-1].rsplit("-", 1)[0],
                     "Study Date": date, "Modality": modality, "Manufacturer": "SIEMENS",
                     "File Location": f"./FDG-PET-CT-Lesions/PETCT_{hexid}/{folder}/{series}",
                     "diagnosis": diagnosis, "age": age, "sex": sex})
    return rows


def write_tcia(root: Path, studies=TCIA_STUDIES, metadata_name: str = "Clinical Metadata FDG PET_CT Lesions.csv",
               data_folder: str | None = None, organs: bool = True) -> FixtureCohort:
    """TCIA NIfTI layout: PETCT_<hex>/<study folder>/{CTres,SUV,SEG}.nii.gz (+ organs.nii.gz) and the
    metadata CSV at ``root``; ``data_folder`` puts the subject folders one level down.
    """
    out = FixtureCohort(Path(root))
    data = Path(root) / data_folder if data_folder else Path(root)
    rows = []
    for i, (hexid, folder, date, age, sex, diagnosis) in enumerate(studies):
        arrays = fixture_arrays(100 + i)
        study = data / f"PETCT_{hexid}" / folder
        write_volume(arrays["ct"], fixture_affine(), study / "CTres.nii.gz")
        write_volume(arrays["pet"], fixture_affine(), study / "SUV.nii.gz")
        write_volume((arrays["pet"] > 4).astype(np.uint8), fixture_affine(), study / "SEG.nii.gz")
        if organs:
            write_volume(arrays["labels"], fixture_affine(), study / "organs.nii.gz")
        rows += tcia_rows(hexid, folder, date, age, sex, diagnosis)
        out.cases[f"PETCT_{hexid}_{folder[:10]}"] = {
            "age": float(int(age[:3])), "sex": sex, "height_m": math.nan, "weight_kg": math.nan,
            "diagnosis": diagnosis, **arrays, "affine": fixture_affine(), "study": folder}
    pd.DataFrame(rows).to_csv(Path(root) / metadata_name, index=False)
    return out


def write_nnunet(root: Path, studies=TCIA_STUDIES, naming: str = "autopet3", channel_order: str = "ct,pet"
                 ) -> FixtureCohort:
    """nnU-Net layout: imagesTr/<case>_0000 (CT) and _0001 (SUV), labelsTr/<case>, fdg_metadata.csv.

    ``naming``: "autopet3" fdg_<hex>_<study folder>, "autopet2" PETCT_<hex>_<study folder>, "hex"
    <hex>_<MM-DD-YYYY> (matched by subject id and date).
    """
    out = FixtureCohort(Path(root))
    rows = []
    for i, (hexid, folder, date, age, sex, diagnosis) in enumerate(studies):
        name = {"autopet3": f"fdg_{hexid}_{folder}", "autopet2": f"PETCT_{hexid}_{folder}",
                "hex": f"{hexid}_{folder[:10]}"}[naming]
        arrays = fixture_arrays(200 + i)
        channels = ("ct", "pet") if channel_order == "ct,pet" else ("pet", "ct")
        for k, role in enumerate(channels):
            write_volume(arrays[role], fixture_affine(), Path(root) / "imagesTr" / f"{name}_000{k}.nii.gz")
        write_volume((arrays["pet"] > 4).astype(np.uint8), fixture_affine(), Path(root) / "labelsTr" / f"{name}.nii.gz")
        rows += tcia_rows(hexid, folder, date, age, sex, diagnosis)
        out.cases[name] = {"age": float(int(age[:3])), "sex": sex, "height_m": math.nan, "weight_kg": math.nan,
                           "diagnosis": diagnosis, **arrays, "affine": fixture_affine()}
    pd.DataFrame(rows).to_csv(Path(root) / "fdg_metadata.csv", index=False)
    return out


@pytest.fixture
def ours_cohort(tmp_path) -> FixtureCohort:
    """Three cases in our cohort.csv layout, with labels."""
    return write_ours(tmp_path / "ours")


@pytest.fixture
def tcia_cohort(tmp_path) -> FixtureCohort:
    """Three studies (two of one subject) in the TCIA NIfTI layout, folder names with spaces."""
    return write_tcia(tmp_path / "tcia")


@pytest.fixture
def nnunet_cohort(tmp_path) -> FixtureCohort:
    """Three cases in the autoPET III nnU-Net layout (fdg_<hex>_<study folder>)."""
    return write_nnunet(tmp_path / "nnunet")


def require_bundled_generator() -> None:
    """Skip (saying why) unless the bundled generator weights are installed."""
    from generator.checkpoints import bundled_folder

    try:
        bundled_folder()
    except FileNotFoundError as exc:
        pytest.skip(f"the bundled generator weights are absent: {exc}")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny networks run fastest so, and two oversubscribed threads on a busy
    2-core CI are ~20x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args, env: dict | None = None):
    """``totalgen-eval ARGS`` in this process (typer's CliRunner); paths and numbers are made text."""
    from typer.testing import CliRunner

    from totalgen_eval.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def output_lines(result) -> list[str]:
    """The non-blank lines a command printed."""
    return [line for line in result.output.splitlines() if line.strip()]


def one_error_line(result, status: int = 2) -> str:
    """The single output line of a failed command (asserting there is exactly one and no traceback)."""
    assert result.exit_code == status, result.output
    lines = output_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def bundled_generator_copy(tmp_path: Path) -> Path:
    """A copy of the bundled generator weights folder under ``tmp_path`` (skips when they are absent)."""
    import shutil

    from generator.checkpoints import bundled_folder

    require_bundled_generator()
    folder = tmp_path / "cascade"
    shutil.copytree(bundled_folder(), folder)
    return folder


def fitted_population(n: int = 200, seed: int = 0):
    """A generator ``PopulationModel`` fitted to ``n`` made-up adults (heights and weights rising with sex, falling
    or rising with age as adults' do), reproducible from ``seed``."""
    from generator import PopulationModel

    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    age = rng.uniform(20, 85, n)
    height = np.where(sex == "M", 1.78, 1.65) - 0.001 * (age - 50) + rng.normal(0, 0.06, n)
    weight = 25 * height ** 2 + 0.1 * (age - 50) + rng.normal(0, 8, n)
    return PopulationModel.fit({"age": age, "sex": sex, "height_m": height, "weight_kg": weight})


TOY_SPACING = (2.0, 2.5, 3.0)  # mm, of toy_affine


def toy_affine(spacing=TOY_SPACING, origin=(-20.0, 10.0, -50.0)):
    """Diagonal affine with voxel ``spacing`` (mm) and voxel (0, 0, 0) at ``origin`` (mm)."""
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def toy_volumes(seed=0, shape=(40, 36, 44)):
    """Labels with boxes of organ classes (kidneys and lungs split over two classes, one non-organ class 7),
    integer-valued PET (SUV 0..11) and CT (HU, with air in the outer x layers)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    boxes = {90: (slice(2, 12), slice(3, 15), slice(30, 42)), 10: (slice(15, 22), slice(5, 20), slice(25, 35)),
             12: (slice(22, 30), slice(5, 20), slice(25, 35)), 51: (slice(18, 26), slice(20, 28), slice(20, 26)),
             52: (slice(26, 28), slice(20, 30), slice(12, 26)), 5: (slice(5, 16), slice(10, 22), slice(12, 20)),
             1: (slice(30, 36), slice(10, 18), slice(14, 19)), 2: (slice(8, 12), slice(24, 30), slice(8, 12)),
             3: (slice(28, 32), slice(24, 30), slice(8, 12)), 21: (slice(17, 23), slice(8, 14), slice(0, 4)),
             80: (slice(2, 10), slice(28, 36), slice(2, 6)), 88: (slice(12, 15), slice(26, 30), slice(3, 9)),
             7: (slice(33, 39), slice(2, 8), slice(2, 8))}
    for cid, box in boxes.items():
        labels[box] = cid
    pet = rng.integers(0, 12, size=shape).astype(np.float32)
    ct = rng.integers(-200, 200, size=shape).astype(np.float32)
    ct[[0, -1]] = -1000.0  # air in the first and last x layers, as a CT in HU has
    return pet, ct, labels


@pytest.fixture(scope="module")
def cascade():
    """A tiny cascade with random weights (seed 1) and :func:`fitted_population`: fast, and exercises every step
    of generation without the bundled weights."""
    from generator import random_cascade, tiny_lowres, tiny_sr

    return random_cascade(tiny_lowres(), tiny_sr(), fitted_population(100, seed=0), seed=1)


# result tables made by hand, for the figures and the report
ORGANS4 = ("brain", "liver", "spleen", "kidneys")
BASE = {"brain": (1300.0, 7.5), "liver": (1500.0, 2.1), "spleen": (200.0, 1.8), "kidneys": (320.0, 2.5)}


def make_organ_metrics(n: int = 30, seed: int = 0, organs=ORGANS4, synth_demographics: bool = True,
                       liver_suv_shift: float = 1.0) -> pd.DataFrame:
    """A hand-made organ_metrics table: 2 cohorts x n cases x organs, seeded, with an age and sex effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for cohort in ("real", "synth"):
        for k in range(n):
            age, sex = rng.uniform(25, 90), "MF"[k % 2]
            height, weight = 1.6 + 0.15 * (sex == "M") + rng.normal(0, 0.06), rng.normal(75, 12)
            for o in organs:
                vol, suv = BASE[o]
                vol *= (1.15 if sex == "M" else 1.0) * rng.lognormal(0, 0.1)
                suv *= (1 - 0.004 * (age - 50)) * rng.lognormal(0, 0.08)
                if cohort == "synth" and o == "liver":
                    suv *= liver_suv_shift
                keep = cohort == "real" or synth_demographics
                rows.append(dict(case_id=f"{cohort}-{k:03d}", cohort=cohort, age=age if keep else np.nan,
                                 sex=sex if keep else np.nan, height_m=height if keep else np.nan,
                                 weight_kg=weight if keep else np.nan, organ=o, n_voxels=int(vol / 0.512),
                                 volume_ml=vol, suv_mean=suv, suv_median=suv, suv_std=0.2 * suv, suv_max=2 * suv,
                                 suv_peak=1.5 * suv, hu_mean=40.0, touches_border=False))
    table = pd.DataFrame(rows)
    table.insert(6, "age_group", age_group(table["age"], (60, 80)))
    return table


def concordance_cell(organ, sex, age, dev, n_real=20, n_synth=20, metric="suv_mean", p_value=0.01, equivalent=False,
                     verdict=None):
    """A concordance row with every column of the contract (intervals +-3 points around ``dev``)."""
    family = "descriptive" if age != "all" else ("primary" if metric in ("volume_ml", "suv_mean") else "secondary")
    untested = not np.isfinite(p_value) or family == "descriptive"
    if verdict is None:
        verdict = "not tested" if untested else ("equivalent" if equivalent else "differs" if p_value < 0.05
                                                 else "inconclusive")
    small = n_real < 5 or n_synth < 5
    return dict(organ=organ, metric=metric, sex=sex, age_group=age, family=family, n_real=n_real, n_synth=n_synth,
                n_left_out=0, deviation_pct=dev, deviation_ci_low=np.nan if small else dev - 3,
                deviation_ci_high=np.nan if small else dev + 3, ci_level=0.95,
                equivalence_ci_low=np.nan if small else dev - 2, equivalence_ci_high=np.nan if small else dev + 2,
                p_value=np.nan if untested else p_value, p_adjusted=np.nan if untested else p_value,
                equivalent=None if untested else equivalent, verdict=verdict, n_to_decide=np.nan,
                real_mean=2.0, synth_mean=2.0 * (1 + dev / 100) if dev == dev else np.nan, real_sd=0.3, synth_sd=0.3,
                mean_ratio_pct=dev, wasserstein=0.1, paired_n=0, paired_deviation_pct=np.nan, paired_ci_low=np.nan,
                paired_ci_high=np.nan, paired_p=np.nan, paired_p_adjusted=np.nan)


def make_concordance() -> pd.DataFrame:
    """Hand-made concordance cells: 3 organs x (all, F, M, 60-80, 80+, F 60-80); a NaN cell; an untested cell."""
    devs = {
        "liver": [10.0, 12.5, 7.6, -2.0, 4.9, 20.0],
        "brain": [-1.0, -6.0, 5.0, np.nan, 0.5, -5.2],
        "heart": [0.0, 3.0, -4.9, 6.1, -7.0, 1.0],
    }
    groups = [("all", "all"), ("F", "all"), ("M", "all"), ("all", "60-80"), ("all", "80+"), ("F", "60-80")]
    rows = []
    for organ, values in devs.items():  # rows deliberately not in canonical order
        for (s, a), dev in zip(groups, values):
            untested = organ == "heart" and (s, a) == ("F", "60-80")
            rows.append(concordance_cell(organ, s, a, dev, n_real=3 if untested else 20,
                              p_value=np.nan if untested else 0.01, equivalent=organ == "heart" and s == "all"))
    rows.append(concordance_cell("liver", "all", "all", 99.0, metric="volume_ml"))  # another metric: must not leak in
    return pd.DataFrame(rows)

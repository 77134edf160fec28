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

"""Writing a phantom cohort to disk: our ``cohort.csv`` layout or the TCIA FDG-PET-CT-Lesions layout.

Case i draws everything from ``np.random.SeedSequence([seed, i])`` (spawned into demographics, truth,
rendering and naming streams), so a case never depends on ``n``, ``workers`` or the layout. Runs are
resumable: a case whose image files all exist is not rendered again (files appear atomically).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..demographics import parse_age, parse_sex
from ..errors import InputError, check_number
from ..parallel import map_cases
from ..provenance import stamp, to_jsonable, write_json, write_table
from ..volumes import write_volume
from .lesions import LesionPlan, lesion_plan, lesion_truth
from .population import DEMOGRAPHIC_COLUMNS, draw_subjects, expected, sample_demographics
from .render import PhantomConfig, render_case

LAYOUTS = ("ours", "tcia")
TCIA_COLLECTION = "FDG-PET-CT-Lesions"
TCIA_METADATA_NAME = "Clinical Metadata FDG PET_CT Lesions.csv"
TCIA_STUDY_DESCRIPTION = "PET-CT Ganzkoerper  primaer mit KM"  # two spaces, as in the collection
TCIA_SERIES = (("CT", "2.000000-GK nativ 3.0 B31f", "CTres.nii.gz"), ("PT", "4.000000-PET corr", "SUV.nii.gz"),
               ("SEG", "300.000000-Segmentation", "SEG.nii.gz"))
TCIA_ORGANS_NAME = "organs.nii.gz"
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.4219.6651."


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to render and file case ``index`` (picklable for worker processes)."""

    index: int
    case_id: str
    demographics: dict
    truth: pd.DataFrame
    files: dict[str, str]  # role (ct, pet, labels, seg, lesions) -> path relative to the cohort root
    render_seed: np.random.SeedSequence
    naming: dict
    lesions: LesionPlan | None = None  # None: a cohort without lesions (no lesion masks written)


def case_streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent generators of case ``index``: demographics, truth, render, naming."""
    children = np.random.SeedSequence([seed, index]).spawn(4)
    return dict(zip(("demographics", "truth", "render", "naming"), (np.random.default_rng(c) for c in children)))


def _render_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, index]).spawn(4)[2]


def _tcia_naming(rng: np.random.Generator) -> dict:
    """Subject hex id, study date and series numbers in the collection's style."""
    hexid = "".join(f"{b:02x}" for b in rng.integers(0, 256, 5))
    year, month, day = int(rng.integers(2002, 2019)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    number = int(rng.integers(10000, 99999))
    uid = UID_ROOT + "".join(str(d) for d in rng.integers(0, 10, 30))
    subject = f"PETCT_{hexid}"
    study = f"{month:02d}-{day:02d}-{year:04d}-NA-{TCIA_STUDY_DESCRIPTION}-{number:05d}"
    return {"subject": subject, "study": study, "study_uid": uid, "study_date": f"{month}/{day}/{year}",
            "case_id": f"{subject}_{month:02d}-{day:02d}-{year:04d}",
            "series_numbers": [int(x) for x in rng.integers(10000, 99999, len(TCIA_SERIES))]}


def _case_files(layout: str, case_id: str, naming: dict, lesions: bool = False) -> dict[str, str]:
    if layout == "ours":
        roles = ("ct", "pet", "labels") + (("lesions",) if lesions else ())
        return {role: f"cases/{case_id}_{role}.nii.gz" for role in roles}
    folder = f"{naming['subject']}/{naming['study']}"
    return {"ct": f"{folder}/CTres.nii.gz", "pet": f"{folder}/SUV.nii.gz", "seg": f"{folder}/SEG.nii.gz",
            "labels": f"{folder}/{TCIA_ORGANS_NAME}"}


def _render_and_write(root: str, spec: CaseSpec, config: PhantomConfig) -> int:
    """Render one case and write its files; returns bytes written (0 when all existed)."""
    root_p = Path(root)
    paths = {role: root_p / rel for role, rel in spec.files.items()}
    if all(p.is_file() for p in paths.values()):
        return 0
    case = render_case(spec.demographics, spec.truth, config, np.random.default_rng(spec.render_seed), spec.lesions)
    mask = case.lesions if case.lesions is not None else np.zeros(case.labels.shape, np.uint8)
    arrays = {"ct": case.ct, "pet": case.pet, "labels": case.labels, "seg": mask, "lesions": mask}
    written = 0
    for role, path in paths.items():
        write_volume(arrays[role], case.affine, path)
        written += path.stat().st_size
    if "labels" in paths:
        from ..segment.formats import write_label_table
        write_label_table(paths["labels"])  # <name>.ctbl beside the labels: organ names in 3D Slicer
    return written


def _run(jobs: list[CaseSpec], root: Path, config: PhantomConfig, workers: int, progress: bool) -> int:
    """Render the jobs (in ``workers`` processes when > 1) with an optional progress bar; bytes written."""
    if not jobs:
        return 0
    mapped = map_cases(functools.partial(_render_and_write, str(root), config=config), jobs,
                       ids=[spec.case_id for spec in jobs], workers=workers, progress=progress,
                       description="phantoms")
    return sum(written for _, written in mapped.values)


def _demographics_for(n: int, seed: int, demographics: pd.DataFrame | None) -> pd.DataFrame:
    """Per-case demographics: given ones (missing height/weight filled from the population model),
    or case i's own draw from its demographics stream."""
    draws = pd.concat([sample_demographics(1, case_streams(seed, i)["demographics"]) for i in range(n)],
                      ignore_index=True) if n else pd.DataFrame(columns=DEMOGRAPHIC_COLUMNS)
    if demographics is None:
        return draws
    given = demographics.reset_index(drop=True).copy()
    missing = [c for c in ("age", "sex") if c not in given.columns]
    if missing:
        raise InputError(f"demographics lack column(s) {', '.join(missing)}")
    try:
        given["sex"] = [parse_sex(x) for x in given["sex"]]
        given["age"] = [parse_age(x) for x in given["age"]]
    except ValueError as exc:
        raise InputError(f"demographics: {exc}") from None
    if given["age"].isna().any():
        raise InputError("demographics: missing ages")
    for col in ("height_m", "weight_kg"):
        values = pd.to_numeric(given[col], errors="coerce") if col in given.columns else pd.Series(np.nan, given.index)
        given[col] = values.fillna(draws[col])
    return given[DEMOGRAPHIC_COLUMNS]


def _parameters(config: PhantomConfig, layout: str, demographics: pd.DataFrame | None) -> dict:
    """What fixes the cases of a cohort folder (with the seed); saved in phantom.json."""
    given = None
    if demographics is not None:
        text = demographics.to_csv(index=False).encode()
        given = hashlib.sha256(text).hexdigest()[:16]
    return {"config": to_jsonable(config), "layout": layout, "demographics_sha256": given}


def _check_folder(root: Path, params: dict, seed: int) -> None:
    """A folder that already holds a phantom cohort must have been made with the same parameters."""
    path = root / "phantom.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        same = old.get("seed") == seed and all(old["parameters"].get(k) == v for k, v in params.items())
    except (ValueError, KeyError, AttributeError):
        same = False
    if not same:
        raise InputError("the folder holds a phantom cohort made with other parameters (seed, config, layout "
                         "or demographics); use an empty folder", path)


def _case_spec(i: int, seed: int, demo: pd.DataFrame, layout: str, config: PhantomConfig,
               lesions: float) -> tuple[CaseSpec, list[pd.DataFrame], dict]:
    """Case ``i``'s render spec, its truth rows (organs, then lesions) and its cohort.csv row."""
    streams = case_streams(seed, i)
    d = {k: demo.at[i, k] for k in DEMOGRAPHIC_COLUMNS}
    d = {"age": float(d["age"]), "sex": str(d["sex"]), "height_m": float(d["height_m"]),
         "weight_kg": float(d["weight_kg"])}
    one = pd.DataFrame([d])
    naming = _tcia_naming(streams["naming"])
    case_id = f"phantom-{i:04d}" if layout == "ours" else naming["case_id"]
    one["case_id"] = case_id
    truth = draw_subjects(one, streams["truth"]) if config.subject_variation else expected(one)
    plan = lesion_plan(seed, i, lesions) if lesions else None
    files = _case_files(layout, case_id, naming, plan is not None)
    row = {"case_id": case_id, **d, **{k: files[k] for k in ("ct", "pet", "labels")}}
    truths = [truth]
    if plan is not None:
        row.update(lesions=files.get("lesions", files.get("seg")), diagnosis=plan.diagnosis)
        truths.append(lesion_truth(case_id, plan, config.voxel_mm))
    return CaseSpec(i, case_id, d, truth, files, _render_seed(seed, i), naming, plan), truths, row


def make_cohort(out: str | os.PathLike, n: int | None = 20, seed: int = 0, config: PhantomConfig = PhantomConfig(),
                layout: str = "ours", workers: int = 1, progress: bool = True,
                demographics: pd.DataFrame | None = None, lesions: float = 0.0) -> Path:
    """Write a phantom cohort of ``n`` cases into ``out`` and return ``out``.

    layout "ours": ``cases/<case_id>_{ct,pet,labels}.nii.gz`` and ``cohort.csv`` (case_id, age, sex,
    height_m, weight_kg, ct, pet, labels, source="phantom"); layout "tcia": ``PETCT_<hex>/<study>/``
    {CTres, SUV, SEG (lesions: empty), organs}.nii.gz and the collection's metadata CSV (one row per
    series; no height/weight, as in AutoPET). Both: ``truth.csv`` (case_id, organ, volume_ml, suv_mean:
    each subject's truth; then age, sex, height_m, weight_kg) and ``phantom.json`` (config, seed, n, package versions).
    ``demographics`` (age in years or "057Y", sex M/F, height_m, weight_kg; n = its length) gives
    matched cohorts; missing heights/weights are drawn from the population model. Existing case files
    are kept (resumable); a folder made with another seed/config/layout/demographics is refused
    (InputError), as is bad input. ``lesions`` (0-1; True = 1): the share of cases given 1-3 hot spherical
    lesions (``phantom.lesions``): their masks go to ``cases/<case_id>_lesions.nii.gz`` (every case; the
    ``lesions`` and ``diagnosis`` columns of cohort.csv) or SEG.nii.gz, their truth (volume, SUV, radius,
    host) to truth.csv as rows ``lesion_1``, ``lesion_2`` ...; the organ truth stays lesion-free.
    """
    n = _checked_inputs(n, config, layout, demographics, lesions)
    root = Path(out)
    params = _parameters(config, layout, demographics)
    if lesions:
        params["lesions"] = float(lesions)
    _check_folder(root, params, seed)
    root.mkdir(parents=True, exist_ok=True)
    demo = _demographics_for(n, seed, demographics)
    specs, truths, rows = [], [], []
    for i in range(n):
        spec, truth, row = _case_spec(i, seed, demo, layout, config, float(lesions))
        specs.append(spec)
        truths += truth
        rows.append(row)
    written = _run(specs, root, config, workers, progress)
    _write_tables(root, layout, specs, _cohort_table(rows, bool(lesions)), truths)
    write_json({**stamp(params, seed), "n": n, "source": "phantom",
                "note": "procedural phantoms with known truth, not patient data", "bytes_written_last_run": written},
               root / "phantom.json")
    return root


def _checked_inputs(n: int | None, config: PhantomConfig, layout: str, demographics: pd.DataFrame | None,
                    lesions: float) -> int:
    """The number of cases (the length of ``demographics`` when given), after checking every argument."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    check_number(config.voxel_mm, "voxel_mm", 1.0, 32.0)  # finite, and a canvas that fits in memory
    if demographics is not None:
        n = len(demographics)
    if n is None or n < 0:
        raise InputError("n must be a non-negative number of cases")
    if not 0.0 <= float(lesions) <= 1.0:
        raise InputError(f"lesions={lesions!r}: the share of cases with lesions lies between 0 and 1")
    return n


def _cohort_table(rows: list[dict], lesions: bool) -> pd.DataFrame:
    """cohort.csv's table: one row per case (demographics, file paths, source="phantom")."""
    cohort = pd.DataFrame(rows, columns=["case_id", *DEMOGRAPHIC_COLUMNS, "ct", "pet", "labels"]
                          + (["lesions", "diagnosis"] if lesions else []))
    cohort["source"] = "phantom"
    return cohort


def _write_tables(root: Path, layout: str, specs: list[CaseSpec], cohort: pd.DataFrame,
                  truths: list[pd.DataFrame]) -> None:
    """Write the layout's case table (cohort.csv or the TCIA metadata CSV) and truth.csv (with demographics)."""
    if layout == "ours":
        write_table(cohort, root / "cohort.csv")
    else:
        write_table(tcia_metadata(specs), root / TCIA_METADATA_NAME)
    truth_table = pd.concat(truths, ignore_index=True) if truths else pd.DataFrame(
        columns=["case_id", "organ", "volume_ml", "suv_mean"])
    demo_cols = cohort.set_index("case_id")[DEMOGRAPHIC_COLUMNS]
    write_table(truth_table.join(demo_cols, on="case_id"), root / "truth.csv")


def dicom_age(age: float) -> str:
    """DICOM age string, e.g. 57.4 -> "057Y"."""
    return f"{int(age):03d}Y"


def tcia_metadata(specs: Iterable[CaseSpec]) -> pd.DataFrame:
    """The collection's clinical metadata CSV: one row per series (CT, PT, SEG) in NBIA columns."""
    rows = []
    for spec in specs:
        nm = spec.naming
        for (modality, series, _), number in zip(TCIA_SERIES, nm["series_numbers"]):
            rows.append({
                "Series UID": f"{nm['study_uid']}.{number}", "Collection": TCIA_COLLECTION,
                "3rd Party Analysis": "NO", "Data Description URI": "",
                "Subject ID": nm["subject"], "Study UID": nm["study_uid"],
                "Study Description": TCIA_STUDY_DESCRIPTION, "Study Date": nm["study_date"],
                "Series Description": series.split("-", 1)[1], "Manufacturer": "SIEMENS", "Modality": modality,
                "File Location": f"./{TCIA_COLLECTION}/{nm['subject']}/{nm['study']}/{series}-{number:05d}",
                "diagnosis": spec.lesions.diagnosis if spec.lesions else "NEGATIVE", "age": dicom_age(spec.demographics["age"]), "sex": spec.demographics["sex"],
            })
    return pd.DataFrame(rows)

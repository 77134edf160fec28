"""Cohorts: folders of PET/CT cases in one of three layouts, their demographics, and validation.

Layouts, tried in this order (ARCHITECTURE.md):
``ours``      our ``cohort.csv`` at the root (written by ``generate`` and ``phantoms``);
``tcia``      TCIA FDG-PET-CT-Lesions NIfTI: ``PETCT_<hex>/<study>/{CTres,SUV,...}.nii.gz`` + metadata CSV;
``nnunet``    autoPET II-IV: ``imagesTr/<case>_0000.nii.gz`` (CT), ``_0001`` (SUV) + ``fdg_metadata.csv``.

    cohort = load_cohort("real/")      # Cohort: a sequence of Case
    cohort.to_frame()                   # one row per case
    pet, affine = cohort[0].read_pet()  # SUV float32 (i, j, k)
"""
from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..provenance import read_marker
from .autopet import discover_nnunet, discover_tcia, parse_channel_order, tcia_case_id, tcia_data_root
from .case import BQML_MAX_SUV, Case, case_problems, file_grid
from .checks import checked_cases
from .ours import COHORT_CSV, CORE_COLUMNS, discover_ours, write_cohort_csv

__all__ = ["Case", "Cohort", "load_cohort", "check_cohort", "write_cohort_csv", "summarize",
           "inspect_frame", "tcia_case_id", "LAYOUTS", "BQML_MAX_SUV"]

LAYOUTS = ("ours", "tcia", "nnunet")  # the names Cohort.layout takes, as `phantoms --layout` calls them


@dataclass(frozen=True, eq=False)
class Cohort(Sequence):
    """The usable cases of a cohort folder, in a stable order, and the problems of the others.

    ``problems`` holds (case_id, one-line message naming the file) for cases left out by
    ``load_cohort(..., skip_bad=True)``. Index by position, slice, or case id.
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    problems: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self):
        return iter(self.cases)

    def __getitem__(self, key):
        if isinstance(key, str):
            for case in self.cases:
                if case.case_id == key:
                    return case
            raise KeyError(key)
        if isinstance(key, slice):
            return Cohort(self.root, self.layout, self.cases[key], self.problems)
        return self.cases[key]

    @property
    def name(self) -> str:
        """The cohort folder's name (used to label tables and reports)."""
        return Path(self.root).resolve().name

    @property
    def is_phantom(self) -> bool:
        """True when the cohort holds phantoms: ``phantom.json`` at its root or a case with source "phantom"."""
        return (Path(self.root) / "phantom.json").is_file() or any(
            str(c.extra.get("source", "")).strip().lower() == "phantom" for c in self.cases)

    def with_diagnosis(self, diagnosis: str) -> "Cohort":
        """The cases whose ``diagnosis`` (AutoPET: NEGATIVE, LUNG_CANCER, MELANOMA, LYMPHOMA; the ``diagnosis``
        column of cohort.csv) equals ``diagnosis``, case-insensitively; InputError naming the values found
        when none matches or the cohort has no diagnoses.
        """
        wanted = str(diagnosis).strip().upper()
        found = sorted({str(c.extra.get("diagnosis")).strip().upper() for c in self.cases
                        if c.extra.get("diagnosis") not in (None, "")})
        if not found:
            raise InputError(f"--diagnosis {diagnosis}: the cohort has no diagnosis column", self.root)
        cases = tuple(c for c in self.cases if str(c.extra.get("diagnosis", "")).strip().upper() == wanted)
        if not cases:
            raise InputError(f"--diagnosis {diagnosis}: no case has it (diagnoses found: {', '.join(found)})",
                             self.root)
        return Cohort(self.root, self.layout, cases, self.problems)

    def to_frame(self) -> pd.DataFrame:
        """One row per case: case_id, age (years), sex, height_m, weight_kg, ct, pet, labels (absolute
        paths as text; labels None when absent), ``lesions`` when a case has a lesion mask, then the extra
        columns (diagnosis, split, source ...).
        """
        records = []
        for case in self.cases:
            rec = {"case_id": case.case_id, **case.demographics(), "ct": str(case.ct), "pet": str(case.pet),
                   "labels": None if case.labels is None else str(case.labels)}
            if case.lesions is not None:
                rec["lesions"] = str(case.lesions)
            for key, value in case.extra.items():
                rec.setdefault(key, str(value) if isinstance(value, Path) else value)
            records.append(rec)
        frame = pd.DataFrame.from_records(records)
        for column in CORE_COLUMNS:
            if column not in frame.columns:
                frame[column] = pd.Series(dtype=float if column in ("age", "height_m", "weight_kg") else object)
        extras = [c for c in frame.columns if c not in CORE_COLUMNS]
        return frame[list(CORE_COLUMNS) + extras]


def find_layout(root: Path) -> str:
    """The layout name of a cohort folder; InputError saying what was looked for when none fits."""
    if (root / COHORT_CSV).is_file():
        return "ours"
    if tcia_data_root(root) is not None:
        return "tcia"
    if (root / "imagesTr").is_dir() and any((root / "imagesTr").glob("*_000[01].nii.gz")):
        return "nnunet"
    raise InputError("no cohort found: looked for cohort.csv, PETCT_*/<study>/ folders with a metadata CSV "
                     "(TCIA FDG-PET-CT-Lesions) and imagesTr/<case>_0000.nii.gz (nnU-Net autoPET)", root)


def load_cohort(path: str | Path, skip_bad: bool = False, channel_order: str = "ct,pet",
                resample_ct: bool = False, check_cache: str | Path | None = None) -> Cohort:
    """The cohort in folder ``path`` (or the folder of a ``cohort.csv`` given as ``path``).

    Demographics are read and every case's files are checked from their headers (present, complete,
    CT on the PET grid unless ``resample_ct``). Without ``skip_bad`` the first problem raises
    InputError; with it the bad cases are left out and listed in ``Cohort.problems``.
    ``channel_order`` ("ct,pet" or "pet,ct") says which nnU-Net channel (_0000, _0001) is which.
    ``check_cache``: a JSON file remembering, by file identity, the cases whose header checks passed
    (``cohort.checks``; ``compare`` keeps it under its cache folder): unchanged cases are not checked again.
    """
    parse_channel_order(channel_order)  # a bad option fails whatever the layout
    root = Path(path).expanduser()
    if root.is_file() and root.name == COHORT_CSV:
        root = root.parent
    if not root.exists():
        raise InputError("cohort folder not found", root)
    if not root.is_dir():
        raise InputError("expected a cohort folder (or its cohort.csv)", root)
    refuse_incomplete(root)
    layout = find_layout(root)
    if layout == "ours":
        cases, problems = discover_ours(root, resample_ct=resample_ct)
    elif layout == "tcia":
        cases, problems = discover_tcia(root, tcia_data_root(root), resample_ct=resample_ct)
    else:
        cases, problems = discover_nnunet(root, channel_order=channel_order, resample_ct=resample_ct)
    if not cases and not problems:
        raise InputError(f"the {layout} layout was found but holds no cases", root)
    good, found = checked_cases(cases, None if check_cache is None else Path(check_cache))
    problems.extend(found)
    if problems and not skip_bad:
        raise problems[0][1]
    return Cohort(root, layout, tuple(good), tuple((cid, str(err)) for cid, err in problems))


def refuse_incomplete(root: Path) -> None:
    """InputError when ``root`` holds a `generate` run that has not finished (its generate.json says "running":
    still writing, or interrupted): such a folder is not a cohort until the same command has completed it."""
    info = root / "generate.json"
    if not info.is_file():
        return
    try:
        status = json.loads(info.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        raise InputError("unreadable generate.json: the generate run that made this folder may be incomplete; "
                         "run the same generate command again", root) from None
    if status != "complete":
        marker = read_marker(root) or {}
        argv = marker.get("argv") if marker.get("command") == "generate" else None
        again = "`totalgen-eval " + " ".join(shlex.quote(a) for a in argv[1:]) + "`" if argv else \
            "the same `totalgen-eval generate` command"
        raise InputError(f"incomplete: its generate run is still running or was interrupted (generate.json status "
                         f"{status!r}); resume it with {again}", root)


def check_cohort(cohort: Cohort, deep: bool = False, workers: int = 1) -> list[tuple[str, str]]:
    """(case_id, problem) for the loaded cases, checked again from their headers and, with ``deep``,
    by reading the voxel data (truncation, a PET in Bq/mL, NaNs). The cases left out at load time are
    in ``cohort.problems``, not repeated here. ``workers`` threads read cases in parallel.
    """
    def one(case: Case) -> list[tuple[str, str]]:
        return [(case.case_id, str(err)) for err in case_problems(case, deep=deep)]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = [p for ps in pool.map(one, cohort.cases) for p in ps]
    return found


def summarize(cohort: Cohort) -> dict:
    """Headline facts for ``inspect``: layout, counts, demographics (age in years: mean, sd, range),
    sex counts, how many cases have height, weight, labels, lesion masks, diagnoses, and the problems.
    """
    frame = cohort.to_frame()
    age = pd.to_numeric(frame["age"], errors="coerce")
    out = {
        "name": cohort.name, "root": str(cohort.root), "layout": cohort.layout, "phantom": cohort.is_phantom,
        "n_cases": len(cohort), "n_problems": len(cohort.problems),
        "age": {"mean": _num(age.mean()), "sd": _num(age.std()), "min": _num(age.min()),
                "max": _num(age.max()), "missing": int(age.isna().sum())},
        "sex": {"M": int((frame["sex"] == "M").sum()), "F": int((frame["sex"] == "F").sum()),
                "missing": int(frame["sex"].isna().sum())},
        "with_height": int(pd.to_numeric(frame["height_m"], errors="coerce").notna().sum()),
        "with_weight": int(pd.to_numeric(frame["weight_kg"], errors="coerce").notna().sum()),
        "with_labels": int(frame["labels"].notna().sum()),
        "with_lesions": sum(case.lesions is not None for case in cohort.cases),
        "problems": [list(p) for p in cohort.problems],
    }
    if "diagnosis" in frame.columns:
        out["diagnosis"] = {str(k): int(v) for k, v in frame["diagnosis"].value_counts(dropna=False).items()}
    return out


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 2)


def inspect_frame(cohort: Cohort) -> pd.DataFrame:
    """``to_frame()`` plus the PET grid of each case from its header: shape (i, j, k), spacing_mm."""
    frame = cohort.to_frame()
    grids = [file_grid(case.pet) for case in cohort.cases]
    frame["pet_shape"] = ["x".join(map(str, g.shape)) for g in grids]
    frame["spacing_mm"] = ["x".join(f"{s:.3g}" for s in g.spacing_mm) for g in grids]
    frame["voxel_ml"] = [round(g.voxel_ml, 6) for g in grids]
    return frame

"""Our own layout: ``cohort.csv`` at the folder's root (written by ``generate`` and ``phantoms``).

Columns ``case_id, age, sex, height_m, weight_kg, ct, pet, labels``: age in years (or a DICOM age
string), sex M/F, height in m, weight in kg (both may be empty), paths relative to the folder
(``labels`` optional: a multilabel file or a folder of per-class masks). An optional ``lesions`` column
holds a lesion mask per case (as AutoPET's SEG: non-zero = lesion; ``Case.lesions``). Other columns
(``diagnosis``, ``split``, ``source`` ...) are kept in ``Case.extra``. Implausible demographics (age outside
0-120 years, height outside 0.5-2.5 m, weight outside 2-400 kg) are problems of their row.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..demographics import demographic_problem, parse_age, parse_sex
from ..errors import InputError
from ..provenance import write_table
from .case import Case

COHORT_CSV = "cohort.csv"
CORE_COLUMNS = ("case_id", "age", "sex", "height_m", "weight_kg", "ct", "pet", "labels")
REQUIRED_COLUMNS = ("case_id", "age", "sex", "ct", "pet")
PATH_COLUMNS = ("ct", "pet", "labels", "lesions")  # stored relative to the cohort folder


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def _float(value: object, what: str, where: str, path: Path) -> float:
    text = _text(value)
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: {what} {text!r} is not a number", path) from None


def _extra_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def discover_ours(root: Path, resample_ct: bool = False) -> tuple[list[Case], list[tuple[str, InputError]]]:
    """Cases listed in ``root/cohort.csv`` and per-row problems (bad values, duplicate ids)."""
    path = root / COHORT_CSV
    frame = _read_cohort_csv(path)
    extras = [c for c in frame.columns if c not in CORE_COLUMNS and c != "lesions"]
    cases, problems, seen = [], [], {}
    for i, rec in enumerate(frame.to_dict("records")):
        line, case_id = i + 2, _text(rec["case_id"])
        where = f"row {line} (case {case_id or '?'})"
        try:
            _check_case_id(case_id, line, seen, path)
            seen[case_id] = line
            demographics = _row_demographics(rec, where, path)
            for role in ("ct", "pet"):
                if not _text(rec[role]):
                    raise InputError(f"{where}: empty {role} path", path)
        except InputError as err:
            problems.append((case_id or f"row {line}", err))
            continue
        cases.append(_row_case(rec, case_id, demographics, root, extras, resample_ct))
    return cases, problems


def _read_cohort_csv(path: Path) -> pd.DataFrame:
    """cohort.csv as read (ids, sex and paths as text); InputError when unreadable or a required column lacks."""
    text_columns = {c: str for c in ("case_id", "sex", "ct", "pet", "labels", "lesions")}
    try:
        frame = pd.read_csv(path, dtype=text_columns)
    except Exception as exc:
        raise InputError(f"not a readable CSV ({type(exc).__name__}: {exc})".splitlines()[0], path) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"cohort.csv lacks column(s) {', '.join(missing)} "
                         f"(needs {', '.join(CORE_COLUMNS)}; height_m, weight_kg, labels may be empty)", path)
    return frame


def _check_case_id(case_id: str, line: int, seen: dict[str, int], path: Path) -> None:
    """InputError when the case id of CSV line ``line`` is empty or already ``seen`` (id -> line)."""
    if not case_id:
        raise InputError(f"row {line}: empty case_id", path)
    if case_id in seen:
        raise InputError(f"duplicate case id {case_id!r} (rows {seen[case_id]} and {line})", path)


def _row_demographics(rec: dict, where: str, path: Path) -> tuple[float, str | None, float, float]:
    """(age years, sex M/F or None, height m, weight kg; NaN when empty) of a row; InputError when one is
    unreadable or implausible."""
    try:
        age = parse_age(rec["age"])
        sex = parse_sex(rec["sex"]) if _text(rec["sex"]) else None
    except ValueError as exc:
        raise InputError(f"{where}: {exc}", path) from None
    height = _float(rec.get("height_m"), "height_m", where, path)
    weight = _float(rec.get("weight_kg"), "weight_kg", where, path)
    implausible = demographic_problem(age, height, weight)
    if implausible:
        raise InputError(f"{where}: {implausible}", path)
    return age, sex, height, weight


def _row_case(rec: dict, case_id: str, demographics: tuple[float, str | None, float, float], root: Path,
              extras: list[str], resample_ct: bool) -> Case:
    """The Case of a checked row: paths resolved against ``root``, the ``extras`` columns in ``Case.extra``."""
    labels = _text(rec.get("labels"))
    lesions = _text(rec.get("lesions"))
    extra = {c: _extra_value(rec[c]) for c in extras}
    return Case(case_id, *demographics, root / _text(rec["ct"]), root / _text(rec["pet"]),
                root / labels if labels else None, extra=extra, resample_ct=resample_ct,
                lesions=root / lesions if lesions else None)


def write_cohort_csv(root: str | Path, frame: pd.DataFrame) -> Path:
    """Write ``root/cohort.csv`` from a frame with the core columns (extra columns kept), atomically.

    Path columns (ct, pet, labels, lesions) are stored relative to ``root`` (POSIX separators);
    relative paths in ``frame`` are taken as already relative to ``root``.
    """
    root = Path(root)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"write_cohort_csv: frame lacks column(s) {', '.join(missing)}")
    out = frame.copy()
    for column in ("height_m", "weight_kg", "labels"):
        if column not in out.columns:
            out[column] = math.nan if column != "labels" else None
    base = root.resolve()
    for column in PATH_COLUMNS:
        if column in out.columns:
            out[column] = [relative_path(v, base) for v in out[column]]
    ordered = list(CORE_COLUMNS) + [c for c in out.columns if c not in CORE_COLUMNS]
    return write_table(out[ordered], root / COHORT_CSV)


def relative_path(value: object, base: Path) -> str | None:
    """``value`` as a POSIX path relative to ``base`` (None for empty values)."""
    text = _text(value)
    if not text:
        return None
    path = Path(text)
    if not path.is_absolute():
        return path.as_posix()
    return Path(os.path.relpath(path.resolve(), base)).as_posix()

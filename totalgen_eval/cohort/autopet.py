"""The AutoPET (TCIA FDG-PET-CT-Lesions) layouts: the NIfTI study folders and the nnU-Net ``imagesTr``.

Demographics come from the collection's clinical metadata CSV (one row per series: CT, PT, SEG):
``Subject ID``, ``Study UID``, ``Study Date`` (M/D/YYYY), ``Modality``, ``File Location`` (the series
folder, e.g. ``./FDG-PET-CT-Lesions/PETCT_0af7ffe12a/08-12-2005-NA-PET-CT Ganzkoerper  primaer mit
KM-10445/...``), ``age`` ("057Y"), ``sex`` ("M"/"F"), ``diagnosis``. Height and weight are not in it: NaN.

Rows are matched to a study by the study folder named in ``File Location``, falling back to
``Subject ID`` + ``Study Date``. nnU-Net case names are matched the way the public conversions name
them: autoPET II (nnU-Net Dataset221) ``PETCT_<hex>_<study folder>``, autoPET III/IV
``fdg_<hex>_<study folder>``; failing that, a case whose name contains one subject's id (or its hex
part) takes that subject's only study, or the study whose date appears in the name.
"""
from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..demographics import demographic_problem, parse_age, parse_sex
from ..errors import InputError
from .case import Case

METADATA_NAMES = ("fdg_metadata.csv", "Clinical Metadata FDG PET_CT Lesions.csv")
SUBJECT_PREFIX = "PETCT_"
CT_NAMES = ("CTres.nii.gz", "CT.nii.gz")    # CTres = CT on the PET grid; CT needs resampling
PET_NAMES = ("SUV.nii.gz", "PET.nii.gz")    # PET.nii.gz is Bq/mL: reading it says so
ORGAN_LABELS = ("organs.nii.gz", "organs")  # TotalSegmentator multilabel file or per-class folder
LESION_NAMES = ("SEG.nii.gz",)              # the lesion mask of a study (1 = lesion)
_COLUMNS = {"subject id": "subject_id", "study uid": "study_uid", "study date": "study_date",
            "modality": "modality", "file location": "file_location", "age": "age", "sex": "sex",
            "diagnosis": "diagnosis"}
_DATE_PATTERNS = (
    (re.compile(r"(?<!\d)(\d{1,2})[/-](\d{1,2})[/-](\d{4})(?!\d)"), ("m", "d", "y")),
    (re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"), ("y", "m", "d")),
)


@dataclass(frozen=True)
class Row:
    """One series row of the metadata CSV (``line``: its line number in the file, header = 1)."""

    line: int
    subject_id: str
    study_uid: str
    study_date: str | None   # ISO YYYY-MM-DD
    modality: str
    subject_folder: str | None
    study_folder: str | None
    age: str
    sex: str
    diagnosis: str


def iso_date(text: str) -> str | None:
    """``YYYY-MM-DD`` from a date inside ``text`` (M/D/YYYY, MM-DD-YYYY or YYYY-MM-DD), else None."""
    for pattern, order in _DATE_PATTERNS:
        m = pattern.search(str(text))
        if m:
            part = dict(zip(order, m.groups()))
            return f"{int(part['y']):04d}-{int(part['m']):02d}-{int(part['d']):02d}"
    return None


def tcia_case_id(subject_folder: str, study_folder: str, unique_suffix: bool = False) -> str:
    """The case id of a TCIA study: ``PETCT_0af7ffe12a_08-12-2005`` (subject folder + the study
    folder's leading date). ``unique_suffix`` appends the folder's trailing series number
    (``..._08-12-2005-10445``), used when one subject has two studies on the same day.
    """
    m = re.match(r"\s*(\d{2}-\d{2}-\d{4})", study_folder)
    if not m:
        return subject_folder + "_" + re.sub(r"\s+", "_", study_folder.strip())
    tail = re.search(r"-(\d+)\s*$", study_folder)
    suffix = f"-{tail.group(1)}" if unique_suffix and tail else ""
    if unique_suffix and not tail:
        suffix = "-" + re.sub(r"\W+", "_", study_folder[m.end():]).strip("_")
    return f"{subject_folder}_{m.group(1)}{suffix}"


def find_metadata(*folders: Path) -> Path | None:
    """The first metadata CSV (either of METADATA_NAMES) in ``folders``, then one or two levels below."""
    for pattern in ("{}", "*/{}", "*/*/{}"):
        for folder in folders:
            for name in METADATA_NAMES:
                hits = sorted(folder.glob(pattern.format(glob.escape(name))))
                if hits:
                    return hits[0]
    return None


def read_metadata(path: Path) -> list[Row]:
    """The rows of an AutoPET metadata CSV; InputError if ``age``/``sex`` or a way to match studies
    (``File Location``, or ``Subject ID`` + ``Study Date``) is missing.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"not a readable CSV ({type(exc).__name__}: {exc})".splitlines()[0], path) from None
    frame = frame.rename(columns={c: _COLUMNS.get(c.strip().lower(), c) for c in frame.columns})
    missing = [c for c in ("age", "sex") if c not in frame.columns]
    if missing:
        raise InputError(f"metadata CSV lacks column(s) {', '.join(missing)} "
                         f"(found: {', '.join(map(str, frame.columns))})", path)
    if "file_location" not in frame.columns and not {"subject_id", "study_date"} <= set(frame.columns):
        raise InputError("metadata CSV has neither 'File Location' nor 'Subject ID' + 'Study Date' "
                         "to match rows to studies", path)
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        subject_folder, study_folder = split_location(rec.get("file_location", ""))
        rows.append(Row(line=i + 2, subject_id=rec.get("subject_id", "").strip() or (subject_folder or ""),
                        study_uid=rec.get("study_uid", "").strip(),
                        study_date=iso_date(rec.get("study_date", "")), modality=rec.get("modality", "").strip(),
                        subject_folder=subject_folder, study_folder=study_folder, age=rec["age"],
                        sex=rec["sex"], diagnosis=rec.get("diagnosis", "").strip()))
    return rows


def split_location(location: str) -> tuple[str | None, str | None]:
    """(subject folder, study folder) from an NBIA ``File Location`` such as
    ``./FDG-PET-CT-Lesions/PETCT_0af7ffe12a/08-12-2005-NA-PET-CT .../2.000000-CT-12345``.
    """
    parts = [p for p in re.split(r"[\\/]", str(location)) if p not in ("", ".")]
    for i, part in enumerate(parts[:-1]):
        if part.startswith(SUBJECT_PREFIX):
            return part, parts[i + 1]
    return None, None


class StudyIndex:
    """Metadata rows grouped by study, with the lookups both AutoPET layouts need."""

    def __init__(self, rows: list[Row], path: Path):
        self.path = path
        self.by_folder: dict[tuple[str, str], list[Row]] = {}
        self.by_date: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            if row.subject_folder and row.study_folder:
                self.by_folder.setdefault((row.subject_folder, row.study_folder), []).append(row)
            if row.study_date:
                self.by_date.setdefault((row.subject_id, row.study_date), []).append(row)
        self.by_case_name: dict[str, tuple[str, str]] = {}
        for subject, folder in self.by_folder:
            hexpart = subject[len(SUBJECT_PREFIX):] if subject.startswith(SUBJECT_PREFIX) else subject
            self.by_case_name[f"{subject}_{folder}"] = (subject, folder)
            self.by_case_name[f"fdg_{hexpart}_{folder}"] = (subject, folder)
        # every study once: (subject, study folder or None, ISO date or None)
        self.studies = {(s, f, iso_date(f)) for (s, f) in self.by_folder}
        dated = {(s, d) for (s, _, d) in self.studies}
        self.studies |= {(s, None, d) for (s, d) in self.by_date if (s, d) not in dated}
        # subject id tokens (the id and its part after PETCT_) -> studies, for names that contain them
        self.by_token: dict[str, list[tuple]] = {}
        for study in self.studies:
            self.by_token.setdefault(subject_token(study[0]), []).append(study)
        self.glued = {t: sts for t, sts in self.by_token.items() if _TOKEN_SPLIT.search(t)}  # rare

    def rows_for(self, subject: str, study_folder: str | None, date: str | None) -> list[Row]:
        """Rows of one study: by its folder in File Location, else by Subject ID + Study Date."""
        if study_folder is not None:
            rows = self.by_folder.get((subject, study_folder)) or self.by_folder.get(
                (subject, study_folder.strip()))
            if rows:
                return rows
        return self.by_date.get((subject, date), []) if date else []

    def study_of_case_name(self, name: str) -> tuple[str, str | None, str | None]:
        """(subject, study folder or None, ISO date or None) of an nnU-Net case name; InputError if none
        or several studies fit.
        """
        if name in self.by_case_name:
            subject, folder = self.by_case_name[name]
            return subject, folder, iso_date(folder)
        fits = {st for part in _TOKEN_SPLIT.split(name) for st in self.by_token.get(part, ())}
        fits |= {st for token, sts in self.glued.items() if token_in_name(token, name) for st in sts}
        fits = sorted(fits, key=str)
        date = iso_date(name)
        if len(fits) > 1 and date:
            fits = [st for st in fits if st[2] == date]
        if len(fits) == 1:
            return fits[0]
        what = "no study" if not fits else f"{len(fits)} studies"
        raise InputError(f"case {name!r}: {what} in the metadata match this case name "
                         "(expected PETCT_<id>_<study folder> or fdg_<id>_<study folder>)", self.path)


_TOKEN_SPLIT = re.compile(r"[^0-9A-Za-z]+")


def subject_token(subject: str) -> str:
    """What an nnU-Net case name contains of a subject id: the part after ``PETCT_``, else the id."""
    return subject[len(SUBJECT_PREFIX):] if subject.startswith(SUBJECT_PREFIX) else subject


def token_in_name(token: str, name: str) -> bool:
    """True when ``token`` appears in ``name`` not glued to further letters or digits."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(token)}(?![0-9A-Za-z])", name) is not None


def demographics_of(rows: list[Row], path: Path) -> tuple[float, str | None, dict]:
    """Age (years), sex and extra columns of a study from its rows (the PT row first); InputError for an
    implausible age or for series rows of the study that disagree on sex or age.
    """
    rows = sorted(rows, key=lambda r: (r.modality.upper() not in ("PT", "PET"), r.line))
    row = rows[0]
    where = f"row {row.line} (subject {row.subject_id})"
    try:
        age = parse_age(row.age)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}", path) from None
    implausible = demographic_problem(age=age)
    if implausible:
        raise InputError(f"{where}: {implausible} (from {row.age!r})", path)
    disagreement = rows_disagree(rows)
    if disagreement:
        raise InputError(f"subject {row.subject_id}: {disagreement}", path)
    sex = None
    if row.sex.strip():
        try:
            sex = parse_sex(row.sex)
        except ValueError as exc:
            raise InputError(f"{where}: {exc}", path) from None
    extra = {"subject_id": row.subject_id, "study_uid": row.study_uid, "study_date": row.study_date,
             "diagnosis": row.diagnosis or None}
    return age, sex, extra


def _normalised(value: str, parse) -> object:
    try:
        return parse(value)
    except ValueError:
        return value.strip().upper()


def rows_disagree(rows: list[Row]) -> str | None:
    """How the series rows of one study disagree on sex or age (values compared as parsed; empty values
    ignored), or None."""
    for what, parse in (("sex", parse_sex), ("age", parse_age)):
        values: dict[object, list[Row]] = {}
        for row in rows:
            if getattr(row, what).strip():
                values.setdefault(_normalised(getattr(row, what), parse), []).append(row)
        if len(values) > 1:
            groups = sorted((sorted(r.line for r in rs), getattr(rs[0], what).strip()) for rs in values.values())
            listed = "; ".join(f"{v!r} in row{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls))}"
                               for ls, v in groups)
            return f"the series rows of one study disagree on {what} ({listed})"
    return None


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def tcia_data_root(root: Path) -> Path | None:
    """The folder holding ``PETCT_*`` subject folders: ``root`` or one folder below it."""
    def has_subjects(folder: Path) -> bool:
        return any(p.is_dir() for p in folder.glob(SUBJECT_PREFIX + "*"))

    if has_subjects(root):
        return root
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if has_subjects(sub):
            return sub
    return None


def discover_tcia(root: Path, data_root: Path, resample_ct: bool = False
                  ) -> tuple[list[Case], list[tuple[str, InputError]]]:
    """Cases (one per study) of the TCIA NIfTI layout under ``data_root``, and per-study problems."""
    meta_path = find_metadata(root, data_root)
    if meta_path is None:
        raise InputError(f"TCIA layout found but no metadata CSV ({' or '.join(METADATA_NAMES)}) "
                         "in it or one or two folders below", root)
    index = StudyIndex(read_metadata(meta_path), meta_path)
    studies = [(subj.name, study) for subj in sorted(data_root.glob(SUBJECT_PREFIX + "*")) if subj.is_dir()
               for study in sorted((p for p in subj.iterdir() if p.is_dir()),
                                   key=lambda p: (iso_date(p.name) or "", p.name))]
    ids = [tcia_case_id(s, st.name) for s, st in studies]
    clash = {i for i in ids if ids.count(i) > 1}
    cases, problems = [], []
    for (subject, study), case_id in zip(studies, ids):
        if case_id in clash:
            case_id = tcia_case_id(subject, study.name, unique_suffix=True)
        ct, pet = _first(study, CT_NAMES), _first(study, PET_NAMES)
        if ct is None or pet is None:
            missing = " or ".join(PET_NAMES if pet is None else CT_NAMES)
            problems.append((case_id, InputError(f"study folder lacks {missing}", study)))
            continue
        rows = index.rows_for(subject, study.name, iso_date(study.name))
        if not rows:
            problems.append((case_id, InputError(
                f"no row for study {subject}/{study.name} (matched by File Location, then Subject ID + "
                "Study Date)", meta_path)))
            continue
        try:
            age, sex, extra = demographics_of(rows, meta_path)
        except InputError as err:
            problems.append((case_id, err))
            continue
        extra.update(study=study.name)
        cases.append(Case(case_id, age, sex, math.nan, math.nan, ct, pet, _first(study, ORGAN_LABELS),
                          extra=extra, resample_ct=resample_ct, lesions=_first(study, LESION_NAMES)))
    return cases, problems


def parse_channel_order(spec: str) -> tuple[str, str]:
    """("_0000", "_0001") suffixes of (CT, PET) from ``"ct,pet"`` (autoPET II-IV) or ``"pet,ct"`` (I)."""
    order = [s.strip().lower() for s in str(spec).split(",")]
    if order == ["ct", "pet"]:
        return "_0000", "_0001"
    if order == ["pet", "ct"]:
        return "_0001", "_0000"
    raise InputError(f"channel order {spec!r}: expected 'ct,pet' (autoPET II-IV) or 'pet,ct' (autoPET I)")


def discover_nnunet(root: Path, channel_order: str = "ct,pet", resample_ct: bool = False
                    ) -> tuple[list[Case], list[tuple[str, InputError]]]:
    """Cases of the nnU-Net layout ``root/imagesTr/<case>_000{0,1}.nii.gz`` and per-case problems."""
    ct_suffix, pet_suffix = parse_channel_order(channel_order)
    images = root / "imagesTr"
    meta_path = find_metadata(root)
    if meta_path is None:
        raise InputError(f"nnU-Net layout found but no metadata CSV ({' or '.join(METADATA_NAMES)}) "
                         "beside imagesTr", root)
    index = StudyIndex(read_metadata(meta_path), meta_path)
    names = sorted({p.name[:-12] for p in images.glob("*_000[01].nii.gz")})
    cases, problems = [], []
    for name in names:
        ct, pet = images / f"{name}{ct_suffix}.nii.gz", images / f"{name}{pet_suffix}.nii.gz"
        if not ct.exists() or not pet.exists():
            problems.append((name, InputError("file not found (the other channel exists)",
                                              ct if not ct.exists() else pet)))
            continue
        try:
            subject, folder, date = index.study_of_case_name(name)
            rows = index.rows_for(subject, folder, date)
            age, sex, extra = demographics_of(rows, meta_path)
        except InputError as err:
            problems.append((name, err))
            continue
        lesions = root / "labelsTr" / f"{name}.nii.gz"
        extra.update(study=folder)
        cases.append(Case(name, age, sex, math.nan, math.nan, ct, pet, None, extra=extra,
                          resample_ct=resample_ct, lesions=lesions if lesions.exists() else None))
    return cases, problems

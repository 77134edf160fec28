"""Organ metrics of a cohort: the organ_metrics table (ARCHITECTURE.md), with a per-case cache so an
interrupted run resumes, any scheduler of ``parallel`` (in-process pool, Dask), per-case failure isolation
(``skip_bad``) and an atomic CSV with a JSON sidecar."""
from __future__ import annotations

import dataclasses
import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..cache import cache_file, cache_key, file_identity, read_cached_table
from ..demographics import DEFAULT_AGE_BINS, age_group
from ..errors import InputError, check_number
from ..organs import ORGAN_NAMES
from ..parallel import (EXCLUDED_COLUMNS, EXCLUDED_CSV, Excluded, Mapped, Scheduler, excluded_frame, map_cases,
                        write_excluded)
from ..provenance import stamp, write_json, write_table
from ..volumes import Grid, read_values
from .case import LESION_COLUMNS, LESION_MODES, METRIC_COLUMNS, LabelScan, case_metrics, scan_labels
from .peak import PEAK_RADIUS_MM

if TYPE_CHECKING:
    from ..cohort import Case, Cohort

CASE_COLUMNS: tuple[str, ...] = ("case_id", "cohort", "age", "sex", "height_m", "weight_kg", "age_group")
TABLE_COLUMNS: tuple[str, ...] = CASE_COLUMNS + METRIC_COLUMNS
LESION_TABLE_COLUMNS: tuple[str, ...] = ("case_id", "cohort") + LESION_COLUMNS  # lesions.csv
METRICS_VERSION = "2"  # bump when a definition changes: cached per-case results are then recomputed


@dataclasses.dataclass(frozen=True)
class MetricsJob:
    """What every case of one metrics run shares (picklable: sent to worker processes and Dask workers).

    ``segmenter_settings``: the backend's settings, read once per run; part of every case's cache key.
    """

    segmenter: str = "labels"
    organs: tuple[str, ...] = ORGAN_NAMES
    cache_dir: Path | None = None
    device: str = "cpu"
    resume: bool = True
    segmenter_settings: Any = None
    lesions: str = "exclude"  # "exclude" | "include": lesion voxels in the organ statistics
    lesion_margin_mm: float = 0.0  # with "exclude": also the voxels within this distance of a lesion


def case_key(case: Case, job: MetricsJob) -> str:
    """Key of a case's cached rows: its input files by identity (path, size, mtime, ctime; see cache.py),
    the segmenter and its settings, the organs, the lesion mask and option, and METRICS_VERSION."""
    if job.segmenter == "labels":
        seg: Any = ["labels", file_identity(case.labels)]
    else:
        seg = [job.segmenter, job.segmenter_settings, job.device]
    return cache_key(METRICS_VERSION, file_identity(case.pet), file_identity(case.ct), seg, list(job.organs),
                     file_identity(case.lesions), job.lesions, job.lesion_margin_mm)


def compute_case(case: Case, segmenter: str = "labels", organs: Sequence[str] = ORGAN_NAMES,
                 cache_dir: Path | None = None, device: str = "cpu", lesions: str = "exclude",
                 lesion_margin_mm: float = 0.0) -> pd.DataFrame:
    """The METRIC_COLUMNS + LESION_COLUMNS rows of one cohort case (the per-case lesion figures repeated on
    every row): labels from ``segmenter``, arrays read from disk, the case's lesion mask (if any) excluded
    (with ``lesion_margin_mm`` around it) or included per ``lesions``. The data's plausibility is checked
    first (``cohort.plausibility``: PET when read, CT in HU, organ uptake within FDG ranges).

    With ``cache_dir`` the labels of computing backends are cached under ``cache_dir/labels``.
    """
    (pet, pet_affine), (ct, ct_affine), (labels, labels_affine), lesion_mask, scan = read_case_arrays(
        case, segmenter, cache_dir, device, organs)
    grid = Grid(tuple(pet.shape), pet_affine)
    try:
        rows = case_metrics(pet, ct, labels, grid, organs, labels_grid=Grid(tuple(labels.shape), labels_affine),
                            ct_grid=Grid(tuple(ct.shape), ct_affine), lesion_mask=lesion_mask, lesions=lesions,
                            lesion_margin_mm=lesion_margin_mm, scan=scan)
    except InputError as exc:
        raise InputError(str(exc), f"case {case.case_id}") from None
    check_case_uptake(rows, pet, ct, case.pet)
    summary, rows.attrs = rows.attrs.get("lesions", {}), {}
    return rows.assign(**{c: summary.get(c, np.nan) for c in LESION_COLUMNS})


def read_case_arrays(case: Case, segmenter: str, cache_dir: Path | None, device: str,
                     organs: Sequence[str] = ORGAN_NAMES
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                tuple[np.ndarray, np.ndarray], np.ndarray | None, LabelScan | None]:
    """((PET SUV, affine), (CT HU as stored, affine), (labels, affine), lesion mask or None, the labels'
    ``scan_labels`` for ``organs`` or None) of a case, each checked. PET and CT are read in two threads while
    the labels are read (or segmented) and scanned here: gzip decompression releases the GIL, so the files
    decompress at the same time. A problem is raised for the first bad input in the order PET, CT, labels,
    lesions, as a sequential read would; bad label ids leave the scan None (``case_metrics`` names them)."""
    from ..segment import case_labels

    with ThreadPoolExecutor(2, thread_name_prefix="read-case") as pool:
        pet_job, ct_job = pool.submit(case.read_pet), pool.submit(read_case_ct, case)
        try:
            labels = case_labels(case, segmenter, cache_dir, device=device)
            lesion_mask, failed = case.read_lesions(), None
        except Exception as exc:  # re-raised below, after any PET or CT problem (those come first)
            labels = lesion_mask = None
            failed = exc
        scan = None if labels is None else _scan_or_none(labels[0], organs)
        pet, ct = pet_job.result(), ct_job.result()
    if failed is not None:
        raise failed
    return pet, ct, labels, lesion_mask, scan


def _scan_or_none(labels: np.ndarray, organs: Sequence[str]) -> LabelScan | None:
    """``scan_labels(labels, organs)``, or None when the ids are bad (``case_metrics`` then says so, with the case)."""
    try:
        return scan_labels(labels, organs)
    except InputError:
        return None


def read_case_ct(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A case's CT in HU as stored (int16 stays int16: no cast) and its affine, checked."""
    from ..cohort.plausibility import check_ct, check_file_dtype

    check_file_dtype(case.ct, "ct")
    ct, affine = read_values(case.ct)
    check_ct(ct, case.ct)
    return ct, affine


def check_case_uptake(rows: pd.DataFrame, pet: np.ndarray, ct: np.ndarray, path: Path) -> None:
    """InputError when the PET uptake is far outside FDG ranges: brain/liver/aorta SUVmean from ``rows`` when
    measured, else the median SUV of the body (CT above -300 HU, when CT lies on the PET grid)."""
    from ..cohort.plausibility import body_uptake_problem, organ_uptake_problems

    means = dict(zip(rows["organ"], rows["suv_mean"]))
    problems = organ_uptake_problems(means)
    if not problems and not any(np.isfinite(means.get(o, np.nan)) for o in ("brain", "liver", "aorta")):
        problems = [p for p in [body_uptake_problem(pet, ct)] if p]
    if problems:
        raise InputError(problems[0], path)


def measure_case(job: MetricsJob, case: Case) -> tuple[pd.DataFrame, bool]:
    """(rows, computed?) of one case: read from ``cache_dir/metrics/<case_id>_<key>.csv`` when present and
    ``job.resume`` (a corrupt cache file is recomputed with a warning), else computed and cached."""
    path = None
    if job.cache_dir is not None:
        path = cache_file(Path(job.cache_dir) / "metrics", case.case_id, case_key(case, job), ".csv")
        cached = read_cached_table(path, METRIC_COLUMNS + LESION_COLUMNS, len(job.organs)) if job.resume else None
        if cached is not None:
            return cached, False
    rows = compute_case(case, job.segmenter, job.organs, job.cache_dir, job.device, job.lesions,
                        job.lesion_margin_mm)
    if path is not None:
        write_table(rows, path)
    return rows, True


def organ_metrics(cohort: Cohort | Sequence[Case], segmenter: str | None = "labels", workers: int = 1,
                  organs: Sequence[str] = ORGAN_NAMES, cache_dir: str | Path | None = None,
                  device: str = "cpu", cohort_name: str | None = None,
                  age_bins: Sequence[float] = DEFAULT_AGE_BINS, progress: bool = True,
                  resume: bool = True, skip_bad: bool = False,
                  scheduler: str | Scheduler | None = None, lesions: str = "exclude",
                  lesion_margin_mm: float = 0.0) -> pd.DataFrame:
    """The organ_metrics table of a cohort: one row per case x organ, columns TABLE_COLUMNS (ARCHITECTURE.md).

    Args:
        cohort: a :class:`Cohort`, or a plain sequence of its cases (then named ``cohort_name`` or "cohort").
        segmenter: "labels" | "totalsegmentator" | "model:PATH" | "model:bundled" (see segment); None
            picks :func:`segment.default_segmenter`.
        workers: processes of the in-process pool (the default ``scheduler``); ``scheduler``: any spec of
            :func:`parallel.make_scheduler` ("local:4", "tcp://host:8786") or an entered scheduler.
        cache_dir: every finished case is written to ``cache_dir/metrics/<case_id>_<key>.csv`` (atomically)
            and a re-run with ``resume`` reads it back; labels from computing backends go to
            ``cache_dir/labels``.
        skip_bad: a case that fails (a corrupt file, bad data) or repeats an earlier case id is left out;
            without it the first such case stops the run with one line.
        lesions: "exclude" (default): lesion voxels of a case's lesion mask are left out of the SUV and HU
            statistics; "include" keeps them. ``lesion_ml`` is the lesion volume inside each organ.
        lesion_margin_mm: with "exclude", also leave out the voxels within this distance (mm) of a lesion,
            where the PET blur spills lesion uptake (0: the lesion voxels only).

    ``frame.attrs``: "n_computed" (cases computed, not read from the cache), "excluded" (records case_id,
    cohort, reason: the cohort's cases left out at load time, then those left out here; :func:`excluded_table`),
    "lesions" (case_id, cohort, mtv_ml, tlg, lesion_count of cases with a lesion mask; :func:`lesion_table`).
    """
    job = _metrics_job(cohort, segmenter, tuple(organs), device, lesions, lesion_margin_mm)
    name = cohort_name if cohort_name is not None else getattr(cohort, "name", None) or "cohort"
    with _run_cache(cache_dir, job.segmenter, resume) as (cache, resume_here):
        measure = functools.partial(measure_case, dataclasses.replace(job, cache_dir=cache, resume=resume_here))
        mapped = map_cases(measure, list(cohort), scheduler=scheduler, workers=workers, skip_bad=skip_bad,
                           progress=progress, description=f"metrics ({job.segmenter})")
    results = {case.case_id: rows for case, (rows, _) in mapped.values}
    frame = assemble_table([case for case, _ in mapped.values], results, name, age_bins)
    left_out = [Excluded(cid, reason) for cid, reason in getattr(cohort, "problems", ())] + mapped.excluded
    return _with_attrs(frame, mapped, left_out, name)


def _metrics_job(cohort: Cohort | Sequence[Case], segmenter: str | None, organs: tuple[str, ...], device: str,
                 lesions: str, lesion_margin_mm: float) -> MetricsJob:
    """The job of a run (no cache yet): the lesion options checked, the segmenter picked (None: the cohort's
    default) and its settings read once."""
    if lesions not in LESION_MODES:
        raise InputError(f"{lesions!r}: choose {' or '.join(LESION_MODES)}", "--lesions")
    lesion_margin_mm = check_number(lesion_margin_mm, "--lesion-margin", 0.0, 1000.0)
    from ..segment import default_segmenter, make_segmenter

    segmenter = (segmenter or default_segmenter(cohort)).strip()
    settings = None if segmenter == "labels" else make_segmenter(segmenter, device=device).settings()
    return MetricsJob(segmenter, organs, None, device, True, settings, lesions, lesion_margin_mm)


@contextmanager
def _run_cache(cache_dir: str | Path | None, segmenter: str, resume: bool) -> Iterator[tuple[Path | None, bool]]:
    """(cache folder, resume?) of a run: ``cache_dir`` made absolute (workers on other nodes), or for a
    computing segmenter without one a temporary folder for its labels, removed at the end (nothing resumed)."""
    if cache_dir is not None or segmenter == "labels":
        yield (Path(cache_dir).resolve() if cache_dir is not None else None), resume
        return
    with tempfile.TemporaryDirectory(prefix="totalgen-labels-") as tmp:
        yield Path(tmp), False


def _with_attrs(frame: pd.DataFrame, mapped: Mapped, left_out: list[Excluded], name: str) -> pd.DataFrame:
    """``frame`` with the run's n_computed, excluded and lesions records in ``attrs`` (see organ_metrics)."""
    rows = {case.case_id: case_rows for case, (case_rows, _) in mapped.values}
    frame.attrs["n_computed"] = sum(computed for _, (_, computed) in mapped.values)
    frame.attrs["excluded"] = excluded_frame(left_out, name).to_dict("records")
    frame.attrs["lesions"] = [{"case_id": cid, "cohort": name, **r.iloc[0][list(LESION_COLUMNS)].to_dict()}
                              for cid, r in rows.items() if len(r) and np.isfinite(r["mtv_ml"].iloc[0])]
    return frame


def lesion_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-case lesion figures of an organ_metrics table (``lesions.csv``): case_id, cohort, mtv_ml (mL),
    tlg (mL x SUV), lesion_count; the cases that have a lesion mask, from ``frame.attrs``."""
    table = pd.DataFrame(frame.attrs.get("lesions", []), columns=list(LESION_TABLE_COLUMNS))
    return table.astype({"lesion_count": "Int64"}) if len(table) else table


def excluded_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The cases an organ_metrics table leaves out (case_id, cohort, reason), from ``frame.attrs``."""
    return pd.DataFrame(frame.attrs.get("excluded", []), columns=list(EXCLUDED_COLUMNS))


def assemble_table(cases: Iterable[Case], results: dict[str, pd.DataFrame], cohort_name: str,
                   age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> pd.DataFrame:
    """Per-case metric rows joined with each case's demographics, in cohort order (TABLE_COLUMNS)."""
    parts = []
    for case in cases:
        rows = results[case.case_id].copy()
        for col, value in (("case_id", case.case_id), ("cohort", cohort_name), ("age", case.age),
                           ("sex", case.sex), ("height_m", case.height_m), ("weight_kg", case.weight_kg)):
            rows[col] = value
        parts.append(rows)
    if not parts:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    frame = pd.concat(parts, ignore_index=True)
    frame["age_group"] = age_group(frame["age"].astype(float), age_bins).to_numpy()
    frame["touches_border"] = frame["touches_border"].astype(bool)
    return frame[list(TABLE_COLUMNS)]


def write_metrics(cohort: Cohort | Sequence[Case], out_csv: str | Path, segmenter: str | None = None, workers: int = 1,
                  organs: Sequence[str] = ORGAN_NAMES, cache_dir: str | Path | None = None,
                  device: str = "cpu", cohort_name: str | None = None,
                  age_bins: Sequence[float] = DEFAULT_AGE_BINS, progress: bool = True,
                  resume: bool = True, skip_bad: bool = False,
                  scheduler: str | Scheduler | None = None, lesions: str = "exclude",
                  lesion_margin_mm: float = 0.0) -> pd.DataFrame:
    """Compute :func:`organ_metrics` and write it to ``out_csv`` atomically, with ``<out_csv>.json`` beside it.

    When cases have lesion masks, their per-case lesion figures go to :func:`lesions_path` (``lesions.csv``
    beside ``organ_metrics.csv``).

    The cache (per-case rows and computed labels) defaults to ``<out_csv folder>/<out_csv stem>-cache``
    (``organ_metrics-cache/``); an interrupted run resumes from it. The JSON sidecar holds the parameters
    and package versions. ``excluded.csv`` beside ``out_csv`` lists the cases left out (written with
    ``skip_bad``, or when there are any, or to replace an older one).
    """
    out_csv = Path(out_csv)
    if segmenter is None:
        from ..segment import default_segmenter
        segmenter = default_segmenter(cohort)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(out_csv)
    frame = organ_metrics(cohort, segmenter=segmenter, workers=workers, organs=organs, cache_dir=cache,
                          device=device, cohort_name=cohort_name, age_bins=age_bins, progress=progress,
                          resume=resume, skip_bad=skip_bad, scheduler=scheduler, lesions=lesions,
                          lesion_margin_mm=lesion_margin_mm)
    _write_tables(frame, out_csv, skip_bad)
    options = {"segmenter": segmenter, "organs": list(organs), "device": device, "age_bins": list(age_bins),
               "cache_dir": str(cache), "skip_bad": skip_bad, "lesions": lesions,
               "lesion_margin_mm": lesion_margin_mm}
    write_json(stamp(_sidecar(cohort, frame, cohort_name, options)), out_csv.with_name(out_csv.name + ".json"))
    return frame


def _write_tables(frame: pd.DataFrame, out_csv: Path, skip_bad: bool) -> None:
    """``frame`` to ``out_csv``; beside it lesions.csv (cases with a lesion mask) and excluded.csv (with
    ``skip_bad``, or when cases were left out, or to replace an older one)."""
    write_table(frame, out_csv)
    if frame.attrs.get("lesions"):
        write_table(lesion_table(frame), lesions_path(out_csv))
    excluded = excluded_table(frame)
    if skip_bad or len(excluded) or (out_csv.parent / EXCLUDED_CSV).is_file():
        write_excluded(excluded, out_csv.parent)


def _sidecar(cohort: Cohort | Sequence[Case], frame: pd.DataFrame, cohort_name: str | None,
             options: dict[str, Any]) -> dict[str, Any]:
    """The parameters of the JSON sidecar: the cohort, the run's ``options`` and what the run found."""
    return {"cohort": str(getattr(cohort, "root", "")),
            "cohort_name": frame["cohort"].iloc[0] if len(frame) else cohort_name,
            "n_cases": int(frame["case_id"].nunique()), **options, "metrics_version": METRICS_VERSION,
            "peak_radius_mm": PEAK_RADIUS_MM, "suv_std_ddof": 0, "n_computed": frame.attrs.get("n_computed"),
            "n_excluded": len(excluded_table(frame))}


def lesions_path(out_csv: str | Path) -> Path:
    """Where the per-case lesion table goes beside an organ table: ``lesions.csv`` beside
    ``organ_metrics.csv``, else ``<stem>_lesions.csv``."""
    out_csv = Path(out_csv)
    return out_csv.with_name("lesions.csv" if out_csv.stem == "organ_metrics" else f"{out_csv.stem}_lesions.csv")


def default_cache_dir(out_csv: str | Path) -> Path:
    """Where ``write_metrics`` caches by default: ``<folder of out_csv>/<its stem>-cache``."""
    out_csv = Path(out_csv)
    return out_csv.parent / f"{out_csv.stem}-cache"


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Read an organ_metrics CSV back with its column types; InputError if columns are missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    frame = pd.read_csv(path)
    if "lesion_ml" not in frame.columns:  # tables written before lesions were measured
        frame["lesion_ml"] = np.nan
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"not an organ_metrics table (missing columns {', '.join(missing)})", path)
    frame["touches_border"] = frame["touches_border"].astype(bool)
    return frame

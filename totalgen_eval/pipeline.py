"""End-to-end runs shared by the CLI, the Python API and the benchmarks.

compare: two cohorts -> organ labels -> organ_metrics -> concordance/trends/summary -> figures/report.
demo:    a phantom reference cohort -> its generated twins -> compare.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import __version__
from .cache import cache_key
from .demographics import parse_age_bins
from .errors import InputError
from .organs import ORGAN_NAMES, parse_organs
from .provenance import package_versions, to_jsonable
from .stats import DEFAULT_METRICS, Comparison, StatsParams

if TYPE_CHECKING:
    from .cohort import Cohort
    from .images import FeatureExtractor
    from .parallel import Scheduler

METRIC_COLUMNS: tuple[str, ...] = ("volume_ml", "suv_mean", "suv_median", "suv_std", "suv_max", "suv_peak", "hu_mean")
# the options that make a comparison "the same one" (statistics options may change between runs)
_IDENTITY = ("real", "synth")


@dataclass(frozen=True)
class CompareConfig:
    """Every option of a comparison; saved as results/config.json."""

    real: Path
    synth: Path
    out: Path = Path("results")
    real_segmenter: str | None = None  # None: the cohort's labels, else TotalSegmentator where its weights exist
    synth_segmenter: str | None = None
    organs: tuple[str, ...] = ORGAN_NAMES
    stats: StatsParams = StatsParams()  # margin, alpha, age bins, min_n, metrics: validated there, once
    workers: int = 1
    device: str = "cpu"
    seed: int = 0
    force: bool = False
    skip_bad: bool = False  # leave bad cases out (excluded.csv) instead of stopping at the first
    scheduler: str | None = None  # parallel.make_scheduler spec: None (pool of workers), local:N, tcp://...
    lesions: str = "exclude"  # "exclude" | "include": lesion voxels (cases' lesion masks) in organ statistics
    lesion_margin_mm: float = 0.0  # with "exclude": also the voxels within this distance (mm) of a lesion
    diagnosis: str | None = None  # keep only the real cases with this diagnosis (e.g. NEGATIVE), case-insensitive
    images: bool = True  # image-level metrics (FID, MMD, MS-SSIM): image_metrics.csv
    features: str = "bundled"  # their feature extractor: bundled or model:PATH
    train: Path | None = None  # the generator's training cohort: the memorization check (memorization.csv)

    def __post_init__(self) -> None:
        """The statistics take the comparison's organs and seed: one value of each, set here."""
        if (self.stats.organs, self.stats.seed) != (tuple(self.organs), self.seed):
            object.__setattr__(self, "stats", self.stats.with_(organs=tuple(self.organs), seed=self.seed))

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.stats.metrics

    @property
    def age_bins(self) -> tuple[float, ...]:
        return self.stats.age_bins

    @classmethod
    def from_options(cls, *, real: Path, synth: Path, out: Path, segmenter: str | None = None,
                     real_segmenter: str | None = None, synth_segmenter: str | None = None,
                     organs: str | None = None, metrics: str | None = None, age_bins: str = "default",
                     margin: float = 0.05, alpha: float = 0.05, min_n: int = 5, robust: bool = False,
                     **rest: Any) -> "CompareConfig":
        """Build from CLI-style strings; bad values raise InputError naming the option."""
        def parse(func, value, option):
            try:
                return func(value)
            except ValueError as exc:
                raise InputError(str(exc), option) from None
        metric_names = DEFAULT_METRICS if not metrics else tuple(m.strip() for m in metrics.split(",") if m.strip())
        unknown = [m for m in metric_names if m not in METRIC_COLUMNS]
        if unknown:
            raise InputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_COLUMNS)}", "--metrics")
        organ_names = parse(parse_organs, organs, "--organs")
        stats = StatsParams(margin=margin, alpha=alpha, min_n=min_n, robust=robust, metrics=metric_names,
                            age_bins=parse(parse_age_bins, age_bins, "--age-bins"))
        return cls(real=Path(real), synth=Path(synth), out=Path(out),
                   real_segmenter=real_segmenter or segmenter, synth_segmenter=synth_segmenter or segmenter,
                   organs=organ_names, stats=stats, **rest)


@dataclass(frozen=True)
class CompareResult:
    """What a comparison produced: the organ table, the statistics, the report's path."""

    organ_metrics: pd.DataFrame
    comparison: Comparison
    report: Path
    config: dict = field(default_factory=dict)


def _check_output_folder(cfg: CompareConfig) -> None:
    """Refuse an output folder that holds a different comparison, unless --force."""
    previous = cfg.out / "config.json"
    if not previous.is_file() or cfg.force:
        return
    try:
        old = json.loads(previous.read_text())
    except json.JSONDecodeError:
        raise InputError("unreadable config.json; use --force to overwrite", previous) from None
    if not isinstance(old, dict) or not isinstance(old.get("options"), dict):
        raise InputError("holds a config.json that totalgen-eval compare did not write; choose another --out",
                         cfg.out)
    for key in _IDENTITY:
        if Path(str(old.get("options", {}).get(key))).resolve() != Path(getattr(cfg, key)).resolve():
            raise InputError(f"holds a comparison of {old['options'].get('real')} vs {old['options'].get('synth')}; "
                             "choose another --out or pass --force", cfg.out)


def _has_demographics(table: pd.DataFrame) -> bool:
    return bool(table["sex"].notna().any() and table["age"].notna().any())


def _check_overlap(real: pd.DataFrame, synth: pd.DataFrame, cfg: CompareConfig) -> None:
    """Both sides must share organs with voxels; say which when they do not."""
    def present(t):
        return set(t.loc[t["n_voxels"] > 0, "organ"])
    shared = present(real) & present(synth)
    if not shared:
        raise InputError(f"no organ is present in both cohorts (real: {sorted(present(real)) or 'none'}; "
                         f"synthetic: {sorted(present(synth)) or 'none'})", cfg.synth)


def choose_segmenters(cfg: CompareConfig, real: Cohort, synth: Cohort) -> tuple[str, str]:
    """The segmenter of each side: as given, else one for both (``labels`` when both sides have labels,
    else TotalSegmentator where its weights exist), so that organ differences are not segmenter differences."""
    from .segment import default_segmenter

    given = cfg.real_segmenter or cfg.synth_segmenter
    if cfg.real_segmenter and cfg.synth_segmenter:
        return cfg.real_segmenter, cfg.synth_segmenter
    if given:
        return given, given
    both = default_segmenter(real), default_segmenter(synth)
    if both[0] == both[1]:
        return both
    return ("totalsegmentator", "totalsegmentator") if "totalsegmentator" in both else both


def _check_segmenters(cfg: CompareConfig) -> None:
    """Resolve the segmenters given (a typo in ``model:bundeld`` fails here, before any case is read)."""
    from .segment import make_segmenter

    for spec in {cfg.real_segmenter, cfg.synth_segmenter} - {None}:
        make_segmenter(spec, device=cfg.device, organs=cfg.organs)


def _run_config(cfg: CompareConfig, real: Cohort, synth: Cohort, train: Cohort | None, segmenters: tuple[str, str],
                synth_table: pd.DataFrame, excluded: pd.DataFrame, started: float) -> dict:
    """config.json of a comparison: options, segmenters, cohorts, phantom flags, exclusions, time, versions."""
    seg_real, seg_synth = segmenters
    cohorts = {"real": {"path": str(cfg.real), "layout": real.layout, "cases": len(real)},
               "synth": {"path": str(cfg.synth), "layout": synth.layout, "cases": len(synth)}}
    if train is not None:
        cohorts["train"] = {"path": str(cfg.train), "layout": train.layout, "cases": len(train)}
    return {
        "tool": "totalgen-eval compare", "version": __version__,
        "options": to_jsonable(cfg),
        "segmenters": {"real": seg_real, "synth": seg_synth},
        "segmenters_differ": seg_real != seg_synth,
        "cohorts": cohorts,
        "real_is_phantom": bool(real.is_phantom), "synth_is_phantom": bool(synth.is_phantom),
        "synth_has_demographics": _has_demographics(synth_table),
        "n_excluded": {side: int((excluded["cohort"] == side).sum()) for side in ("real", "synth")},
        "seconds": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
    }


def run_compare(cfg: CompareConfig, progress: bool = True) -> CompareResult:
    """Compare two cohort folders; writes every output under ``cfg.out`` and returns the tables."""
    from .metrics import LESION_MODES
    from .parallel import make_scheduler
    from .report import write_results
    from .stats import compare_tables, twin_map

    scheduler = make_scheduler(cfg.scheduler, cfg.workers)  # a bad spec fails before any work
    _check_segmenters(cfg)
    if cfg.lesions not in LESION_MODES:
        raise InputError(f"{cfg.lesions!r}: choose {' or '.join(LESION_MODES)}", "--lesions")
    _check_output_folder(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    real, synth = _loaded_cohorts(cfg)
    train, extractor = _image_inputs(cfg)
    for cohort in (real, synth):
        if len(cohort) == 0:
            raise InputError("holds no usable case", cohort.root)
    seg_real, seg_synth = choose_segmenters(cfg, real, synth)
    with scheduler:
        tables = [_metric_table(cfg, name, cohort, seg, scheduler, progress)
                  for name, cohort, seg in (("real", real, seg_real), ("synth", synth, seg_synth))]
    lesions, excluded = _lesions_table(tables), _excluded_table(tables)
    real_t, synth_t = tables
    _check_overlap(real_t, synth_t, cfg)
    comparison = compare_tables(real_t, synth_t, cfg.stats, twins=twin_map(synth.to_frame()))
    comparison.summary["images"], image_tables = _compare_images(cfg, real, synth, train, extractor, progress)
    config = _run_config(cfg, real, synth, train, (seg_real, seg_synth), synth_t, excluded, started)
    table = pd.concat(tables, ignore_index=True)
    paths = write_results(cfg.out, table, comparison, config,
                          extra={"lesions.csv": lesions, "excluded.csv": excluded, **image_tables},
                          cohorts={"real": real, "synth": synth, "train": train})
    return CompareResult(table, comparison, Path(paths["report.html"]), config)


def _loaded_cohorts(cfg: CompareConfig) -> tuple[Cohort, Cohort]:
    """(real, synthetic) cohorts, checked (bad cases left out with --skip-bad); the real one kept to the cases
    of ``cfg.diagnosis`` when given."""
    real, synth = _load_side(cfg, "real"), _load_side(cfg, "synth")
    return (real.with_diagnosis(cfg.diagnosis) if cfg.diagnosis else real), synth


def _load_side(cfg: CompareConfig, side: str) -> Cohort:
    """The checked cohort of ``side`` (real, synth, train); the cases whose header checks passed are remembered
    under ``<out>/cache/<side>/`` (cohort.checks), so an unchanged case is not checked again."""
    from .cohort.checks import CHECKS_JSON
    from .parallel import load_checked

    return load_checked(getattr(cfg, side), cfg.skip_bad, check_cache=cfg.out / "cache" / side / CHECKS_JSON)


def _metric_table(cfg: CompareConfig, name: str, cohort: Cohort, segmenter: str, scheduler: Scheduler,
                  progress: bool) -> pd.DataFrame:
    """One side's organ_metrics table (case x organ; its per-case cache under ``<out>/cache/<name>``), read
    whole from ``<out>/cache/<name>/organ_metrics_<key>.json`` when made before from the same cases (see
    :func:`organ_table_key`), else computed and kept there when no case failed."""
    from .cache import frame_from_record, frame_record
    from .provenance import read_checked_json, write_checked_json
    from .metrics import TABLE_COLUMNS, organ_metrics

    path = cfg.out / "cache" / name / f"{ORGAN_TABLE}_{organ_table_key(cfg, name, cohort, segmenter)}.json"
    record = read_checked_json(path)
    table = frame_from_record(record, TABLE_COLUMNS) if record is not None else None
    if table is not None:
        table.attrs["n_computed"] = 0
        return table
    table = organ_metrics(cohort, segmenter=segmenter, workers=cfg.workers, organs=cfg.organs,
                          cache_dir=cfg.out / "cache" / name, device=cfg.device, cohort_name=name,
                          age_bins=cfg.age_bins, progress=progress, skip_bad=cfg.skip_bad, scheduler=scheduler,
                          lesions=cfg.lesions, lesion_margin_mm=cfg.lesion_margin_mm)
    if len(table.attrs.get("excluded", ())) == len(cohort.problems):  # no case failed in this run
        write_checked_json(frame_record(table), path)
        for old in path.parent.glob(f"{ORGAN_TABLE}_*.json"):  # tables of other cases or options
            if old != path:
                old.unlink(missing_ok=True)
    return table


ORGAN_TABLE = "organ_metrics"  # <out>/cache/<side>/organ_metrics_<key>.json: the side's whole table
ORGAN_TABLE_VERSION = "1"  # bump when what the kept table holds changes


def organ_table_key(cfg: CompareConfig, name: str, cohort: Cohort, segmenter: str) -> str:
    """Key of one side's whole organ_metrics table: every case's metrics key (``metrics.cohort.case_key``: its
    files by identity, the segmenter and its settings, organs, lesion options, METRICS_VERSION), its id and
    demographics in cohort order, the cases left out at load time, the side's name, the age bins and the
    table's columns."""
    from .metrics import METRICS_VERSION, TABLE_COLUMNS, MetricsJob
    from .metrics.cohort import case_key
    from .segment import make_segmenter

    segmenter = segmenter.strip()
    settings = None if segmenter == "labels" else make_segmenter(segmenter, device=cfg.device).settings()
    job = MetricsJob(segmenter, tuple(cfg.organs), None, cfg.device, True, settings, cfg.lesions,
                     cfg.lesion_margin_mm)
    cases = [[case_key(c, job), c.case_id, c.age, c.sex, c.height_m, c.weight_kg] for c in cohort]
    return cache_key(ORGAN_TABLE_VERSION, METRICS_VERSION, list(TABLE_COLUMNS), name, list(cfg.age_bins), cases,
                     [list(p) for p in cohort.problems])


def _lesions_table(tables: list[pd.DataFrame]) -> pd.DataFrame | None:
    """lesions.csv of both sides (case_id, cohort, mtv_ml, tlg, lesion_count), or None when no side has lesions."""
    from .metrics import lesion_table

    with_lesions = [t for t in tables if t.attrs.get("lesions")]
    return pd.concat([lesion_table(t) for t in with_lesions], ignore_index=True) if with_lesions else None


def _excluded_table(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The cases left out on both sides (case_id, cohort, reason): the report lists them."""
    from .metrics import excluded_table
    from .parallel import EXCLUDED_COLUMNS

    return pd.concat([excluded_table(t) for t in tables], ignore_index=True).reindex(columns=list(EXCLUDED_COLUMNS))


def _image_inputs(cfg: CompareConfig) -> tuple[Cohort | None, FeatureExtractor | None]:
    """(training Cohort or None, feature extractor or None): loaded before the long work, so a bad
    --train or --features fails at once."""
    from .images import load_extractor

    if cfg.train is not None and not cfg.images:
        raise InputError("the memorization check reads the images; drop --no-images", "--train")
    train = _load_side(cfg, "train") if cfg.train is not None else None
    return train, (load_extractor(cfg.features, device=cfg.device) if cfg.images else None)


IMAGE_TABLES: tuple[str, ...] = ("image_metrics.csv", "memorization.csv", "memorization_real.csv")


def _compare_images(cfg: CompareConfig, real: Cohort, synth: Cohort, train: Cohort | None,
                    extractor: FeatureExtractor | None,
                    progress: bool) -> tuple[dict | None, dict[str, pd.DataFrame | None]]:
    """Image metrics (and memorization with --train): their headline figures for summary.json (None with
    --no-images) and the tables for the results folder (None: not made this run, an earlier one is removed)."""
    from .images.compare import compare_images

    tables: dict[str, pd.DataFrame | None] = dict.fromkeys(IMAGE_TABLES)
    if extractor is None:
        return None, tables
    result = compare_images(real, synth, train, extractor, seed=cfg.seed, workers=cfg.workers, device=cfg.device,
                            progress=progress, cache_dir=cfg.out / "cache")
    tables["image_metrics.csv"] = result.table
    if result.memorization is not None:
        tables["memorization.csv"] = result.memorization.synthetic
        tables["memorization_real.csv"] = result.memorization.real
    return result.summary(), tables


def run_stats(real_csv: Path, synth_csv: Path, out_dir: Path, params: StatsParams) -> Comparison:
    """Two organ_metrics CSVs -> concordance.csv, trends.csv, summary.json in ``out_dir`` (no figures)."""
    from .report import write_tables
    from .stats import compare_tables, read_table

    real, synth = read_table(real_csv), read_table(synth_csv)
    comparison = compare_tables(real, synth, params)
    config = {"tool": "totalgen-eval stats", "version": __version__,
              "inputs": {"real": str(real_csv), "synth": str(synth_csv)}, "versions": package_versions()}
    write_tables(out_dir, None, comparison, config)
    return comparison


@dataclass(frozen=True)
class DemoConfig:
    """The embedded default run: n phantom cases, their generated twins, the comparison."""

    out: Path = Path("demo-results")
    n: int = 60
    seed: int = 0
    workers: int = 2
    device: str = "cpu"
    voxel_mm: float = 8.0  # the bundled generator's output grid
    checkpoint: Path | None = None  # a cascade folder; None: the bundled weights


def run_demo(cfg: DemoConfig, progress: bool = True) -> CompareResult:
    """Phantoms -> generate matched twins with the bundled cascade -> compare (the bundled segmenter on both
    sides, so organ differences are the generator's) -> demo-results/report.html."""
    from .phantom import PhantomConfig, make_cohort
    from .synthesis import generate_cohort

    real = make_cohort(cfg.out / "real", n=cfg.n, seed=cfg.seed, config=PhantomConfig(voxel_mm=cfg.voxel_mm),
                       workers=cfg.workers, progress=progress)
    synth = generate_cohort(cfg.out / "synth", match=real, seed=cfg.seed, device=cfg.device,
                            checkpoint=cfg.checkpoint, progress=progress)
    compare_cfg = CompareConfig(real=real, synth=synth, out=cfg.out, real_segmenter="model:bundled",
                                synth_segmenter="model:bundled", workers=cfg.workers, device=cfg.device,
                                seed=cfg.seed, force=True)
    return run_compare(compare_cfg, progress=progress)

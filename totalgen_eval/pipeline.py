"""End-to-end runs shared by the CLI, the Python API and the benchmarks.

compare: two cohorts -> organ labels -> organ_metrics -> concordance/trends/summary -> figures/report.
demo:    a phantom reference cohort -> its generated twins -> compare.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .demographics import DEFAULT_AGE_BINS, parse_age_bins
from .errors import InputError
from .organs import ORGAN_NAMES, parse_organs
from .provenance import package_versions, to_jsonable, write_json, write_table

DEFAULT_METRICS: tuple[str, ...] = ("volume_ml", "suv_mean", "suv_max")
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
    metrics: tuple[str, ...] = DEFAULT_METRICS
    age_bins: tuple[float, ...] = DEFAULT_AGE_BINS
    margin: float = 0.05
    min_n: int = 5
    n_boot: int = 2000
    workers: int = 1
    device: str = "cpu"
    seed: int = 0
    force: bool = False

    @classmethod
    def from_options(cls, *, real: Path, synth: Path, out: Path, segmenter: str | None = None,
                     real_segmenter: str | None = None, synth_segmenter: str | None = None,
                     organs: str | None = None, metrics: str | None = None, age_bins: str = "default",
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
        margin = rest.get("margin", 0.05)
        if not 0 < margin < 1:
            raise InputError(f"margin {margin} must lie between 0 and 1 (0.05 = 5%)", "--margin")
        return cls(real=Path(real), synth=Path(synth), out=Path(out),
                   real_segmenter=real_segmenter or segmenter, synth_segmenter=synth_segmenter or segmenter,
                   organs=parse(parse_organs, organs, "--organs"), metrics=metric_names,
                   age_bins=parse(parse_age_bins, age_bins, "--age-bins"), **rest)


@dataclass(frozen=True)
class CompareResult:
    """What a comparison produced: the organ table, the statistics, the report's path."""

    organ_metrics: pd.DataFrame
    comparison: Any  # stats.Comparison
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


def run_compare(cfg: CompareConfig, progress: bool = True) -> CompareResult:
    """Compare two cohort folders; writes every output under ``cfg.out`` and returns the tables."""
    from .cohort import load_cohort
    from .metrics import organ_metrics
    from .report import write_report
    from .segment import default_segmenter
    from .stats import compare_tables

    _check_output_folder(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    real, synth = load_cohort(cfg.real), load_cohort(cfg.synth)
    for cohort in (real, synth):
        if len(cohort) == 0:
            raise InputError("holds no usable case", cohort.root)
    seg_real = cfg.real_segmenter or default_segmenter(real)
    seg_synth = cfg.synth_segmenter or default_segmenter(synth)
    tables = []
    for name, cohort, seg in (("real", real, seg_real), ("synth", synth, seg_synth)):
        tables.append(organ_metrics(cohort, segmenter=seg, workers=cfg.workers, organs=cfg.organs,
                                    cache_dir=cfg.out / "cache" / name, device=cfg.device, cohort_name=name,
                                    age_bins=cfg.age_bins, progress=progress))
    real_t, synth_t = tables
    _check_overlap(real_t, synth_t, cfg)
    synth_has_demo = _has_demographics(synth_t)
    table = pd.concat(tables, ignore_index=True)
    write_table(table, cfg.out / "organ_metrics.csv")
    comparison = compare_tables(real_t, synth_t, margin=cfg.margin, age_bins=cfg.age_bins, min_n=cfg.min_n,
                                metrics=cfg.metrics, organs=cfg.organs, n_boot=cfg.n_boot, seed=cfg.seed)
    write_table(comparison.concordance, cfg.out / "concordance.csv")
    write_table(comparison.trends, cfg.out / "trends.csv")
    write_json(comparison.summary, cfg.out / "summary.json")
    config = {
        "tool": "totalgen-eval compare", "version": __version__,
        "options": to_jsonable(cfg),
        "segmenters": {"real": seg_real, "synth": seg_synth},
        "cohorts": {"real": {"path": str(cfg.real), "layout": real.layout, "cases": len(real)},
                    "synth": {"path": str(cfg.synth), "layout": synth.layout, "cases": len(synth)}},
        "real_is_phantom": bool(real.is_phantom), "synth_is_phantom": bool(synth.is_phantom),
        "synth_has_demographics": synth_has_demo,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
    }
    write_json(config, cfg.out / "config.json")
    paths = write_report(cfg.out, table, comparison, config)
    return CompareResult(table, comparison, Path(paths["report.html"]), config)


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
    """Phantoms -> generate matched twins with the bundled cascade -> compare (bundled segmenter on the
    synthetic side, true labels on the phantom side) -> demo-results/report.html."""
    from .phantom import PhantomConfig, make_cohort
    from .synthesis import generate_cohort

    real = make_cohort(cfg.out / "real", n=cfg.n, seed=cfg.seed, config=PhantomConfig(voxel_mm=cfg.voxel_mm),
                       workers=cfg.workers, progress=progress)
    synth = generate_cohort(cfg.out / "synth", match=real, seed=cfg.seed, device=cfg.device,
                            checkpoint=cfg.checkpoint, progress=progress)
    compare_cfg = CompareConfig(real=real, synth=synth, out=cfg.out, real_segmenter="labels",
                                synth_segmenter="model:bundled", workers=cfg.workers, device=cfg.device,
                                seed=cfg.seed, force=True)
    return run_compare(compare_cfg, progress=progress)

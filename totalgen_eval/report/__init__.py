"""The results folder: its one writer (tables, figures, reports) and its reader.

``write_results`` writes everything a comparison produced: ``write_tables`` (organ_metrics.csv,
concordance.csv, trends.csv, summary.json, config.json) then ``write_report`` (``figures/<kind>_<metric>.png``
and ``.svg``, ``report.html`` self-contained with PNGs embedded as base64, ``report.md`` with figures
linked). ``redraw`` rebuilds the figures and reports from the tables alone (``read_results``). Each returns
``{relative path: Path}`` of what it wrote.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from .. import plots
from ..errors import InputError
from ..plots.style import truthy
from ..provenance import atomic_path, write_json, write_table
from ..stats import Comparison, StatsParams
from .content import PHANTOM_NOTICE, report_blocks
from .figures import FigurePlan, remove_stale, save_figures
from .images import image_sections
from .render import FigureRef, render_html, render_markdown

if TYPE_CHECKING:
    from ..cohort import Cohort

__all__ = ["write_results", "write_report", "redraw", "write_tables", "read_results", "figure_plans",
           "PHANTOM_NOTICE", "FIGURE_METRICS"]

FIGURE_METRICS: tuple[str, ...] = ("suv_mean", "volume_ml")  # drawn when present; else the first two compared
TITLE = "totalgen-eval: synthetic vs real PET/CT, organ by organ"
_FIGURE_FILE = re.compile(r"^(heatmap|forest|distributions|trends)_.+\.(png|svg)$")


def figure_metrics(concordance: pd.DataFrame) -> list[str]:
    """The metrics that get figures: suv_mean and volume_ml where compared, else the first two compared."""
    compared = list(dict.fromkeys(concordance["metric"].astype(str)))
    chosen = [m for m in FIGURE_METRICS if m in compared]
    return chosen or compared[:2]


PLOTTED_COLUMNS: tuple[str, ...] = ("cohort", "organ", "sex", "age", "age_group", "n_voxels")  # and the metric


def _plotted(organ_metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The organ_metrics columns the distributions and trends figures of ``metric`` read."""
    return organ_metrics[[c for c in (*PLOTTED_COLUMNS, metric) if c in organ_metrics.columns]]


def _metric_plans(organ_metrics: pd.DataFrame, concordance: pd.DataFrame, trends: pd.DataFrame | None,
                  margin: float, m: str, demographics: bool) -> list[FigurePlan]:
    """The heatmap, forest, distributions and (with demographics) trends figures of metric ``m``."""
    label = plots.metric_label(m)
    cells, values = concordance[concordance["metric"].astype(str) == m], _plotted(organ_metrics, m)
    plans = [
        FigurePlan(FigureRef(f"heatmap_{m}", f"{label}: deviation (%, ratio of geometric means) of the synthetic "
                             "from the real cohort per organ and subgroup; outlined cells lie outside the "
                             f"{100 * margin:g}% margin; small print: n real/synthetic."),
                   lambda: plots.deviation_heatmap(concordance, m, margin), (cells, margin)),
        FigurePlan(FigureRef(f"forest_{m}", f"{label}: deviation (%, ratio of geometric means) with its CI per "
                             "organ, one panel per subgroup (sex strata: the multiplicity-adjusted CI of the "
                             f"verdict; age groups: 95% CI); shaded: the {100 * margin:g}% margin."),
                   lambda: plots.forest_plot(concordance, m, margin), (cells, margin)),
        FigurePlan(FigureRef(f"distributions_{m}", f"{label}: real (left, blue) and synthetic (right, orange) "
                             "distributions per organ, by sex and age group."),
                   lambda: plots.distributions(organ_metrics, m), (values,))]
    if demographics:
        plans.append(FigurePlan(FigureRef(f"trends_{m}", f"{label} against age, by sex: real (blue) and synthetic "
                                          "(orange) cases with least-squares lines."),
                                lambda: plots.trend_plot(organ_metrics, trends, m),
                                (values, trends if trends is not None else pd.DataFrame())))
    return plans


def figure_plans(organ_metrics: pd.DataFrame, concordance: pd.DataFrame, trends: pd.DataFrame | None,
                 margin: float, demographics: bool = True) -> tuple[list[FigurePlan], list[str]]:
    """Every table figure of the report (reference, how to draw it, from what), and a note for each figure
    left out. ``margin`` is a fraction; ``demographics=False`` (synthetic cohort without ages) skips the trends.
    """
    plans, notes = [], []
    for m in figure_metrics(concordance):
        plans += _metric_plans(organ_metrics, concordance, trends, margin, m, demographics)
        if not demographics:
            notes.append(f"trends_{m}: skipped, the synthetic cohort has no demographics.")
    return plans, notes


def _has_demographics(organ_metrics: pd.DataFrame, config: Mapping[str, Any]) -> bool:
    if config.get("synth_has_demographics") is False:
        return False
    return plots.has_demographics(organ_metrics)


def write_report(out_dir: str | Path, organ_metrics: pd.DataFrame, comparison: Comparison,
                 config: Mapping[str, Any], cohorts: Mapping[str, Cohort | None] | None = None) -> dict[str, Path]:
    """Figures (PNG + SVG, each drawn only when what it shows changed: ``report/figures.py``), report.html
    and report.md under ``out_dir`` from a comparison in memory.

    ``config`` is the run's config.json content (``real_is_phantom``, ``synth_is_phantom``,
    ``synth_has_demographics``, ``segmenters``, ``versions`` ...); the statistics' options come from
    ``comparison.params``. ``cohorts`` (``real``, ``synth``, ``train``: the Cohorts compared) spare reading
    the cohorts named in config.json again for the previews and twins.
    """
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    plans, notes = figure_plans(organ_metrics, comparison.concordance, comparison.trends, comparison.params.margin,
                                demographics=_has_demographics(organ_metrics, config))
    saved = save_figures(plans, figures_dir, notes)
    remove_stale(figures_dir, lambda name: bool(_FIGURE_FILE.match(name)), saved.written)
    excluded = _read_csv(out_dir / "excluded.csv", required=False)
    blocks = report_blocks(comparison, config, list(saved.refs), notes, excluded)
    blocks = image_sections(out_dir, blocks, saved, organ_metrics, config, comparison.summary, cohorts)
    written = saved.written
    for name, text in (("report.html", render_html(TITLE, blocks, saved.png)),
                       ("report.md", render_markdown(TITLE, blocks))):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written[name] = out_dir / name
    return written


def write_tables(out_dir: str | Path, organ_metrics: pd.DataFrame | None, comparison: Comparison,
                 config: Mapping[str, Any], extra: Mapping[str, pd.DataFrame | None] | None = None) -> dict[str, Path]:
    """The tables :func:`redraw` reads: organ_metrics.csv (when given), concordance.csv, trends.csv,
    summary.json, config.json; and ``extra`` tables by file name (lesions.csv, excluded.csv, image_metrics.csv,
    memorization*.csv): a None entry removes that file left by an earlier run."""
    out_dir = Path(out_dir)
    written = {}
    if organ_metrics is not None:
        written["organ_metrics.csv"] = write_table(organ_metrics, out_dir / "organ_metrics.csv")
    written["concordance.csv"] = write_table(comparison.concordance, out_dir / "concordance.csv")
    written["trends.csv"] = write_table(comparison.trends, out_dir / "trends.csv")
    for name, table in (extra or {}).items():
        if table is None:
            (out_dir / name).unlink(missing_ok=True)
        else:
            written[name] = write_table(table, out_dir / name)
    written["summary.json"] = write_json(comparison.summary, out_dir / "summary.json")
    written["config.json"] = write_json(dict(config), out_dir / "config.json")
    return written


def write_results(out_dir: str | Path, organ_metrics: pd.DataFrame, comparison: Comparison,
                  config: Mapping[str, Any], extra: Mapping[str, pd.DataFrame | None] | None = None,
                  cohorts: Mapping[str, Cohort | None] | None = None) -> dict[str, Path]:
    """Everything of a comparison, the results folder's one writer: :func:`write_tables`, then
    :func:`write_report` (``cohorts``: see there)."""
    written = write_tables(out_dir, organ_metrics, comparison, config, extra)
    return {**written, **write_report(out_dir, organ_metrics, comparison, config, cohorts)}


def _read_csv(path: Path, required: bool) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise InputError("missing; is this a results folder written by `totalgen-eval compare`?", path)
        return None
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable table ({type(exc).__name__})", path) from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError("unreadable JSON", path) from None
    return value if isinstance(value, dict) else {}


def read_results(results_dir: str | Path) -> tuple[pd.DataFrame, Comparison, dict]:
    """(organ_metrics, the comparison, config) from a results folder written by ``compare``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError("not a folder", root)
    organ_metrics = _read_csv(root / "organ_metrics.csv", required=True)
    concordance = _read_csv(root / "concordance.csv", required=True)
    for table, name, cols in ((concordance, "concordance.csv", ("organ", "metric", "sex", "age_group", "family",
                                                                 "deviation_pct", "verdict")),
                              (organ_metrics, "organ_metrics.csv", ("cohort", "organ"))):
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)} (written by an older version? "
                             "run compare again)", root / name)
    concordance["equivalent"] = concordance["equivalent"].map(truthy).where(concordance["equivalent"].notna())
    trends = _read_csv(root / "trends.csv", required=False)
    summary = _read_json(root / "summary.json")
    try:
        params = StatsParams.from_dict(summary.get("parameters") or {})
    except (TypeError, ValueError, InputError) as exc:
        raise InputError(f"unreadable statistics parameters ({exc})", root / "summary.json") from None
    comparison = Comparison(concordance=concordance, trends=trends if trends is not None else pd.DataFrame(),
                            summary=summary, params=params)
    return organ_metrics, comparison, _read_json(root / "config.json")


def redraw(results_dir: str | Path) -> dict[str, Path]:
    """Rewrite the figures, report.html and report.md of a results folder from its tables alone."""
    organ_metrics, comparison, config = read_results(results_dir)
    return write_report(Path(results_dir), organ_metrics, comparison, config)

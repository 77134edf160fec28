"""Writes a results folder's figures and reports, and redraws them from the tables alone.

``write_report`` takes the tables in memory (as ``compare`` has them); ``redraw`` reads them back from
``organ_metrics.csv``, ``concordance.csv``, ``trends.csv``, ``summary.json`` and ``config.json``. Both
write ``figures/<kind>_<metric>.png`` and ``.svg``, ``report.html`` (self-contained: PNGs embedded as
base64) and ``report.md`` (figures linked), and return ``{relative path: Path}`` of what they wrote.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
from matplotlib.figure import Figure

from .. import plots
from ..errors import InputError
from ..provenance import atomic_path, write_json, write_table
from .content import PHANTOM_NOTICE, ReportOptions, report_blocks, report_options
from .render import FigureRef, render_html, render_markdown
from .verdicts import headline, organ_verdicts, verdict, verdict_rule

__all__ = ["write_report", "redraw", "write_tables", "read_results", "make_figures", "verdict", "verdict_rule",
           "organ_verdicts", "headline", "PHANTOM_NOTICE", "FIGURE_METRICS", "ReportOptions"]

FIGURE_METRICS: tuple[str, ...] = ("suv_mean", "volume_ml")  # drawn when present; else the first two compared
TITLE = "totalgen-eval: synthetic vs real PET/CT, organ by organ"
PNG_DPI = 110
_FIGURE_FILE = re.compile(r"^(heatmap|forest|distributions|trends)_.+\.(png|svg)$")


def figure_metrics(concordance: pd.DataFrame) -> list[str]:
    """The metrics that get figures: suv_mean and volume_ml where compared, else the first two compared."""
    compared = list(dict.fromkeys(concordance["metric"].astype(str)))
    chosen = [m for m in FIGURE_METRICS if m in compared]
    return chosen or compared[:2]


def make_figures(organ_metrics: pd.DataFrame, concordance: pd.DataFrame, trends: pd.DataFrame | None,
                 margin: float, demographics: bool = True) -> tuple[list[tuple[FigureRef, Figure]], list[str]]:
    """Every report figure with its name and caption, and a note for each figure that was skipped.

    ``margin`` is a fraction; ``demographics=False`` (synthetic cohort without ages) skips the trends.
    """
    figures, notes = [], []
    for m in figure_metrics(concordance):
        label = plots.metric_label(m)
        todo: list[tuple[str, str, Callable[[], Figure]]] = [
            (f"heatmap_{m}", f"{label}: deviation (%) of the synthetic from the real mean per organ and subgroup; "
             f"outlined cells lie outside the {100 * margin:g}% margin; small print: n real/synthetic.",
             lambda m=m: plots.deviation_heatmap(concordance, m, margin)),
            (f"forest_{m}", f"{label}: deviation (%) with 95% bootstrap CI per organ, one panel per subgroup; "
             f"shaded: the {100 * margin:g}% margin.", lambda m=m: plots.forest_plot(concordance, m, margin)),
            (f"distributions_{m}", f"{label}: real (left, blue) and synthetic (right, orange) distributions per "
             "organ, by sex and age group.", lambda m=m: plots.distributions(organ_metrics, m)),
        ]
        if demographics:
            todo.append((f"trends_{m}", f"{label} against age, by sex: real (blue) and synthetic (orange) cases with "
                         "least-squares lines.", lambda m=m: plots.trend_plot(organ_metrics, trends, m)))
        else:
            notes.append(f"trends_{m}: skipped, the synthetic cohort has no demographics.")
        for name, caption, draw in todo:
            try:
                figures.append((FigureRef(name, caption), draw()))
            except (ValueError, KeyError) as exc:
                notes.append(f"{name}: skipped ({exc}).")
    return figures, notes


def _save_figure(fig: Figure, figures_dir: Path, name: str) -> dict[str, Path]:
    out = {}
    for ext in ("png", "svg"):
        path = figures_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=PNG_DPI, facecolor="white")
        out[f"figures/{name}.{ext}"] = path
    return out


def _has_demographics(organ_metrics: pd.DataFrame, config: Mapping[str, Any]) -> bool:
    if config.get("synth_has_demographics") is False:
        return False
    return plots.has_demographics(organ_metrics)


def _write_all(out_dir: Path, organ_metrics: pd.DataFrame, concordance: pd.DataFrame, trends: pd.DataFrame | None,
               summary: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Path]:
    opts = report_options(config, summary)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    made, notes = make_figures(organ_metrics, concordance, trends, opts.margin,
                               demographics=_has_demographics(organ_metrics, config))
    written: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for ref, fig in made:
        paths = _save_figure(fig, figures_dir, ref.name)
        written.update(paths)
        images[ref.name] = paths[f"figures/{ref.name}.png"].read_bytes()
    for stale in figures_dir.iterdir():  # figures of an earlier run that this one did not draw
        if _FIGURE_FILE.match(stale.name) and f"figures/{stale.name}" not in written:
            stale.unlink()
    blocks = report_blocks(concordance, trends, summary, config, [ref for ref, _ in made], notes)
    for name, text in (("report.html", render_html(TITLE, blocks, images)), ("report.md", render_markdown(TITLE, blocks))):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written[name] = out_dir / name
    return written


def _parts(comparison: Any) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    get = comparison.get if isinstance(comparison, Mapping) else (lambda k: getattr(comparison, k, None))
    concordance = get("concordance")
    if concordance is None:
        raise InputError("the comparison has no concordance table")
    return concordance, get("trends"), dict(get("summary") or {})


def write_report(out_dir: str | Path, organ_metrics: pd.DataFrame, comparison: Any,
                 config: Mapping[str, Any]) -> dict[str, Path]:
    """Figures (PNG + SVG), report.html and report.md under ``out_dir`` from a comparison in memory.

    ``comparison`` has ``.concordance``, ``.trends`` and ``.summary`` (stats.Comparison, or a dict);
    ``config`` is the run's config.json content (margin/min_n/alpha at top level or under ``options``;
    ``real_is_phantom``, ``synth_is_phantom``, ``synth_has_demographics``; ``versions``).
    The tables themselves are written by :func:`write_tables` (or the pipeline).
    """
    concordance, trends, summary = _parts(comparison)
    return _write_all(Path(out_dir), organ_metrics, concordance, trends, summary, config)


def write_tables(out_dir: str | Path, organ_metrics: pd.DataFrame, comparison: Any,
                 config: Mapping[str, Any]) -> dict[str, Path]:
    """The tables :func:`redraw` reads: organ_metrics.csv, concordance.csv, trends.csv, summary.json, config.json."""
    out_dir = Path(out_dir)
    concordance, trends, summary = _parts(comparison)
    written = {"organ_metrics.csv": write_table(organ_metrics, out_dir / "organ_metrics.csv"),
               "concordance.csv": write_table(concordance, out_dir / "concordance.csv")}
    if trends is not None:
        written["trends.csv"] = write_table(trends, out_dir / "trends.csv")
    written["summary.json"] = write_json(summary, out_dir / "summary.json")
    written["config.json"] = write_json(dict(config), out_dir / "config.json")
    return written


def _read_csv(path: Path, required: bool) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise InputError("missing; is this a results folder written by `totalgen-eval compare`?", path)
        return None
    try:
        return pd.read_csv(path)
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


def read_results(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, dict, dict]:
    """(organ_metrics, concordance, trends or None, summary, config) from a results folder."""
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError("not a folder", root)
    organ_metrics = _read_csv(root / "organ_metrics.csv", required=True)
    concordance = _read_csv(root / "concordance.csv", required=True)
    for table, name, cols in ((concordance, "concordance.csv", ("organ", "metric", "sex", "age_group", "deviation_pct")),
                              (organ_metrics, "organ_metrics.csv", ("cohort", "organ"))):
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}", root / name)
    return (organ_metrics, concordance, _read_csv(root / "trends.csv", required=False),
            _read_json(root / "summary.json"), _read_json(root / "config.json"))


def redraw(results_dir: str | Path) -> dict[str, Path]:
    """Rewrite the figures, report.html and report.md of a results folder from its tables alone."""
    organ_metrics, concordance, trends, summary, config = read_results(results_dir)
    return _write_all(Path(results_dir), organ_metrics, concordance, trends, summary, config)

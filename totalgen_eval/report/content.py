"""What the report says: its blocks, built from the tables, the summary and the run's config."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..plots import metric_label, organ_order, subgroup_label
from .render import Block, FigureRef, Heading, Items, Notice, Paragraph, Table
from .verdicts import headline, organ_verdicts, verdict_rule, worst_cells

PHANTOM_NOTICE = "phantom data: not real patients"
FIGURE_KINDS: dict[str, str] = {"heatmap": "Deviation by organ and subgroup", "forest": "Deviation with confidence intervals",
                                "distributions": "Distributions", "trends": "Trends with age"}


@dataclass(frozen=True)
class ReportOptions:
    """The statistics options the report states and applies (margin a fraction)."""

    margin: float = 0.05
    min_n: int = 5
    alpha: float = 0.05


def option(config: Mapping[str, Any], summary: Mapping[str, Any], key: str, default: Any) -> Any:
    """``key`` from the config (top level, then ``options``), then the summary's ``parameters``; else default."""
    for source in (config, config.get("options") or {}, summary.get("parameters") or {}):
        if isinstance(source, Mapping) and source.get(key) is not None:
            return source[key]
    return default


def report_options(config: Mapping[str, Any], summary: Mapping[str, Any]) -> ReportOptions:
    """Margin, min_n and alpha as the run used them."""
    return ReportOptions(margin=float(option(config, summary, "margin", 0.05)),
                         min_n=int(option(config, summary, "min_n", 5)),
                         alpha=float(option(config, summary, "alpha", 0.05)))


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; blanks for missing values; text as is."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return ""
    return f"{x:.0f}" if 10 ** digits <= abs(x) < 1e15 else f"{x:.{digits}g}"


def fmt_pct(value: Any) -> str:
    """A deviation in %, signed, one decimal."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(x) else f"{x:+.1f}%"


def fmt_p(value: Any) -> str:
    """A p value: two significant digits, ``<0.001`` below."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(x) else ("<0.001" if x < 0.001 else f"{x:.2g}")


def _ci(low: Any, high: Any) -> str:
    a, b = fmt_pct(low), fmt_pct(high)
    return f"[{a}, {b}]" if a and b else ""


def notices(config: Mapping[str, Any]) -> list[Block]:
    """Phantom-data and overall-only warnings for the top of the report."""
    out: list[Block] = []
    phantom = [side for side, key in (("real (reference)", "real_is_phantom"), ("synthetic", "synth_is_phantom"))
               if config.get(key)]
    if phantom:
        out.append(Notice(f"{PHANTOM_NOTICE.capitalize()}. The {' and the '.join(phantom)} cohort "
                          f"{'is' if len(phantom) == 1 else 'are'} procedural phantom data; nothing here describes "
                          "real patients."))
    if config.get("synth_has_demographics") is False:
        out.append(Notice("The synthetic cohort has no demographics: the comparison is overall only "
                          "(no sex or age subgroups, no trends)."))
    return out


def _share(x: Any) -> str:
    """A share (0..1) as a percentage with one decimal."""
    try:
        v = 100 * float(x)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(v) else f"{v:.1f}%"


def headline_blocks(concordance: pd.DataFrame, summary: Mapping[str, Any], opts: ReportOptions) -> list[Block]:
    """The headline: shares of tested cells within the margin / equivalent / flagged, median |deviation|.

    The figures of ``summary`` (the statistics' own) are shown where present, else computed the same way.
    """
    h = headline(concordance, opts.margin, opts.alpha).set_index("metric")
    overall = dict(h.loc["all metrics"])
    if isinstance(summary.get("headline"), Mapping):
        overall.update({k: v for k, v in summary["headline"].items() if k in overall})
    per_metric = summary.get("per_metric") if isinstance(summary.get("per_metric"), Mapping) else {}
    m = f"{100 * opts.margin:g}%"
    text = (f"{_share(overall['share_within_margin'])} of {fmt(overall['cells_tested'])} tested cells (organ x "
            f"metric x subgroup with at least {opts.min_n} cases a side) lie within the {m} margin; "
            f"{_share(overall['share_equivalent'])} are shown equivalent (TOST) and "
            f"{_share(overall['share_flagged'])} differ significantly (adjusted p < {opts.alpha:g}); "
            f"the median |deviation| is {fmt(overall['median_abs_deviation_pct'], 3)}%.")
    rows = []
    for metric in h.index:
        figs = dict(h.loc[metric])
        if isinstance(per_metric.get(metric), Mapping):
            figs.update({k: v for k, v in per_metric[metric].items() if k in figs})
        rows.append({"metric": metric_label(metric) if metric != "all metrics" else metric,
                     "tested cells": fmt(figs["cells_tested"]), f"within {m}": _share(figs["share_within_margin"]),
                     "equivalent": _share(figs["share_equivalent"]), "differ": _share(figs["share_flagged"]),
                     "median |deviation|": (fmt(figs["median_abs_deviation_pct"], 3) + "%")
                     if fmt(figs["median_abs_deviation_pct"]) else ""})
    return [Heading("Headline"), Paragraph(text), Table(pd.DataFrame(rows))]


def verdict_blocks(concordance: pd.DataFrame, opts: ReportOptions) -> list[Block]:
    """Per organ and metric, the verdict on the all-subjects cell, and the rule that gives it."""
    v = organ_verdicts(concordance, opts.margin, opts.min_n, opts.alpha)
    order = {o: i for i, o in enumerate(organ_order(v["organ"]))}
    v = v.sort_values("organ", key=lambda s: s.map(order), kind="stable")
    frame = pd.DataFrame({
        "organ": v["organ"].astype(str).str.replace("_", " "), "metric": v["metric"].map(metric_label),
        "verdict": v["verdict"], "deviation": v["deviation_pct"].map(fmt_pct),
        "95% CI": [_ci(a, b) for a, b in zip(v.get("deviation_ci_low", v["deviation_pct"] * np.nan),
                                             v.get("deviation_ci_high", v["deviation_pct"] * np.nan))],
        "n real/synth": [f"{fmt(a)}/{fmt(b)}" for a, b in zip(v["n_real"], v["n_synth"])]})
    return [Heading("Verdict per organ"),
            Paragraph("Each verdict is about all subjects together (deviation of the synthetic mean from the real "
                      "mean). The rule, applied in this order:"),
            Items(tuple(verdict_rule(opts.margin, opts.min_n, opts.alpha))),
            Table(frame)]


def concordance_display(concordance: pd.DataFrame) -> pd.DataFrame:
    """The concordance table rounded for reading (one row per organ x metric x subgroup)."""
    c = concordance
    return pd.DataFrame({
        "organ": c["organ"].astype(str), "metric": c["metric"].astype(str),
        "subgroup": [subgroup_label(s, a) for s, a in zip(c["sex"].astype(str), c["age_group"].astype(str))],
        "n real": c["n_real"].map(fmt), "n synth": c["n_synth"].map(fmt),
        "real mean": c["real_mean"].map(fmt), "synth mean": c["synth_mean"].map(fmt),
        "deviation": c["deviation_pct"].map(fmt_pct),
        "95% CI": [_ci(a, b) for a, b in zip(c["deviation_ci_low"], c["deviation_ci_high"])],
        "TOST p": c["tost_p"].map(fmt_p), "Welch p": c["welch_p"].map(fmt_p),
        "adjusted p": c["p_adjusted"].map(fmt_p), "KS p": c["ks_p"].map(fmt_p),
    })


def worst_blocks(concordance: pd.DataFrame, k: int = 10) -> list[Block]:
    """The cells furthest from the real data."""
    w = worst_cells(concordance, k)
    if w.empty:
        return [Heading("Worst cells"), Paragraph("No cell has a deviation.")]
    return [Heading("Worst cells"), Paragraph(f"The {len(w)} cells with the largest |deviation|."),
            Table(concordance_display(w))]


def trend_blocks(trends: pd.DataFrame | None, opts: ReportOptions) -> list[Block]:
    """Which demographic trends the synthetic data reproduces (interaction tests), and the full table."""
    blocks: list[Block] = [Heading("Demographic trends")]
    if trends is None or trends.empty or "interaction_p" not in trends:
        return blocks + [Paragraph("No trends table: the trend models were not fitted (no demographics, or too "
                                   "few cases).")]
    fitted = trends[np.isfinite(pd.to_numeric(trends["interaction_p"], errors="coerce"))]
    differ = fitted[pd.to_numeric(fitted["interaction_p"]) < opts.alpha]
    blocks.append(Paragraph(
        f"Per organ and metric, one least-squares model on both cohorts with a source interaction "
        f"({fmt(len(fitted))} effects fitted). An effect whose synthetic value differs from the real one at "
        f"p < {opts.alpha:g} (unadjusted interaction test): {len(differ)}."))
    per = trends["per"].astype(str) if "per" in trends else pd.Series("", index=trends.index)
    frame = pd.DataFrame({
        "organ": trends["organ"].astype(str), "metric": trends["metric"].astype(str),
        "term": trends["term"].astype(str), "per": per,
        "real effect": trends["real_effect"].map(fmt),
        "real 95% CI": [f"[{fmt(a)}, {fmt(b)}]" if fmt(a) else "" for a, b in
                        zip(trends["real_ci_low"], trends["real_ci_high"])],
        "synthetic effect": trends["synth_effect"].map(fmt),
        "synthetic 95% CI": [f"[{fmt(a)}, {fmt(b)}]" if fmt(a) else "" for a, b in
                             zip(trends["synth_ci_low"], trends["synth_ci_high"])],
        "interaction p": trends["interaction_p"].map(fmt_p),
        "n": [f"{fmt(a)}/{fmt(b)}" for a, b in zip(trends["n_real"], trends["n_synth"])]})
    if len(differ):
        blocks.append(Table(frame.loc[differ.index], caption="effects that differ (p < alpha)"))
    blocks.append(Table(frame, caption=f"all fitted effects ({len(frame)} rows; effects in the metric's unit "
                                       "per unit of the term)", collapsed=True))
    return blocks


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, Mapping):
        out = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, (list, tuple)):
        return [(prefix, ", ".join(fmt(v, 6) if not isinstance(v, str) else v for v in obj))]
    return [(prefix, fmt(obj, 6) if not isinstance(obj, str) else obj)]


SOURCE_KEYS = ("cohorts", "segmenters", "real_is_phantom", "synth_is_phantom", "synth_has_demographics")


def _notes_frame(notes: Any) -> pd.DataFrame:
    rows = []
    for scope, items in (notes.items() if isinstance(notes, Mapping) else []):
        for item in items if isinstance(items, list) else []:
            if isinstance(item, Mapping):
                where = " ".join(str(item[k]) for k in ("organ", "metric", "sex", "age_group") if k in item)
                rows.append((str(scope), where, str(item.get("reason", item.get("note", "")))))
            else:
                rows.append((str(scope), "", str(item)))
    return pd.DataFrame(rows, columns=["step", "cell", "note"])


def provenance_blocks(config: Mapping[str, Any], summary: Mapping[str, Any]) -> list[Block]:
    """Data sources, the run's options, the statistics' parameters and notes, then package versions."""
    sources = {k: config[k] for k in SOURCE_KEYS if k in config}
    params = {k: v for k, v in config.items() if k not in SOURCE_KEYS and k != "versions"}
    blocks: list[Block] = [Heading("Data sources")]
    blocks.append(Table(pd.DataFrame(_flatten(sources), columns=["source", "value"])) if sources else
                  Paragraph("No data sources recorded (config.json absent or empty)."))
    blocks.append(Heading("Parameters"))
    if params:
        blocks.append(Table(pd.DataFrame(_flatten(params), columns=["option", "value"]), caption="options of the run"))
    stats_params = summary.get("parameters")
    if isinstance(stats_params, Mapping) and stats_params:
        blocks.append(Table(pd.DataFrame(_flatten(stats_params), columns=["parameter", "value"]),
                            caption="statistics parameters (summary.json)"))
    excluded = [(k, v) for k, v in _flatten(summary.get("excluded_rows") or {}) if v not in ("0", "")]
    if excluded:
        blocks.append(Table(pd.DataFrame(excluded, columns=["cohort.metric.reason", "rows left out"]),
                            caption="organ rows left out of a metric (organ absent from the case, or no value)"))
    notes = _notes_frame(summary.get("notes"))
    if len(notes):
        blocks.append(Table(notes, caption=f"notes from the statistics ({len(notes)}): cells or models left out "
                                           "and why", collapsed=True))
    versions = config.get("versions") or summary.get("versions") or {}
    blocks.append(Heading("Package versions"))
    if versions:
        blocks.append(Table(pd.DataFrame(_flatten(versions), columns=["package", "version"])))
    else:
        blocks.append(Paragraph("No versions recorded."))
    return blocks


def report_blocks(concordance: pd.DataFrame, trends: pd.DataFrame | None, summary: Mapping[str, Any],
                  config: Mapping[str, Any], figures: Sequence[FigureRef], figure_notes: Sequence[str]) -> list[Block]:
    """All sections of the report, in order."""
    opts = report_options(config, summary)
    blocks = notices(config) + headline_blocks(concordance, summary, opts) + verdict_blocks(concordance, opts)
    blocks.append(Heading("Figures"))
    for kind, title in FIGURE_KINDS.items():
        refs = [f for f in figures if f.name.split("_", 1)[0] == kind]
        if refs:
            blocks += [Heading(title, 3), *refs]
    if figure_notes:
        blocks.append(Items(tuple(figure_notes)))
    blocks += worst_blocks(concordance) + trend_blocks(trends, opts)
    blocks += [Heading("Concordance table"),
               Paragraph("deviation = 100 (synthetic mean - real mean) / real mean; bootstrap 95% CI; TOST on the "
                         f"log scale with margin {100 * opts.margin:g}%; adjusted p: Benjamini-Hochberg across "
                         "the table."),
               Table(concordance_display(concordance), caption=f"all {len(concordance)} cells", collapsed=True)]
    return blocks + provenance_blocks(config, summary)

"""What the report says: its blocks, built from the tables, the summary and the run's config."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..plots import metric_label, organ_order, subgroup_label
from ..stats import Comparison, StatsParams
from ..stats.summary import primary_cells, worst_cells
from .render import Block, FigureRef, Heading, Items, Notice, Paragraph, Table

PHANTOM_NOTICE = "phantom data: not real patients"
FIGURE_KINDS: dict[str, str] = {"heatmap": "Deviation by organ and subgroup", "forest": "Deviation with confidence intervals",
                                "distributions": "Distributions", "trends": "Trends with age"}


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
    segmenters = config.get("segmenters") or {}
    if config.get("segmenters_differ") or (segmenters and len(set(segmenters.values())) > 1):
        out.append(Notice(f"The two sides were segmented differently (real: {segmenters.get('real')}, synthetic: "
                          f"{segmenters.get('synth')}): volume and SUV differences mix generator and segmenter "
                          "error."))
    if config.get("synth_has_demographics") is False:
        out.append(Notice("The synthetic cohort has no demographics: the comparison is overall only "
                          "(no sex or age subgroups, no trends)."))
    return out


def verdict_rule(params: StatsParams) -> list[str]:
    """The verdict rule in words, in the order it is applied (the report states it)."""
    m, a = f"{100 * params.margin:g}%", f"{params.alpha:g}"
    return [
        '"not tested": an age or sex x age cell (descriptive: estimate and 95% CI only), fewer than '
        f"{params.min_n} cases a side, or no estimate;",
        f'"differs": Benjamini-Hochberg adjusted p < {a} within the family (primary: volume and SUVmean; '
        "secondary: the other metrics). The CI printed beside it is the false-coverage-rate adjusted interval "
        "that goes with BH, so it excludes 0 exactly for these cells;",
        f'"equivalent": the {100 * (1 - 2 * params.alpha):g}% CI lies inside +-{m} (symmetric on the log scale);',
        '"inconclusive": neither; "n to decide" is the number of cases per side that would decide it at the '
        "observed spread (80% power).",
    ]


def headline_blocks(comparison: Comparison) -> list[Block]:
    """The headline: verdict counts over the primary cells per metric (summary.json's own figures)."""
    head = comparison.summary.get("headline") or {}
    per_metric = head.get("per_metric") or {}
    rows = [{"metric": metric_label(m), "primary cells": fmt(f.get("cells")), "differs": fmt(f.get("differs")),
             "equivalent": fmt(f.get("equivalent")), "inconclusive": fmt(f.get("inconclusive")),
             "not tested": fmt(f.get("not tested")),
             "median |deviation|": fmt_pct(f.get("median_abs_deviation_pct")).lstrip("+")}
            for m, f in per_metric.items() if isinstance(f, Mapping)]
    text = (f"Primary cells: each organ x {{volume, SUVmean}} for all subjects and for each sex "
            f"({fmt(head.get('primary_cells'))} cells): {fmt(head.get('differs'))} differ, "
            f"{fmt(head.get('equivalent'))} are equivalent within {100 * comparison.params.margin:g}%, "
            f"{fmt(head.get('inconclusive'))} are inconclusive and {fmt(head.get('not tested'))} were not tested. "
            "Deviations are ratios of geometric means (synthetic / real - 1), adjusted for age, sex, height and "
            "weight where known.")
    return [Heading("Headline"), Paragraph(text), Table(pd.DataFrame(rows))]


def verdict_frame(cells: pd.DataFrame, paired: bool) -> pd.DataFrame:
    """Cells for reading: organ, metric, subgroup, n, deviation with the CI of its verdict, the 90% CI, verdict."""
    frame = pd.DataFrame({
        "organ": cells["organ"].astype(str).str.replace("_", " "), "metric": cells["metric"].map(metric_label),
        "subgroup": [subgroup_label(s, a) for s, a in zip(cells["sex"].astype(str), cells["age_group"].astype(str))],
        "n real/synth": [f"{fmt(a)}/{fmt(b)}" for a, b in zip(cells["n_real"], cells["n_synth"])],
        "deviation": cells["deviation_pct"].map(fmt_pct),
        "CI (level)": [f"{_ci(lo, hi)} ({100 * float(lv):.3g}%)" if _ci(lo, hi) else "" for lo, hi, lv in
                       zip(cells["deviation_ci_low"], cells["deviation_ci_high"], cells["ci_level"])],
        "90% CI": [_ci(lo, hi) for lo, hi in zip(cells["equivalence_ci_low"], cells["equivalence_ci_high"])],
        "adjusted p": cells["p_adjusted"].map(fmt_p), "verdict": cells["verdict"].astype(str),
        "n to decide": cells["n_to_decide"].map(fmt)})
    if paired:
        frame["twins: deviation"] = cells["paired_deviation_pct"].map(fmt_pct)
        frame["twins: adjusted p"] = cells["paired_p_adjusted"].map(fmt_p)
    return frame.reset_index(drop=True)


def verdict_blocks(comparison: Comparison) -> list[Block]:
    """The primary cells with their verdicts, and the rule that gives them."""
    cells = primary_cells(comparison.concordance)
    order = {o: i for i, o in enumerate(organ_order(cells["organ"]))}
    cells = cells.sort_values("organ", key=lambda s: s.map(order), kind="stable")
    paired = bool(pd.to_numeric(cells["paired_n"], errors="coerce").fillna(0).gt(0).any())
    blocks: list[Block] = [
        Heading("Verdicts (primary cells)"),
        Paragraph("Per organ x metric, one least-squares model of log(metric) on source x sex, age, height and "
                  "weight (cases without a needed demographic are left out and counted in the table's "
                  "n_left_out); the deviation is the source effect within each sex (all subjects: the model "
                  "without the interaction). The rule, applied in this order:"),
        Items(tuple(verdict_rule(comparison.params))),
        Table(verdict_frame(cells, paired))]
    if paired:
        blocks.append(Paragraph(
            "Twins: the synthetic cases copy the demographics of real cases (twin_of), so a paired analysis of "
            "the log differences runs beside the model as a sensitivity analysis. The model is primary: it "
            "needs no twins, uses every case, and adjusts for the same demographics the pairing holds fixed."))
    return blocks


def concordance_display(concordance: pd.DataFrame) -> pd.DataFrame:
    """The concordance table rounded for reading (one row per organ x metric x subgroup)."""
    c = concordance
    return pd.DataFrame({
        "organ": c["organ"].astype(str), "metric": c["metric"].astype(str), "family": c["family"].astype(str),
        "subgroup": [subgroup_label(s, a) for s, a in zip(c["sex"].astype(str), c["age_group"].astype(str))],
        "n real": c["n_real"].map(fmt), "n synth": c["n_synth"].map(fmt),
        "deviation": c["deviation_pct"].map(fmt_pct),
        "CI": [_ci(a, b) for a, b in zip(c["deviation_ci_low"], c["deviation_ci_high"])],
        "level": c["ci_level"].map(lambda v: fmt(100 * float(v), 4) + "%" if fmt(v) else ""),
        "90% CI": [_ci(a, b) for a, b in zip(c["equivalence_ci_low"], c["equivalence_ci_high"])],
        "p": c["p_value"].map(fmt_p), "adjusted p": c["p_adjusted"].map(fmt_p), "verdict": c["verdict"].astype(str),
        "mean ratio": c["mean_ratio_pct"].map(fmt_pct),
    })


def worst_blocks(concordance: pd.DataFrame, k: int = 10) -> list[Block]:
    """The tested primary cells furthest from the real data."""
    w = worst_cells(concordance, k)
    if w.empty:
        return [Heading("Worst primary cells"), Paragraph("No primary cell was tested.")]
    return [Heading("Worst primary cells"), Paragraph(f"The {len(w)} tested primary cells with the largest |deviation|."),
            Table(verdict_frame(w, paired=False))]


def trend_blocks(trends: pd.DataFrame | None, params: StatsParams) -> list[Block]:
    """Which demographic trends the synthetic data reproduces (interaction tests), and the full table."""
    blocks: list[Block] = [Heading("Demographic trends")]
    if trends is None or trends.empty or "interaction_p" not in trends:
        return blocks + [Paragraph("No trends table: the trend models were not fitted (no demographics, or too "
                                   "few cases).")]
    fitted = trends[np.isfinite(pd.to_numeric(trends["interaction_p"], errors="coerce"))]
    differ = fitted[pd.to_numeric(fitted["p_adjusted"]) < params.alpha]
    blocks.append(Paragraph(
        f"Per organ and metric, one least-squares model of log(metric) on both cohorts with a source interaction "
        f"({fmt(len(fitted))} effects fitted; effects in % per unit). Effects whose synthetic value differs from "
        f"the real one (Benjamini-Hochberg over all trend terms, adjusted p < {params.alpha:g}): {len(differ)}; "
        "the others are not shown to differ, which is not evidence that they are the same."))
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
        "interaction p": trends["interaction_p"].map(fmt_p), "adjusted p": trends["p_adjusted"].map(fmt_p),
        "verdict": trends["verdict"].astype(str),
        "n": [f"{fmt(a)}/{fmt(b)}" for a, b in zip(trends["n_real"], trends["n_synth"])]})
    if len(differ):
        blocks.append(Table(frame.loc[differ.index], caption="effects that differ (adjusted p < alpha)"))
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


def excluded_blocks(excluded: pd.DataFrame | None) -> list[Block]:
    """The cases left out of the comparison (``--skip-bad``) with their reasons, from excluded.csv."""
    if excluded is None or excluded.empty:
        return []
    frame = pd.DataFrame({"case": excluded["case_id"].astype(str), "cohort": excluded["cohort"].astype(str),
                          "reason": excluded["reason"].astype(str)})
    return [Heading("Cases left out"),
            Paragraph(f"{len(frame)} case(s) could not be used (--skip-bad) and are not in any table or figure."),
            Table(frame)]


def report_blocks(comparison: Comparison, config: Mapping[str, Any], figures: Sequence[FigureRef],
                  figure_notes: Sequence[str], excluded: pd.DataFrame | None = None) -> list[Block]:
    """All sections of the report, in order."""
    blocks = (notices(config) + headline_blocks(comparison) + excluded_blocks(excluded)
              + verdict_blocks(comparison))
    blocks.append(Heading("Figures"))
    for kind, title in FIGURE_KINDS.items():
        refs = [f for f in figures if f.name.split("_", 1)[0] == kind]
        if refs:
            blocks += [Heading(title, 3), *refs]
    if figure_notes:
        blocks.append(Items(tuple(figure_notes)))
    blocks += worst_blocks(comparison.concordance) + trend_blocks(comparison.trends, comparison.params)
    blocks += [Heading("Concordance table"),
               Paragraph("deviation = 100 (exp(d) - 1), d the synthetic minus real mean of log(metric): the ratio of "
                         "geometric means. Sex strata (primary and secondary families): the adjusted model's "
                         "estimate, its BH-matched CI at the level shown, and the 90% CI that decides equivalence "
                         f"(margin {100 * comparison.params.margin:g}%). Age and sex x age cells: unadjusted "
                         "estimate and 95% CI, no test. mean ratio: the ratio of arithmetic means (descriptive)."),
               Table(concordance_display(comparison.concordance),
                     caption=f"all {len(comparison.concordance)} cells", collapsed=True)]
    return blocks + provenance_blocks(config, comparison.summary)

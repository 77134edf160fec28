"""Deviation figures from the concordance table: the organ x subgroup heatmap and the forest plot."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .style import (OUTSIDE_GID, SYNTH_COLOUR, UNTESTED_GID, deviation_cmap, fmt_n, is_tested, metric_label,
                    metric_rows, organ_order, populated_subgroups, subgroup_kind, subgroup_label, title_legend)


def _heatmap_values(lookup: dict, organs: list[str], groups: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(deviation_pct, has an interval) per organ (rows) x subgroup (columns)."""
    values = np.full((len(organs), len(groups)), np.nan)
    tested = np.zeros(values.shape, dtype=bool)
    for i, o in enumerate(organs):
        for j, (s, a) in enumerate(groups):
            r = lookup.get((o, s, a))
            if r is not None and r.deviation_pct is not None:
                values[i, j] = float(r.deviation_pct)
                tested[i, j] = is_tested(r)
    return values, tested


def _annotate_cell(ax, i: int, j: int, key: str, r: object, v: float, vmax: float, limit_pct: float) -> bool:
    """The deviation and n of one heatmap cell, its outline outside the margin, its hatch without an
    interval; True when hatched."""
    n_text = f"{fmt_n(r.n_real)}/{fmt_n(r.n_synth)}" if r is not None else "no data"
    dark, dev_text = (abs(v) > 0.6 * vmax, f"{v:+.1f}") if np.isfinite(v) else (False, "n/a")
    colour = "white" if dark else "black"
    outside = bool(np.isfinite(v) and abs(v) > limit_pct)
    ax.text(j + 0.5, i + 0.40, dev_text, ha="center", va="center", fontsize=8, color=colour,
            fontweight="bold" if outside else "normal", gid=f"value:{key}")
    ax.text(j + 0.5, i + 0.75, n_text, ha="center", va="center", fontsize=6.5, color=colour, gid=f"n:{key}")
    if outside:
        ax.add_patch(Rectangle((j + 0.06, i + 0.06), 0.88, 0.88, fill=False, edgecolor="black", linewidth=1.8,
                               gid=f"{OUTSIDE_GID}:{key}"))
    hatched = bool(r is not None and np.isfinite(v) and not is_tested(r))
    if hatched:
        ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="//", edgecolor="#8c8c8c", linewidth=0,
                               gid=f"{UNTESTED_GID}:{key}"))
    return hatched


def _heatmap_axes(ax, organs: list[str], groups: list[tuple[str, str]]) -> None:
    """Ticks, limits and the lines between subgroup kinds (all | sex | age | sex x age)."""
    kinds = [subgroup_kind(s, a) for s, a in groups]
    for j in range(1, len(groups)):
        if kinds[j] != kinds[j - 1]:
            ax.axvline(j, color="black", linewidth=1.2)
    ax.set_xticks(np.arange(len(groups)) + 0.5, [subgroup_label(s, a) for s, a in groups],
                  rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(len(organs)) + 0.5, [o.replace("_", " ") for o in organs])
    ax.set_xlim(0, len(groups))
    ax.set_ylim(len(organs), 0)
    ax.tick_params(length=0)
    ax.set_xlabel("subgroup (sex, age group in years)")


def deviation_heatmap(concordance: pd.DataFrame, metric: str = "suv_mean", margin: float = 0.05) -> Figure:
    """Organ (rows) x subgroup (columns) heatmap of deviation_pct (%) for one metric.

    Colour is centred at 0 with limits symmetric around the largest tested |deviation| (at least twice
    the margin); each cell shows the deviation and n real/synth;
    cells with |deviation| > 100 * margin get a black outline (gid ``"outside-margin"``);
    cells without a deviation are grey and say ``n/a``; cells without an interval (fewer than min_n cases
    a side) are hatched.
    """
    rows = metric_rows(concordance, metric)
    organs = organ_order(rows["organ"])
    groups = populated_subgroups(rows)
    lookup = {(r.organ, r.sex, r.age_group): r for r in rows.itertuples(index=False)}
    values, tested = _heatmap_values(lookup, organs, groups)
    limit_pct = 100.0 * margin
    finite = np.isfinite(values)
    scale = np.abs(values[finite & tested]) if (finite & tested).any() else np.abs(values[finite])
    vmax = max(2.0 * limit_pct, float(scale.max()) if scale.size else 0.0, 1.0)  # untested noise may clip
    fig = Figure(figsize=(max(7.0, 3.6 + 0.72 * len(groups)), 1.9 + 0.52 * len(organs)), layout="constrained")
    ax = fig.add_subplot()  # the title needs ~7 in
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=deviation_cmap(), norm=Normalize(-vmax, vmax),
                         edgecolors="white", linewidth=1.0)
    untested = sum(_annotate_cell(ax, i, j, f"{o}|{s}|{a}", lookup.get((o, s, a)), values[i, j], vmax, limit_pct)
                   for i, o in enumerate(organs) for j, (s, a) in enumerate(groups))
    _heatmap_axes(ax, organs, groups)
    hatched = "; hatched: too few cases, not tested" if untested else ""
    ax.set_title(f"{metric_label(metric)}: synthetic vs real, ratio of geometric means - 1 (%)\n"
                 f"outlined: |deviation| > {limit_pct:g}% margin; small print: n real/synthetic; grey: n/a{hatched}",
                 fontsize=9, loc="left")
    clipped = bool(finite.any() and np.nanmax(np.abs(values)) > vmax)
    cbar = fig.colorbar(mesh, ax=ax, shrink=0.8, pad=0.01, extend="both" if clipped else "neither")
    cbar.set_label("deviation (%)  synthetic lower <-> higher")
    return fig


VERDICT_MARKERS: dict[str, dict] = {
    "differs": dict(marker="o", color="#c0392b", markerfacecolor="#c0392b"),
    "equivalent": dict(marker="o", color=SYNTH_COLOUR, markerfacecolor=SYNTH_COLOUR),
    "inconclusive": dict(marker="o", color=SYNTH_COLOUR, markerfacecolor="white"),
    "not tested": dict(marker="D", color="#7f7f7f", markerfacecolor="white"),
}


def _verdict_of(row: object) -> str:
    v = str(getattr(row, "verdict", "not tested"))
    return v if v in VERDICT_MARKERS else "not tested"


def _forest_row(ax, k: int, r: object, seen: set[str]) -> float:
    """One subgroup's marker (and CI) in an organ's panel at height ``k``; returns the |deviation| (%) the
    x axis must reach (0 for n/a). Adds the marker kind to ``seen``."""
    dev = float(r.deviation_pct) if r is not None else np.nan
    if not np.isfinite(dev):
        ax.text(0, k, "n/a", ha="center", va="center", fontsize=7, color="grey")
        return 0.0
    if not is_tested(r):
        ax.plot(dev, k, "x", color="grey", markersize=5)
        seen.add("too few")
        return abs(dev)
    lo, hi = float(r.deviation_ci_low), float(r.deviation_ci_high)
    verdict = _verdict_of(r)
    seen.add(verdict)
    ax.errorbar(dev, k, xerr=[[dev - lo], [hi - dev]], fmt="none", ecolor=VERDICT_MARKERS[verdict]["color"],
                elinewidth=1.4, capsize=2)
    ax.plot(dev, k, linestyle="", markersize=5, **VERDICT_MARKERS[verdict])
    return max(abs(lo), abs(hi))


def _forest_panel(ax, organ: str, groups: list[tuple[str, str]], lookup: dict, margin: float,
                  seen: set[str]) -> None:
    """One organ's panel: the shaded margin, a row per subgroup, an x axis wide enough for every interval."""
    ax.axvspan(-100 * margin, 100 * margin, color="#9ecf9e", alpha=0.35, linewidth=0)
    ax.axvline(0, color="grey", linewidth=0.8)
    extent = max([100 * margin * 1.5] + [_forest_row(ax, k, lookup.get((organ, s, a)), seen)
                                         for k, (s, a) in enumerate(groups)])
    ax.set_xlim(-1.08 * extent, 1.08 * extent)
    ax.set_title(organ.replace("_", " "), fontsize=9, fontweight="bold")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=7)


def _forest_legend(fig: Figure, metric: str, margin: float, seen: set[str]) -> None:
    """The x label shared by the panels and the title legend of the marker kinds drawn."""
    fig.supxlabel(f"deviation (%, ratio of geometric means) with CI: sex strata BH-adjusted, age groups 95%; "
                  f"shaded: +-{100 * margin:g}% margin", fontsize=8)
    handles = [Line2D([], [], linestyle="", markersize=5, label=v, **VERDICT_MARKERS[v])
               for v in VERDICT_MARKERS if v in seen]
    if "too few" in seen:
        handles.append(Line2D([], [], marker="x", linestyle="", color="grey", label="too few cases"))
    title_legend(fig, f"{metric_label(metric)}: deviation by organ and subgroup", handles)


def forest_plot(concordance: pd.DataFrame, metric: str = "suv_mean", margin: float = 0.05,
                groups: Sequence[tuple[str, str]] | None = None, ncols: int = 3) -> Figure:
    """Deviation (%) with its CI, one panel per organ with its own x axis, one row per subgroup; margin shaded.

    ``groups`` lists (sex, age_group) pairs; by default all subjects, each sex and each age group.
    Markers by verdict: red = differs, filled = equivalent, hollow = inconclusive, grey diamond = not tested
    (descriptive cells and small cells); grey crosses: too few cases for an interval.
    """
    rows = metric_rows(concordance, metric)
    organs = organ_order(rows["organ"])
    if groups is None:
        groups = [g for g in populated_subgroups(rows) if subgroup_kind(*g) < 3]
    groups = list(groups)
    if not groups:
        raise ValueError(f"no subgroups to plot for {metric!r}")
    ncols = max(1, min(ncols, len(organs)))
    nrows = math.ceil(len(organs) / ncols)
    fig = Figure(figsize=(1.8 + 3.0 * ncols, 0.9 + nrows * (0.8 + 0.28 * len(groups))), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[len(organs):]:
        fig.delaxes(ax)
    lookup = {(r.organ, r.sex, r.age_group): r for r in rows.itertuples(index=False)}
    seen: set[str] = set()
    for ax, organ in zip(axes, organs):
        _forest_panel(ax, organ, groups, lookup, margin, seen)
    axes[0].set_yticks(np.arange(len(groups)), [subgroup_label(s, a) for s, a in groups])
    axes[0].set_ylim(len(groups) - 0.5, -0.5)
    _forest_legend(fig, metric, margin, seen)
    return fig

"""Deviation figures from the concordance table: the organ x subgroup heatmap and the forest plot."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .style import (DEVIATION_CMAP, NAN_COLOUR, OUTSIDE_GID, SYNTH_COLOUR, UNTESTED_GID, fmt_n, is_tested,
                    label_bottom_row, metric_label, metric_rows, organ_order, populated_subgroups, subgroup_kind,
                    subgroup_label, title_legend, truthy)


def deviation_heatmap(concordance: pd.DataFrame, metric: str = "suv_mean", margin: float = 0.05) -> Figure:
    """Organ (rows) x subgroup (columns) heatmap of deviation_pct (%) for one metric.

    Colour is centred at 0 with limits symmetric around the largest tested |deviation| (at least twice
    the margin); each cell shows the deviation and n real/synth;
    cells with |deviation| > 100 * margin get a black outline (gid ``"outside-margin"``);
    cells without a deviation are grey and say ``n/a``; cells not tested (no ``welch_p``: fewer than
    min_n cases a side) are hatched.
    """
    rows = metric_rows(concordance, metric)
    organs = organ_order(rows["organ"])
    groups = populated_subgroups(rows)
    lookup = {(r.organ, r.sex, r.age_group): r for r in rows.itertuples(index=False)}
    values = np.full((len(organs), len(groups)), np.nan)
    tested = np.zeros(values.shape, dtype=bool)
    for i, o in enumerate(organs):
        for j, (s, a) in enumerate(groups):
            r = lookup.get((o, s, a))
            if r is not None and r.deviation_pct is not None:
                values[i, j] = float(r.deviation_pct)
                tested[i, j] = is_tested(r)
    limit_pct = 100.0 * margin
    finite = np.isfinite(values)
    scale = np.abs(values[finite & tested]) if (finite & tested).any() else np.abs(values[finite])
    vmax = max(2.0 * limit_pct, float(scale.max()) if scale.size else 0.0, 1.0)  # untested noise may clip
    norm = Normalize(-vmax, vmax)
    cmap = sns.color_palette(DEVIATION_CMAP, as_cmap=True).with_extremes(bad=NAN_COLOUR)

    width = max(7.0, 2.4 + 0.72 * len(groups) + 1.2)  # the title needs ~7 in
    height = 1.9 + 0.52 * len(organs)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, norm=norm, edgecolors="white", linewidth=1.0)
    untested = 0
    for i, o in enumerate(organs):
        for j, (s, a) in enumerate(groups):
            r = lookup.get((o, s, a))
            n_text = f"{fmt_n(r.n_real)}/{fmt_n(r.n_synth)}" if r is not None else "no data"
            v = values[i, j]
            if np.isfinite(v):
                dark = abs(v) > 0.6 * vmax
                dev_text = f"{v:+.1f}"
            else:
                dark, dev_text = False, "n/a"
            colour = "white" if dark else "black"
            outside = bool(np.isfinite(v) and abs(v) > limit_pct)
            ax.text(j + 0.5, i + 0.40, dev_text, ha="center", va="center", fontsize=8, color=colour,
                    fontweight="bold" if outside else "normal", gid=f"value:{o}|{s}|{a}")
            ax.text(j + 0.5, i + 0.75, n_text, ha="center", va="center", fontsize=6.5, color=colour,
                    gid=f"n:{o}|{s}|{a}")
            if outside:
                ax.add_patch(Rectangle((j + 0.06, i + 0.06), 0.88, 0.88, fill=False, edgecolor="black",
                                       linewidth=1.8, gid=f"{OUTSIDE_GID}:{o}|{s}|{a}"))
            if r is not None and np.isfinite(v) and not is_tested(r):
                untested += 1
                ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="//", edgecolor="#8c8c8c", linewidth=0,
                                       gid=f"{UNTESTED_GID}:{o}|{s}|{a}"))
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
    hatched = "; hatched: too few cases, not tested" if untested else ""
    ax.set_title(f"{metric_label(metric)}: synthetic vs real, deviation of the mean (%)\n"
                 f"outlined: |deviation| > {limit_pct:g}% margin; small print: n real/synthetic; grey: n/a{hatched}",
                 fontsize=9, loc="left")
    clipped = bool(finite.any() and np.nanmax(np.abs(values)) > vmax)
    cbar = fig.colorbar(mesh, ax=ax, shrink=0.8, pad=0.01, extend="both" if clipped else "neither")
    cbar.set_label("deviation (%)  synthetic lower <-> higher")
    return fig


def forest_plot(concordance: pd.DataFrame, metric: str = "suv_mean", margin: float = 0.05,
                groups: Sequence[tuple[str, str]] | None = None, ncols: int = 4) -> Figure:
    """Deviation (%) with its bootstrap CI per organ, one panel per subgroup; the margin shaded.

    ``groups`` lists (sex, age_group) pairs; by default all subjects, each sex and each age group.
    Filled markers: equivalent by TOST; hollow: not shown equivalent; grey crosses: too few cases to test.
    """
    rows = metric_rows(concordance, metric)
    organs = organ_order(rows["organ"])
    if groups is None:
        groups = [g for g in populated_subgroups(rows) if subgroup_kind(*g) < 3]
    groups = list(groups)
    if not groups:
        raise ValueError(f"no subgroups to plot for {metric!r}")
    nrows = math.ceil(len(groups) / max(1, ncols))
    ncols = math.ceil(len(groups) / nrows)  # balanced rows: 5 panels as 3 + 2, not 4 + 1
    fig = Figure(figsize=(1.6 + 2.7 * ncols, 0.9 + nrows * (0.9 + 0.32 * len(organs))), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[len(groups):]:
        fig.delaxes(ax)
    lims = rows[["deviation_pct", "deviation_ci_low", "deviation_ci_high"]].abs().to_numpy(dtype=float)
    xmax = max(100 * margin * 2, np.nanmax(lims) if np.isfinite(lims).any() else 0.0) * 1.1
    y = np.arange(len(organs))
    any_untested = False
    for ax, (s, a) in zip(axes, groups):
        sub = rows[(rows["sex"] == s) & (rows["age_group"] == a)].set_index("organ").reindex(organs)
        dev = sub["deviation_pct"].to_numpy(dtype=float)
        lo = sub["deviation_ci_low"].to_numpy(dtype=float)
        hi = sub["deviation_ci_high"].to_numpy(dtype=float)
        eq = sub["equivalent"].map(truthy).to_numpy(dtype=bool) if "equivalent" in sub else np.zeros(len(organs), bool)
        ax.axvspan(-100 * margin, 100 * margin, color="#9ecf9e", alpha=0.35, linewidth=0)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.errorbar(dev, y, xerr=np.vstack([dev - lo, hi - dev]), fmt="none", ecolor=SYNTH_COLOUR,
                    elinewidth=1.4, capsize=2)
        tested = np.array([is_tested(r) for r in sub.itertuples()], dtype=bool)
        any_untested |= bool((~tested & np.isfinite(dev)).any())
        ax.plot(dev[eq & tested], y[eq & tested], "o", color=SYNTH_COLOUR, markersize=5)
        ax.plot(dev[~eq & tested], y[~eq & tested], "o", markerfacecolor="white", markeredgecolor=SYNTH_COLOUR,
                markersize=5)
        ax.plot(dev[~tested], y[~tested], "x", color="grey", markersize=5)
        for k in np.flatnonzero(~np.isfinite(dev)):
            ax.text(0, y[k], "n/a", ha="center", va="center", fontsize=7, color="grey")
        n = sub[["n_real", "n_synth"]].max()
        ax.set_title(f"{subgroup_label(s, a)}  (n {fmt_n(n['n_real'])}/{fmt_n(n['n_synth'])})", fontsize=9)
        ax.set_xlim(-xmax, xmax)
        ax.grid(axis="x", alpha=0.3)
    label_bottom_row(axes[:len(groups)], ncols, None)
    axes[0].set_yticks(y, [o.replace("_", " ") for o in organs])
    axes[0].set_ylim(len(organs) - 0.5, -0.5)
    fig.supxlabel(f"deviation of synthetic from real mean (%), 95% CI; shaded: +-{100 * margin:g}% margin",
                  fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="", color=SYNTH_COLOUR, label="equivalent (TOST)"),
               Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor=SYNTH_COLOUR,
                      label="not shown equivalent")]
    if any_untested:
        handles.append(Line2D([], [], marker="x", linestyle="", color="grey", label="too few cases, not tested"))
    title_legend(fig, f"{metric_label(metric)}: deviation by subgroup", handles)
    return fig

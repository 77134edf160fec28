"""Figures from the organ_metrics table: real vs synthetic distributions and trends with age."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .style import (COHORT_PALETTE, SEX_STYLE, age_group_order, cohort_handles, label_bottom_row,
                    metric_label, organ_order, title_legend)


def has_demographics(organ_metrics: pd.DataFrame) -> bool:
    """True when every cohort in the table has some sex and age values (else only overall comparisons)."""
    for _, part in organ_metrics.groupby("cohort"):
        if part["sex"].isna().all() or part["age"].isna().all():
            return False
    return len(organ_metrics) > 0


def _with_columns(organ_metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    if metric not in organ_metrics:
        raise ValueError(f"organ_metrics has no column {metric!r}")
    data = organ_metrics.dropna(subset=[metric])
    if "n_voxels" in data:  # organs absent from a case are not values (as in stats)
        data = data[~(pd.to_numeric(data["n_voxels"], errors="coerce") == 0)]
    if data.empty:
        raise ValueError(f"no finite {metric!r} values to plot")
    return data.assign(organ=data["organ"].astype(str), cohort=data["cohort"].astype(str))


def kde_outline(values: np.ndarray, n_grid: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel density (Scott's bandwidth, as scipy.stats.gaussian_kde) on a grid spanning the
    data (no extrapolation past min/max); returns (grid, density)."""
    grid = np.linspace(values.min(), values.max(), n_grid)
    bandwidth = values.std(ddof=1) * values.size ** (-1 / 5)
    z = (grid[:, None] - values[None, :]) / bandwidth
    return grid, np.exp(-0.5 * z * z).sum(axis=1) / (values.size * bandwidth * math.sqrt(2 * math.pi))


def half_violin(ax, values: np.ndarray, x: float, side: int, colour: str, half_width: float = 0.4) -> None:
    """One half of a split violin at ``x`` (side -1 left, +1 right), every half scaled to the same
    maximum width, with white quartile lines (median solid). One distinct value draws a line."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    if values.size < 2 or np.ptp(values) == 0:
        ax.plot([x, x + side * half_width], [values[0]] * 2, color=colour, linewidth=2)
        return
    grid, density = kde_outline(values)
    width = density / density.max() * half_width
    ax.fill_betweenx(grid, x, x + side * width, facecolor=colour, edgecolor="0.25", linewidth=0.6)
    for q, style in zip(np.percentile(values, [25, 50, 75]), ("--", "-", "--")):
        ax.plot([x, x + side * np.interp(q, grid, width)], [q, q], color="white", linewidth=0.8, linestyle=style)


def _by_subgroup(data: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(rows with text sex and age_group, sexes, age groups youngest first); without demographics one
    subgroup of all subjects."""
    if has_demographics(data):
        data = data.dropna(subset=["sex", "age_group"]).assign(sex=lambda d: d["sex"].astype(str),
                                                              age_group=lambda d: d["age_group"].astype(str))
        return data, sorted(data["sex"].unique()), age_group_order(data["age_group"])
    return data.assign(sex="all subjects", age_group="all"), ["all subjects"], ["all"]


def _violin_panel(ax, cell: pd.DataFrame, metric: str, ages: list[str]) -> None:
    """Split violins (real left, synthetic right) of one organ and sex, one per age group."""
    if cell.empty:
        ax.text(0.5, 0.5, "no cases", transform=ax.transAxes, ha="center", color="grey")
    for x, age in enumerate(ages):
        at_age = cell[cell["age_group"] == age]
        for cohort, side in (("real", -1), ("synth", 1)):
            half_violin(ax, at_age.loc[at_age["cohort"] == cohort, metric].to_numpy(float), x, side,
                        COHORT_PALETTE[cohort])
    ax.set_xticks(range(len(ages)), ages)
    ax.set_xlim(-0.6, len(ages) - 0.4)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def distributions(organ_metrics: pd.DataFrame, metric: str = "suv_mean") -> Figure:
    """Split violins (real | synthetic) of one metric per organ, by sex (columns) and age group (x).

    One row of panels per organ, each with its own scale; without demographics, one panel per
    organ over all subjects.
    """
    data = _with_columns(organ_metrics, metric)
    organs = organ_order(data["organ"])
    data, sexes, ages = _by_subgroup(data)
    width = max(5.5, 1.2 + len(sexes) * (0.9 + 0.75 * len(ages)))  # wide enough for the title legend
    fig = Figure(figsize=(width, 1.0 + 1.75 * len(organs)), layout="constrained")
    axes = fig.subplots(len(organs), len(sexes), squeeze=False, sharex=True, sharey="row")
    for i, o in enumerate(organs):
        row = data[data["organ"] == o]
        for j, s in enumerate(sexes):
            ax = axes[i, j]
            _violin_panel(ax, row[row["sex"] == s], metric, ages)
            ax.set_ylabel(f"{o.replace('_', ' ')}\n{metric_label(metric)}" if j == 0 else "", fontsize=8)
            ax.set_xlabel("age group (years)" if i == len(organs) - 1 and ages != ["all"] else "")
            if i == 0:
                ax.set_title({"F": "female", "M": "male"}.get(s, s), fontsize=9)
    title_legend(fig, f"{metric_label(metric)}: real (left half) vs synthetic (right half)", cohort_handles())
    return fig


def _trend_note(trends: pd.DataFrame | None, organ: str, metric: str) -> str:
    if trends is None or trends.empty or not {"organ", "metric", "term"} <= set(trends.columns):
        return ""
    hit = trends[(trends["organ"] == organ) & (trends["metric"] == metric) & (trends["term"] == "age")]
    if hit.empty:
        return ""
    r = hit.iloc[0]
    real, synth, p = (float(r.get(k, np.nan)) for k in ("real_effect", "synth_effect", "interaction_p"))
    if not np.isfinite(real):
        return ""
    return f"age effect, % per year (log model)\nreal {real:+.3g}, synthetic {synth:+.3g}; p = {p:.2g}"


def trend_plot(organ_metrics: pd.DataFrame, trends: pd.DataFrame | None = None, metric: str = "suv_mean",
               ncols: int = 3) -> Figure:
    """Metric vs age (years) per organ: points and least-squares lines per cohort (colour) and sex (style).

    When ``trends`` (stats' trends table) is given, each panel notes the fitted age effects and the
    p value of their difference. Cases without an age are left out.
    """
    data = _with_columns(organ_metrics, metric).dropna(subset=["age"])
    if data.empty:
        raise ValueError("no cases with an age: nothing to plot against age")
    organs = organ_order(data["organ"])
    ncols = max(1, min(ncols, len(organs)))
    nrows = math.ceil(len(organs) / ncols)
    fig = Figure(figsize=(1.0 + 3.6 * ncols, 0.8 + 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax in axes[len(organs):]:
        fig.delaxes(ax)
    for ax, o in zip(axes, organs):
        panel = data[data["organ"] == o]
        for (c, s), part in panel.groupby([panel["cohort"], panel["sex"].fillna("?").astype(str)]):
            style = SEX_STYLE.get(s, {"marker": "s", "linestyle": ":"})
            colour = COHORT_PALETTE.get(c, "grey")
            x, v = part["age"].to_numpy(float), part[metric].to_numpy(float)
            ax.scatter(x, v, s=12, alpha=0.5, color=colour, marker=style["marker"], linewidths=0)
            if len(x) >= 3 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, v, 1)
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, intercept + slope * xs, color=colour, linestyle=style["linestyle"], linewidth=1.8)
        note = _trend_note(trends, o, metric)
        ax.set_title(o.replace("_", " "), fontsize=9, fontweight="bold", loc="right" if note else "center")
        if note:  # above the panel, left of the organ name: never over the data
            ax.set_title(note, fontsize=6.5, loc="left", gid="trend-note")
        ax.set_ylabel(metric_label(metric), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    label_bottom_row(axes[:len(organs)], ncols, "age (years)")
    handles = cohort_handles() + [Line2D([], [], color="black", label={"F": "female", "M": "male"}[s], **st)
                                   for s, st in SEX_STYLE.items()]
    title_legend(fig, f"{metric_label(metric)} vs age: points per case, lines = least-squares fit", handles)
    return fig

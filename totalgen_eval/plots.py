"""Figures from the result tables: deviation heatmap, forest plot, distributions, trends.

Every function takes tables and returns a :class:`matplotlib.figure.Figure`; nothing is shown or
written here (report.py saves them). Figures are built without pyplot, so they work headless and
are freed when dropped. ``margin`` is a fraction (0.05 = 5 %), as in ``stats.compare_tables``;
deviations are in % (100 (synth - real) / real).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .organs import ORGAN_NAMES

REAL_COLOUR = "#2f4b7c"   # dark blue: the real cohort, in every figure
SYNTH_COLOUR = "#f28e2b"  # orange: the synthetic cohort, in every figure
COHORT_PALETTE: dict[str, str] = {"real": REAL_COLOUR, "synth": SYNTH_COLOUR}
COHORTS = ("real", "synth")
SEX_STYLE: dict[str, dict] = {"F": {"marker": "o", "linestyle": "-"}, "M": {"marker": "^", "linestyle": "--"}}
DEVIATION_CMAP = "PRGn"   # diverging, centred at 0; purple = synthetic lower, green = synthetic higher
NAN_COLOUR = "#c8c8c8"
OUTSIDE_GID = "outside-margin"  # gid of the outline drawn on heatmap cells outside the margin
UNTESTED_GID = "untested"  # gid of the hatching on heatmap cells too small to be tested

METRIC_LABELS: dict[str, str] = {
    "volume_ml": "volume (mL)", "n_voxels": "voxels", "suv_mean": "SUVmean (SUV)",
    "suv_median": "SUVmedian (SUV)", "suv_std": "SUV SD (SUV)", "suv_max": "SUVmax (SUV)",
    "suv_peak": "SUVpeak (SUV)", "hu_mean": "mean CT (HU)",
}


def metric_label(metric: str) -> str:
    """Axis label with the unit of an organ_metrics column, e.g. ``"volume (mL)"``."""
    return METRIC_LABELS.get(metric, metric)


def organ_order(organs: Sequence[str]) -> list[str]:
    """The organs present, in the canonical order (unknown names last, alphabetically)."""
    present = list(dict.fromkeys(str(o) for o in organs))
    known = [o for o in ORGAN_NAMES if o in present]
    return known + sorted(o for o in present if o not in known)


def age_group_key(label: str) -> float:
    """Sort key of an age-group label (``"<18"``, ``"18-40"``, ``"80+"``, ``"<=65"``, ``">65"``): youngest first."""
    text = str(label)
    m = re.search(r"\d+(\.\d+)?", text)
    if m is None:
        return math.inf
    x = float(m.group())
    if text.startswith("<="):
        return x - 0.5
    if text.startswith("<"):
        return x - 1.0
    if text.startswith(">"):
        return x + 0.5
    return x


def age_group_order(labels: Sequence[str]) -> list[str]:
    """Distinct age-group labels, youngest first; ``"all"`` and missing values dropped."""
    distinct = {str(x) for x in labels if isinstance(x, str) and x != "all"}
    return sorted(distinct, key=age_group_key)


def subgroup_label(sex: str, age_group: str) -> str:
    """Short column label of a concordance subgroup: ``all``, ``F``, ``60-80``, ``F 60-80``."""
    parts = [str(p) for p in (sex, age_group) if str(p) != "all"]
    return " ".join(parts) if parts else "all"


def subgroups(concordance: pd.DataFrame) -> list[tuple[str, str]]:
    """The (sex, age_group) subgroups of a concordance table: all, sexes, age groups, sex x age."""
    pairs = set(zip(concordance["sex"].astype(str), concordance["age_group"].astype(str)))
    ages = age_group_order([a for _, a in pairs])
    sexes = sorted({s for s, _ in pairs if s != "all"})
    order = [("all", "all")] + [(s, "all") for s in sexes] + [("all", a) for a in ages]
    order += [(s, a) for s in sexes for a in ages]
    return [p for p in order if p in pairs]


def populated_subgroups(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """:func:`subgroups` that hold a deviation or cases on both sides in at least one organ (a synthetic
    cohort without demographics leaves only ``all``)."""
    dev = pd.to_numeric(rows["deviation_pct"], errors="coerce").notna()
    both = (pd.to_numeric(rows["n_real"], errors="coerce") > 0) & (pd.to_numeric(rows["n_synth"], errors="coerce") > 0)
    keep = set(zip(rows.loc[dev | both, "sex"].astype(str), rows.loc[dev | both, "age_group"].astype(str)))
    return [g for g in subgroups(rows) if g in keep] or subgroups(rows)[:1]


def _kind(sex: str, age: str) -> int:
    return (sex != "all") + 2 * (age != "all")


def _cells(concordance: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = concordance[concordance["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no concordance rows for metric {metric!r}; present: "
                         f"{', '.join(map(str, concordance['metric'].unique()))}")
    return rows.assign(sex=rows["sex"].astype(str), age_group=rows["age_group"].astype(str),
                       organ=rows["organ"].astype(str))


def _tested(row: object) -> bool:
    """False when the row's tests were not run (no Welch p: fewer than min_n cases a side)."""
    p = getattr(row, "welch_p", 0.0)
    try:
        return bool(np.isfinite(float(p)))
    except (TypeError, ValueError):
        return False


def _fmt_n(value: object) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def deviation_heatmap(concordance: pd.DataFrame, metric: str = "suv_mean", margin: float = 0.05) -> Figure:
    """Organ (rows) x subgroup (columns) heatmap of deviation_pct (%) for one metric.

    Colour is centred at 0 with limits symmetric around the largest tested |deviation| (at least twice
    the margin); each cell shows the deviation and n real/synth;
    cells with |deviation| > 100 * margin get a black outline (gid ``"outside-margin"``);
    cells without a deviation are grey and say ``n/a``; cells not tested (no ``welch_p``: fewer than
    min_n cases a side) are hatched.
    """
    rows = _cells(concordance, metric)
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
                tested[i, j] = _tested(r)
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
            n_text = f"{_fmt_n(r.n_real)}/{_fmt_n(r.n_synth)}" if r is not None else "no data"
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
            if r is not None and np.isfinite(v) and not _tested(r):
                untested += 1
                ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="//", edgecolor="#8c8c8c", linewidth=0,
                                       gid=f"{UNTESTED_GID}:{o}|{s}|{a}"))
    kinds = [_kind(s, a) for s, a in groups]
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
    rows = _cells(concordance, metric)
    organs = organ_order(rows["organ"])
    if groups is None:
        groups = [g for g in populated_subgroups(rows) if _kind(*g) < 3]
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
        eq = sub["equivalent"].map(_truthy).to_numpy(dtype=bool) if "equivalent" in sub else np.zeros(len(organs), bool)
        ax.axvspan(-100 * margin, 100 * margin, color="#9ecf9e", alpha=0.35, linewidth=0)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.errorbar(dev, y, xerr=np.vstack([dev - lo, hi - dev]), fmt="none", ecolor=SYNTH_COLOUR,
                    elinewidth=1.4, capsize=2)
        tested = np.array([_tested(r) for r in sub.itertuples()], dtype=bool)
        any_untested |= bool((~tested & np.isfinite(dev)).any())
        ax.plot(dev[eq & tested], y[eq & tested], "o", color=SYNTH_COLOUR, markersize=5)
        ax.plot(dev[~eq & tested], y[~eq & tested], "o", markerfacecolor="white", markeredgecolor=SYNTH_COLOUR,
                markersize=5)
        ax.plot(dev[~tested], y[~tested], "x", color="grey", markersize=5)
        for k in np.flatnonzero(~np.isfinite(dev)):
            ax.text(0, y[k], "n/a", ha="center", va="center", fontsize=7, color="grey")
        n = sub[["n_real", "n_synth"]].max()
        ax.set_title(f"{subgroup_label(s, a)}  (n {_fmt_n(n['n_real'])}/{_fmt_n(n['n_synth'])})", fontsize=9)
        ax.set_xlim(-xmax, xmax)
        ax.grid(axis="x", alpha=0.3)
    _label_bottom_row(axes[:len(groups)], ncols, None)
    axes[0].set_yticks(y, [o.replace("_", " ") for o in organs])
    axes[0].set_ylim(len(organs) - 0.5, -0.5)
    fig.supxlabel(f"deviation of synthetic from real mean (%), 95% CI; shaded: +-{100 * margin:g}% margin",
                  fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="", color=SYNTH_COLOUR, label="equivalent (TOST)"),
               Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor=SYNTH_COLOUR,
                      label="not shown equivalent")]
    if any_untested:
        handles.append(Line2D([], [], marker="x", linestyle="", color="grey", label="too few cases, not tested"))
    _title_legend(fig, f"{metric_label(metric)}: deviation by subgroup", handles)
    return fig


def _label_bottom_row(axes: Sequence, ncols: int, label: str | None) -> None:
    """Tick labels (and ``label``) on the lowest panel of each column, also above removed panels."""
    for k, ax in enumerate(axes):
        if k + ncols >= len(axes):
            ax.xaxis.set_tick_params(labelbottom=True)
            if label:
                ax.set_xlabel(label, fontsize=8)


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


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


def distributions(organ_metrics: pd.DataFrame, metric: str = "suv_mean") -> Figure:
    """Split violins (real | synthetic) of one metric per organ, by sex (columns) and age group (x).

    One row of panels per organ, each with its own scale; without demographics, one panel per
    organ over all subjects.
    """
    data = _with_columns(organ_metrics, metric)
    organs = organ_order(data["organ"])
    if has_demographics(data):
        data = data.dropna(subset=["sex", "age_group"]).assign(sex=lambda d: d["sex"].astype(str),
                                                              age_group=lambda d: d["age_group"].astype(str))
        sexes, ages = sorted(data["sex"].unique()), age_group_order(data["age_group"])
    else:
        data = data.assign(sex="all subjects", age_group="all")
        sexes, ages = ["all subjects"], ["all"]
    ncols = len(sexes)
    width = max(5.5, 1.2 + ncols * (0.9 + 0.75 * len(ages)))  # wide enough for the title legend
    fig = Figure(figsize=(width, 1.0 + 1.75 * len(organs)), layout="constrained")
    axes = fig.subplots(len(organs), ncols, squeeze=False, sharex=True, sharey="row")
    for i, o in enumerate(organs):
        row = data[data["organ"] == o]
        for j, s in enumerate(sexes):
            ax = axes[i, j]
            cell = row[row["sex"] == s]
            if cell.empty:
                ax.text(0.5, 0.5, "no cases", transform=ax.transAxes, ha="center", color="grey")
            else:
                sns.violinplot(data=cell, x="age_group", y=metric, hue="cohort", order=ages,
                               hue_order=[c for c in COHORTS if c in set(data["cohort"])],
                               palette=COHORT_PALETTE, split=True, inner="quart", cut=0, density_norm="width",
                               linewidth=0.6, inner_kws={"color": "white", "linewidth": 0.8}, ax=ax, legend=False)
            ax.set_ylabel(f"{o.replace('_', ' ')}\n{metric_label(metric)}" if j == 0 else "", fontsize=8)
            ax.set_xlabel("age group (years)" if i == len(organs) - 1 and ages != ["all"] else "")
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title({"F": "female", "M": "male"}.get(s, s), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    _title_legend(fig, f"{metric_label(metric)}: real (left half) vs synthetic (right half)", _cohort_handles())
    return fig


def _title_legend(fig: Figure, title: str, handles: list) -> None:
    """The figure title and legend as one artist above the panels (a suptitle and an outside
    legend overlap under constrained layout)."""
    legend = fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8,
                        frameon=False, title=title, title_fontproperties={"size": 10})
    legend.set_gid("title-legend")


def _cohort_handles() -> list[Patch]:
    return [Patch(color=COHORT_PALETTE[c], label={"real": "real", "synth": "synthetic"}[c]) for c in COHORTS]


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
    return f"age effect per year (model): real {real:+.3g}, synthetic {synth:+.3g}\ndifference p = {p:.2g}"


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
        ax.set_title(o.replace("_", " "), fontsize=9)
        note = _trend_note(trends, o, metric)
        if note:
            ax.text(0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize=6.5,
                    bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})
        ax.set_ylabel(metric_label(metric), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _label_bottom_row(axes[:len(organs)], ncols, "age (years)")
    handles = _cohort_handles() + [Line2D([], [], color="black", label={"F": "female", "M": "male"}[s], **st)
                                   for s, st in SEX_STYLE.items()]
    _title_legend(fig, f"{metric_label(metric)} vs age: points per case, lines = least-squares fit", handles)
    return fig

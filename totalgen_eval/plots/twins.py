"""Per-twin figures (a synthetic case and the real case whose demographics it copies) and SUVmax.

``twins`` maps synthetic case ids to real case ids (the synthetic cohort's ``twin_of``). Values come from
the organ_metrics table (cohort "real" / "synth"); organs absent from a case (n_voxels 0) are left out.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .style import REAL_COLOUR, SYNTH_COLOUR, cohort_handles, metric_label, organ_order, title_legend


def _present(organ_metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    if metric not in organ_metrics:
        raise ValueError(f"organ_metrics has no column {metric!r}")
    data = organ_metrics.dropna(subset=[metric])
    if "n_voxels" in data:
        data = data[~(pd.to_numeric(data["n_voxels"], errors="coerce") == 0)]
    return data.assign(organ=data["organ"].astype(str), case_id=data["case_id"].astype(str),
                       cohort=data["cohort"].astype(str))


def paired_values(organ_metrics: pd.DataFrame, twins: Mapping[str, str], metric: str) -> pd.DataFrame:
    """One row per twin pair x organ: organ, synth_id, real_id, real, synth (values of ``metric``)."""
    data = _present(organ_metrics, metric)
    real = data[data["cohort"] == "real"].set_index(["case_id", "organ"])[metric]
    synth = data[data["cohort"] == "synth"]
    rows = []
    for r in synth.itertuples(index=False):
        real_id = twins.get(r.case_id)
        key = (str(real_id), r.organ)
        if real_id is not None and key in real.index:
            rows.append((r.organ, r.case_id, str(real_id), float(real.loc[key]), float(getattr(r, metric))))
    frame = pd.DataFrame(rows, columns=["organ", "synth_id", "real_id", "real", "synth"])
    if frame.empty:
        raise ValueError("no twin pairs: no synthetic case names a real case of the table in twin_of")
    return frame


def _grid(n: int, ncols: int = 3) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.3 * ncols + 0.6, 2.2 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def twin_scatter(organ_metrics: pd.DataFrame, twins: Mapping[str, str], metric: str = "suv_mean") -> Figure:
    """Synthetic twin (y) against its real case (x), one panel per organ, with the identity line and
    Lin's concordance correlation coefficient (CCC) in each title."""
    pairs = paired_values(organ_metrics, twins, metric)
    organs = organ_order(pairs["organ"])
    fig, axes = _grid(len(organs))
    for ax, organ in zip(axes, organs):
        p = pairs[pairs["organ"] == organ]
        ax.scatter(p["real"], p["synth"], s=10, color=SYNTH_COLOUR, edgecolor="0.3", linewidth=0.3)
        lo = float(min(p["real"].min(), p["synth"].min()))
        hi = float(max(p["real"].max(), p["synth"].max()))
        ax.plot([lo, hi], [lo, hi], color=REAL_COLOUR, linewidth=0.8, linestyle="--", gid="identity")
        ax.set_title(f"{organ.replace('_', ' ')} (n={len(p)}, CCC {concordance_ccc(p['real'], p['synth']):.2f})",
                     fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel(f"real case: {metric_label(metric)}", fontsize=8)
    fig.supylabel(f"synthetic twin: {metric_label(metric)}", fontsize=8)
    return fig


def concordance_ccc(x: pd.Series | np.ndarray, y: pd.Series | np.ndarray) -> float:
    """Lin's concordance correlation coefficient 2 cov / (var x + var y + (mean x - mean y)^2) (n - 1 form);
    NaN with fewer than two pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2:
        return float("nan")
    cov = np.cov(x, y)[0, 1]
    denom = x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def bland_altman(organ_metrics: pd.DataFrame, twins: Mapping[str, str], metric: str = "suv_mean") -> Figure:
    """Bland-Altman per organ: difference in % of the pair mean, 100 (synth - real) / mean, against the
    pair mean; solid line the mean difference (bias), dashed the limits of agreement (bias +- 1.96 SD)."""
    pairs = paired_values(organ_metrics, twins, metric)
    organs = organ_order(pairs["organ"])
    fig, axes = _grid(len(organs))
    for ax, organ in zip(axes, organs):
        p = pairs[pairs["organ"] == organ]
        mean = (p["real"] + p["synth"]) / 2
        diff = 100 * (p["synth"] - p["real"]) / mean.where(mean != 0)
        ax.scatter(mean, diff, s=10, color=SYNTH_COLOUR, edgecolor="0.3", linewidth=0.3)
        bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
        ax.axhline(bias, color=REAL_COLOUR, linewidth=1, gid="bias")
        if np.isfinite(sd):
            for s in (-1.96, 1.96):
                ax.axhline(bias + s * sd, color=REAL_COLOUR, linewidth=0.8, linestyle="--", gid="limit")
        ax.axhline(0, color="0.6", linewidth=0.5)
        ax.set_title(f"{organ.replace('_', ' ')}: bias {bias:+.1f}%", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel(f"mean of twin and real case: {metric_label(metric)}", fontsize=8)
    fig.supylabel("difference, synthetic - real (% of the mean)", fontsize=8)
    return fig


def suvmax_figure(organ_metrics: pd.DataFrame, metric: str = "suv_max") -> Figure:
    """SUVmax per organ, real (blue, left) and synthetic (orange, right): every case as a dot (log scale),
    medians as bars, with the ratio of medians above each organ."""
    data = _present(organ_metrics, metric)
    data = data[pd.to_numeric(data[metric], errors="coerce") > 0]
    if data.empty:
        raise ValueError(f"no positive {metric!r} values to plot")
    organs = organ_order(data["organ"])
    fig = Figure(figsize=(max(6.4, 0.8 * len(organs) + 1.5), 3.6), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    top = float(data[metric].max())
    for i, organ in enumerate(organs):
        medians = {}
        for side, colour, dx in (("real", REAL_COLOUR, -0.2), ("synth", SYNTH_COLOUR, 0.2)):
            v = data.loc[(data["organ"] == organ) & (data["cohort"] == side), metric].to_numpy(float)
            if v.size == 0:
                continue
            ax.scatter(i + dx + rng.uniform(-0.08, 0.08, v.size), v, s=5, color=colour, alpha=0.6, linewidth=0)
            medians[side] = float(np.median(v))
            ax.plot([i + dx - 0.15, i + dx + 0.15], [medians[side]] * 2, color="black", linewidth=1.5, gid="median")
        if len(medians) == 2:
            ax.text(i, top * 1.6, f"x{medians['synth'] / medians['real']:.2f}", ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=top * 3)
    ax.set_xticks(range(len(organs)), [o.replace("_", " ") for o in organs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric_label(metric), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    title_legend(fig, f"{metric_label(metric)} per organ (ratio of medians synthetic / real above)", cohort_handles())
    return fig

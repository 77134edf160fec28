"""Shared look and vocabulary of the figures: cohort colours, metric labels with units, organ and
subgroup order, and small layout helpers."""
from __future__ import annotations

import math
import re
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..organs import ORGAN_NAMES

REAL_COLOUR = "#2f4b7c"   # dark blue: the real cohort, in every figure
SYNTH_COLOUR = "#f28e2b"  # orange: the synthetic cohort, in every figure
COHORT_PALETTE: dict[str, str] = {"real": REAL_COLOUR, "synth": SYNTH_COLOUR}
COHORTS = ("real", "synth")
SEX_STYLE: dict[str, dict] = {"F": {"marker": "o", "linestyle": "-"}, "M": {"marker": "^", "linestyle": "--"}}
DEVIATION_CMAP = "PRGn"   # diverging, centred at 0; purple = synthetic lower, green = synthetic higher
NAN_COLOUR = "#c8c8c8"
OUTSIDE_GID = "outside-margin"  # gid of the outline drawn on heatmap cells outside the margin
UNTESTED_GID = "untested"  # gid of the hatching on heatmap cells too small to be tested


def deviation_cmap() -> Colormap:
    """The heatmap's colour map: matplotlib's ``DEVIATION_CMAP`` with missing cells (NaN) in ``NAN_COLOUR``."""
    return matplotlib.colormaps[DEVIATION_CMAP].with_extremes(bad=NAN_COLOUR)


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


def subgroup_kind(sex: str, age: str) -> int:
    """0 all subjects, 1 by sex, 2 by age group, 3 sex x age group."""
    return (sex != "all") + 2 * (age != "all")


def metric_rows(concordance: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The concordance rows of one metric with text keys; ValueError naming the metrics present if none."""
    rows = concordance[concordance["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no concordance rows for metric {metric!r}; present: "
                         f"{', '.join(map(str, concordance['metric'].unique()))}")
    return rows.assign(sex=rows["sex"].astype(str), age_group=rows["age_group"].astype(str),
                       organ=rows["organ"].astype(str))


def is_tested(row: object) -> bool:
    """False when the row has no interval (fewer than min_n cases a side, or no estimate)."""
    try:
        return bool(np.isfinite(float(getattr(row, "deviation_ci_low", np.nan))))
    except (TypeError, ValueError):
        return False


def fmt_n(value: object) -> str:
    """A case count as text (``"?"`` when missing)."""
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def label_bottom_row(axes: Sequence, ncols: int, label: str | None) -> None:
    """Tick labels (and ``label``) on the lowest panel of each column, also above removed panels."""
    for k, ax in enumerate(axes):
        if k + ncols >= len(axes):
            ax.xaxis.set_tick_params(labelbottom=True)
            if label:
                ax.set_xlabel(label, fontsize=8)


def truthy(value: object) -> bool:
    """A flag from a table cell: True/"True"/1 are true; False, NaN and anything unreadable are not."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def title_legend(fig: Figure, title: str, handles: list) -> None:
    """The figure title and legend as one artist above the panels (a suptitle and an outside
    legend overlap under constrained layout)."""
    legend = fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8,
                        frameon=False, title=title, title_fontproperties={"size": 10})
    legend.set_gid("title-legend")


def cohort_handles() -> list[Patch]:
    """Legend patches for the real and synthetic colours."""
    return [Patch(color=COHORT_PALETTE[c], label={"real": "real", "synth": "synthetic"}[c]) for c in COHORTS]

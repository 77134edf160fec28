"""The demographics table ("Table 1") of a real and a synthetic cohort, as a pandas frame of display text."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ..demographics import DEFAULT_AGE_BINS, age_group
from .style import age_group_order

SIDES: tuple[tuple[str, str], ...] = (("real", "real"), ("synth", "synthetic"))


def _mean_sd(values: pd.Series, digits: int) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "n/a"
    sd = v.std(ddof=1) if len(v) > 1 else math.nan
    text = f"{v.mean():.{digits}f} ± {sd:.{digits}f}" if not math.isnan(sd) else f"{v.mean():.{digits}f}"
    missing = int(pd.to_numeric(values, errors="coerce").isna().sum())
    return text + (f" ({missing} missing)" if missing else "")


def per_case(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per case (organ_metrics has one per case x organ): case_id, age, sex, height_m, weight_kg."""
    cols = [c for c in ("case_id", "age", "sex", "height_m", "weight_kg") if c in frame.columns]
    return frame[cols].drop_duplicates("case_id") if "case_id" in cols else frame[cols]


def table_one(real: pd.DataFrame, synth: pd.DataFrame, age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> pd.DataFrame:
    """Rows: n, age (years) mean ± SD, sex F / M, height (m), weight (kg) mean ± SD, then n per sex x age
    group; columns: characteristic, real, synthetic. Inputs: per-case frames (``Cohort.to_frame()``) or
    organ_metrics tables (one row per case x organ is reduced to one per case)."""
    sides = {"real": per_case(real), "synth": per_case(synth)}
    rows: list[dict] = []

    def add(label: str, func) -> None:
        rows.append({"characteristic": label, **{title: func(sides[key]) for key, title in SIDES}})

    add("n", lambda d: str(len(d)))
    add("age (years), mean ± SD", lambda d: _mean_sd(d.get("age", pd.Series(dtype=float)), 1))
    add("sex, F / M", lambda d: f"{int((d.get('sex') == 'F').sum())} / {int((d.get('sex') == 'M').sum())}"
        if "sex" in d else "n/a")
    add("height (m), mean ± SD", lambda d: _mean_sd(d.get("height_m", pd.Series(dtype=float)), 2))
    add("weight (kg), mean ± SD", lambda d: _mean_sd(d.get("weight_kg", pd.Series(dtype=float)), 1))
    counts = {k: subgroup_counts(d, age_bins) for k, d in sides.items()}
    labels = age_group_order([a for c in counts.values() for _, a in c.index])
    for sex in ("F", "M"):
        for label in labels:
            rows.append({"characteristic": f"n, {sex} {label}",
                         **{title: str(int(counts[key].get((sex, label), 0))) if len(sides[key]) else "n/a"
                            for key, title in SIDES}})
    return pd.DataFrame(rows, columns=["characteristic", "real", "synthetic"])


def subgroup_counts(frame: pd.DataFrame, age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> pd.Series:
    """Cases per (sex, age group) of a per-case frame (empty without sex or age)."""
    if "sex" not in frame or "age" not in frame or frame.empty:
        return pd.Series(dtype=int)
    groups = age_group(pd.to_numeric(frame["age"], errors="coerce"), age_bins).astype(str)
    return frame.assign(age_group=groups).groupby(["sex", "age_group"]).size()

"""Headline figures of a comparison (the ``summary.json`` content, without provenance): computed here once.

Over the **primary** cells only (organ x {volume_ml, suv_mean} x sex and all): verdict counts per metric and
the worst primary cells. Nothing is pooled over overlapping cells or across metrics.
"""
from __future__ import annotations

import math

import pandas as pd

from .verdicts import VERDICTS

WORST_CELLS = 10


def primary_cells(concordance: pd.DataFrame) -> pd.DataFrame:
    """The rows of the primary family."""
    return concordance[concordance["family"].astype(str) == "primary"]


def verdict_counts(cells: pd.DataFrame) -> dict[str, int]:
    """``{verdict: count}`` over ``cells``, every verdict present (0 where none)."""
    counts = cells["verdict"].astype(str).value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def worst_cells(concordance: pd.DataFrame, k: int = WORST_CELLS) -> pd.DataFrame:
    """The ``k`` tested primary cells with the largest |deviation_pct|, largest first."""
    cells = primary_cells(concordance)
    cells = cells[cells["verdict"].astype(str) != "not tested"]
    dev = pd.to_numeric(cells["deviation_pct"], errors="coerce").abs()
    return cells.loc[dev.sort_values(ascending=False, kind="stable").index[:k]].reset_index(drop=True)


def summarize(concordance: pd.DataFrame, trends: pd.DataFrame) -> dict:
    """Headline (verdict counts over primary cells per metric), the worst primary cells and the trend verdicts."""
    primary = primary_cells(concordance)
    per_metric = {}
    for metric, cells in primary.groupby("metric", sort=False):
        tested = cells[cells["verdict"].astype(str) != "not tested"]
        dev = pd.to_numeric(tested["deviation_pct"], errors="coerce").abs()
        per_metric[str(metric)] = {"cells": int(len(cells)), **verdict_counts(cells),
                                   "median_abs_deviation_pct": float(dev.median()) if len(dev) else math.nan}
    worst = worst_cells(concordance).astype(object)
    worst = worst.where(worst.notna(), None)
    tested_trends = trends[trends["p_adjusted"].notna()] if "p_adjusted" in trends else trends.iloc[:0]
    return {"headline": {"primary_cells": int(len(primary)), **verdict_counts(primary), "per_metric": per_metric},
            "worst_cells": worst.to_dict(orient="records"),
            "trends": {"terms_tested": int(len(tested_trends)),
                       "terms_differing": int((tested_trends["verdict"] == "differs").sum())}}

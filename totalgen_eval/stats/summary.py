"""Headline figures of a comparison (the ``summary.json`` content, without provenance)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

WORST_CELLS = 10


def tested(concordance: pd.DataFrame) -> pd.DataFrame:
    """Cells that were tested (enough cases on both sides) and have a deviation."""
    return concordance[concordance["welch_p"].notna() & concordance["deviation_pct"].notna()]


def _share(mask: pd.Series) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


def _figures(cells: pd.DataFrame, margin: float, alpha: float) -> dict[str, float | int]:
    dev = cells["deviation_pct"].abs()
    eq = cells["equivalent"].astype("boolean")
    return {
        "cells_tested": int(len(cells)),
        "share_within_margin": _share(dev <= 100 * margin),
        "share_equivalent": _share(eq.fillna(False).astype(bool)),
        "share_flagged": _share(cells["p_adjusted"] < alpha),
        "median_abs_deviation_pct": float(dev.median()) if len(cells) else float("nan"),
    }


def summarize(concordance: pd.DataFrame, trends: pd.DataFrame, *, metrics: Sequence[str], margin: float,
              alpha: float) -> dict:
    """Headline figures, per-metric figures, the worst cells and the trend verdicts.

    Shares are over tested cells: within the margin means ``|deviation_pct| <= 100 * margin``; equivalent
    means TOST p < alpha (cells without a TOST count as not equivalent); flagged means BH-adjusted Welch
    p < alpha. The worst cells are the tested cells with the largest ``|deviation_pct|``.
    """
    cells = tested(concordance)
    headline = {"cells": int(len(concordance)), **_figures(cells, margin, alpha),
                "cells_below_min_n": int(concordance["welch_p"].isna().sum()),
                "trend_terms_differing": int((trends["interaction_p"] < alpha).sum()),
                "trend_terms_tested": int(trends["interaction_p"].notna().sum())}
    per_metric = {m: _figures(cells[cells["metric"] == m], margin, alpha) for m in metrics}
    order = cells["deviation_pct"].abs().sort_values(ascending=False, kind="stable").index
    worst = cells.loc[order[:WORST_CELLS]].astype(object).where(lambda f: f.notna(), None)
    return {"headline": headline, "per_metric": per_metric, "worst_cells": worst.to_dict(orient="records")}


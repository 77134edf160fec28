"""Plain-language verdicts and headline figures from the concordance table (pure functions)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

TOO_FEW = "too few cases"
NO_DATA = "no data"
DIFFERS = "differs"
NOT_SHOWN = "within margin, not shown equivalent (too few cases / too variable)"
INCONCLUSIVE = "outside margin, difference not significant (inconclusive)"


def equivalent_text(margin: float) -> str:
    """The verdict of a cell shown equivalent, e.g. ``"equivalent within 5%"`` (``margin`` a fraction)."""
    return f"equivalent within {100 * margin:g}%"


def verdict_rule(margin: float, min_n: int, alpha: float) -> list[str]:
    """The verdict rule in words, in the order it is applied (stated in the report)."""
    m = f"{100 * margin:g}%"
    return [
        f'"{TOO_FEW}": fewer than {min_n} real or synthetic cases in the all-subjects cell;',
        f'"{equivalent_text(margin)}": the TOST equivalence test on the log scale (margin {m}) is significant '
        f"(p < {alpha:g});",
        f'"{DIFFERS}": Benjamini-Hochberg adjusted p < {alpha:g} and |deviation| > {m};',
        f'"{NOT_SHOWN}": |deviation| <= {m} but equivalence not shown;',
        f'"{INCONCLUSIVE}": |deviation| > {m} without a significant difference;',
        f'"{NO_DATA}": no deviation could be computed.',
    ]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _flag(value: Any) -> bool | None:
    if isinstance(value, str):
        text = value.strip().lower()
        return True if text in ("true", "1", "yes") else False if text in ("false", "0", "no") else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def verdict(row: Mapping[str, Any], margin: float = 0.05, min_n: int = 5, alpha: float = 0.05) -> str:
    """The verdict of one concordance cell (see :func:`verdict_rule`); ``margin`` is a fraction."""
    n_real, n_synth = _number(row.get("n_real")), _number(row.get("n_synth"))
    if not (n_real >= min_n and n_synth >= min_n):
        return TOO_FEW
    dev = _number(row.get("deviation_pct"))
    if not math.isfinite(dev):
        return NO_DATA
    equivalent = _flag(row.get("equivalent"))
    if equivalent is None:
        tost = _number(row.get("tost_p"))
        equivalent = bool(math.isfinite(tost) and tost < alpha)
    if equivalent:
        return equivalent_text(margin)
    outside = abs(dev) > 100 * margin
    if outside and _number(row.get("p_adjusted")) < alpha:
        return DIFFERS
    return INCONCLUSIVE if outside else NOT_SHOWN


def overall_cells(concordance: pd.DataFrame) -> pd.DataFrame:
    """The all-subjects rows (sex and age_group both ``"all"``)."""
    return concordance[(concordance["sex"].astype(str) == "all") & (concordance["age_group"].astype(str) == "all")]


def organ_verdicts(concordance: pd.DataFrame, margin: float = 0.05, min_n: int = 5,
                   alpha: float = 0.05) -> pd.DataFrame:
    """One row per organ x metric of the all-subjects cell: n, deviation (%) with CI, and the verdict."""
    cells = overall_cells(concordance)
    out = cells.loc[:, [c for c in ("organ", "metric", "n_real", "n_synth", "deviation_pct", "deviation_ci_low",
                                    "deviation_ci_high", "tost_p", "p_adjusted") if c in cells]].copy()
    out["verdict"] = [verdict(r, margin, min_n, alpha) for r in cells.to_dict("records")]
    return out.reset_index(drop=True)


def tested_cells(concordance: pd.DataFrame) -> pd.DataFrame:
    """Cells that were tested (a Welch p, i.e. enough cases on both sides) and have a deviation."""
    ok = pd.to_numeric(concordance["deviation_pct"], errors="coerce").notna()
    if "welch_p" in concordance:
        ok &= pd.to_numeric(concordance["welch_p"], errors="coerce").notna()
    return concordance[ok]


def _figures(cells: pd.DataFrame, margin: float, alpha: float) -> dict[str, float]:
    dev = pd.to_numeric(cells["deviation_pct"], errors="coerce").abs()
    eq = cells["equivalent"].map(_flag).fillna(False).astype(bool) if "equivalent" in cells else dev * 0 > 0
    flagged = pd.to_numeric(cells["p_adjusted"], errors="coerce") < alpha if "p_adjusted" in cells else dev * 0 > 0
    n = len(cells)
    return {"cells_tested": n,
            "share_within_margin": float((dev <= 100 * margin).mean()) if n else math.nan,
            "share_equivalent": float(eq.mean()) if n else math.nan,
            "share_flagged": float(flagged.mean()) if n else math.nan,
            "median_abs_deviation_pct": float(dev.median()) if n else math.nan}


def headline(concordance: pd.DataFrame, margin: float = 0.05, alpha: float = 0.05) -> pd.DataFrame:
    """Per metric, then ``all metrics``, over tested cells: the number of cells, the shares within the margin,
    equivalent (TOST) and flagged (adjusted p < alpha), and the median |deviation| (%)."""
    cells = tested_cells(concordance)
    rows = [{"metric": m, **_figures(cells[cells["metric"] == m], margin, alpha)}
            for m in dict.fromkeys(concordance["metric"])]
    rows.append({"metric": "all metrics", **_figures(cells, margin, alpha)})
    return pd.DataFrame(rows)


def worst_cells(concordance: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The ``k`` tested cells with the largest |deviation_pct|, largest first."""
    cells = tested_cells(concordance)
    dev = pd.to_numeric(cells["deviation_pct"], errors="coerce").abs()
    return cells.loc[dev.sort_values(ascending=False, kind="stable").index[:k]].reset_index(drop=True)

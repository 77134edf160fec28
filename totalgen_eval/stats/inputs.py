"""Checking and preparing the two organ tables: required columns, age groups, per-metric exclusions."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..demographics import age_group
from ..errors import InputError
from ..organs import ORGAN_NAMES

KEY_COLUMNS: tuple[str, ...] = ("case_id", "age", "sex", "organ")
OPTIONAL_COLUMNS: tuple[str, ...] = ("height_m", "weight_kg", "n_voxels")


def check_columns(table: pd.DataFrame, metrics: Sequence[str], name: str) -> None:
    """Raise InputError naming every required column (keys + ``metrics``) that ``table`` lacks."""
    missing = [c for c in (*KEY_COLUMNS, *metrics) if c not in table.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (an organ_metrics table needs "
                         f"{', '.join(KEY_COLUMNS)} and the compared metrics)", name)


def prepare(table: pd.DataFrame, metrics: Sequence[str], age_bins: Sequence[float],
            organs: Sequence[str] | None) -> pd.DataFrame:
    """A clean copy: numeric metrics, sex as "M"/"F"/NaN, ``age_group`` recomputed from ``age`` with ``age_bins``.

    The input's own ``age_group`` column is ignored (it may have been made with other bins).
    Rows of organs outside ``organs`` (when given) are dropped; nothing else is dropped here.
    """
    cols = [c for c in (*KEY_COLUMNS, *OPTIONAL_COLUMNS, *metrics) if c in table.columns]
    out = table.loc[:, list(dict.fromkeys(cols))].copy()
    out["case_id"] = out["case_id"].astype(str).astype(object)  # plain Python strings: the cell loop indexes them
    out["organ"] = out["organ"].astype(str).astype(object)
    for c in ("age", *OPTIONAL_COLUMNS, *metrics):
        if c in out.columns:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    sex = out["sex"].astype("string").str.strip().str.upper()
    out["sex"] = sex.where(sex.isin(["M", "F"])).astype(object)
    out.loc[out["sex"].isna(), "sex"] = np.nan
    out["age_group"] = age_group(out["age"], age_bins).to_numpy(object)
    if organs is not None:
        out = out[out["organ"].isin(list(organs))]
    return out.reset_index(drop=True)


def usable(table: pd.DataFrame, metric: str) -> pd.Series:
    """Rows whose ``metric`` can be compared: a finite value and, where known, at least one voxel."""
    ok = np.isfinite(table[metric].to_numpy(dtype=float))
    if "n_voxels" in table.columns:
        ok &= ~(table["n_voxels"].to_numpy(dtype=float) == 0)
    return pd.Series(ok, index=table.index)


def excluded_counts(table: pd.DataFrame, metrics: Sequence[str]) -> dict[str, dict[str, int]]:
    """Rows left out of each metric: ``{metric: {"no_voxels": k, "missing_value": m}}`` (no voxels counted first)."""
    out = {}
    empty = (table["n_voxels"] == 0) if "n_voxels" in table.columns else pd.Series(False, index=table.index)
    for m in metrics:
        missing = ~np.isfinite(table[m].to_numpy(dtype=float))
        out[m] = {"no_voxels": int(empty.sum()), "missing_value": int((missing & ~empty.to_numpy()).sum())}
    return out


def organ_order(real: pd.DataFrame, synth: pd.DataFrame, organs: Sequence[str] | None) -> list[str]:
    """Organs to report: ``organs`` if given, else those in either table (canonical nine first, then A-Z)."""
    if organs is not None:
        return list(dict.fromkeys(organs))
    present = set(real["organ"]) | set(synth["organ"])
    return [o for o in ORGAN_NAMES if o in present] + sorted(present - set(ORGAN_NAMES))


def read_table(path: str | Path) -> pd.DataFrame:
    """An organ_metrics CSV; InputError (naming the file) when absent, empty or not CSV."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV table ({str(exc).splitlines()[0]})", path) from None

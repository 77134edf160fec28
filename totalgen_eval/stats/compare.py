"""compare_tables: two organ tables in, a :class:`Comparison` (concordance + trends + summary) out. No files."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import pandas as pd

from ..demographics import DEFAULT_AGE_BINS
from ..errors import InputError
from ..provenance import stamp
from .concordance import CellSettings, concordance_table
from .inputs import check_columns, excluded_counts, organ_order, prepare
from .summary import summarize
from .trends import trends_table

DEFAULT_METRICS: tuple[str, ...] = ("volume_ml", "suv_mean", "suv_max")


def _finite(value: float, name: str, option: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, not {value}", option)
    return value


@dataclass(frozen=True)
class StatsParams:
    """Every option of a comparison's statistics: validated here, once; saved in summary.json.

    margin: equivalence margin as a fraction (0.05 = ratio of geometric means within 1/1.05..1.05);
    alpha: level of every test (BH within a family; the equivalence interval is 1 - 2 alpha);
    age_bins: age-group edges in years; min_n: fewest cases per side for a cell to be tested;
    robust: HC3 standard errors in the adjusted model instead of classical ones; trends: fit trend models.
    """

    margin: float = 0.05
    alpha: float = 0.05
    age_bins: tuple[float, ...] = DEFAULT_AGE_BINS
    min_n: int = 5
    metrics: tuple[str, ...] = DEFAULT_METRICS
    organs: tuple[str, ...] | None = None
    robust: bool = False
    trends: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        margin, alpha = _finite(self.margin, "margin", "--margin"), _finite(self.alpha, "alpha", "--alpha")
        if not 0 < margin < 1:
            raise InputError(f"margin {margin} must lie between 0 and 1 (0.05 = 5%)", "--margin")
        if not 0 < alpha < 0.5:
            raise InputError(f"alpha {alpha} must lie between 0 and 0.5", "--alpha")
        if int(self.min_n) < 2:
            raise InputError(f"min_n {self.min_n} must be at least 2 (an SD needs two cases)", "--min-n")
        if not self.metrics:
            raise InputError("no metric to compare", "--metrics")
        object.__setattr__(self, "margin", margin)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "min_n", int(self.min_n))
        object.__setattr__(self, "age_bins", tuple(float(b) for b in self.age_bins))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.organs is not None:
            object.__setattr__(self, "organs", tuple(self.organs))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "StatsParams":
        """The parameters recorded in a summary.json (unknown keys ignored, missing ones default)."""
        known = {f for f in cls.__dataclass_fields__}
        kept = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
        return cls(**kept)

    def with_(self, **changes: Any) -> "StatsParams":
        return replace(self, **changes)


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_tables`: ``concordance`` and ``trends`` tables, ``summary`` dict, ``params``."""

    concordance: pd.DataFrame
    trends: pd.DataFrame
    summary: dict = field(repr=False)
    params: StatsParams


def twin_map(synth: pd.DataFrame) -> dict[str, str]:
    """``{synthetic case_id: real case_id}`` from a ``twin_of`` column (empty without one)."""
    if "twin_of" not in synth.columns:
        return {}
    pairs = synth.loc[:, ["case_id", "twin_of"]].dropna().drop_duplicates("case_id")
    return {str(c): str(t) for c, t in zip(pairs["case_id"], pairs["twin_of"]) if str(t).strip()}


def compare_tables(real: pd.DataFrame, synth: pd.DataFrame, params: StatsParams | None = None, *,
                   twins: Mapping[str, str] | None = None, **options: Any) -> Comparison:
    """Compare a synthetic organ table with a real one (both in the organ_metrics format).

    Required columns: ``case_id, age, sex, organ`` and the metrics; ``height_m, weight_kg`` enter the adjusted
    model when known. ``params`` (or the same names as keywords: ``margin=0.05, alpha=0.05, age_bins=...,
    min_n=5, metrics=..., organs=None, robust=False, trends=True``) are validated by :class:`StatsParams`.
    ``twins`` maps synthetic to real case ids (default: the synthetic table's ``twin_of`` column) and adds
    the paired sensitivity analysis. See :mod:`.concordance`, :mod:`.verdicts` and :mod:`.trends`.

    Example::

        result = compare_tables(real_table, synth_table, margin=0.05)
        result.concordance.query("family == 'primary'")[["organ", "metric", "sex", "deviation_pct", "verdict"]]
    """
    params = (params or StatsParams()).with_(**options)
    check_columns(real, params.metrics, "real table")
    check_columns(synth, params.metrics, "synthetic table")
    twins = dict(twins) if twins is not None else twin_map(synth)
    r = prepare(real, params.metrics, params.age_bins, params.organs)
    s = prepare(synth, params.metrics, params.age_bins, params.organs)
    organ_list = organ_order(r, s, params.organs)
    settings = CellSettings(margin=params.margin, alpha=params.alpha, min_n=params.min_n, robust=params.robust)
    conc, conc_notes = concordance_table(r, s, organs=organ_list, metrics=params.metrics, age_bins=params.age_bins,
                                         settings=settings, twins=twins or None)
    trend, trend_notes = trends_table(r, s, organs=organ_list if params.trends else [], metrics=params.metrics,
                                      min_n=params.min_n, alpha=params.alpha)
    summary = summarize(conc, trend)
    summary.update(
        twins=len(twins),
        excluded_rows={"real": excluded_counts(r, params.metrics), "synth": excluded_counts(s, params.metrics)},
        notes={"concordance": conc_notes, "trends": trend_notes},
        **stamp(params, params.seed))
    return Comparison(concordance=conc, trends=trend, summary=summary, params=params)

"""compare_tables and run_stats: two organ tables in, concordance + trends + summary out."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..demographics import DEFAULT_AGE_BINS
from ..errors import InputError
from ..provenance import stamp, write_json, write_table
from .concordance import BOOTSTRAP_METHOD, concordance_table
from .inputs import check_columns, excluded_counts, organ_order, prepare
from .summary import summarize
from .trends import trends_table

DEFAULT_METRICS: tuple[str, ...] = ("volume_ml", "suv_mean", "suv_max")


@dataclass(frozen=True)
class StatsParams:
    """Every option of a comparison's statistics (saved in summary.json).

    margin: equivalence margin as a fraction of the real mean (0.05 = +-5%); age_bins: age-group edges in
    years; min_n: fewest cases per side for a cell to be tested; n_boot: bootstrap resamples for the
    deviation CI (0 = no CI); alpha: level of every test and of the (1 - alpha) intervals.
    """

    margin: float = 0.05
    age_bins: tuple[float, ...] = DEFAULT_AGE_BINS
    min_n: int = 5
    metrics: tuple[str, ...] = DEFAULT_METRICS
    organs: tuple[str, ...] | None = None
    n_boot: int = 2000
    seed: int = 0
    alpha: float = 0.05
    trends: bool = True
    bootstrap_method: str = BOOTSTRAP_METHOD

    def __post_init__(self) -> None:
        if not 0 < self.margin < 1:
            raise InputError(f"margin {self.margin} must lie between 0 and 1 (0.05 = 5%)", "--margin")
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha {self.alpha} must lie between 0 and 1", "--alpha")
        if self.min_n < 2:
            raise InputError(f"min_n {self.min_n} must be at least 2 (an SD needs two cases)", "--min-n")
        if self.n_boot < 0:
            raise InputError(f"n_boot {self.n_boot} must be >= 0", "--n-boot")
        if not self.metrics:
            raise InputError("no metric to compare", "--metrics")


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_tables`: ``concordance`` and ``trends`` tables, ``summary`` dict, ``params``."""

    concordance: pd.DataFrame
    trends: pd.DataFrame
    summary: dict = field(repr=False)
    params: StatsParams


def compare_tables(real: pd.DataFrame, synth: pd.DataFrame, margin: float = 0.05,
                   age_bins: Sequence[float] = DEFAULT_AGE_BINS, min_n: int = 5,
                   metrics: Sequence[str] = DEFAULT_METRICS, organs: Sequence[str] | None = None,
                   n_boot: int = 2000, seed: int = 0, alpha: float = 0.05, trends: bool = True) -> Comparison:
    """Compare a synthetic organ table with a real one (both in the organ_metrics format, DESIGN.md section 3).

    Required columns: ``case_id, age, sex, organ`` and the ``metrics``; ``height_m, weight_kg`` are used by the
    trends when known, ``n_voxels == 0`` rows are left out. ``age_group`` is recomputed from ``age`` with
    ``age_bins``. Rows with ``n_voxels == 0`` or a NaN metric are left out of that metric (counted in
    ``summary["excluded_rows"]``). ``trends=False`` skips the trend models (an empty trends table).
    See :mod:`.concordance` and :mod:`.trends` for the columns and tests.
    """
    params = StatsParams(margin=float(margin), age_bins=tuple(float(b) for b in age_bins), min_n=int(min_n),
                         metrics=tuple(metrics), organs=None if organs is None else tuple(organs),
                         n_boot=int(n_boot), seed=int(seed), alpha=float(alpha), trends=bool(trends))
    check_columns(real, params.metrics, "real table")
    check_columns(synth, params.metrics, "synthetic table")
    r = prepare(real, params.metrics, params.age_bins, params.organs)
    s = prepare(synth, params.metrics, params.age_bins, params.organs)
    organ_list = organ_order(r, s, params.organs)
    conc, conc_notes = concordance_table(r, s, organs=organ_list, metrics=params.metrics, age_bins=params.age_bins,
                                         margin=params.margin, min_n=params.min_n, n_boot=params.n_boot,
                                         seed=params.seed, alpha=params.alpha)
    if params.trends:
        trend, trend_notes = trends_table(r, s, organs=organ_list, metrics=params.metrics, min_n=params.min_n,
                                          alpha=params.alpha)
    else:
        trend, trend_notes = trends_table(r.iloc[:0], s.iloc[:0], organs=[], metrics=[], min_n=params.min_n,
                                          alpha=params.alpha)
    summary = summarize(conc, trend, metrics=params.metrics, margin=params.margin, alpha=params.alpha)
    summary.update(
        excluded_rows={"real": excluded_counts(r, params.metrics), "synth": excluded_counts(s, params.metrics)},
        notes={"concordance": conc_notes, "trends": trend_notes},
        **stamp(params, params.seed))
    return Comparison(concordance=conc, trends=trend, summary=summary, params=params)


def read_table(path: str | Path) -> pd.DataFrame:
    """An organ_metrics CSV; InputError (naming the file) when absent, empty or not CSV."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV table ({str(exc).splitlines()[0]})", path) from None


def run_stats(real_csv: str | Path, synth_csv: str | Path, out_dir: str | Path, **params: Any) -> Comparison:
    """Read two organ_metrics CSVs, compare them, write ``concordance.csv``, ``trends.csv``, ``summary.json``.

    ``params`` are those of :func:`compare_tables`. Files are written atomically into ``out_dir``.
    """
    real, synth = read_table(real_csv), read_table(synth_csv)
    for table, path in ((real, real_csv), (synth, synth_csv)):
        check_columns(table, tuple(params.get("metrics", DEFAULT_METRICS)), path)
    result = compare_tables(real, synth, **params)
    out = Path(out_dir)
    write_table(result.concordance, out / "concordance.csv")
    write_table(result.trends, out / "trends.csv")
    write_json({**result.summary, "inputs": {"real": str(real_csv), "synth": str(synth_csv)}}, out / "summary.json")
    return result

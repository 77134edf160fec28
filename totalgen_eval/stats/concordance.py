"""The concordance table: one row per organ x metric x subgroup, synthetic compared with real.

Columns (DESIGN.md section 3, a contract): see :data:`CONCORDANCE_COLUMNS`.

- ``n_*``, ``*_mean``, ``*_sd`` (SD with ddof=1) in the metric's own unit (mL, SUV, HU).
- ``deviation_pct`` = 100 (synth_mean - real_mean) / real_mean, with a (1 - alpha) bootstrap CI
  (``scipy.stats.bootstrap``, two independent samples resampled separately, method **BCa**: the deviation
  is a ratio of means whose bootstrap distribution is biased and skewed at small n; BCa corrects both for
  one jackknife more than the percentile method costs). Seeded per cell from ``seed`` and the row index.
- ``welch_p``: Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``), two-sided.
- ``mannwhitney_p``: Mann-Whitney U, two-sided (``scipy.stats.mannwhitneyu``, method "auto").
- ``ks_p``: two-sample Kolmogorov-Smirnov (``scipy.stats.ks_2samp``, two-sided).
- ``wasserstein``: the 1-Wasserstein (earth mover's) distance between the two samples **divided by the real
  SD**, so it is unit-free and comparable across organs and metrics (0 = same distribution; 1 = the
  distributions are a real SD apart on average).
- ``tost_p``: two one-sided Welch t-tests on the log scale (``statsmodels.stats.weightstats.ttost_ind``,
  ``usevar="unequal"``) of ``log(1 - margin) < mean(log synth) - mean(log real) < log(1 + margin)``, i.e.
  equivalence of the ratio of the (geometric) means within +-margin. Needs positive values; NaN otherwise.
  ``equivalent`` = ``tost_p < alpha`` (nullable: empty where the test could not be made).
- ``p_adjusted``: Benjamini-Hochberg (``multipletests(method="fdr_bh")``) of the **Welch** p-values over
  the whole table; cells without a Welch p stay NaN and do not count in the family.

Subgroups: all; by sex; by age group; sex x age group (``all`` = not stratified). Cells with fewer than
``min_n`` cases on either side keep their n, means, SDs and deviation but get NaN tests. Tests that cannot be
made (constant values, non-positive values for the log, real mean 0) are NaN and the reason is returned as a
note (the table has no note column).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind

from ..demographics import SEXES, age_group_labels
from .inputs import usable

CONCORDANCE_COLUMNS: tuple[str, ...] = (
    "organ", "metric", "sex", "age_group", "n_real", "n_synth", "real_mean", "synth_mean", "real_sd", "synth_sd",
    "deviation_pct", "deviation_ci_low", "deviation_ci_high", "welch_p", "mannwhitney_p", "ks_p", "wasserstein",
    "tost_p", "equivalent", "p_adjusted")
TEST_COLUMNS: tuple[str, ...] = ("deviation_ci_low", "deviation_ci_high", "welch_p", "mannwhitney_p", "ks_p",
                                 "wasserstein", "tost_p")
BOOTSTRAP_METHOD = "BCa"
ALL = "all"


def subgroups(real: pd.DataFrame, synth: pd.DataFrame, age_bins: Sequence[float]) -> list[tuple[str, str]]:
    """(sex, age_group) pairs present in either table: all, by sex, by age group, sex x age group, in that order."""
    both = pd.concat([real[["sex", "age_group"]], synth[["sex", "age_group"]]], ignore_index=True)
    sexes = [s for s in SEXES if (both["sex"] == s).any()]
    ages = [a for a in age_group_labels(age_bins) if (both["age_group"] == a).any()]
    pairs = set(zip(both["sex"], both["age_group"]))
    return ([(ALL, ALL)] + [(s, ALL) for s in sexes] + [(ALL, a) for a in ages]
            + [(s, a) for s in sexes for a in ages if (s, a) in pairs])


def _in_subgroup(sex_col: np.ndarray, age_col: np.ndarray, sex: str, age: str) -> np.ndarray:
    keep = np.ones(len(sex_col), dtype=bool)
    if sex != ALL:
        keep &= sex_col == sex
    if age != ALL:
        keep &= age_col == age
    return keep


def _deviation_pct(synth: np.ndarray, real: np.ndarray, axis: int = -1) -> np.ndarray:
    """100 (mean(synth) - mean(real)) / mean(real) along ``axis`` (vectorised for the bootstrap)."""
    r = np.mean(real, axis=axis)
    return 100.0 * (np.mean(synth, axis=axis) - r) / r


def _describe(x: np.ndarray) -> tuple[int, float, float]:
    n = int(x.size)
    mean = float(np.mean(x)) if n else np.nan
    sd = float(np.std(x, ddof=1)) if n >= 2 else np.nan
    return n, mean, sd


def two_sample_tests(real: np.ndarray, synth: np.ndarray, margin: float) -> dict[str, np.ndarray]:
    """Welch, Mann-Whitney and KS p-values and the log-scale TOST p for k cells at once.

    ``real`` (n_real, k) and ``synth`` (n_synth, k) hold one cell per column (unpaired samples, so any
    cells with the same n_real and n_synth can share a call). TOST is NaN for columns with values <= 0.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {"welch_p": scipy.stats.ttest_ind(synth, real, axis=0, equal_var=False).pvalue,
               "mannwhitney_p": scipy.stats.mannwhitneyu(synth, real, alternative="two-sided", axis=0).pvalue,
               "ks_p": scipy.stats.ks_2samp(synth, real, axis=0).pvalue,
               "tost_p": np.full(real.shape[1], np.nan)}
        positive = (real > 0).all(axis=0) & (synth > 0).all(axis=0)
        if positive.any():
            out["tost_p"][positive] = ttost_ind(np.log(synth[:, positive]), np.log(real[:, positive]),
                                                np.log(1 - margin), np.log(1 + margin), usevar="unequal")[0]
    return {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in out.items()}


def describe_cell(real: np.ndarray, synth: np.ndarray, *, min_n: int, n_boot: int, alpha: float,
                  rng: np.random.Generator | None) -> tuple[dict[str, float], str | None, bool]:
    """Everything of one cell except the p-values: n, means, SDs, deviation and its bootstrap CI, scaled
    Wasserstein distance. Returns (columns, reason tests are missing or None, whether the cell is testable)."""
    n_r, mean_r, sd_r = _describe(real)
    n_s, mean_s, sd_s = _describe(synth)
    row = dict(n_real=n_r, n_synth=n_s, real_mean=mean_r, synth_mean=mean_s, real_sd=sd_r, synth_sd=sd_s,
               deviation_pct=np.nan, **{c: np.nan for c in TEST_COLUMNS})
    reasons = []
    if n_r and n_s and mean_r != 0:
        row["deviation_pct"] = 100.0 * (mean_s - mean_r) / mean_r
    elif n_r and mean_r == 0:
        reasons.append("real mean is 0: no relative deviation")
    if min(n_r, n_s) < min_n:
        return row, "n<min_n", False
    if sd_r == 0 and sd_s == 0:
        return row, "zero variance in both cohorts: no tests", False
    if sd_r > 0:
        row["wasserstein"] = float(scipy.stats.wasserstein_distance(synth, real)) / sd_r
    else:
        reasons.append("real SD is 0: no scaled Wasserstein distance")
    if not ((real > 0).all() and (synth > 0).all()):
        reasons.append("values <= 0: no log-scale TOST")
    if n_boot > 0 and np.isfinite(row["deviation_pct"]):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = scipy.stats.bootstrap((synth, real), _deviation_pct, n_resamples=n_boot, vectorized=True,
                                       paired=False, confidence_level=1 - alpha, method=BOOTSTRAP_METHOD,
                                       rng=rng).confidence_interval
        row["deviation_ci_low"], row["deviation_ci_high"] = float(ci.low), float(ci.high)
    return row, "; ".join(reasons) or None, True


def cell_statistics(real: np.ndarray, synth: np.ndarray, *, margin: float, min_n: int, n_boot: int,
                    alpha: float, rng: np.random.Generator | None) -> tuple[dict[str, float], str | None]:
    """Every statistic of one cell from its real and synthetic values (1-D, finite).

    Returns the numeric columns of the concordance row (without the keys, ``equivalent`` and ``p_adjusted``)
    and the reason tests are missing (None when all were made, ``"n<min_n"`` for small cells).
    ``n_boot=0`` skips the bootstrap CI (NaN) without a reason.
    """
    row, reason, testable = describe_cell(real, synth, min_n=min_n, n_boot=n_boot, alpha=alpha, rng=rng)
    if testable:
        row.update({k: float(v[0]) for k, v in two_sample_tests(real[:, None], synth[:, None], margin).items()})
    return row, reason


def _batch_key(n_real: int, n_synth: int, index: int) -> tuple[int, ...]:
    """Cells that may share one vectorised call: same sizes, and large enough that Mann-Whitney's "auto"
    method is asymptotic whatever the ties (exact only when a side has <= 8 cases): then the batched
    p-values equal the one-cell ones."""
    return (n_real, n_synth) if min(n_real, n_synth) > 8 else (n_real, n_synth, index)


def concordance_table(real: pd.DataFrame, synth: pd.DataFrame, *, organs: Sequence[str], metrics: Sequence[str],
                      age_bins: Sequence[float], margin: float, min_n: int, n_boot: int, seed: int,
                      alpha: float) -> tuple[pd.DataFrame, list[dict]]:
    """The concordance table (columns :data:`CONCORDANCE_COLUMNS`) and the notes on cells without some tests.

    ``real`` and ``synth`` are prepared tables (see ``inputs.prepare``). Each note is a record
    ``{organ, metric, sex, age_group, reason}``; cells that are merely below ``min_n`` are not noted.
    The p-values of cells of equal size are computed together (vectorised), identical to one at a time.
    """
    groups = subgroups(real, synth, age_bins)
    rows, notes, batches = [], [], {}
    for organ in organs:
        r_org, s_org = real[real["organ"] == organ], synth[synth["organ"] == organ]
        for metric in metrics:
            r_m, s_m = r_org[usable(r_org, metric)], s_org[usable(s_org, metric)]
            r_val, s_val = r_m[metric].to_numpy(float), s_m[metric].to_numpy(float)
            r_sex, r_age = r_m["sex"].to_numpy(object), r_m["age_group"].to_numpy(object)
            s_sex, s_age = s_m["sex"].to_numpy(object), s_m["age_group"].to_numpy(object)
            for sex, age in groups:
                r_cell = r_val[_in_subgroup(r_sex, r_age, sex, age)]
                s_cell = s_val[_in_subgroup(s_sex, s_age, sex, age)]
                stats, reason, testable = describe_cell(r_cell, s_cell, min_n=min_n, n_boot=n_boot, alpha=alpha,
                                                        rng=np.random.default_rng([seed, len(rows)]))
                keys = dict(organ=organ, metric=metric, sex=sex, age_group=age)
                if testable:
                    batches.setdefault(_batch_key(r_cell.size, s_cell.size, len(rows)), []).append(
                        (len(rows), r_cell, s_cell))
                rows.append({**keys, **stats})
                if reason and reason != "n<min_n":
                    notes.append({**keys, "reason": reason})
    for cells in batches.values():
        index, r_cols, s_cols = zip(*cells)
        pvalues = two_sample_tests(np.column_stack(r_cols), np.column_stack(s_cols), margin)
        for j, i in enumerate(index):
            rows[i].update({k: float(v[j]) for k, v in pvalues.items()})
    table = pd.DataFrame(rows, columns=[c for c in CONCORDANCE_COLUMNS if c not in ("equivalent", "p_adjusted")])
    table["equivalent"] = pd.array(np.where(table["tost_p"].notna(), table["tost_p"] < alpha, pd.NA),
                                   dtype="boolean")
    table["p_adjusted"] = bh_adjust(table["welch_p"].to_numpy(float), alpha)
    for c in ("n_real", "n_synth"):
        table[c] = table[c].astype(int)
    return table.loc[:, list(CONCORDANCE_COLUMNS)], notes


def bh_adjust(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of the finite entries of ``p``; NaN entries stay NaN."""
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="fdr_bh")[1]
    return out

"""Families, multiplicity and the verdict of a concordance cell: the one place that decides.

Families (:func:`family`):

- ``primary``: organ x {volume_ml, suv_mean} x sex (``all``, ``F``, ``M``; no age stratum). Tested, BH within.
- ``secondary``: the other metrics (SUVmax, SUVpeak, SUV median, HU ...) in the same strata; their own BH family.
- ``descriptive``: every age-group and sex x age cell: estimate and CI only, no p-value, no flag.

:func:`verdict` (``differs``, ``equivalent``, ``inconclusive``, ``not tested``), applied in this order:

1. ``not tested``: a descriptive cell, fewer than ``min_n`` cases a side, or no estimate;
2. ``differs``: Benjamini-Hochberg adjusted p < alpha within the family. The printed CI of a tested cell is
   the false-coverage-rate adjusted interval that goes with BH (Benjamini & Yekutieli 2005: level
   ``1 - R alpha / m`` for R discoveries among m tests), which excludes 0 exactly when BH flags the cell;
3. ``equivalent``: the 90 % CI (``1 - 2 alpha``) lies inside ``+-log(1 + margin)`` on the log scale (the two
   one-sided tests at alpha); a cell can be equivalent and still differ (a real difference smaller than
   the margin): its verdict is then ``differs`` and its ``equivalent`` column true;
4. ``inconclusive``: neither; :func:`n_to_decide` gives the cases per side that would decide it at the
   observed spread (80 % power).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.special
from statsmodels.stats.multitest import multipletests

PRIMARY_METRICS: tuple[str, ...] = ("volume_ml", "suv_mean")
FAMILIES: tuple[str, ...] = ("primary", "secondary", "descriptive")
VERDICTS: tuple[str, ...] = ("differs", "equivalent", "inconclusive", "not tested")
ALL = "all"
POWER = 0.8


def family(metric: str, sex: str, age_group: str) -> str:
    """The family of a cell (see the module docstring)."""
    if age_group != ALL:
        return "descriptive"
    return "primary" if metric in PRIMARY_METRICS else "secondary"


def bh_adjust(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of the finite entries of ``p``; NaN entries stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="fdr_bh")[1]
    return out


def fcr_level(p_adjusted: np.ndarray, alpha: float) -> float:
    """The confidence level ``1 - max(R, 1) alpha / m`` of the FCR-adjusted intervals of one BH family
    (R discoveries among m tests); ``1 - alpha`` for an empty family."""
    p = np.asarray(p_adjusted, dtype=float)
    m = int(np.isfinite(p).sum())
    if m == 0:
        return 1.0 - alpha
    return 1.0 - max(int((p < alpha).sum()), 1) * alpha / m


def equivalence_bound(margin: float) -> float:
    """The symmetric log-scale equivalence bound ``log(1 + margin)``."""
    return math.log1p(margin)


def is_equivalent(eq_low: float, eq_high: float, margin: float) -> bool | None:
    """True when the (log-scale) equivalence interval lies inside ``+-log(1 + margin)``; None without one."""
    if not (math.isfinite(eq_low) and math.isfinite(eq_high)):
        return None
    bound = equivalence_bound(margin)
    return bool(-bound < eq_low and eq_high < bound)


def verdict(family_name: str, tested: bool, p_adjusted: float, equivalent: bool | None, alpha: float) -> str:
    """The verdict of one cell (rule in the module docstring)."""
    if family_name == "descriptive" or not tested:
        return "not tested"
    if math.isfinite(p_adjusted) and p_adjusted < alpha:
        return "differs"
    return "equivalent" if equivalent else "inconclusive"


def n_to_decide(d: float, se: float, n_real: int, n_synth: int, margin: float, alpha: float) -> float:
    """Cases per side that would decide an inconclusive cell at the observed spread (80 % power).

    The spread is the log-scale SD implied by ``se`` (``se / sqrt(1/n_real + 1/n_synth)``). Outside the
    margin, the n that detects ``d`` (two-sided alpha); inside it, the n that shows equivalence (one-sided
    alpha against the nearer bound).
    """
    if not (math.isfinite(d) and math.isfinite(se) and se > 0 and n_real > 0 and n_synth > 0):
        return math.nan
    sd = se / math.sqrt(1 / n_real + 1 / n_synth)
    bound = equivalence_bound(margin)
    z_power = scipy.special.ndtri(POWER)  # standard normal quantiles
    if abs(d) >= bound:
        distance, z_alpha = abs(d), scipy.special.ndtri(1 - alpha / 2)
    else:
        distance, z_alpha = bound - abs(d), scipy.special.ndtri(1 - alpha)
    if distance == 0:
        return math.inf
    return float(math.ceil(2 * (sd * (z_alpha + z_power) / distance) ** 2))

"""Least squares and the log-scale source effect: the estimand of every concordance cell.

The estimand is ``d``, the synthetic minus real difference of the mean of ``log(metric)``, reported as the
ratio of geometric means ``100 (exp(d) - 1)`` %. Three estimators give it:

- :func:`adjusted_effects` (primary and secondary cells): OLS of
  ``log(metric) ~ synth * sex_M + age + height_m + weight_kg`` gives the source effect within each sex
  (women: ``synth``; men: ``synth + synth:sex_M``); the model without the interaction gives the ``all`` effect.
- :func:`unadjusted_effect` (descriptive cells): the difference of log means with Welch's standard error.
- :func:`paired_effect` (twins): the mean of the log differences of pairs (paired t).

Every estimator returns an :class:`Effect` (``d``, its standard error and degrees of freedom); the
intervals and tests on it are :func:`interval` and :func:`p_value` (Student t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.special

COVARIATES: tuple[str, ...] = ("age", "height_m", "weight_kg")
MIN_KNOWN_SHARE = 0.5  # a covariate known for fewer cases than this on either side is left out of the model


@dataclass(frozen=True)
class Effect:
    """A log-scale difference ``d`` (synthetic minus real) with standard error ``se`` and ``df`` degrees of freedom."""

    d: float
    se: float
    df: float
    n_real: int
    n_synth: int

    @property
    def usable(self) -> bool:
        return bool(np.isfinite(self.d) and np.isfinite(self.se) and self.se > 0 and self.df > 0)


NO_EFFECT = Effect(math.nan, math.nan, math.nan, 0, 0)


def ols(design: np.ndarray, y: np.ndarray, robust: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Least-squares coefficients, their covariance (classical, or HC3 with ``robust``) and residual df.

    ``design`` is (n, p) with full column rank (checked by the caller), ``y`` is (n,).
    """
    xtx_inv = np.linalg.inv(design.T @ design)
    beta = xtx_inv @ design.T @ y
    resid = y - design @ beta
    n, p = design.shape
    if robust:  # HC3: each squared residual inflated by its leverage
        leverage = np.einsum("ij,jk,ik->i", design, xtx_inv, design)
        meat = design.T @ (design * (resid / (1.0 - leverage))[:, None] ** 2)
        cov = xtx_inv @ meat @ xtx_inv
    else:
        cov = xtx_inv * float(resid @ resid) / (n - p)
    return beta, cov, n - p


def interval(effect: Effect, level: float) -> tuple[float, float]:
    """The two-sided ``level`` confidence interval of ``d`` (log scale)."""
    if not effect.usable:
        return math.nan, math.nan
    half = float(scipy.special.stdtrit(effect.df, 0.5 + level / 2)) * effect.se  # Student t quantile
    return effect.d - half, effect.d + half


def p_value(effect: Effect) -> float:
    """Two-sided p of ``d = 0``."""
    if not effect.usable:
        return math.nan
    return float(2 * scipy.special.stdtr(effect.df, -abs(effect.d / effect.se)))  # two-sided Student t


def to_pct(d: float | np.ndarray) -> float | np.ndarray:
    """A log-scale difference as a ratio of geometric means in percent: 100 (exp(d) - 1)."""
    return 100.0 * np.expm1(d)


Columns = dict  # column name -> 1-D numpy array, one entry per case (a lighter pandas frame for the inner loop)


def model_covariates(data: Columns) -> list[str]:
    """The covariates the pooled data ``data`` (with a ``synth`` 0/1 column) can support.

    A covariate enters when it is known for at least half the cases of each side and varies; sex is handled
    by the caller.
    """
    chosen = []
    sides = [data["synth"] == f for f in (0.0, 1.0)]
    if not all(side.any() for side in sides):
        return chosen
    for c in COVARIATES:
        if c not in data:
            continue
        known = np.isfinite(data[c])
        if all(known[side].mean() >= MIN_KNOWN_SHARE for side in sides) and np.ptp(data[c][known]) > 0:
            chosen.append(c)
    return chosen


def _fit(data: Columns, rows: np.ndarray, columns: Sequence[str], robust: bool) -> tuple[np.ndarray, np.ndarray, int] | None:
    design = np.column_stack([np.ones(int(rows.sum())), *(data[c][rows] for c in columns)])
    if len(design) <= design.shape[1] or np.linalg.matrix_rank(design) < design.shape[1]:
        return None
    return ols(design, data["y"][rows], robust)


def _contrast(fit: tuple[np.ndarray, np.ndarray, int], weights: np.ndarray, n_real: int, n_synth: int) -> Effect:
    beta, cov, df = fit
    return Effect(float(weights @ beta), float(math.sqrt(max(weights @ cov @ weights, 0.0))), float(df),
                  n_real, n_synth)


def adjusted_effects(data: Columns, min_n: int, robust: bool = False) -> tuple[dict[str, Effect], int, list[str]]:
    """Source effects ``{"all": ..., "F": ..., "M": ...}`` from the covariate-adjusted models.

    ``data``: arrays with one entry per case: ``y`` (log metric), ``synth`` (0/1), ``sex`` (``"M"``/``"F"``/NaN)
    and the covariates (NaN when unknown). Cases without a needed demographic are left out of the model; returns the effects, the
    number of cases left out, and the covariates used. A sex without ``min_n`` cases on both sides gets no
    per-sex effect; when only one sex has them, its effect comes from the model fitted within that sex.
    """
    data = dict(data)
    covariates = model_covariates(data)
    synth, sex = data["synth"] == 1.0, data["sex"]
    sex_known = _sex_known(sex, synth)
    used = _model_rows(data, covariates, sex_known)
    data["sex_M"] = (sex == "M").astype(float)
    data["synth_M"] = data["synth"] * data["sex_M"]
    counts = {s: [int((used & (sex == s) & side).sum()) for side in (~synth, synth)] for s in ("F", "M")}
    sexes = [s for s in ("F", "M") if sex_known and min(counts[s]) >= min_n]
    both_sexes = sex_known and np.ptp(data["sex_M"][used]) > 0 if used.any() else False
    effects: dict[str, Effect] = {}
    n_r, n_s = int((used & ~synth).sum()), int((used & synth).sum())
    fit = _fit(data, used, ["synth", *(["sex_M"] if both_sexes else []), *covariates], robust)
    if fit is not None and min(n_r, n_s) >= min_n:
        effects["all"] = _contrast(fit, np.eye(len(fit[0]))[1], n_r, n_s)
    effects.update(_sex_effects(data, used, sexes, counts, covariates, robust))
    return effects, len(sex) - int(used.sum()), covariates


def _sex_known(sex: np.ndarray, synth: np.ndarray) -> bool:
    """True when each side with cases has sex "F" or "M" for at least MIN_KNOWN_SHARE of them."""
    known_sex = (sex == "F") | (sex == "M")
    return all(known_sex[side].mean() >= MIN_KNOWN_SHARE for side in (~synth, synth) if side.any())


def _model_rows(data: Columns, covariates: Sequence[str], sex_known: bool) -> np.ndarray:
    """Boolean mask of the cases in the models: every covariate known, and the sex when ``sex_known``."""
    used = np.ones(len(data["sex"]), dtype=bool)
    for c in covariates:
        used &= np.isfinite(data[c])
    if sex_known:
        used &= (data["sex"] == "F") | (data["sex"] == "M")
    return used


def _sex_effects(data: Columns, used: np.ndarray, sexes: list[str], counts: dict[str, list[int]],
                 covariates: Sequence[str], robust: bool) -> dict[str, Effect]:
    """Per-sex source effects of the ``sexes`` with enough cases: both from the model with the synth x sex
    interaction (women: ``synth``; men: ``synth + synth:sex_M``), or one sex's from the model fitted within it.
    ``counts``: sex -> [n real, n synthetic] of the used cases."""
    if len(sexes) == 2:
        fit = _fit(data, used, ["synth", "sex_M", "synth_M", *covariates], robust)
        if fit is None:
            return {}
        women = np.eye(len(fit[0]))[1]
        men = women + np.eye(len(fit[0]))[3]
        return {"F": _contrast(fit, women, *counts["F"]), "M": _contrast(fit, men, *counts["M"])}
    if sexes:
        s = sexes[0]
        fit = _fit(data, used & (data["sex"] == s), ["synth", *covariates], robust)
        if fit is not None:
            return {s: _contrast(fit, np.eye(len(fit[0]))[1], *counts[s])}
    return {}


def unadjusted_effect(real: np.ndarray, synth: np.ndarray) -> Effect:
    """Difference of the means of two log-scale samples, Welch standard error and Welch-Satterthwaite df."""
    n_r, n_s = real.size, synth.size
    if min(n_r, n_s) < 2 or (np.ptp(real) == 0 and np.ptp(synth) == 0):  # no spread: an estimate, no interval
        return Effect(float(synth.mean() - real.mean()) if n_r and n_s else math.nan, math.nan, math.nan, n_r, n_s)
    v_r, v_s = real.var(ddof=1) / n_r, synth.var(ddof=1) / n_s
    se2 = v_r + v_s
    df = se2 ** 2 / (v_r ** 2 / (n_r - 1) + v_s ** 2 / (n_s - 1)) if se2 > 0 else math.nan
    return Effect(float(synth.mean() - real.mean()), float(math.sqrt(se2)), float(df), n_r, n_s)


def paired_effect(differences: np.ndarray) -> Effect:
    """Mean of paired log differences (synthetic minus its real twin) with the paired-t standard error."""
    n = differences.size
    if n < 2:
        return Effect(math.nan, math.nan, math.nan, n, n)
    return Effect(float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(n)), float(n - 1), n, n)

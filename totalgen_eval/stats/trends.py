"""Demographic trends: does the synthetic data change with age, sex, height and weight like the real data?

Per organ x metric, one OLS (statsmodels) on the pooled cohorts with a source interaction, on the
log scale (the scale of the concordance estimand; values <= 0 are left out)::

    log_metric ~ age + sex_M [+ height_m + weight_kg] + synth + age:synth + sex_M:synth [+ height_m:synth + weight_kg:synth]

``synth`` is 1 for synthetic rows and 0 for real ones, ``sex_M`` is 1 for men (so it is ``C(sex)`` with
women as reference). In this parametrisation the base coefficient of a term is the **real** effect and
base + interaction the **synthetic** effect; the interaction is their difference and its p-value tests
whether the synthetic data reproduces the trend. Height and weight enter (with their own interactions)
only when both are known for every row of both cohorts; sex terms are dropped when either cohort has a
single sex. Each omission is returned as a note.

Columns of the trends table (:data:`TRENDS_COLUMNS`), one row per organ x metric x term:

- ``term``: ``age``, ``sex_M``, ``height_m``, ``weight_kg``; ``per``: the unit of the effect's denominator
  (``year``, ``M vs F``, ``m``, ``kg``). Effects are percent changes of the metric per that unit,
  ``100 (exp(b) - 1)`` of the log-scale coefficient ``b``.
- ``real_effect``, ``real_ci_low``, ``real_ci_high``: the real effect and its (1 - alpha) CI.
- ``synth_effect``, ``synth_ci_low``, ``synth_ci_high``: the synthetic effect (the contrast base +
  interaction, CI from ``results.t_test``).
- ``difference``: the interaction coefficient as a percent (how much larger the synthetic per-unit ratio is
  than the real one); ``interaction_p``: its p-value; ``p_adjusted``: Benjamini-Hochberg over every trend
  term of the table; ``verdict``: ``differs`` (p_adjusted < alpha) or ``not shown to differ`` (never "same":
  a non-significant interaction is not evidence of equal effects).
- ``n_real``, ``n_synth``: rows used in the fit; ``formula``: the fitted formula.
Rows whose model could not be fitted keep their keys and n with NaN effects.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import OLS

from .inputs import usable
from .models import to_pct
from .verdicts import bh_adjust

LOG = "log_metric"

TRENDS_COLUMNS: tuple[str, ...] = (
    "organ", "metric", "term", "per", "real_effect", "real_ci_low", "real_ci_high", "synth_effect",
    "synth_ci_low", "synth_ci_high", "difference", "interaction_p", "p_adjusted", "verdict", "n_real", "n_synth",
    "formula")
TERM_UNITS: dict[str, str] = {"age": "year", "sex_M": "M vs F", "height_m": "m", "weight_kg": "kg"}


def _pooled(real: pd.DataFrame, synth: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Usable rows of both cohorts with a ``synth`` indicator and a ``sex_M`` indicator (NaN if sex unknown)."""
    parts = []
    for flag, t in ((0.0, real), (1.0, synth)):
        t = t[usable(t, metric) & t["age"].notna() & (t[metric] > 0)]
        cols = [c for c in ("age", "sex", "height_m", "weight_kg") if c in t.columns]
        part = t.loc[:, cols].copy()
        part[LOG] = np.log(t[metric].to_numpy(float))
        part["sex_M"] = np.where(part["sex"].isna(), np.nan, (part["sex"] == "M").astype(float))
        part["synth"] = flag
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def choose_terms(data: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The demographic terms the data can support, and the reasons for any left out."""
    terms, reasons = ["age"], []
    sides = [data[data["synth"] == f] for f in (0.0, 1.0)]
    if all(s["sex_M"].dropna().nunique() == 2 for s in sides):
        terms.append("sex_M")
    else:
        reasons.append("a cohort has a single sex (or none known): sex terms dropped")
    if all(c in data.columns and s[c].notna().all() for c in ("height_m", "weight_kg") for s in sides):
        terms += ["height_m", "weight_kg"]
    else:
        reasons.append("height/weight not known for every case of both cohorts: not adjusted for")
    return terms, reasons


def trend_formula(terms: Sequence[str]) -> str:
    """``log_metric ~ terms + synth + term:synth ...`` (real effects as base terms, differences as interactions)."""
    return f"{LOG} ~ " + " + ".join([*terms, "synth", *(f"{t}:synth" for t in terms)])


def design_columns(terms: Sequence[str]) -> list[str]:
    """The columns of the trend model's design, in the order of :func:`trend_formula`'s (patsy's) design:
    ``Intercept``, the terms, ``synth``, then each ``term:synth``."""
    return ["Intercept", *terms, "synth", *(f"{t}:synth" for t in terms)]


def trend_model(data: pd.DataFrame, terms: Sequence[str]) -> OLS:
    """The OLS of :func:`trend_formula` on ``data``, its design built directly (no formula parsing: the same
    columns, values and row handling as ``smf.ols(trend_formula(terms), data)``, whose patsy step cost most
    of the fit): rows missing a variable of the model are left out."""
    used = data[[LOG, *terms, "synth"]]
    used = used[used.notna().all(axis=1)]
    synth = used["synth"].to_numpy(float)
    columns = [np.ones(len(used)), *(used[t].to_numpy(float) for t in terms), synth,
               *(used[t].to_numpy(float) * synth for t in terms)]
    exog = pd.DataFrame(np.column_stack(columns), columns=design_columns(terms), index=used.index)
    return OLS(used[LOG].astype(float), exog)


def _empty_rows(organ: str, metric: str, terms: Sequence[str], n_real: int, n_synth: int, formula: str) -> list[dict]:
    return [dict(organ=organ, metric=metric, term=t, per=TERM_UNITS[t], n_real=n_real, n_synth=n_synth,
                 formula=formula) for t in terms]


def fit_trends(real: pd.DataFrame, synth: pd.DataFrame, organ: str, metric: str, *, min_n: int,
               alpha: float) -> tuple[list[dict], list[str]]:
    """Rows of the trends table for one organ x metric, and notes on what was left out and why."""
    data = _pooled(real, synth, metric)
    terms, notes = choose_terms(data)
    if "sex_M" in terms:
        data = data[data["sex_M"].notna()]
    formula = trend_formula(terms)
    n_real, n_synth = int((data["synth"] == 0).sum()), int((data["synth"] == 1).sum())
    rows = _empty_rows(organ, metric, terms, n_real, n_synth, formula)
    if min(n_real, n_synth) < max(min_n, len(terms) + 2):
        return rows, notes + [f"too few cases for the trend model (real {n_real}, synthetic {n_synth})"]
    if any(data.loc[data["synth"] == f, LOG].nunique() < 2 for f in (0.0, 1.0)):
        return rows, notes + ["constant values in a cohort: no trend model"]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        model = trend_model(data, terms)
        if np.linalg.matrix_rank(model.exog) < model.exog.shape[1]:
            return rows, notes + ["collinear design (e.g. one age or a covariate tied to source): no trend model"]
        fit = model.fit()
        ci = fit.conf_int(alpha=alpha)
        names = list(fit.params.index)
        for row, term in zip(rows, terms):
            contrast = np.zeros(len(names))
            contrast[[names.index(term), names.index(f"{term}:synth")]] = 1.0
            synth_test = fit.t_test(contrast)
            s_low, s_high = np.asarray(synth_test.conf_int(alpha=alpha)).ravel()
            row.update(real_effect=to_pct(float(fit.params[term])), real_ci_low=to_pct(float(ci.loc[term, 0])),
                       real_ci_high=to_pct(float(ci.loc[term, 1])),
                       synth_effect=to_pct(float(np.squeeze(synth_test.effect))),
                       synth_ci_low=to_pct(float(s_low)), synth_ci_high=to_pct(float(s_high)),
                       difference=to_pct(float(fit.params[f"{term}:synth"])),
                       interaction_p=float(fit.pvalues[f"{term}:synth"]))
    return rows, notes


def trends_table(real: pd.DataFrame, synth: pd.DataFrame, *, organs: Sequence[str], metrics: Sequence[str],
                 min_n: int, alpha: float) -> tuple[pd.DataFrame, list[dict]]:
    """The trends table (columns :data:`TRENDS_COLUMNS`) and notes ``{organ, metric, reason}``."""
    rows, notes = [], []
    for organ in organs:
        r_org, s_org = real[real["organ"] == organ], synth[synth["organ"] == organ]
        for metric in metrics:
            got, why = fit_trends(r_org, s_org, organ, metric, min_n=min_n, alpha=alpha)
            rows += got
            notes += [{"organ": organ, "metric": metric, "reason": r} for r in why]
    table = pd.DataFrame(rows, columns=list(TRENDS_COLUMNS))
    table["p_adjusted"] = bh_adjust(table["interaction_p"].to_numpy(float), alpha)
    table["verdict"] = np.where(table["p_adjusted"] < alpha, "differs",
                                np.where(table["p_adjusted"].notna(), "not shown to differ", "not tested"))
    return table, notes

"""The concordance table: one row per organ x metric x subgroup, synthetic compared with real.

One estimand per cell: ``d``, the synthetic minus real difference of mean ``log(metric)``, printed as the
ratio of geometric means ``deviation_pct = 100 (exp(d) - 1)``. Primary and secondary cells (sex strata
``all``/``F``/``M``) take it from the covariate-adjusted model of :mod:`.models`; descriptive cells (age
groups, sex x age) from the unadjusted difference of log means. Families, BH, intervals and verdicts follow
:mod:`.verdicts`.

Columns (:data:`CONCORDANCE_COLUMNS`; the first ones are a contract of ARCHITECTURE.md):

- ``family``; ``n_real``, ``n_synth``: cases with a usable (finite, positive) value in the cell;
  ``n_left_out``: of those, cases the adjusted model could not use (a demographic missing).
- ``deviation_pct`` with ``deviation_ci_low``/``deviation_ci_high`` (%) at ``ci_level``: for tested families the
  FCR-adjusted level that matches BH, for descriptive cells 1 - alpha.
- ``equivalence_ci_low``/``equivalence_ci_high`` (%): the 1 - 2 alpha interval that decides ``equivalent``.
- ``p_value`` (t test of d = 0 in the model), ``p_adjusted`` (BH within the family), ``verdict``,
  ``n_to_decide`` (inconclusive cells: cases per side that would decide them at the observed spread).
- Descriptive columns in the metric's unit: ``real_mean``, ``synth_mean``, ``real_sd``, ``synth_sd``;
  ``mean_ratio_pct`` = 100 (synthetic mean / real mean - 1), the ratio of arithmetic means (not the
  estimand); ``wasserstein``: 1-Wasserstein distance divided by the real SD (shape, not tested).
- Twins (a synthetic case's ``twin_of`` names its real case): ``paired_n``, ``paired_deviation_pct``,
  ``paired_ci_low``/``paired_ci_high`` (same level as the cell's CI), ``paired_p``, ``paired_p_adjusted`` (BH
  within the family): a sensitivity analysis beside the primary model, never the verdict.

A cell whose case sets on both sides equal those of an earlier cell (e.g. ``all / 18-40`` and ``F / 18-40``
when no man is under 40) is left out: no duplicate cells. Values <= 0 cannot enter the log-scale estimand;
such rows are left out of that metric and noted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from ..demographics import SEXES, age_group_labels
from . import models
from .inputs import usable
from .verdicts import ALL, bh_adjust, family, fcr_level, is_equivalent, n_to_decide, verdict

CONCORDANCE_COLUMNS: tuple[str, ...] = (
    "organ", "metric", "sex", "age_group", "family", "n_real", "n_synth", "n_left_out", "deviation_pct",
    "deviation_ci_low", "deviation_ci_high", "ci_level", "equivalence_ci_low", "equivalence_ci_high", "p_value",
    "p_adjusted", "equivalent", "verdict", "n_to_decide", "real_mean", "synth_mean", "real_sd", "synth_sd",
    "mean_ratio_pct", "wasserstein", "paired_n", "paired_deviation_pct", "paired_ci_low", "paired_ci_high",
    "paired_p", "paired_p_adjusted")
TESTED_FAMILIES: tuple[str, ...] = ("primary", "secondary")


@dataclass(frozen=True)
class CellSettings:
    """What every cell needs: margin (fraction), alpha, min_n, HC3 standard errors or classical."""

    margin: float
    alpha: float
    min_n: int
    robust: bool = False


def subgroups(real: pd.DataFrame, synth: pd.DataFrame, age_bins: Sequence[float]) -> list[tuple[str, str]]:
    """(sex, age_group) pairs present in either table: all, by sex, by age group, sex x age group, in that order."""
    both = pd.concat([real[["sex", "age_group"]], synth[["sex", "age_group"]]], ignore_index=True)
    sexes = [s for s in SEXES if (both["sex"] == s).any()]
    ages = [a for a in age_group_labels(age_bins) if (both["age_group"] == a).any()]
    pairs = set(zip(both["sex"], both["age_group"]))
    return ([(ALL, ALL)] + [(s, ALL) for s in sexes] + [(ALL, a) for a in ages]
            + [(s, a) for s in sexes for a in ages if (s, a) in pairs])


def in_subgroup(sex_col: np.ndarray, age_col: np.ndarray, sex: str, age: str) -> np.ndarray:
    """Rows in the subgroup (``all`` = not stratified), from a table's ``sex`` and ``age_group`` columns as arrays."""
    keep = np.ones(len(sex_col), dtype=bool)
    if sex != ALL:
        keep &= sex_col == sex
    if age != ALL:
        keep &= age_col == age
    return keep


def positive_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows whose ``metric`` can enter the log-scale estimand: usable and > 0."""
    ok = usable(table, metric).to_numpy() & (table[metric].to_numpy(float) > 0)
    return table[ok]


def describe(real: np.ndarray, synth: np.ndarray) -> dict[str, float]:
    """Descriptive columns of one cell in the metric's unit (SD with ddof=1)."""
    def mean(x):
        return float(x.mean()) if x.size else math.nan

    def sd(x):
        return float(x.std(ddof=1)) if x.size >= 2 else math.nan
    row = dict(real_mean=mean(real), synth_mean=mean(synth), real_sd=sd(real), synth_sd=sd(synth),
               mean_ratio_pct=math.nan, wasserstein=math.nan)
    if real.size and synth.size and row["real_mean"] != 0:
        row["mean_ratio_pct"] = 100.0 * (row["synth_mean"] / row["real_mean"] - 1.0)
    if real.size >= 2 and synth.size and row["real_sd"] > 0:
        row["wasserstein"] = float(scipy.stats.wasserstein_distance(synth, real)) / row["real_sd"]
    return row


def pooled(real: pd.DataFrame, synth: pd.DataFrame, metric: str) -> models.Columns:
    """One entry per case of both sides, as arrays: ``y`` = log(metric), ``synth`` 0/1, ``sex`` and the covariates."""
    out: models.Columns = {"y": np.log(np.concatenate([t[metric].to_numpy(float) for t in (real, synth)])),
                           "synth": np.repeat([0.0, 1.0], [len(real), len(synth)]),
                           "sex": np.concatenate([t["sex"].to_numpy(object) for t in (real, synth)])}
    for c in models.COVARIATES:
        if c in real.columns and c in synth.columns:
            out[c] = np.concatenate([t[c].to_numpy(float) for t in (real, synth)])
    return out


def model_effects(r: pd.DataFrame, s: pd.DataFrame, metric: str,
                  settings: CellSettings) -> tuple[dict[str, models.Effect], list[str]]:
    """The adjusted source effects of one organ x metric (``{}`` when there is nothing to model) and notes."""
    notes = []
    effects, left_out, covariates = models.adjusted_effects(pooled(r, s, metric), settings.min_n, settings.robust)
    if len(r) and len(s) and np.ptp(r[metric].to_numpy(float)) == 0 and np.ptp(s[metric].to_numpy(float)) == 0:
        effects = {}
        notes.append("constant values in both cohorts: no model, not tested")
    if left_out:
        notes.append(f"{left_out} case(s) without a demographic the model needs ({', '.join(['sex', *covariates])}) "
                     "left out of the adjusted model")
    return effects, notes


def cell_row(r_val: np.ndarray, s_val: np.ndarray, fam: str, effect: models.Effect | None,
             min_n: int) -> dict:
    """One cell's estimate (the model's ``effect`` when it can be tested, else the unadjusted one, with no
    interval below ``min_n`` cases a side), its p-value and descriptive columns."""
    enough = min(r_val.size, s_val.size) >= min_n
    tested = effect is not None and enough and effect.usable
    if not tested:
        effect = models.unadjusted_effect(np.log(r_val), np.log(s_val))
        if not enough:
            effect = models.Effect(effect.d, math.nan, math.nan, effect.n_real, effect.n_synth)
    return dict(family=fam, n_real=r_val.size, n_synth=s_val.size,
                n_left_out=(r_val.size + s_val.size - effect.n_real - effect.n_synth) if tested else 0,
                _effect=effect, _tested=tested, p_value=models.p_value(effect) if tested else math.nan,
                **describe(r_val, s_val))


def organ_metric_cells(real: pd.DataFrame, synth: pd.DataFrame, organ: str, metric: str,
                       groups: Sequence[tuple[str, str]], settings: CellSettings,
                       twins: Mapping[str, str] | None) -> tuple[list[dict], list[str]]:
    """The cells of one organ x metric (before multiplicity) and notes on what was left out."""
    r_all, s_all = real[real["organ"] == organ], synth[synth["organ"] == organ]
    r, s = positive_rows(r_all, metric), positive_rows(s_all, metric)
    dropped = sum(int((usable(t, metric) & (t[metric] <= 0)).sum()) for t in (r_all, s_all))
    effects, notes = model_effects(r, s, metric, settings)
    if dropped:
        notes.insert(0, f"{dropped} value(s) <= 0 left out: the ratio of geometric means needs positive values")
    arrays = [(t["case_id"].to_numpy(object), t["sex"].to_numpy(object), t["age_group"].to_numpy(object),
               t[metric].to_numpy(float)) for t in (r, s)]
    twin_values = twin_lookup(r, s, metric, twins) if twins else None
    seen: set[tuple[bytes, bytes]] = set()
    rows = []
    for sex, age in groups:
        (r_ids, r_val), (s_ids, s_val) = [(ids[m], v[m]) for ids, sx, ag, v in arrays
                                          for m in [in_subgroup(sx, ag, sex, age)]]
        key = (np.sort(r_ids.astype(str)).tobytes(), np.sort(s_ids.astype(str)).tobytes())
        if key in seen:  # the same cases as an earlier cell: no duplicate cells
            continue
        seen.add(key)
        fam = family(metric, sex, age)
        row = dict(organ=organ, metric=metric, sex=sex, age_group=age,
                   **cell_row(r_val, s_val, fam, effects.get(sex) if fam != "descriptive" else None, settings.min_n))
        if twin_values is not None and age == ALL:
            row["_paired"] = models.paired_effect(twin_values(r_ids, s_ids))
        rows.append(row)
    return rows, notes


def twin_lookup(real: pd.DataFrame, synth: pd.DataFrame, metric: str, twins: Mapping[str, str]):
    """A function (real ids, synthetic ids of a cell) -> log differences of the synthetic cases whose twin is
    among the real ids (synthetic minus real, log scale)."""
    real_log = dict(zip(real["case_id"], np.log(real[metric].to_numpy(float))))
    synth_log = dict(zip(synth["case_id"], np.log(synth[metric].to_numpy(float))))

    def differences(real_ids: np.ndarray, synth_ids: np.ndarray) -> np.ndarray:
        present = set(real_ids)
        return np.array([synth_log[c] - real_log[twins[c]] for c in synth_ids if twins.get(c) in present], dtype=float)
    return differences


def _pct_interval(effect: models.Effect, level: float) -> tuple[float, float]:
    low, high = models.interval(effect, level)
    return float(models.to_pct(low)), float(models.to_pct(high))


def finish_family(rows: list[dict], fam: str, settings: CellSettings) -> None:
    """BH, interval levels, equivalence, verdicts and paired columns for the rows of family ``fam`` (in place)."""
    alpha = settings.alpha
    adjusted = bh_adjust(np.array([r["p_value"] for r in rows], dtype=float), alpha)
    level = fcr_level(adjusted, alpha) if fam != "descriptive" else 1.0 - alpha
    paired_p = np.array([models.p_value(r["_paired"]) if "_paired" in r else math.nan for r in rows])
    paired_adjusted = bh_adjust(paired_p, alpha) if fam != "descriptive" else np.full(len(rows), math.nan)
    for row, p_adj, pp, pp_adj in zip(rows, adjusted, paired_p, paired_adjusted):
        effect = row.pop("_effect")
        tested = row.pop("_tested")
        row["deviation_pct"] = float(models.to_pct(effect.d))
        row["ci_level"] = level if tested else 1.0 - alpha
        row["deviation_ci_low"], row["deviation_ci_high"] = _pct_interval(effect, row["ci_level"])
        eq_low, eq_high = models.interval(effect, 1.0 - 2.0 * alpha)
        row["equivalence_ci_low"], row["equivalence_ci_high"] = (float(models.to_pct(eq_low)),
                                                                 float(models.to_pct(eq_high)))
        equivalent = is_equivalent(eq_low, eq_high, settings.margin) if tested else None
        row["p_adjusted"] = float(p_adj)
        row["equivalent"] = equivalent
        row["verdict"] = verdict(fam, tested, float(p_adj), equivalent, alpha)
        row["n_to_decide"] = (n_to_decide(effect.d, effect.se, effect.n_real, effect.n_synth, settings.margin, alpha)
                              if row["verdict"] == "inconclusive" else math.nan)
        twin = row.pop("_paired", models.NO_EFFECT)
        row["paired_n"] = twin.n_real
        row["paired_deviation_pct"] = float(models.to_pct(twin.d))
        row["paired_ci_low"], row["paired_ci_high"] = _pct_interval(twin, row["ci_level"])
        row["paired_p"], row["paired_p_adjusted"] = float(pp), float(pp_adj)


def concordance_table(real: pd.DataFrame, synth: pd.DataFrame, *, organs: Sequence[str], metrics: Sequence[str],
                      age_bins: Sequence[float], settings: CellSettings,
                      twins: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The concordance table (columns :data:`CONCORDANCE_COLUMNS`) and notes ``{organ, metric, reason}``."""
    groups = subgroups(real, synth, age_bins)
    rows: list[dict] = []
    notes: list[dict] = []
    for organ in organs:
        for metric in metrics:
            got, why = organ_metric_cells(real, synth, organ, metric, groups, settings, twins)
            rows += got
            notes += [{"organ": organ, "metric": metric, "reason": w} for w in why]
    for fam in ("primary", "secondary", "descriptive"):
        finish_family([r for r in rows if r["family"] == fam], fam, settings)
    table = pd.DataFrame(rows, columns=list(CONCORDANCE_COLUMNS))
    table["equivalent"] = table["equivalent"].astype("boolean")
    for c in ("n_real", "n_synth", "n_left_out", "paired_n"):
        table[c] = table[c].astype(int)
    return table, notes

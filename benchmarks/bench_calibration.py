"""Calibration of the concordance statistics on phantom organ tables whose truth is known.

(a) Null: two independent draws of the same phantom population (n cases per sex per cohort, many repetitions):
    how often Welch / Mann-Whitney / KS reject at alpha, how often TOST fails to declare equivalence within the
    margin, and how often BH flags anything. (b) Power: the synthetic draw gets liver SUVmean x (1 + shift) in
    men only: how often that cell (liver, suv_mean, M, all) is flagged (BH-adjusted Welch p < alpha) and how
    often cells that hold no shifted case are flagged.

Organ tables come from the phantom population model (``phantom.sample_demographics`` + ``phantom.draw_subjects``:
subject truth with biological variation, no images), so the benchmark is fast. The statistics are the real
``compare_tables`` (bootstrap skipped with ``n_boot=0``: the CI is not a test and is covered by the unit tests).

    python benchmarks/bench_calibration.py            # full run (~2-4 min on 2 cores)
    python benchmarks/bench_calibration.py --reps 20  # quick look

Writes reports/calibration.csv (every rate), reports/calibration.md (tables and verdicts) and
reports/calibration.json (headline figures for the regression suite).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from totalgen_eval.provenance import package_versions, to_jsonable, write_json, write_table  # noqa: E402
from totalgen_eval.stats import compare_tables  # noqa: E402

REPORTS = Path(__file__).resolve().parents[1] / "reports"
KEEP = ["organ", "metric", "sex", "age_group", "n_real", "n_synth", "welch_p", "mannwhitney_p", "ks_p", "tost_p",
        "p_adjusted"]
TESTS = {"welch": "welch_p", "mannwhitney": "mannwhitney_p", "ks": "ks_p"}


@dataclass(frozen=True)
class CalibrationConfig:
    """What the benchmark draws and tests. age_bins (65,) is the paper's split: 9 subgroups per organ x metric."""

    reps: int = 200
    n_per_sex: tuple[int, ...] = (50, 100)
    shifts: tuple[float, ...] = (0.05, 0.10)
    target: tuple[str, str, str] = ("liver", "suv_mean", "M")  # organ, metric, sex of the shifted cell
    metrics: tuple[str, ...] = ("volume_ml", "suv_mean")
    age_bins: tuple[float, ...] = (65.0,)
    alpha: float = 0.05
    margin: float = 0.05
    min_n: int = 5
    seed: int = 0
    workers: int = 2
    power_n: int = 160  # a power-only check of the largest shift at the n the population's spread calls for
    power_reps: int = 100


# the population -----------------------------------------------------------------------------------------------
def load_population() -> tuple[Callable, Callable]:
    """(sample_demographics, draw_subjects) of the phantom population."""
    from totalgen_eval.phantom import draw_subjects, sample_demographics
    return sample_demographics, draw_subjects


def draw_cohort(n_per_sex: int, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    """A phantom organ table (case_id, age, sex, height_m, weight_kg, organ, volume_ml, suv_mean): n cases a sex."""
    sample_demographics, draw_subjects = load_population()
    pool = sample_demographics(4 * n_per_sex, rng)
    while min((pool["sex"] == s).sum() for s in ("F", "M")) < n_per_sex:
        pool = pd.concat([pool, sample_demographics(2 * n_per_sex, rng)], ignore_index=True)
    demo = pd.concat([pool[pool["sex"] == s].iloc[:n_per_sex] for s in ("F", "M")], ignore_index=True)
    demo = demo.loc[:, ["age", "sex", "height_m", "weight_kg"]]
    demo.insert(0, "case_id", [f"{prefix}-{i:04d}" for i in range(len(demo))])
    subjects = draw_subjects(demo, rng)  # keeps our case_id
    return subjects.loc[:, ["case_id", "organ", "volume_ml", "suv_mean"]].merge(demo, on="case_id")


def shifted(table: pd.DataFrame, target: tuple[str, str, str], shift: float) -> pd.DataFrame:
    """``table`` with ``metric`` x (1 + shift) for the target organ in the target sex."""
    organ, metric, sex = target
    out = table.copy()
    hit = (out["organ"] == organ) & (out["sex"] == sex)
    out.loc[hit, metric] = out.loc[hit, metric] * (1 + shift)
    return out


# one repetition ----------------------------------------------------------------------------------------------
def one_repetition(cfg: CalibrationConfig, n_per_sex: int, rep: int, shifts: tuple[float, ...]) -> pd.DataFrame:
    """The cells of the comparison of one pair of draws with the synthetic side shifted by each of ``shifts``
    (0 = the null comparison)."""
    rng = np.random.default_rng([cfg.seed, n_per_sex, rep])
    real, synth = draw_cohort(n_per_sex, rng, "r"), draw_cohort(n_per_sex, rng, "s")
    out = []
    for shift in shifts:
        conc = compare_tables(real, shifted(synth, cfg.target, shift) if shift else synth, margin=cfg.margin,
                              age_bins=cfg.age_bins, min_n=cfg.min_n, metrics=cfg.metrics, n_boot=0,
                              seed=cfg.seed, alpha=cfg.alpha, trends=False).concordance
        out.append(conc.loc[:, KEEP].assign(shift=shift, n_per_sex=n_per_sex, rep=rep))
    return pd.concat(out, ignore_index=True)


def _run_chunk(args: tuple[CalibrationConfig, int, list[int], tuple[float, ...]]) -> pd.DataFrame:
    cfg, n, reps, shifts = args
    return pd.concat([one_repetition(cfg, n, r, shifts) for r in reps], ignore_index=True)


def run_all(cfg: CalibrationConfig) -> pd.DataFrame:
    """Every repetition of every n (null and shifts), plus the power check at ``power_n``, over ``cfg.workers``
    processes."""
    plans = [(n, cfg.reps, (0.0, *cfg.shifts)) for n in cfg.n_per_sex]
    if cfg.power_n:
        plans.append((cfg.power_n, cfg.power_reps, (max(cfg.shifts),)))
    k = cfg.workers * 4
    jobs = [(cfg, n, list(range(reps))[i::k], shifts) for n, reps, shifts in plans for i in range(min(k, reps))]
    if cfg.workers == 1:
        return pd.concat(map(_run_chunk, jobs), ignore_index=True)
    with ProcessPoolExecutor(cfg.workers) as pool:
        return pd.concat(pool.map(_run_chunk, jobs), ignore_index=True)


# rates -------------------------------------------------------------------------------------------------------
def cell_kind(cells: pd.DataFrame, target: tuple[str, str, str]) -> pd.Series:
    """'target' (the shifted cell), 'affected' (other cells holding shifted cases) or 'null'."""
    organ, metric, sex = target
    same = (cells["organ"] == organ) & (cells["metric"] == metric)
    holds = same & cells["sex"].isin([sex, "all"])
    is_target = holds & (cells["sex"] == sex) & (cells["age_group"] == "all")
    return pd.Series(np.where(is_target, "target", np.where(holds, "affected", "null")), index=cells.index)


def rate_rows(cells: pd.DataFrame, cfg: CalibrationConfig) -> pd.DataFrame:
    """Tidy rates: scenario, n_per_sex, cells, statistic, rate, trials."""
    a = cfg.alpha
    tested = cells[cells["welch_p"].notna()].copy()
    tested["kind"] = cell_kind(tested, cfg.target)
    tested["stratum"] = np.where((tested["sex"] != "all") & (tested["age_group"] == "all"), "sex", "other")
    rows = []

    def add(scenario, n, cellset, stat, hits):
        rows.append({"scenario": scenario, "n_per_sex": n, "cells": cellset, "statistic": stat,
                     "rate": float(np.mean(hits)) if len(hits) else np.nan, "trials": int(len(hits))})

    for (shift, n), g in tested.groupby(["shift", "n_per_sex"]):
        scenario = "null" if shift == 0 else f"shift +{shift:.0%}"
        if shift == 0:
            for cellset, sub in (("sex strata", g[g["stratum"] == "sex"]), ("all tested", g)):
                for name, col in TESTS.items():
                    add(scenario, n, cellset, f"{name} p < {a}", sub[col] < a)
                add(scenario, n, cellset, "tost not equivalent", sub["tost_p"].dropna() >= a)
                add(scenario, n, cellset, "BH flagged", sub["p_adjusted"] < a)
            add(scenario, n, "all tested", "any BH flag per table", g.groupby("rep")["p_adjusted"].min() < a)
        else:
            target, null = g[g["kind"] == "target"], g[g["kind"] == "null"]
            add(scenario, n, "target", "BH flagged", target["p_adjusted"] < a)
            for name, col in TESTS.items():
                add(scenario, n, "target", f"{name} p < {a}", target[col] < a)
            add(scenario, n, "affected", "BH flagged", g.loc[g["kind"] == "affected", "p_adjusted"] < a)
            add(scenario, n, "null cells", "BH flagged", null["p_adjusted"] < a)
            add(scenario, n, "null cells", "any BH flag per table", null.groupby("rep")["p_adjusted"].min() < a)
    return pd.DataFrame(rows)


def tost_by_cell(cells: pd.DataFrame, cfg: CalibrationConfig) -> pd.DataFrame:
    """Under the null, the TOST failure rate per organ x metric in the sex strata."""
    g = cells[(cells["shift"] == 0) & (cells["sex"] != "all") & (cells["age_group"] == "all") & cells["tost_p"].notna()]
    return (g.assign(fail=g["tost_p"] >= cfg.alpha).groupby(["organ", "metric", "n_per_sex"], sort=False)["fail"]
            .mean().unstack("n_per_sex").add_prefix("tost_fail_n").reset_index())


# what the population's spread allows ---------------------------------------------------------------------------
def needed_n(sd_log: float, delta_log: float, alpha: float, power: float = 0.8, two_sided: bool = True) -> int:
    """Cases per side for a (normal-approximation) two-sample test of a log-scale shift ``delta_log``."""
    z_a = scipy.stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha)
    return int(np.ceil(2 * sd_log ** 2 * (z_a + scipy.stats.norm.ppf(power)) ** 2 / delta_log ** 2))


def spread_table(cfg: CalibrationConfig, tested_cells: int) -> pd.DataFrame:
    """Within-sex SD of log(metric) per organ x metric (from a large draw) and the n each verdict needs.

    tost_n80: cases per side for 80 % TOST power (true ratio 1, margin log(1 + margin)): power ~ 2 Phi(d/se - z) - 1.
    shift10_n80: cases per side for 80 % power of a two-sided test of +10 % at alpha; shift10_n80_bh: the same at
    the BH threshold the target cell meets when it is the only discovery among ``tested_cells`` (alpha / m).
    """
    big = draw_cohort(2000, np.random.default_rng([cfg.seed, 999]), "big")
    rows = []
    for (organ, sex), g in big.groupby(["organ", "sex"], sort=False):
        for metric in cfg.metrics:
            x = g[metric].to_numpy(float)
            x = x[np.isfinite(x) & (x > 0)]
            sd = float(np.std(np.log(x), ddof=1))
            rows.append({"organ": organ, "metric": metric, "sex": sex, "sd_log": sd,
                         "cv": float(np.std(x, ddof=1) / np.mean(x)),
                         "tost_n80": needed_n(sd, np.log(1 + cfg.margin), cfg.alpha, 0.9, two_sided=False),
                         "shift10_n80": needed_n(sd, np.log(1.10), cfg.alpha),
                         "shift10_n80_bh": needed_n(sd, np.log(1.10), cfg.alpha / tested_cells)})
    return pd.DataFrame(rows)


# report ------------------------------------------------------------------------------------------------------
def markdown_table(frame: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines)


def headline(rates: pd.DataFrame, spread: pd.DataFrame, cfg: CalibrationConfig) -> dict:
    def get(scenario, n, cells, stat):
        hit = rates[(rates.scenario == scenario) & (rates.n_per_sex == n) & (rates.cells == cells) & (rates.statistic == stat)]
        return float(hit["rate"].iloc[0]) if len(hit) else None
    a = cfg.alpha
    organ, metric, sex = cfg.target
    target_spread = spread[(spread.organ == organ) & (spread.metric == metric) & (spread.sex == sex)].iloc[0]
    out = {"type1_sex_strata": {f"n{n}": {t: get("null", n, "sex strata", f"{t} p < {a}") for t in TESTS}
                                for n in cfg.n_per_sex},
           "type1_all_tested": {f"n{n}": {t: get("null", n, "all tested", f"{t} p < {a}") for t in TESTS}
                                for n in cfg.n_per_sex},
           "null_bh_any_flag": {f"n{n}": get("null", n, "all tested", "any BH flag per table") for n in cfg.n_per_sex},
           "tost_fail_sex_strata": {f"n{n}": get("null", n, "sex strata", "tost not equivalent") for n in cfg.n_per_sex},
           "power_bh": {}, "power_welch_raw": {}, "false_flag_rate_null_cells": {}}
    for s in cfg.shifts:
        key = f"+{s:.0%}"
        for n in (*cfg.n_per_sex, cfg.power_n) if s == max(cfg.shifts) and cfg.power_n else cfg.n_per_sex:
            out["power_bh"].setdefault(key, {})[f"n{n}"] = get(f"shift {key}", n, "target", "BH flagged")
            out["power_welch_raw"].setdefault(key, {})[f"n{n}"] = get(f"shift {key}", n, "target", f"welch p < {a}")
            out["false_flag_rate_null_cells"].setdefault(key, {})[f"n{n}"] = get(f"shift {key}", n, "null cells", "BH flagged")
    out["target_cv"] = float(target_spread["cv"])
    out["target_n_for_80pct_power_shift10"] = {"raw_alpha": int(target_spread["shift10_n80"]),
                                               "bonferroni_bound": int(target_spread["shift10_n80_bh"])}
    out["tost_n_for_80pct_power_median_cell"] = int(spread["tost_n80"].median())
    return out


def verdicts(head: dict, cfg: CalibrationConfig) -> list[str]:
    lines = []
    for scope in ("type1_sex_strata", "type1_all_tested"):
        for n, tests in head[scope].items():
            for t, r in tests.items():
                ok = r is not None and 0.03 <= r <= 0.07
                lines.append(f"- {scope} {n} {t}: {r:.3f} {'within' if ok else 'OUTSIDE'} [0.03, 0.07]")
    for n, p in head["power_bh"].get("+10%", {}).items():
        raw = head["power_welch_raw"]["+10%"][n]
        lines.append(f"- power for +10% at {n} per sex: BH-flagged {p:.3f} "
                     f"({'>= 0.8: goal met' if p >= 0.8 else '< 0.8: goal NOT met'}); raw Welch p < alpha {raw:.3f}")
    need = head["target_n_for_80pct_power_shift10"]
    lines.append(f"- the target's within-sex CV is {head['target_cv']:.3f}: 80% power for +10% needs about "
                 f"{need['raw_alpha']} cases per side at alpha, and at most {need['bonferroni_bound']} after BH "
                 "(Bonferroni bound)")
    return lines


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_report(cfg: CalibrationConfig, rates: pd.DataFrame, tost: pd.DataFrame,
                 spread: pd.DataFrame, head: dict, seconds: float, cpu: float, cells_per_table: int) -> None:
    write_table(pd.concat([rates.assign(table="rates"),
                           spread.melt(id_vars=["organ", "metric", "sex"], var_name="statistic", value_name="rate")
                           .assign(table="population_spread")], ignore_index=True), REPORTS / "calibration.csv")
    write_json({"population": "phantom", "config": cfg, "cells_per_table": cells_per_table,
                "runtime_s": round(seconds, 1), "cpu_s": round(cpu, 1), "headline": head, "versions": package_versions()},
               REPORTS / "calibration.json")
    organ, metric, sex = cfg.target
    md = ["# Calibration of the concordance statistics (phantom population)", "",
          f"Generated by `benchmarks/bench_calibration.py` in {seconds:.0f} s wall with {cfg.workers} workers "
          f"({cpu:.0f} s CPU in all: about {cpu / cfg.workers:.0f} s on {cfg.workers} free cores; the wall time "
          "grows when the machine is shared). "
          f"{cfg.reps} repetitions per n; n = {', '.join(map(str, cfg.n_per_sex))} cases **per sex** per cohort; "
          f"metrics {', '.join(cfg.metrics)}; age bins {cfg.age_bins} (the paper's split); alpha {cfg.alpha}; "
          f"TOST margin {cfg.margin:.0%}; {cells_per_table} tested cells per table (the BH family); no bootstrap "
          f"(n_boot = 0). Power scenario: {organ} {metric} x (1 + shift) in sex {sex} of the synthetic draw; "
          f"the target cell is ({organ}, {metric}, {sex}, all); 'affected' cells also hold shifted cases "
          f"(sex all, or {sex} by age); 'null cells' hold none.", "",
          "## Verdicts", *verdicts(head, cfg), "",
          "## Rates", markdown_table(rates), "",
          "## TOST under the null: failure to declare equivalence, sex strata", markdown_table(tost), "",
          "## What the population's spread allows (within-sex, from 2000 cases per sex)",
          "tost_n80: cases per side for 80 % TOST power at a true ratio of 1 and margin "
          f"{cfg.margin:.0%}; shift10_n80: cases per side for 80 % power to detect +10 % at alpha; shift10_n80_bh: "
          f"the same at alpha / {cells_per_table} (the BH threshold when the target is the only discovery: a bound).",
          markdown_table(spread), ""]
    (REPORTS / "calibration.md").write_text("\n".join(md))


def parse_args(argv: list[str] | None) -> tuple[CalibrationConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--n", default="50,100", help="cases per sex per cohort, comma list")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--power-n", type=int, default=160, help="cases per sex of the power-only check (0: none)")
    p.add_argument("--no-write", action="store_true", help="print only; leave reports/ as it is")
    a = p.parse_args(argv)
    return CalibrationConfig(reps=a.reps, n_per_sex=tuple(int(x) for x in a.n.split(",")), workers=a.workers,
                             seed=a.seed, power_n=a.power_n, power_reps=max(a.reps // 2, 1)), not a.no_write


def main(argv: list[str] | None = None) -> dict:
    cfg, write = parse_args(argv)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    cells = run_all(cfg)
    tested_null = cells[(cells["shift"] == 0) & cells["welch_p"].notna()]
    cells_per_table = int(round(tested_null.groupby(["n_per_sex", "rep"]).size().mean()))
    rates = rate_rows(cells, cfg)
    tost = tost_by_cell(cells, cfg)
    spread = spread_table(cfg, cells_per_table)
    head = headline(rates, spread, cfg)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    if write:
        write_report(cfg, rates, tost, spread, head, seconds, cpu, cells_per_table)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(rates.to_string(index=False))
        print(tost.to_string(index=False))
        print(spread.to_string(index=False))
    print("\n".join(verdicts(head, cfg)))
    print(f"phantom; {seconds:.0f} s wall, {cpu:.0f} s CPU" + ("; reports/calibration.{md,csv,json} written" if write else ""))
    return to_jsonable(head)


if __name__ == "__main__":
    main()

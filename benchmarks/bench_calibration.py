"""Calibration of the verdicts on phantom organ tables whose truth is known (no images).

Per repetition, a real draw and three synthetic draws of the phantom population (n cases per sex each):
an independent draw, demographic twins of the real cases (``twin_of``: same demographics, their own
subject-level variation) and the independent draw with every value x 1.05. Five comparisons:

- ``null`` (independent draw) and ``shift`` (its liver SUVmean x 1.10 in men): the primary model;
- ``null_twins`` and ``shift_twins``: the paired analysis of the twins;
- ``ratio_1.05``: how often a cell whose true ratio sits on the margin is called equivalent.

Figures (over the primary family: organ x {volume_ml, suv_mean} x {all, F, M}): type-I error per primary
test, any false ``differs`` per table, power of the target cell (liver, suv_mean, M), the same for the paired
design, and P(equivalent) at true ratios 1.00 and 1.05. Each rate has its Monte Carlo standard error
sqrt(p (1 - p) / trials); cell-level rates pool correlated cells of one table, so their SE is a lower bound.

    python -m benchmarks.bench_calibration              # full run: 1000 repetitions (~10-20 min on 2 cores)
    python -m benchmarks.bench_calibration --reps 100   # the CI configuration

Writes reports/calibration.csv (every rate), calibration.md (tables and verdicts) and calibration.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from totalgen_eval.provenance import package_versions, to_jsonable, write_json, write_table  # noqa: E402
from totalgen_eval.stats import StatsParams, compare_tables  # noqa: E402

REPORTS = Path(__file__).resolve().parents[1] / "reports"
KEEP = ["organ", "metric", "sex", "p_value", "p_adjusted", "verdict", "equivalent", "paired_p", "paired_p_adjusted"]
SCENARIOS = ("null", "shift", "null_twins", "shift_twins", "ratio_1.05")


@dataclass(frozen=True)
class CalibrationConfig:
    """What the benchmark draws and tests."""

    reps: int = 1000
    n_per_sex: int = 100
    shift: float = 0.10
    target: tuple[str, str, str] = ("liver", "suv_mean", "M")  # organ, metric, sex of the shifted cell
    metrics: tuple[str, ...] = ("volume_ml", "suv_mean")
    age_bins: tuple[float, ...] = (65.0,)
    alpha: float = 0.05
    margin: float = 0.05
    seed: int = 0
    workers: int = 2


# the population -----------------------------------------------------------------------------------------------
def draw_demographics(n_per_sex: int, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    """n cases of each sex from the phantom population's demographics, ids ``<prefix>-0000``..."""
    from totalgen_eval.phantom import sample_demographics

    pool = sample_demographics(4 * n_per_sex, rng)
    while min((pool["sex"] == s).sum() for s in ("F", "M")) < n_per_sex:
        pool = pd.concat([pool, sample_demographics(2 * n_per_sex, rng)], ignore_index=True)
    demo = pd.concat([pool[pool["sex"] == s].iloc[:n_per_sex] for s in ("F", "M")], ignore_index=True)
    demo = demo.loc[:, ["age", "sex", "height_m", "weight_kg"]]
    demo.insert(0, "case_id", [f"{prefix}-{i:04d}" for i in range(len(demo))])
    return demo


def organ_table(demo: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A phantom organ table for these demographics (subject truth with biological variation)."""
    from totalgen_eval.phantom import draw_subjects

    subjects = draw_subjects(demo, rng)
    return subjects.loc[:, ["case_id", "organ", "volume_ml", "suv_mean"]].merge(demo, on="case_id")


def draw_cohort(n_per_sex: int, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    """A phantom organ table (case_id, age, sex, height_m, weight_kg, organ, volume_ml, suv_mean): n cases a sex."""
    return organ_table(draw_demographics(n_per_sex, rng, prefix), rng)


def twins_of(real_demo: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Demographic twins of the real cases: same demographics, their own subject variation, ``twin_of`` set."""
    demo = real_demo.assign(case_id="t" + real_demo["case_id"])
    return organ_table(demo, rng).assign(twin_of=lambda t: t["case_id"].str[1:])


def shifted(table: pd.DataFrame, target: tuple[str, str, str], shift: float) -> pd.DataFrame:
    """``table`` with ``metric`` x (1 + shift) for the target organ in the target sex."""
    organ, metric, sex = target
    out = table.copy()
    hit = (out["organ"] == organ) & (out["sex"] == sex)
    out.loc[hit, metric] = out.loc[hit, metric] * (1 + shift)
    return out


def scaled(table: pd.DataFrame, metrics: tuple[str, ...], factor: float) -> pd.DataFrame:
    """Every metric of every case x ``factor`` (a true ratio of geometric means of ``factor``)."""
    return table.assign(**{m: table[m] * factor for m in metrics})


# one repetition ----------------------------------------------------------------------------------------------
def one_repetition(cfg: CalibrationConfig, rep: int) -> pd.DataFrame:
    """The primary cells of the five comparisons of one repetition."""
    rng = np.random.default_rng([cfg.seed, rep])
    real_demo = draw_demographics(cfg.n_per_sex, rng, "r")
    real = organ_table(real_demo, rng)
    synth = draw_cohort(cfg.n_per_sex, rng, "s")
    twins = twins_of(real_demo, rng)
    params = StatsParams(margin=cfg.margin, alpha=cfg.alpha, age_bins=cfg.age_bins, metrics=cfg.metrics,
                         trends=False, seed=cfg.seed)
    sides = {"null": synth, "shift": shifted(synth, cfg.target, cfg.shift), "null_twins": twins,
             "shift_twins": shifted(twins, cfg.target, cfg.shift), "ratio_1.05": scaled(synth, cfg.metrics, 1.05)}
    out = []
    for scenario, side in sides.items():
        conc = compare_tables(real, side, params).concordance
        out.append(conc.loc[conc["family"] == "primary", KEEP].assign(scenario=scenario, rep=rep))
    return pd.concat(out, ignore_index=True)


def _run_chunk(args: tuple[CalibrationConfig, list[int]]) -> pd.DataFrame:
    cfg, reps = args
    return pd.concat([one_repetition(cfg, r) for r in reps], ignore_index=True)


def run_all(cfg: CalibrationConfig) -> pd.DataFrame:
    """Every repetition, over ``cfg.workers`` processes."""
    k = min(cfg.workers * 4, cfg.reps)
    jobs = [(cfg, list(range(cfg.reps))[i::k]) for i in range(k)]
    if cfg.workers == 1:
        return pd.concat(map(_run_chunk, jobs), ignore_index=True)
    with ProcessPoolExecutor(cfg.workers) as pool:
        return pd.concat(pool.map(_run_chunk, jobs), ignore_index=True)


# rates -------------------------------------------------------------------------------------------------------
def rate(hits: pd.Series) -> dict[str, float]:
    """A proportion, its Monte Carlo SE and the number of trials."""
    hits = hits.astype(bool)
    n = int(len(hits))
    p = float(hits.mean()) if n else math.nan
    return {"rate": p, "mc_se": math.sqrt(p * (1 - p) / n) if n else math.nan, "trials": n}


def is_target(cells: pd.DataFrame, target: tuple[str, str, str]) -> pd.Series:
    organ, metric, sex = target
    return (cells["organ"] == organ) & (cells["metric"] == metric) & (cells["sex"] == sex)


def holds_shift(cells: pd.DataFrame, target: tuple[str, str, str]) -> pd.Series:
    """Cells that contain shifted cases: the target and its organ x metric's all-subjects cell."""
    organ, metric, sex = target
    return (cells["organ"] == organ) & (cells["metric"] == metric) & cells["sex"].isin([sex, "all"])


def rates_table(cells: pd.DataFrame, cfg: CalibrationConfig) -> pd.DataFrame:
    """Tidy rates: figure, design, rate, mc_se, trials, what it means."""
    a = cfg.alpha
    by = {s: cells[cells["scenario"] == s] for s in SCENARIOS}
    differs = lambda g: g["verdict"] == "differs"  # noqa: E731
    paired_flag = lambda g: g["paired_p_adjusted"] < a  # noqa: E731
    rows = [
        ("type1_per_primary_test", "model", by["null"]["p_value"] < a, "p < alpha per primary cell, null"),
        ("null_any_differs", "model", by["null"].groupby("rep").apply(lambda g: differs(g).any(), include_groups=False),
         "tables with any 'differs' among primary cells, null"),
        ("power_target", "model", differs(by["shift"][is_target(by["shift"], cfg.target)]),
         f"'differs' for +{cfg.shift:.0%} {' '.join(cfg.target)}"),
        ("false_differs_unshifted", "model", by["shift"][~holds_shift(by["shift"], cfg.target)]
         .groupby("rep").apply(lambda g: differs(g).any(), include_groups=False),
         "tables with 'differs' in a cell without shifted cases, shift scenario"),
        ("type1_per_primary_test", "twins", by["null_twins"]["paired_p"] < a, "paired p < alpha per primary cell, null"),
        ("null_any_differs", "twins", by["null_twins"].groupby("rep").apply(lambda g: paired_flag(g).any(),
                                                                            include_groups=False),
         "tables with any BH-flagged paired test, null"),
        ("power_target", "twins", paired_flag(by["shift_twins"][is_target(by["shift_twins"], cfg.target)]),
         f"BH-flagged paired test for +{cfg.shift:.0%} {' '.join(cfg.target)}"),
        ("p_equivalent_ratio_1.00", "model", by["null"]["verdict"] == "equivalent",
         "primary cells called equivalent at a true ratio of 1.00"),
        ("p_equivalent_ratio_1.05", "model", by["ratio_1.05"]["equivalent"].fillna(False),
         f"primary cells whose 90% CI lies inside the margin at a true ratio of 1.05 (= the margin; <= {a} expected)"),
    ]
    return pd.DataFrame([{"figure": f, "design": d, **rate(h), "meaning": m} for f, d, h, m in rows])


def equivalence_by_cell(cells: pd.DataFrame) -> pd.DataFrame:
    """P(equivalent) at a true ratio of 1.00 per primary cell (how far the spread lets equivalence be shown)."""
    null = cells[cells["scenario"] == "null"]
    return (null.assign(eq=null["verdict"] == "equivalent").groupby(["organ", "metric", "sex"], sort=False)["eq"]
            .mean().rename("p_equivalent").reset_index())


def headline(rates: pd.DataFrame) -> dict:
    """``{design: {figure: rate}}`` plus the Monte Carlo SEs."""
    out: dict[str, dict] = {}
    for r in rates.itertuples():
        out.setdefault(r.design, {})[r.figure] = r.rate
        out.setdefault(f"{r.design}_mc_se", {})[r.figure] = r.mc_se
    return out


def verdict_lines(rates: pd.DataFrame, cfg: CalibrationConfig) -> list[str]:
    """The issue's goals, each with its figure and Monte Carlo SE."""
    get = rates.set_index(["design", "figure"])
    lines = []
    for design in ("model", "twins"):
        def fig(name):
            r = get.loc[(design, name)]
            return r["rate"], r["mc_se"]
        t1, se = fig("type1_per_primary_test")
        lines.append(f"- {design}: type-I error per primary test {t1:.3f} (MC SE {se:.3f}) "
                     f"{'within' if 0.03 <= t1 <= 0.07 else 'OUTSIDE'} [0.03, 0.07]")
        anyf, se = fig("null_any_differs")
        lines.append(f"- {design}: any false 'differs' over the primary family {anyf:.3f} (MC SE {se:.3f}) "
                     f"{'<= 0.07: met' if anyf <= 0.07 else '> 0.07: NOT met'}")
        power, se = fig("power_target")
        lines.append(f"- {design}: power for +{cfg.shift:.0%} {' '.join(cfg.target)} at {cfg.n_per_sex} per sex per side "
                     f"{power:.3f} (MC SE {se:.3f}) {'>= 0.85: met' if power >= 0.85 else '< 0.85: NOT met'}")
    for name in ("p_equivalent_ratio_1.00", "p_equivalent_ratio_1.05"):
        r = get.loc[("model", name)]
        lines.append(f"- {name}: {r['rate']:.3f} (MC SE {r['mc_se']:.3f})")
    return lines


def markdown_table(frame: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_report(cfg: CalibrationConfig, rates: pd.DataFrame, by_cell: pd.DataFrame, seconds: float) -> None:
    write_table(rates, REPORTS / "calibration.csv")
    write_json({"population": "phantom", "config": cfg, "runtime_s": round(seconds, 1), "headline": headline(rates),
                "versions": package_versions()}, REPORTS / "calibration.json")
    organ, metric, sex = cfg.target
    md = ["# Calibration of the verdicts (phantom population)", "",
          f"Generated by `python -m benchmarks.bench_calibration` in {seconds:.0f} s wall with {cfg.workers} workers. "
          f"{cfg.reps} repetitions; {cfg.n_per_sex} cases **per sex** per side; metrics {', '.join(cfg.metrics)}; "
          f"alpha {cfg.alpha}; margin {cfg.margin:.0%}. The primary family is organ x {{volume_ml, suv_mean}} x "
          "{all, F, M}; BH within it. Power scenario: the synthetic draw's "
          f"{organ} {metric} x {1 + cfg.shift:g} in sex {sex}; the twins design draws each synthetic case with the "
          "demographics of a real case. Monte Carlo SE = sqrt(p (1 - p) / trials); per-test rates pool the "
          "correlated cells of a table, so their SE is a lower bound.", "",
          "## Goals", *verdict_lines(rates, cfg), "",
          "## Rates", markdown_table(rates), "",
          "## P(equivalent) per primary cell at a true ratio of 1.00",
          "Equivalence within 5% is shown only where the population's spread allows it at this n.",
          markdown_table(by_cell), ""]
    (REPORTS / "calibration.md").write_text("\n".join(md))


def parse_args(argv: list[str] | None) -> tuple[CalibrationConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=1000)
    p.add_argument("--n", type=int, default=100, help="cases per sex per side")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave reports/ as it is")
    a = p.parse_args(argv)
    return CalibrationConfig(reps=a.reps, n_per_sex=a.n, workers=a.workers, seed=a.seed), not a.no_write


def main(argv: list[str] | None = None) -> dict:
    cfg, write = parse_args(argv)
    start = time.perf_counter()
    cells = run_all(cfg)
    rates, by_cell = rates_table(cells, cfg), equivalence_by_cell(cells)
    seconds = time.perf_counter() - start
    if write:
        write_report(cfg, rates, by_cell, seconds)
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.max_colwidth", 80):
        print(rates.to_string(index=False))
    print("\n".join(verdict_lines(rates, cfg)))
    print(f"phantom; {seconds:.0f} s wall" + ("; reports/calibration.{md,csv,json} written" if write else ""))
    return to_jsonable(headline(rates))


if __name__ == "__main__":
    main()

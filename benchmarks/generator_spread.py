"""Between-subject spread of organ figures: does the generator make subjects as different as real ones?

Organ means can match while every synthetic subject is drawn near the population's typical value. Per organ
and metric (SUVmean, volume), the spread is the standard deviation over cases (ddof 1) of the figure's log;
its ratio synthetic / real should be 1. The phantom twins (a second phantom draw with the same demographics)
give the ratio a perfect generator shows from sampling noise alone; with n cases on each side the ratio's own
standard error is about sqrt(1 / (n - 1)) (lognormal figures).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("suv_mean", "volume_ml")


def log_spread(table: pd.DataFrame) -> pd.Series:
    """SD over cases (ddof 1) of log(value), indexed by (organ, metric); an organ table's rows with a
    finite positive value only."""
    long = table.melt(id_vars=["organ"], value_vars=list(METRICS), var_name="metric")
    long = long[np.isfinite(long["value"]) & (long["value"] > 0)]
    return long.assign(value=np.log(long["value"])).groupby(["organ", "metric"], sort=False)["value"].std()


def spread_comparison(real: pd.DataFrame, synth: pd.DataFrame, twins: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per organ and metric: real and synthetic log spread, their ratio, and the twins' ratio."""
    out = pd.DataFrame({"real_log_sd": log_spread(real), "synth_log_sd": log_spread(synth)})
    out["ratio"] = out["synth_log_sd"] / out["real_log_sd"]
    if twins is not None:
        out["twins_ratio"] = log_spread(twins) / out["real_log_sd"]
    return out.reset_index()


def spread_markdown(rows: list[dict], n: int) -> str:
    """The report's section from ``spread_comparison`` records."""
    lines = ["## Between-subject spread", "",
             "SD over cases of the log of each organ figure (a spread of 0.2 is about 20 % between subjects). A "
             "ratio below 1: synthetic subjects are more alike than real ones. The phantom twins' ratio is what "
             f"sampling noise alone gives (standard error about {np.sqrt(1 / max(n - 1, 1)):.2f} at n = {n}).",
             "", "| organ | metric | real | synthetic | ratio | phantom twins' ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        twins = f"{r['twins_ratio']:.2f}" if "twins_ratio" in r else ""
        lines.append(f"| {r['organ']} | {r['metric']} | {r['real_log_sd']:.3f} | {r['synth_log_sd']:.3f} | "
                     f"{r['ratio']:.2f} | {twins} |")
    return "\n".join(lines + [""])

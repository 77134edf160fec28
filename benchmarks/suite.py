"""The benchmark suites behind `totalgen-eval benchmark`: figures, their baselines, and the verdict.

Each suite is a set of *providers*; a provider runs one benchmark (in process: no shelling out) and returns
named figures. Every figure has a baseline in ``benchmarks/baselines/<suite>.json`` and every baseline a
figure (tests/test_benchmark_suite.py checks both directions):

    {"figure": {"value": 0.05, "tolerance": 0.02, "better": "near" | "higher" | "lower", "note": "..."}}

A figure regresses when it is worse than its baseline by more than the tolerance ("higher": value <
baseline - tolerance; "lower": value > baseline + tolerance; "near": |value - baseline| > tolerance).
``--update`` rewrites the baselines with the current figures (tolerances kept); ``--fast`` (CI) runs the
small configurations that the baselines were recorded with.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "benchmarks" / "baselines"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

Figures = dict[str, float]


def provides(*names: str) -> Callable:
    """Declare the figures a provider returns, so baselines can be checked against them without a run."""
    def mark(func: Callable) -> Callable:
        func.figures = names
        return func
    return mark


@provides("calibration.type1_primary_model", "calibration.null_any_differs_model", "calibration.power_model",
          "calibration.power_twins", "calibration.p_equivalent_ratio_1.05")
def calibration_figures(fast: bool, publish: bool) -> Figures:
    """Type-I error, false 'differs' per table and power of the primary verdicts on phantom organ tables."""
    from benchmarks import bench_calibration

    argv = ["--reps", "100"] if fast else []
    head = bench_calibration.main(argv + ([] if publish else ["--no-write"]))
    return {
        "calibration.type1_primary_model": head["model"]["type1_per_primary_test"],
        "calibration.null_any_differs_model": head["model"]["null_any_differs"],
        "calibration.power_model": head["model"]["power_target"],
        "calibration.power_twins": head["twins"]["power_target"],
        "calibration.p_equivalent_ratio_1.05": head["model"]["p_equivalent_ratio_1.05"],
    }


@provides("metrics.speedup_vs_naive", "metrics.speedup_vs_totalsegmentator", "read.speedup_isal")
def metrics_speed_figures(fast: bool, publish: bool) -> Figures:
    """Organ metrics vs a mask-per-organ loop and TotalSegmentator's statistics; isal vs plain gzip reads."""
    from benchmarks import bench_metrics

    shape = (120, 120, 180) if fast else (200, 200, 300)
    res = bench_metrics.run(shape=shape, repeats=3 if fast else 5)
    return {
        "metrics.speedup_vs_naive": res["ratio_naive"],
        "metrics.speedup_vs_totalsegmentator": res["ratio_totalsegmentator_roi_subset"],
        "read.speedup_isal": res["ratio_isal"],
    }


@provides("metrics.whole_case_speedup_vs_totalsegmentator")
def whole_case_figures(fast: bool, publish: bool) -> Figures:
    """Read + compute of one 2 mm phantom case from fresh files: TotalSegmentator's statistics (labels, PET,
    117 classes) over ours (CT, PET, labels, checks, the organ table); one run each, so noisy."""
    from benchmarks import bench_metrics

    return {"metrics.whole_case_speedup_vs_totalsegmentator": bench_metrics.whole_case(2.0)["ratio"]}


@provides("compare.cold_seconds_500", "compare.cached_seconds_500", "compare.seconds_per_case_n100",
          "compare.seconds_per_case_n200", "compare.seconds_per_case_n500")
def compare_scale_figures(fast: bool, publish: bool) -> Figures:
    """`compare` of 500 + 500 8 mm phantoms (bundled segmenter on the synthetic side, image metrics on, 2 workers),
    cold and cached, and the cold seconds per case at 100, 200, 500. Always the full sizes (the perf suite is
    not part of CI; about 10 minutes on 2 quiet cores)."""
    from benchmarks import bench_compare_scale

    res = bench_compare_scale.run((100, 200, 500))
    per_case = res["seconds_per_case"]
    return {"compare.cold_seconds_500": res["cold_seconds"], "compare.cached_seconds_500": res["cached_seconds"],
            **{f"compare.seconds_per_case_n{n}": per_case[str(n)] for n in (100, 200, 500)}}


@provides("phantoms.seconds_per_case_8mm")
def phantom_speed_figures(fast: bool, publish: bool) -> Figures:
    """Wall seconds per 8 mm phantom case (render + write), 2 workers."""
    from totalgen_eval.phantom import make_cohort

    n = 20 if fast else 200
    with tempfile.TemporaryDirectory(prefix="bench_phantoms_") as tmp:
        start = time.perf_counter()
        make_cohort(Path(tmp) / "c", n=n, seed=0, workers=2, progress=False)
        seconds = time.perf_counter() - start
    return {"phantoms.seconds_per_case_8mm": seconds / n}


@provides("generator.suv_mean_median_abs_dev_pct", "generator.volume_median_abs_dev_pct",
          "generator.liver_suv_mean_dev_pct", "generator.effects_reproduced_share",
          "generator.suv_max_median_abs_dev_pct", "generator.noise_sd_ratio_worst_dev")
def generator_fidelity_figures(fast: bool, publish: bool) -> Figures:
    """Bundled cascade vs held-out phantoms: organ SUVmean/volume deviations (all cases), demographic effects,
    organ SUVmax and voxel noise (the worst organ's |SD ratio - 1|)."""
    from benchmarks import bench_generator_fidelity

    with tempfile.TemporaryDirectory(prefix="bench_fidelity_") as work:
        res = bench_generator_fidelity.run(n=40 if fast else 100, work=Path(work),
                                           reports=ROOT / "reports" if publish else None)
    if res.get("organ_part") != "run":
        raise RuntimeError(f"generator fidelity: organ comparison {res.get('organ_part')}")
    synth = res["synth"]
    liver = [x["deviation_pct"] for x in res["per_organ_all"] if x["organ"] == "liver" and x["metric"] == "suv_mean"]
    effects = [e for e in synth["effects"] if e["judged"]]
    return {
        "generator.suv_mean_median_abs_dev_pct": float(synth["suv_mean_median_abs_dev_pct"]),
        "generator.volume_median_abs_dev_pct": float(synth["volume_median_abs_dev_pct"]),
        "generator.liver_suv_mean_dev_pct": float(liver[0]),
        "generator.effects_reproduced_share": sum(e["reproduced"] for e in effects) / max(len(effects), 1),
        "generator.suv_max_median_abs_dev_pct": float(res["texture"]["suv_max_median_abs_dev_pct"]),
        "generator.noise_sd_ratio_worst_dev": max(abs(n["ratio"] - 1) for n in res["texture"]["noise"]),
    }


@provides("generator.seconds_per_volume", "generator.stage1_seconds_per_volume",
          "generator.stage2_seconds_per_volume")
def generator_speed_figures(fast: bool, publish: bool) -> Figures:
    """Seconds per volume of the bundled cascade at its defaults (2 threads, batch 8), generate --n 20."""
    from benchmarks import bench_generator_speed

    reports = ROOT / "reports"
    res = bench_generator_speed.run(n=20, repeats=2 if fast else 3,
                                    out=reports / "generator_speed.json" if publish else None)
    if publish:
        bench_generator_speed.run(n=20, repeats=3, precision="fp32", out=reports / "generator_speed_fp32.json")
    return {"generator.seconds_per_volume": res["generate_s_per_volume"],
            "generator.stage1_seconds_per_volume": res["stage1_s_per_volume"],
            "generator.stage2_seconds_per_volume": res["stage2_s_per_volume"]}


@provides("demo.seconds_per_case")
def demo_figures(fast: bool, publish: bool) -> Figures:
    """Wall seconds per reference case of `totalgen-eval demo` (phantoms, twins, segmenter, compare, report).

    With ``publish`` (full: the default n=60) report.md, its figures and the tables are copied to reports/demo/
    (not the volumes; not report.html, 2 MB of embedded figures: `totalgen-eval plot reports/demo` remakes it)."""
    import shutil

    from totalgen_eval.pipeline import DemoConfig, run_demo

    n = 20 if fast else 60
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as work:
        results = Path(work) / "demo-results"
        start = time.perf_counter()
        run_demo(DemoConfig(out=results, n=n), progress=False)
        seconds = time.perf_counter() - start
        if publish:
            dest = ROOT / "reports" / "demo"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(results, dest, ignore=shutil.ignore_patterns("real", "synth", "cache", "report.html"))
            for text_file in [*dest.rglob("*.json"), *dest.rglob("*.md"), *dest.rglob("*.csv")]:
                text = text_file.read_text()  # no machine-specific paths in published files
                text_file.write_text(text.replace(str(results), "demo-results"))
    return {"demo.seconds_per_case": seconds / n}


PROVIDERS: dict[str, dict[str, Callable[[bool, bool], Figures]]] = {
    "regression": {"calibration": calibration_figures, "generator_fidelity": generator_fidelity_figures},
    "perf": {"metrics_speed": metrics_speed_figures, "whole_case": whole_case_figures,
             "phantom_speed": phantom_speed_figures, "generator_speed": generator_speed_figures, "demo": demo_figures,
             "compare_scale": compare_scale_figures},
}


@dataclass(frozen=True)
class Verdict:
    """One figure against its baseline."""

    figure: str
    value: float
    baseline: float
    tolerance: float
    better: str

    @property
    def regressed(self) -> bool:
        if self.better == "higher":
            return self.value < self.baseline - self.tolerance
        if self.better == "lower":
            return self.value > self.baseline + self.tolerance
        return abs(self.value - self.baseline) > self.tolerance


def load_baselines(suite: str) -> dict[str, dict]:
    """The baselines of one suite (figure -> {value, tolerance, better, note})."""
    path = BASELINES / f"{suite}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def judge(figures: Figures, baselines: dict[str, dict]) -> tuple[list[Verdict], list[str], list[str]]:
    """Verdicts for figures with a baseline; figures without one (or whose value/tolerance is still null);
    baselines without a figure."""
    based = {k: b for k, b in baselines.items() if b.get("value") is not None and b.get("tolerance") is not None}
    verdicts = [Verdict(k, float(v), float(based[k]["value"]), float(based[k]["tolerance"]),
                        based[k].get("better", "near")) for k, v in figures.items() if k in based]
    return verdicts, sorted(set(figures) - set(based)), sorted(set(baselines) - set(figures))


def declared_figures(suite: str) -> set[str]:
    """Every figure the providers of ``suite`` declare."""
    return {name for func in PROVIDERS[suite].values() for name in func.figures}


def suites(name: str) -> list[str]:
    """Suite names that ``name`` stands for (``all`` is every suite)."""
    if name == "all":
        return list(PROVIDERS)
    if name not in PROVIDERS:
        raise ValueError(f"unknown suite {name!r}: choose from {', '.join(PROVIDERS)} or all")
    return [name]


def run_suite(name: str, update: bool = False, publish: bool = False, fast: bool = True,
              echo: Callable[[str], None] = print) -> bool:
    """Run the suite(s), print every figure beside its baseline; True when nothing regressed.

    ``update`` rewrites the baselines' values (keeping tolerances and notes) instead of judging.
    ``publish`` runs the full configurations (it implies ``fast=False``) and lets providers write reports/.
    """
    fast = fast and not publish
    ok = True
    for suite in suites(name):
        baselines = load_baselines(suite)
        figures = suite_figures(suite, fast, publish, echo)
        verdicts, unbased, orphaned = judge(figures, baselines)
        for v in verdicts:
            echo(verdict_line(v))
        if update:
            write_baselines(suite, updated_baselines(baselines, figures, orphaned))
            echo(f"  baselines of {suite} updated ({len(figures)} figures)")
            continue
        ok = suite_passed(suite, verdicts, unbased, orphaned, echo) and ok
    return ok


def suite_figures(suite: str, fast: bool, publish: bool, echo: Callable[[str], None]) -> Figures:
    """Every figure of ``suite`` from its providers (each must return exactly what it declares), echoing
    each provider's wall time (s)."""
    figures: Figures = {}
    for provider, func in PROVIDERS[suite].items():
        start = time.perf_counter()
        got = func(fast, publish)
        if set(got) != set(func.figures):
            raise RuntimeError(f"{provider} returned {sorted(got)}, declared {sorted(func.figures)}")
        figures.update(got)
        echo(f"[{suite}] {provider}: {time.perf_counter() - start:.1f} s")
    return figures


def verdict_line(v: Verdict) -> str:
    """One printed line: figure, value, baseline, tolerance, direction and ok / REGRESSED."""
    mark = "REGRESSED" if v.regressed else "ok"
    return f"  {v.figure:<40} {v.value:>9.4g} vs {v.baseline:>9.4g} +-{v.tolerance:<7.2g} {v.better:<6} {mark}"


def updated_baselines(baselines: dict[str, dict], figures: Figures, orphaned: list[str]) -> dict[str, dict]:
    """The baselines with the figures' current values (tolerances and notes kept; a new figure's tolerance a
    quarter of its value until someone decides) and without the ``orphaned`` ones."""
    updated = copy.deepcopy(baselines)
    for fig, value in figures.items():
        entry = updated.setdefault(fig, {"better": "near"})
        entry["value"] = value
        if entry.get("tolerance") is None:
            entry["tolerance"] = abs(value) * 0.25
    for fig in orphaned:
        updated.pop(fig)
    return updated


def write_baselines(suite: str, baselines: dict[str, dict]) -> None:
    """Write ``baselines/<suite>.json`` (sorted keys, indent 2)."""
    BASELINES.mkdir(parents=True, exist_ok=True)
    (BASELINES / f"{suite}.json").write_text(json.dumps(baselines, indent=2, sort_keys=True) + "\n")


def suite_passed(suite: str, verdicts: list[Verdict], unbased: list[str], orphaned: list[str],
                 echo: Callable[[str], None]) -> bool:
    """Echo the figures without a baseline and the baselines without a figure; True when none of them and no
    regression (else echo the FAILED line)."""
    for fig in unbased:
        echo(f"  {fig}: no baseline (run with --update)")
    for fig in orphaned:
        echo(f"  {fig}: baseline without a figure")
    failed = [v.figure for v in verdicts if v.regressed]
    if failed or unbased or orphaned:
        echo(f"[{suite}] FAILED: " + ", ".join(failed + unbased + orphaned))
        return False
    return True

"""Speed of the cascaded generator at its default settings on this machine.

Prints seconds per volume for stage 1 (16 mm) and stage 2 (8 mm residual SR) separately, the NIfTI write
time, and the time of `generate --n 500` extrapolated from a `generate --n 20` run (the same code path as
the CLI: totalgen_eval.synthesis.generate_cohort). Goal (issue 6): <= 2.4 s per volume, stretch 1.2 s.
Uses the bundled weights when present, else a random-weight cascade of the same architecture (speed does
not depend on the weights). Writes reports/generator_speed.json.

    python benchmarks/bench_generator_speed.py [--threads 2] [--n 20] [--batch-size 8] [--precision fp32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from generator import default_lowres, default_sr, load_cascade, random_cascade
from generator.diffusion import karras_sigmas
from generator.sampling import get_sampler, guided
from generator.precision import autocast, resolve_precision
from generator.stages import lowres_condition, sr_condition

ROOT = Path(__file__).resolve().parents[1]


def cascade_under_test():
    try:
        return load_cascade(), "bundled"
    except FileNotFoundError:
        from generator.population import PopulationModel

        rng = np.random.default_rng(0)
        pop = PopulationModel.fit({"age": rng.uniform(20, 80, 50), "sex": rng.choice(["F", "M"], 50),
                                   "height_m": rng.normal(1.72, 0.09, 50), "weight_kg": rng.normal(78, 14, 50)})
        return random_cascade(default_lowres(), default_sr(), pop), "random weights (bundled absent)"


def time_stage(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(threads: int = 2, n: int = 20, batch_size: int = 8, repeats: int = 3, precision: str = "auto",
        out: Path | None = None) -> dict:
    """Seconds per volume of each stage and of `generate --n {n}`; written as JSON to ``out`` when given."""
    torch.set_num_threads(threads)
    cascade, source = cascade_under_test()
    cascade.precision = resolve_precision(precision, cascade.device)
    s = cascade.settings()
    b = batch_size
    lo, sr = cascade.lowres_config, cascade.sr_config
    demo = torch.tensor([[55.0, 1.0, 1.75, 80.0]] * b)
    lo_sig = karras_sigmas(s.lowres_steps, lo.schedule.sigma_min, lo.schedule.sigma_max, lo.schedule.rho)
    sr_sig = karras_sigmas(s.sr_steps, sr.schedule.sigma_min, sr.schedule.sigma_max, sr.schedule.rho)
    x_lo = torch.randn(b, 2, *lo.shape) * lo_sig[0]
    lo_cond = {"demographics": demo, "image": lowres_condition(x_lo)}
    with torch.inference_mode(), autocast(cascade.precision, "cpu"):
        low = get_sampler(s.lowres_sampler)(guided(cascade.lowres, s.guidance), x_lo, lo_sig, lo_cond).float()
        up, image = sr_condition(low)
        r = torch.randn(b, 2, *sr.shape) * sr_sig[0]
        t1 = time_stage(lambda: get_sampler(s.lowres_sampler)(guided(cascade.lowres, s.guidance), x_lo, lo_sig,
                                                              lo_cond), repeats) / b
        t2 = time_stage(lambda: get_sampler(s.sr_sampler)(cascade.sr, r, sr_sig, {"demographics": demo, "image": image}),
                        repeats) / b
    from totalgen_eval.provenance import package_versions
    from totalgen_eval.synthesis import generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        generate_cohort(Path(tmp) / "synth", n=n, seed=0, batch_size=b, cascade=cascade, progress=False)
        total = time.perf_counter() - t
    per_case = total / n
    result = {
        "weights": source, "precision": cascade.precision, "threads": threads, "batch_size": b, "settings": s.__dict__,
        "stage1_s_per_volume": round(t1, 3), "stage2_s_per_volume": round(t2, 3),
        "generate_n": n, "generate_seconds": round(total, 1), "generate_s_per_volume": round(per_case, 3),
        "generate_500_extrapolated_min": round(per_case * 500 / 60, 1),
        "goal_s_per_volume": 2.4, "stretch_s_per_volume": 1.2,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "versions": package_versions(),
    }
    print(f"weights: {source}; precision {cascade.precision}; threads {threads}; batch {b}; load average {result['load_average_1min']}")
    print(f"stage 1 ({s.lowres_sampler}, {s.lowres_steps} steps, guidance {s.guidance}): {t1:.3f} s/volume")
    print(f"stage 2 ({s.sr_sampler}, {s.sr_steps} steps): {t2:.3f} s/volume")
    print(f"generate --n {n}: {total:.1f} s = {per_case:.3f} s/volume (incl. NIfTI writing) "
          f"-> --n 500 ~ {per_case * 500 / 60:.1f} min; goal 2.4 s/volume: {'met' if per_case <= 2.4 else 'NOT met'}, "
          f"stretch 1.2 s: {'met' if per_case <= 1.2 else 'not met'}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="auto", help="auto (bf16 where fast), bf16 or fp32")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "generator_speed.json")
    ap.add_argument("--no-write", action="store_true", help="print only; leave reports/ alone")
    args = ap.parse_args(argv)
    return run(threads=args.threads, n=args.n, batch_size=args.batch_size, repeats=args.repeats,
               precision=args.precision, out=None if args.no_write else args.out)


if __name__ == "__main__":
    main()

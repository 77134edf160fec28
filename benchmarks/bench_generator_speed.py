"""Speed of the cascaded generator at its default settings on this machine.

Prints seconds per volume for stage 1 (16 mm) and stage 2 (8 mm residual SR) separately, the NIfTI write
time, and the time of `generate --n 500` extrapolated from a `generate --n 20` run (the same code path as
the CLI: totalgen_eval.synthesis.generate_cohort). Goal (issue 6): <= 2.4 s per volume, stretch 1.2 s.
Uses the bundled weights when present, else a random-weight cascade of the same architecture (speed does
not depend on the weights). Writes reports/generator_speed.json.

    python benchmarks/bench_generator_speed.py [--threads 2] [--n 20] [--batch-size 8] [--precision fp32]
    python -m benchmarks.bench_generator_speed --before <older cascade folder> [--repeats 3]

``--before`` times an older cascade against the bundled one side by side, each as it runs (the older one in
contiguous memory on glibc's default heap with nearest-upsample-then-conv, the bundled one channels-last with
``generator.memory.heap_reuse`` and ``generator.networks.upsample_conv``, as ``Cascade.iter_generate``
samples), and the older one run as today's code runs it, each timing in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from generator import default_lowres, default_sr, load_cascade, random_cascade
from generator.cascade import case_noise
from generator.memory import glibc, heap_reuse
from generator.networks import channels_last
from generator.precision import autocast, resolve_precision
from generator.sampling import guidance_text
from generator.stages import lowres_condition

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


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo) and its core count, for the record."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def time_stage(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_batch(cascade, settings, batch: int):
    """(plan, per-case noises, (B, 4) demographics) of the batch every timing here samples: ``batch`` cases
    of seed 0, all 55 years, male, 1.75 m, 80 kg."""
    plan = cascade.plan(settings)
    noises = [case_noise(0, i, plan.noise_shapes) for i in range(batch)]
    return plan, noises, torch.tensor([[55.0, 1.0, 1.75, 80.0]] * batch)


def stage_seconds(cascade, settings, batch: int, repeats: int) -> tuple[float, float]:
    """(stage 1, stage 2) seconds per volume at ``settings``: stage 1 timed alone, stage 2 as the whole
    batch (``Cascade.sample_batch``) minus stage 1."""
    plan, noises, demo = timed_batch(cascade, settings, batch)
    x = torch.stack([z[0] for z in noises]) * plan.lowres_sigmas[0]
    cond = {"demographics": demo, "image": lowres_condition(x) if plan.lowres_positions else None}

    def stage1() -> None:
        with torch.inference_mode(), autocast(cascade.precision, cascade.device):
            plan.lowres_sampler(plan.lowres_model, x, plan.lowres_sigmas, cond)

    with heap_reuse():  # as ``Cascade.iter_generate`` samples
        t1 = time_stage(stage1, repeats) / batch
        both = time_stage(lambda: cascade.sample_batch(plan, noises, demo), repeats) / batch
    return t1, both - t1


VARIANTS = {  # name: (cascade "before" or "now", layout, heap reuse, up-convolution at low resolution)
    "before": ("before", "contiguous", False, False),  # as the cascade before issue 14 ran
    "now": ("now", "channels_last", True, True),  # as ``Cascade.iter_generate`` runs the bundled one
    "before_same_code": ("before", "channels_last", True, True),  # the older weights run as today's code runs
}


def time_variant(folder: Path | None, layout: str, heap: bool, fast_upsample: bool, threads: int,
                 batch: int) -> dict:
    """Seconds per volume of the second of two ``sample_batch`` calls (batch ``batch``, the cascade's
    defaults) of the cascade in ``folder`` (None: bundled) in memory ``layout``, with or without heap reuse
    and ``upsample_conv``; with the settings it sampled at."""
    torch.set_num_threads(threads)
    cascade = load_cascade(folder)
    for net in (cascade.lowres, cascade.sr):
        if layout == "contiguous":
            net.to(memory_format=torch.contiguous_format)
        else:
            channels_last(net)
        net.net.fast_upsample = fast_upsample
    plan, noises, demo = timed_batch(cascade, cascade.settings(), batch)
    with heap_reuse(heap):
        cascade.sample_batch(plan, noises, demo)
        t = time.perf_counter()
        cascade.sample_batch(plan, noises, demo)
        seconds = (time.perf_counter() - t) / batch
    return {"seconds_per_volume": seconds, "settings": cascade.settings().__dict__}


def side_by_side(before: Path, threads: int = 2, batch: int = 8, rounds: int = 3) -> dict:
    """Seconds per volume of the VARIANTS, timed alternately in one run, each in a fresh process (the heap
    reuse changes how a process allocates after it ends, so variants never share a process).
    ``speedup`` = before / now (each as it runs); ``speedup_same_code`` = before run as today's code runs it
    / now (the networks' and schedules' share alone)."""
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    settings: dict[str, dict] = {}
    for _ in range(rounds):
        for name, (which, layout, heap, fast) in VARIANTS.items():
            folder = str(Path(before).resolve()) if which == "before" else "bundled"
            cmd = [sys.executable, "-m", "benchmarks.bench_generator_speed", "--time-variant", folder, layout,
                   str(int(heap)), str(int(fast)), "--threads", str(threads), "--batch-size", str(batch)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            timing = json.loads(out.splitlines()[-1])
            times[name].append(timing["seconds_per_volume"])
            settings[which] = timing["settings"]
    best = {k: min(v) for k, v in times.items()}
    return {"before_s_per_volume": round(best["before"], 3), "now_s_per_volume": round(best["now"], 3),
            "speedup": round(best["before"] / best["now"], 3),
            "before_same_code_s_per_volume": round(best["before_same_code"], 3),
            "speedup_same_code": round(best["before_same_code"] / best["now"], 3),
            "rounds": rounds, "seconds_per_volume_each_round": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "threads": threads, "batch": batch,
            "settings": settings,
            "load_average_1min": round(os.getloadavg()[0], 2)}


def run(threads: int = 2, n: int = 20, batch_size: int = 8, repeats: int = 3, precision: str = "auto",
        out: Path | None = None) -> dict:
    """Seconds per volume of each stage and of `generate --n {n}`; written as JSON to ``out`` when given."""
    torch.set_num_threads(threads)
    cascade, source = cascade_under_test()
    cascade.precision = resolve_precision(precision, cascade.device)
    s = cascade.settings()
    b = batch_size
    t1, t2 = stage_seconds(cascade, s, b, repeats)
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
        "load_average_1min": round(os.getloadavg()[0], 2), "cpu": cpu_model(), "heap_reuse": bool(glibc()),
        "versions": package_versions(),
    }
    print(f"weights: {source}; precision {cascade.precision}; threads {threads}; batch {b}; load average {result['load_average_1min']}")
    guidance = guidance_text(s.guidance, s.guidance_sigma)
    print(f"stage 1 ({s.lowres_sampler}, {s.lowres_steps} steps, guidance {guidance}): {t1:.3f} s/volume")
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
    ap.add_argument("--before", type=Path, default=None,
                    help="a cascade folder to time side by side with the bundled one (prints the speed-up only)")
    ap.add_argument("--time-variant", nargs=4, metavar=("FOLDER", "LAYOUT", "HEAP", "UPCONV"),
                    help="(used by --before) print one variant's seconds per volume and settings as a JSON "
                         "line: a cascade folder or 'bundled', contiguous or channels_last, 1/0 heap reuse, "
                         "1/0 up-convolution at low resolution")
    args = ap.parse_args(argv)
    if args.time_variant is not None:
        folder, layout, heap, fast = args.time_variant
        timing = time_variant(None if folder == "bundled" else Path(folder), layout, heap == "1", fast == "1",
                              args.threads, args.batch_size)
        print(json.dumps(timing))
        return timing
    if args.before is not None:
        result = side_by_side(args.before, args.threads, args.batch_size, args.repeats)
        print(json.dumps(result, indent=2))
        return result
    return run(threads=args.threads, n=args.n, batch_size=args.batch_size, repeats=args.repeats,
               precision=args.precision, out=None if args.no_write else args.out)


if __name__ == "__main__":
    main()

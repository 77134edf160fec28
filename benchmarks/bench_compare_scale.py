"""`compare` at cohort scale: N real + N synthetic phantoms at 8 mm, wall seconds cold and cached, and the cost
per case at several N (it should stay flat: linear cost in cases).

The real side uses the cohort's own labels; the synthetic side is segmented by the bundled segmenter
(``model:bundled``), as for generated volumes (phantoms stand in for them: the segmenter's work is the same).
Image metrics (FID, MMD, MS-SSIM) are switched on where the comparison offers them (``CompareConfig.images``).
Two workers.
Cold: a fresh output folder (no cache); cached: the same command again in that folder. Wall and CPU seconds
(this process, its threads and its ended pool workers): on a machine that others load, CPU seconds tell the
work.

    python -m benchmarks.bench_compare_scale                       # 500 + 500; series at 100, 200, 500
    python -m benchmarks.bench_compare_scale --sizes 20,40 --json out.json

``run(...)`` returns the figures as a dict (used by the benchmark suite).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

SIZES = (100, 200, 500)


def cohort_subset(full: Path, n: int, dest: Path) -> Path:
    """A cohort folder holding the first ``n`` cases of ``full`` (cohort.csv rows; the case files linked)."""
    dest.mkdir(parents=True)
    pd.read_csv(full / "cohort.csv").head(n).to_csv(dest / "cohort.csv", index=False)
    os.symlink((full / "cases").resolve(), dest / "cases")
    return dest


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compare_seconds(real: Path, synth: Path, out: Path, workers: int = 2) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `compare` (bundled segmenter on the synthetic side, image metrics on);
    CPU seconds tell the work done on a machine that others load."""
    from totalgen_eval.pipeline import CompareConfig, run_compare

    cfg = CompareConfig(real=real, synth=synth, out=out, synth_segmenter="model:bundled", workers=workers,
                        images=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    run_compare(cfg, progress=False)
    return time.perf_counter() - start, cpu_seconds() - cpu


def run(sizes: tuple[int, ...] = SIZES, workers: int = 2, seed: int = 0, work: Path | None = None) -> dict:
    """Figures: cold and cached seconds (wall and CPU) at the largest size, seconds per case (cold) at every
    size."""
    from totalgen_eval.phantom import make_cohort

    with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
        root = Path(work or tmp)
        n_max = max(sizes)
        start = time.perf_counter()
        real = make_cohort(root / "real", n=n_max, seed=seed, workers=workers, progress=False)
        synth = make_cohort(root / "synth", n=n_max, seed=seed + 10_000, workers=workers, progress=False)
        phantom_seconds = time.perf_counter() - start
        per_case, cold_cpu = {}, 0.0
        for n in sorted(sizes):
            pair = [cohort_subset(c, n, root / f"{c.name}-{n}") if n < n_max else c for c in (real, synth)]
            seconds, cold_cpu = compare_seconds(*pair, root / f"out-{n}", workers)
            per_case[n] = seconds / n
        cached, cached_cpu = compare_seconds(real, synth, root / f"out-{n_max}", workers)
    return {"sizes": list(sorted(sizes)), "workers": workers, "phantom_seconds": phantom_seconds,
            "cold_seconds": per_case[n_max] * n_max, "cached_seconds": cached,
            "cold_cpu_seconds": cold_cpu, "cached_cpu_seconds": cached_cpu,
            "seconds_per_case": {str(n): s for n, s in per_case.items()},
            "per_case_ratio_largest_to_smallest": per_case[n_max] / per_case[min(sizes)], "image_metrics": True}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="cases per side, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    res = run(tuple(int(s) for s in args.sizes.split(",")), args.workers)
    n = max(res["sizes"])
    print(f"compare {n} + {n} phantoms at 8 mm, labels vs model:bundled, {res['workers']} workers, "
          "image metrics on")
    print(f"  cold {res['cold_seconds']:.1f} s (CPU {res['cold_cpu_seconds']:.1f} s), cached "
          f"{res['cached_seconds']:.1f} s (CPU {res['cached_cpu_seconds']:.1f} s); making the phantoms: "
          f"{res['phantom_seconds']:.1f} s")
    for size, s in res["seconds_per_case"].items():
        print(f"  {size:>5} + {size:<5} cold: {s:.3f} s per case")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()

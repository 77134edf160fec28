"""Cost of the image-level metrics per case: reading + features, body-box arrays, the metric tables, the
memorization search. Phantoms at 8 mm (the demo's grid), bundled feature extractor.

    python benchmarks/bench_images.py [--n 30] [--n-boot 100] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from totalgen_eval.cohort import load_cohort  # noqa: E402
from totalgen_eval.images import cohort_images, image_metrics_from, load_extractor, memorization_from  # noqa: E402
from totalgen_eval.phantom import make_cohort  # noqa: E402


def timed(func, *args, **kwargs):
    """(result, CPU seconds of this process, all threads): steadier than wall time on a shared machine."""
    t0 = time.process_time()
    out = func(*args, **kwargs)
    return out, time.process_time() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="cases per cohort (real, synthetic, training)")
    ap.add_argument("--n-boot", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_images_") as tmp:
        cohorts = [load_cohort(make_cohort(Path(tmp) / name, n=args.n, seed=seed, workers=2, progress=False))
                   for name, seed in (("real", 1), ("synth", 2), ("train", 3))]
        extractor, t_load = timed(load_extractor, "bundled")
        real, t_real = timed(cohort_images, cohorts[0], extractor)
        synth, t_synth = timed(cohort_images, cohorts[1], extractor)
        train, t_train = timed(cohort_images, cohorts[2], None)
        table, t_table = timed(image_metrics_from, real, synth, "bundled", None, args.n_boot, 0)
        _, t_table0 = timed(image_metrics_from, real, synth, "bundled", None, 0, 0)
        _, t_memo = timed(memorization_from, synth, train, real)
    n = args.n
    per_case = (t_real + t_synth + t_table) / (2 * n)
    print(f"image metrics: n={n} a cohort, 8 mm phantoms, bundled features, {args.n_boot} bootstrap resamples, "
          f"{args.threads} torch threads; CPU seconds of this process (all threads; wall time depends on the load)")
    print(f"  load extractor            {t_load:8.2f} s")
    print(f"  read + features           {(t_real + t_synth) / (2 * n):8.3f} s per case")
    print(f"  read + body arrays only   {t_train / n:8.3f} s per case (training cohort, no features)")
    print(f"  metric table              {t_table:8.2f} s ({t_table0:.2f} s without bootstrap; {len(table)} rows)")
    print(f"  memorization search       {t_memo:8.3f} s ({n} synthetic x {n} training)")
    print(f"  total per compared case   {per_case:8.3f} s (features + table, real and synthetic cases)")


if __name__ == "__main__":
    main()

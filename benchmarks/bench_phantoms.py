"""Time making a phantom cohort: seconds in total and per case, MB written, render vs write share.

    python benchmarks/bench_phantoms.py --n 200 --workers 2            # default 8 mm canvas
    python benchmarks/bench_phantoms.py --n 10 --voxel-mm 4 --layout tcia
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from totalgen_eval.phantom import PhantomConfig, draw_subjects, make_cohort, render_case, sample_demographics  # noqa: E402


def folder_mb(root: Path) -> float:
    """Size of all files under ``root`` in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def time_render_only(config: PhantomConfig, k: int = 10) -> float:
    """Median seconds to render one case in memory (no files)."""
    rng = np.random.default_rng(0)
    demo = sample_demographics(k, rng)
    demo["case_id"] = [f"b{i}" for i in range(k)]
    truth = draw_subjects(demo, rng)
    times = []
    for i in range(k):
        t0 = time.perf_counter()
        render_case(demo.iloc[i], truth[truth.case_id == f"b{i}"], config, rng)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--voxel-mm", type=float, default=8.0)
    ap.add_argument("--layout", default="ours", choices=("ours", "tcia"))
    ap.add_argument("--out", type=Path, default=None, help="cohort folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    config = PhantomConfig(voxel_mm=args.voxel_mm)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_phantoms_")) / "cohort"
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out}: not empty (make_cohort would resume; give an empty folder)")
    try:
        t0 = time.perf_counter()
        make_cohort(out, n=args.n, seed=0, config=config, layout=args.layout, workers=args.workers, progress=False)
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        make_cohort(out, n=args.n, seed=0, config=config, layout=args.layout, workers=args.workers, progress=False)
        resume = time.perf_counter() - t1
        mb = folder_mb(out)
        render = time_render_only(config)
    finally:
        if args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)
    print(f"phantoms: n={args.n} voxel={args.voxel_mm:g} mm layout={args.layout} workers={args.workers}")
    print(f"  total          {total:8.2f} s")
    print(f"  per case       {total / max(args.n, 1) * 1000:8.1f} ms  (wall, all workers)")
    print(f"  render only    {render * 1000:8.1f} ms per case (one process, in memory)")
    print(f"  written        {mb:8.1f} MB  ({mb / max(args.n, 1):.2f} MB per case)")
    print(f"  resume re-run  {resume:8.2f} s  (all cases present: only truth and tables)")


if __name__ == "__main__":
    main()

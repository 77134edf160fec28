"""NIfTI (.nii.gz) read throughput: isal's gzip vs Python's zlib gzip vs plain nibabel, on
realistic-size volumes (a smooth SUV-like float32 PET and an int16 CT, 200 x 200 x 300 by default),
plus the cost of the header-level check ``load_cohort`` makes of every file.

    python -m benchmarks.bench_read                      # 200 x 200 x 300, 5 repeats (median)
    python -m benchmarks.bench_read --shape 400,400,300 --json out.json

MB/s counts decompressed bytes (header + voxel data) per CPU second of reading into a float32 array.
``run(...)`` returns the figures as a dict (used by the benchmark suite).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from totalgen_eval import volumes
from totalgen_eval.cohort.case import file_grid
from totalgen_eval.volumes import read_volume, write_volume


def synthetic_volumes(shape=(200, 200, 300), seed=0) -> dict[str, np.ndarray]:
    """A body-shaped PET in SUV (smooth, float32, 0 outside, hot spots up to ~15) and CT in HU (int16)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = np.asarray(shape) / 2
    body = ((grid[0] - centre[0]) / (0.42 * shape[0])) ** 2 + ((grid[1] - centre[1]) / (0.3 * shape[1])) ** 2 <= 1
    body = np.broadcast_to(body, shape)
    uptake = ndimage.gaussian_filter(rng.gamma(2.0, 0.5, shape).astype(np.float32), 2.0)
    for _ in range(6):
        c = rng.uniform(0.2, 0.8, 3) * np.asarray(shape)
        uptake += 12 * np.exp(-sum(((g - ci) / 6.0) ** 2 for g, ci in zip(grid, c))).astype(np.float32)
    pet = np.where(body, uptake, 0).astype(np.float32)
    tissue = ndimage.gaussian_filter(rng.normal(40, 30, shape).astype(np.float32), 1.0)
    ct = np.where(body, tissue + rng.normal(0, 12, shape), -1000 + rng.normal(0, 12, shape)).astype(np.int16)
    return {"pet_float32": pet, "ct_int16": ct}


def _median_seconds(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds of this process (``time.process_time``: reading is single-threaded, and CPU time
    is not stretched by other processes on a loaded machine) of each callable, interleaved."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _plain_nibabel(path: Path) -> np.ndarray:
    return nib.load(path).get_fdata(dtype=np.float32)


def run(shape=(200, 200, 300), repeats: int = 5, seed: int = 0) -> dict:
    """Median read time and MB/s per volume and reader; isal/zlib and isal/nibabel speed-ups."""
    if volumes._gzip is None:
        raise SystemExit("isal is not installed: nothing to compare")
    out: dict = {"shape": list(shape), "repeats": repeats, "volumes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, array in synthetic_volumes(shape, seed).items():
            path = write_volume(array, np.diag([2.0, 2.0, 3.0, 1.0]), Path(tmp) / f"{name}.nii.gz")
            raw_mb = (352 + array.nbytes) / 1e6
            readers = {
                "isal": lambda: read_volume(path, use_isal=True),
                "zlib_gzip": lambda: read_volume(path, use_isal=False),
                "nibabel": lambda: _plain_nibabel(path),
            }
            ref = _plain_nibabel(path)
            for reader in readers.values():  # every reader gives the same array
                got = reader()
                np.testing.assert_array_equal(got[0] if isinstance(got, tuple) else got, ref)
            secs = _median_seconds(readers, repeats)
            header_ms = 1000 * _median_seconds({"header": lambda: file_grid(path)}, repeats)["header"]
            out["volumes"][name] = {
                "decompressed_mb": round(raw_mb, 1), "compressed_mb": round(path.stat().st_size / 1e6, 1),
                **{f"{k}_s": round(v, 3) for k, v in secs.items()},
                **{f"{k}_mb_per_s": round(raw_mb / v, 1) for k, v in secs.items()},
                "isal_vs_zlib": round(secs["zlib_gzip"] / secs["isal"], 2),
                "isal_vs_nibabel": round(secs["nibabel"] / secs["isal"], 2),
                "header_check_ms": round(header_ms, 2),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="200,200,300", help="volume shape i,j,k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    result = run(shape, args.repeats)
    print(f"NIfTI .nii.gz read, shape {shape}, median of {args.repeats} (MB of decompressed data per CPU second)")
    print(f"{'volume':<13}{'MB (raw/gz)':>13}{'isal':>9}{'zlib':>9}{'nibabel':>9}"
          f"{'isal/zlib':>11}{'isal/nib':>10}{'header ms':>11}")
    for name, r in result["volumes"].items():
        print(f"{name:<13}{r['decompressed_mb']:>7}/{r['compressed_mb']:<5}{r['isal_mb_per_s']:>9}"
              f"{r['zlib_gzip_mb_per_s']:>9}{r['nibabel_mb_per_s']:>9}{r['isal_vs_zlib']:>10}x"
              f"{r['isal_vs_nibabel']:>9}x{r['header_check_ms']:>11}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

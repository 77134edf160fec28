"""Per-case organ-metric time: ours (one pass, bounding boxes) vs a naive mask per organ vs TotalSegmentator's
own statistics (``totalsegmentator.statistics.get_basic_statistics``) on the same label map and image.

The image is integer-valued so TotalSegmentator's int16 cast changes nothing; volumes and means are asserted
identical (TotalSegmentator rounds means to 5 decimals). Also NIfTI read throughput with isal vs plain gzip.

Whole case (``whole_case``): read + compute from fresh files, one run each: ours = ``compute_case`` (PET,
CT and labels read, plausibility checks, the organ table with SUVpeak and HU) against TotalSegmentator's
statistics over its whole label map (labels and PET read with nibabel, ``get_basic_statistics`` over all 117
classes: one image, so the comparison favours it). TotalSegmentator's package ships no example CT or labels
(its test files live in its repository only), so the case is a rendered phantom at 2 mm (20.6 M voxels).

    python -m benchmarks.bench_metrics                 # 200 x 200 x 300, ~20 labels, 3 repeats
    python -m benchmarks.bench_metrics --phantom-mm 2 --json out.json   # a rendered phantom, 2 mm
    python -m benchmarks.bench_metrics --whole-case --profile           # whole case, with our profile

``run(...)`` and ``whole_case(...)`` return the figures as dicts (used by the benchmark suite).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from totalgen_eval import metrics
from totalgen_eval.organs import CLASSES, ORGAN_NAMES, organ
from totalgen_eval.volumes import Grid, read_volume, write_volume

EXTRA_CLASSES = (4, 6, 7, 15, 16, 17)  # gallbladder, pancreas, stomach, esophagus, trachea, thyroid: not ours


def synthetic_case(shape=(200, 200, 300), spacing=(2.0, 2.0, 3.0), seed=0):
    """Label map of ellipsoids (our 17 classes + 6 others, ~23 labels), integer PET (0..30), CT (HU)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    classes = list(CLASSES) + list(EXTRA_CLASSES)
    for cid in classes:
        centre = rng.uniform(0.15, 0.85, 3) * np.asarray(shape)
        radii = rng.uniform(0.04, 0.12, 3) * np.asarray(shape)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        labels[inside] = cid
    pet = rng.integers(0, 31, size=shape).astype(np.float32)
    ct = rng.integers(-1000, 1000, size=shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    return pet, ct, labels, affine


def phantom_case(voxel_mm=2.0, seed=0):
    """A rendered phantom (labels, CT) with an integer-valued PET (SUV x 100, rounded) at ``voxel_mm``."""
    from totalgen_eval.phantom import PhantomConfig, make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        root = make_cohort(Path(tmp) / "ph", n=1, seed=seed, config=PhantomConfig(voxel_mm=voxel_mm), progress=False)
        stem = root / "cases" / "phantom-0000"
        pet, affine = read_volume(f"{stem}_pet.nii.gz")
        ct, _ = read_volume(f"{stem}_ct.nii.gz")
        labels, _ = read_volume(f"{stem}_labels.nii.gz", dtype=None)
    return np.rint(pet * 100).astype(np.float32), ct, labels, affine


def naive_metrics(pet, ct, labels, voxel_ml, organs=ORGAN_NAMES):
    """A full-volume mask per organ: the same statistics as ours except suv_peak."""
    rows = []
    for name in organs:
        mask = np.isin(labels, organ(name).classes)
        vals = pet[mask]
        rows.append({"organ": name, "n_voxels": int(mask.sum()), "volume_ml": mask.sum() * voxel_ml,
                     "suv_mean": vals.mean(dtype=np.float64) if vals.size else np.nan,
                     "suv_median": np.median(vals) if vals.size else np.nan,
                     "suv_std": vals.std() if vals.size else np.nan,
                     "suv_max": vals.max() if vals.size else np.nan,
                     "hu_mean": ct[mask].mean(dtype=np.float64) if vals.size else np.nan})
    return rows


def ts_organ_values(ts_stats, name):
    """(volume mL, mean) of one organ from TotalSegmentator's per-class statistics (volume-weighted)."""
    from totalsegmentator.map_to_binary import class_map
    vols = np.array([ts_stats[class_map["total"][c]]["volume"] for c in organ(name).classes]) / 1000.0
    means = np.array([ts_stats[class_map["total"][c]]["intensity"] for c in organ(name).classes])
    return vols.sum(), (vols * means).sum() / vols.sum() if vols.sum() else np.nan


def best_time(func, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t)
    return min(times), out


def run(shape=(200, 200, 300), spacing=(2.0, 2.0, 3.0), repeats=3, seed=0, phantom_mm: float | None = None) -> dict:
    """Figures of one benchmark run (seconds are the best of ``repeats``); ``phantom_mm``: a phantom instead."""
    from totalsegmentator.statistics import get_basic_statistics

    if phantom_mm:
        pet, ct, labels, affine = phantom_case(phantom_mm, seed)
        shape, spacing = labels.shape, (phantom_mm,) * 3
    else:
        pet, ct, labels, affine = synthetic_case(shape, spacing, seed)
    grid = Grid(shape, affine)
    pet_img = nib.Nifti1Image(pet, affine)
    roi = list(CLASSES.values())
    t_ours, ours = best_time(lambda: metrics.case_metrics(pet, ct, labels, grid), repeats)
    t_naive, naive = best_time(lambda: naive_metrics(pet, ct, labels, grid.voxel_ml), repeats)
    t_ts_roi, ts_roi = best_time(lambda: get_basic_statistics(labels, pet_img, quiet=True, roi_subset=roi,
                                                              exclude_masks_at_border=False), repeats)
    t_ts_all, ts_all = best_time(lambda: get_basic_statistics(labels, pet_img, quiet=True,
                                                              exclude_masks_at_border=False), max(1, repeats - 2))
    ours = ours.set_index("organ")
    for row in naive:
        assert ours.loc[row["organ"], "n_voxels"] == row["n_voxels"]
        assert np.isclose(ours.loc[row["organ"], "suv_mean"], row["suv_mean"], rtol=1e-12)
        assert np.isclose(ours.loc[row["organ"], "suv_median"], row["suv_median"])
        assert np.isclose(ours.loc[row["organ"], "hu_mean"], row["hu_mean"], rtol=1e-12)
    for ts in (ts_roi, ts_all):
        for name in ORGAN_NAMES:
            vol, mean = ts_organ_values(ts, name)
            assert np.isclose(ours.loc[name, "volume_ml"], vol, rtol=1e-12), name
            assert abs(ours.loc[name, "suv_mean"] - mean) < 1e-4, name
    read = read_throughput(pet, affine)
    return {"case": f"phantom at {phantom_mm} mm" if phantom_mm else "synthetic ellipsoids",
            "shape": list(shape), "spacing_mm": list(spacing), "n_labels": int(len(np.unique(labels)) - 1),
            "ours_s": t_ours, "naive_mask_per_organ_s": t_naive, "totalsegmentator_roi_subset_s": t_ts_roi,
            "totalsegmentator_all_classes_s": t_ts_all, "ratio_naive": t_naive / t_ours,
            "ratio_totalsegmentator_roi_subset": t_ts_roi / t_ours,
            "ratio_totalsegmentator_all_classes": t_ts_all / t_ours, **read}


def read_throughput(pet, affine, repeats=3) -> dict:
    """MB/s of reading one gzipped NIfTI (float32) with isal vs plain gzip, through volumes.read_volume."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_volume(pet, affine, Path(tmp) / "pet.nii.gz")
        mb = pet.nbytes / 1e6
        t_isal, _ = best_time(lambda: read_volume(path, use_isal=True), repeats)
        t_plain, _ = best_time(lambda: read_volume(path, use_isal=False), repeats)
    return {"read_isal_mb_s": mb / t_isal, "read_plain_mb_s": mb / t_plain, "ratio_isal": t_plain / t_isal}


def whole_case(voxel_mm: float = 2.0, seed: int = 0, profile: bool = False) -> dict:
    """Seconds of reading and computing one case from fresh files: ours vs TotalSegmentator (see the module)."""
    from totalsegmentator.map_to_binary import class_map
    from totalsegmentator.statistics import get_basic_statistics

    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import PhantomConfig, make_cohort

    def ts_statistics(case) -> dict:
        seg = np.asanyarray(nib.load(case.labels).dataobj)
        return get_basic_statistics(seg, case.pet, quiet=True, exclude_masks_at_border=False)

    with tempfile.TemporaryDirectory(prefix="bench_whole_case_") as tmp:
        small = load_cohort(make_cohort(Path(tmp) / "warm", n=1, seed=seed + 1, progress=False))[0]
        metrics.compute_case(small)  # imports and first calls, for both sides
        ts_statistics(small)
        case = load_cohort(make_cohort(Path(tmp) / "ph", n=1, seed=seed, config=PhantomConfig(voxel_mm=voxel_mm),
                                       progress=False))[0]
        start, cpu = time.perf_counter(), time.process_time()
        ours = metrics.compute_case(case)
        t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        ts = ts_statistics(case)
        t_ts, c_ts = time.perf_counter() - start, time.process_time() - cpu
        top = _profile(lambda: metrics.compute_case(case)) if profile else []
        shape = nib.load(case.pet).shape
    ours = ours.set_index("organ")
    for name in ORGAN_NAMES:  # the same organs measured: volumes agree
        vol = sum(ts[class_map["total"][c]]["volume"] for c in organ(name).classes) / 1000.0
        assert np.isclose(ours.loc[name, "volume_ml"], vol, rtol=1e-9), name
    return {"case": f"phantom at {voxel_mm} mm", "shape": list(shape), "voxels": int(np.prod(shape)),
            "ours_s": t_ours, "totalsegmentator_all_classes_s": t_ts, "ratio": t_ts / t_ours,
            "ours_cpu_s": c_ours, "totalsegmentator_cpu_s": c_ts, "ratio_cpu": c_ts / c_ours, "profile": top}


def _profile(func, n: int = 12) -> list[str]:
    """The ``n`` functions with the most own time in one call of ``func`` (cProfile lines)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(func)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    return [line for line in out.getvalue().splitlines() if line.strip()][-n - 1:]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="200,200,300")
    parser.add_argument("--spacing", default="2,2,3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phantom-mm", type=float, help="benchmark on a rendered phantom at this voxel size")
    parser.add_argument("--whole-case", action="store_true", help="read + compute one 2 mm phantom case instead")
    parser.add_argument("--profile", action="store_true", help="with --whole-case: our profile (own time)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.whole_case:
        res = whole_case(args.phantom_mm or 2.0, profile=args.profile)
        print(f"whole case ({res['case']}, {res['voxels'] / 1e6:.1f} M voxels), read + compute, one run each:")
        print(f"  ours (CT, PET, labels; checks; 9 organs incl. SUVpeak, HU)  {res['ours_s']:6.2f} s")
        print(f"  TotalSegmentator (labels, PET; 117 classes)                  {res['totalsegmentator_all_classes_s']:6.2f} s"
              f"  x{res['ratio']:.1f}")
        print(f"  CPU seconds (less sensitive to a loaded machine): ours {res['ours_cpu_s']:.2f}, TotalSegmentator "
              f"{res['totalsegmentator_cpu_s']:.2f}  x{res['ratio_cpu']:.1f}")
        print("\n".join(res["profile"]))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return res
    res = run(tuple(int(x) for x in args.shape.split(",")), tuple(float(x) for x in args.spacing.split(",")),
              args.repeats, phantom_mm=args.phantom_mm)
    print(f"{res['case']}: volume {res['shape']} at {res['spacing_mm']} mm, {res['n_labels']} labels (best of {args.repeats})")
    print(f"  ours (all 9 organs, incl. median and 1 mL peak)     {res['ours_s'] * 1000:8.1f} ms")
    print(f"  naive mask per organ (no peak)                       {res['naive_mask_per_organ_s'] * 1000:8.1f} ms"
          f"  x{res['ratio_naive']:.1f}")
    print(f"  TotalSegmentator statistics, roi_subset (17 classes) {res['totalsegmentator_roi_subset_s'] * 1000:8.1f} ms"
          f"  x{res['ratio_totalsegmentator_roi_subset']:.1f}")
    print(f"  TotalSegmentator statistics, all 117 classes         {res['totalsegmentator_all_classes_s'] * 1000:8.1f} ms"
          f"  x{res['ratio_totalsegmentator_all_classes']:.1f}")
    print(f"  NIfTI read: isal {res['read_isal_mb_s']:.0f} MB/s, plain {res['read_plain_mb_s']:.0f} MB/s"
          f"  x{res['ratio_isal']:.2f}")
    print("  volumes and means identical to TotalSegmentator's and the naive loop's: yes (asserted)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()

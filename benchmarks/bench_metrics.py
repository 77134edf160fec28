"""Per-case organ-metric time: ours (one pass, bounding boxes) vs a naive mask per organ vs TotalSegmentator's
own statistics (``totalsegmentator.statistics.get_basic_statistics``) on the same label map and image.

The image is integer-valued so TotalSegmentator's int16 cast changes nothing; volumes and means are asserted
identical (TotalSegmentator rounds means to 5 decimals). Also NIfTI read throughput with isal vs plain gzip.
Every time is the best of ``repeats`` runs, as wall seconds and as CPU seconds of this process
(``time.process_time``): on a loaded machine the CPU ratio is the steadier one. Goals (issue 15): 20x both.

In memory (``run``): the arrays are in memory; ours = ``case_metrics`` (9 organs with median, SUVpeak, HU)
against ``get_basic_statistics`` over the ``roi_subset`` of our 17 classes and over all 117 classes. The
synthetic PET is uniform noise (0..30): no smooth uptake, the worst case of the SUVpeak search's pruning;
``--phantom-mm`` measures a rendered phantom instead.

Whole case (``whole_case``): read + compute from the case's files: ours = ``compute_case`` (PET, CT and
labels read, plausibility checks, the organ table with SUVpeak and HU) against TotalSegmentator's statistics
as its ``python_api.totalsegmentator(..., statistics=True)`` runs them on a label image: the labels as
``get_fdata().astype(np.uint8)``, then ``get_basic_statistics(seg, <PET loaded by nibabel>)`` over all 117
classes (``exclude_masks_at_border=False`` so every volume is measured; one image, so the comparison favours
it). TotalSegmentator's package ships no example CT or labels (its test files live in its repository only),
so the case is a rendered phantom at 2 mm (20.6 M voxels). Files are read anew in each run (the page cache
is warm for both sides alike); no result is cached.

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
    """(best wall seconds, best CPU seconds of this process, the last result) over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = func()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), out


def run(shape=(200, 200, 300), spacing=(2.0, 2.0, 3.0), repeats=3, seed=0, phantom_mm: float | None = None) -> dict:
    """Figures of one in-memory run (best of ``repeats``; wall and CPU); ``phantom_mm``: a phantom instead."""
    if phantom_mm:
        pet, ct, labels, affine = phantom_case(phantom_mm, seed)
        shape, spacing = labels.shape, (phantom_mm,) * 3
    else:
        pet, ct, labels, affine = synthetic_case(shape, spacing, seed)
    grid = Grid(shape, affine)
    times, results = _in_memory_times(pet, ct, labels, grid, repeats)
    _check_same_figures(results["ours"].set_index("organ"), results["naive"], results["ts_roi"], results["ts_all"])
    figures = {"case": f"phantom at {phantom_mm} mm" if phantom_mm else "synthetic ellipsoids (noise PET)",
               "shape": list(shape), "spacing_mm": list(spacing), "n_labels": int(len(np.unique(labels)) - 1)}
    for key, (wall, cpu) in times.items():
        figures[f"{key}_s"], figures[f"{key}_cpu_s"] = wall, cpu
    for key, name in (("naive", "naive"), ("ts_roi", "totalsegmentator_roi_subset"),
                      ("ts_all", "totalsegmentator_all_classes")):
        figures[f"ratio_{name}"] = times[key][0] / times["ours"][0]
        figures[f"ratio_{name}_cpu"] = times[key][1] / times["ours"][1]
    return {**figures, **read_throughput(pet, affine)}


def _in_memory_times(pet, ct, labels, grid, repeats) -> tuple[dict, dict]:
    """Best (wall, CPU) seconds and the results of ours, the naive loop and TotalSegmentator (roi subset, all)."""
    from totalsegmentator.statistics import get_basic_statistics

    pet_img = nib.Nifti1Image(pet, grid.affine)
    roi = list(CLASSES.values())
    calls = {"ours": (lambda: metrics.case_metrics(pet, ct, labels, grid), repeats),
             "naive": (lambda: naive_metrics(pet, ct, labels, grid.voxel_ml), repeats),
             "ts_roi": (lambda: get_basic_statistics(labels, pet_img, quiet=True, roi_subset=roi,
                                                     exclude_masks_at_border=False), repeats),
             "ts_all": (lambda: get_basic_statistics(labels, pet_img, quiet=True, exclude_masks_at_border=False),
                        max(1, repeats - 2))}
    times, results = {}, {}
    for key, (call, n) in calls.items():
        wall, cpu, results[key] = best_time(call, n)
        times[key] = (wall, cpu)
    return times, results


def _check_same_figures(ours, naive, *ts_stats) -> None:
    """Asserts: ours equal the naive loop's figures and TotalSegmentator's volumes and means."""
    for row in naive:
        assert ours.loc[row["organ"], "n_voxels"] == row["n_voxels"]
        assert np.isclose(ours.loc[row["organ"], "suv_mean"], row["suv_mean"], rtol=1e-12)
        assert np.isclose(ours.loc[row["organ"], "suv_median"], row["suv_median"])
        assert np.isclose(ours.loc[row["organ"], "hu_mean"], row["hu_mean"], rtol=1e-12)
    for ts in ts_stats:
        for name in ORGAN_NAMES:
            vol, mean = ts_organ_values(ts, name)
            assert np.isclose(ours.loc[name, "volume_ml"], vol, rtol=1e-12), name
            assert abs(ours.loc[name, "suv_mean"] - mean) < 1e-4, name


def read_throughput(pet, affine, repeats=3) -> dict:
    """MB per CPU second of reading one gzipped NIfTI (float32) with isal vs plain gzip (volumes.read_volume)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_volume(pet, affine, Path(tmp) / "pet.nii.gz")
        mb = pet.nbytes / 1e6
        _, t_isal, _ = best_time(lambda: read_volume(path, use_isal=True), repeats)  # CPU seconds
        _, t_plain, _ = best_time(lambda: read_volume(path, use_isal=False), repeats)
    return {"read_isal_mb_s": mb / t_isal, "read_plain_mb_s": mb / t_plain, "ratio_isal": t_plain / t_isal}


def ts_statistics(case) -> dict:
    """TotalSegmentator's statistics of a case as its python_api computes them on a label image: the labels
    as ``get_fdata().astype(np.uint8)``, the PET loaded by nibabel, all 117 "total" classes."""
    from totalsegmentator.statistics import get_basic_statistics

    seg = nib.load(case.labels).get_fdata().astype(np.uint8)
    return get_basic_statistics(seg, nib.load(case.pet), quiet=True, exclude_masks_at_border=False)


def whole_case(voxel_mm: float = 2.0, seed: int = 0, profile: bool = False, repeats: int = 3) -> dict:
    """Seconds (best of ``repeats``, wall and CPU) of reading and computing one case: ours vs
    TotalSegmentator (see the module); the runs alternate, so a change of load hits both sides."""
    from totalsegmentator.map_to_binary import class_map

    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import PhantomConfig, make_cohort

    with tempfile.TemporaryDirectory(prefix="bench_whole_case_") as tmp:
        small = load_cohort(make_cohort(Path(tmp) / "warm", n=1, seed=seed + 1, progress=False))[0]
        metrics.compute_case(small)  # imports and first calls, for both sides
        ts_statistics(small)
        case = load_cohort(make_cohort(Path(tmp) / "ph", n=1, seed=seed, config=PhantomConfig(voxel_mm=voxel_mm),
                                       progress=False))[0]
        runs = {"ours": [], "ts": []}
        for _ in range(repeats):
            runs["ours"].append(best_time(lambda: metrics.compute_case(case), 1))
            runs["ts"].append(best_time(lambda: ts_statistics(case), 1))
        top = _profile(lambda: metrics.compute_case(case)) if profile else []
        shape = nib.load(case.pet).shape
    ours, ts = runs["ours"][-1][2].set_index("organ"), runs["ts"][-1][2]
    for name in ORGAN_NAMES:  # the same organs measured: volumes agree
        vol = sum(ts[class_map["total"][c]]["volume"] for c in organ(name).classes) / 1000.0
        assert np.isclose(ours.loc[name, "volume_ml"], vol, rtol=1e-9), name
    (w_ours, c_ours), (w_ts, c_ts) = ([min(r[i] for r in runs[k]) for i in (0, 1)] for k in ("ours", "ts"))
    return {"case": f"phantom at {voxel_mm} mm", "shape": list(shape), "voxels": int(np.prod(shape)),
            "repeats": repeats, "ours_s": w_ours, "totalsegmentator_all_classes_s": w_ts, "ratio": w_ts / w_ours,
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
        res = whole_case(args.phantom_mm or 2.0, profile=args.profile, repeats=args.repeats)
        _print_whole_case(res)
    else:
        res = run(tuple(int(x) for x in args.shape.split(",")), tuple(float(x) for x in args.spacing.split(",")),
                  args.repeats, phantom_mm=args.phantom_mm)
        _print_in_memory(res, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


def _print_whole_case(res: dict) -> None:
    print(f"whole case ({res['case']}, {res['voxels'] / 1e6:.1f} M voxels), read + compute, best of {res['repeats']}:")
    print(f"{'':58}{'wall s':>8}{'CPU s':>8}")
    print(f"  {'ours (CT, PET, labels; checks; 9 organs incl. SUVpeak, HU)':56}{res['ours_s']:8.2f}{res['ours_cpu_s']:8.2f}")
    print(f"  {'TotalSegmentator (labels, PET; 117 classes)':56}{res['totalsegmentator_all_classes_s']:8.2f}"
          f"{res['totalsegmentator_cpu_s']:8.2f}")
    print(f"  whole-case ratio TotalSegmentator / ours: wall x{res['ratio']:.1f}, CPU x{res['ratio_cpu']:.1f} (goal x20)")
    print("\n".join(res["profile"]))


def _print_in_memory(res: dict, repeats: int) -> None:
    print(f"{res['case']}: volume {res['shape']} at {res['spacing_mm']} mm, {res['n_labels']} labels, in memory "
          f"(best of {repeats})")
    print(f"{'':55}{'wall ms':>9}{'CPU ms':>9}{'ratio wall':>12}{'CPU':>6}")
    lines = (("ours (all 9 organs, incl. median and 1 mL peak)", "ours", None),
             ("naive mask per organ (no peak)", "naive", "naive"),
             ("TotalSegmentator statistics, roi_subset (17 classes)", "ts_roi", "totalsegmentator_roi_subset"),
             ("TotalSegmentator statistics, all 117 classes", "ts_all", "totalsegmentator_all_classes"))
    for text, key, ratio in lines:
        ratios = f"{'x%.1f' % res[f'ratio_{ratio}']:>12}{'x%.1f' % res[f'ratio_{ratio}_cpu']:>6}" if ratio else ""
        print(f"  {text:53}{res[f'{key}_s'] * 1000:9.1f}{res[f'{key}_cpu_s'] * 1000:9.1f}{ratios}")
    print(f"  in-memory ratio on the roi subset: wall x{res['ratio_totalsegmentator_roi_subset']:.1f}, "
          f"CPU x{res['ratio_totalsegmentator_roi_subset_cpu']:.1f} (goal x20)")
    print(f"  NIfTI read: isal {res['read_isal_mb_s']:.0f} MB/s, plain {res['read_plain_mb_s']:.0f} MB/s (CPU)"
          f"  x{res['ratio_isal']:.2f}")
    print("  volumes and means identical to TotalSegmentator's and the naive loop's: yes (asserted)")


if __name__ == "__main__":
    main()

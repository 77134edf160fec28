"""Organ SUV bias from lesions, with and without their exclusion, on phantoms of known truth.

    python -m benchmarks.bench_lesions               # 40 phantoms at 8 mm, seed 11
    python -m benchmarks.bench_lesions --n 100 --json lesions.json
    python -m benchmarks.bench_lesions --margin 8      # exclusion grown by 8 mm (--lesion-margin)

Two cohorts from one seed: every case with 1-3 hot spheres (``phantoms --lesions``), and the same cases
without them (the lesion stream is separate, so anatomy, blur and noise draws are identical). For each organ
that holds lesion voxels, the mean relative deviation (%, with its Monte Carlo SE over cases) of SUVmean,
SUVmax and SUVpeak from the lesion-free twin's, with lesions excluded (the default) and included; SUVmean
also against the painted truth. MTV and lesion count are checked against truth.csv.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

KEY = ["case_id", "organ"]
SUV = ["suv_mean", "suv_max", "suv_peak"]


def _mean_se(values: pd.Series) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def bias_table(merged: pd.DataFrame) -> pd.DataFrame:
    """Per organ with lesion voxels: n, mean lesion mL, and (mean, SE) of each % deviation."""
    rows = []
    for organ_name, g in merged[merged.lesion_ml > 0].groupby("organ"):
        row: dict = {"organ": organ_name, "n_cases": len(g), "lesion_ml_mean": round(float(g.lesion_ml.mean()), 2)}
        for metric in SUV:
            for mode, column in (("excluded", metric), ("included", metric + "_inc")):
                row[f"{metric}_{mode}_pct"] = _mean_se(100 * (g[column] / g[metric + "_free"] - 1))
        for mode, column in (("excluded", "suv_mean"), ("included", "suv_mean_inc"), ("lesion_free", "suv_mean_free")):
            row[f"suv_mean_vs_truth_{mode}_pct"] = _mean_se(100 * (g[column] / g["truth"] - 1))
        rows.append(row)
    return pd.DataFrame(rows)


def run(n: int = 40, seed: int = 11, voxel_mm: float = 8.0, work: Path | None = None, workers: int = 2,
        margin_mm: float = 0.0) -> dict:
    """Make both cohorts in ``work`` (a temporary folder by default), measure, return the figures."""
    from totalgen_eval import metrics, phantom
    from totalgen_eval.cohort import load_cohort

    with tempfile.TemporaryDirectory(prefix="bench_lesions_") as tmp:
        root = Path(work or tmp)
        config = phantom.PhantomConfig(voxel_mm=voxel_mm)
        with_l = load_cohort(phantom.make_cohort(root / "with", n=n, seed=seed, config=config, lesions=1.0,
                                                 workers=workers, progress=False))
        free = load_cohort(phantom.make_cohort(root / "free", n=n, seed=seed, config=config, workers=workers,
                                               progress=False))
        excluded = metrics.organ_metrics(with_l, workers=workers, progress=False, lesion_margin_mm=margin_mm)
        included = metrics.organ_metrics(with_l, workers=workers, progress=False, lesions="include")
        reference = metrics.organ_metrics(free, workers=workers, progress=False)
        truth = pd.read_csv(root / "with" / "truth.csv")
    lesion_truth = truth[truth.organ.str.startswith("lesion_")]
    organ_truth = truth[~truth.organ.str.startswith("lesion_")][KEY + ["suv_mean"]]
    organ_truth = organ_truth.rename(columns={"suv_mean": "truth"})
    merged = (excluded.merge(included[KEY + SUV], on=KEY, suffixes=("", "_inc"))
              .merge(reference[KEY + SUV], on=KEY, suffixes=("", "_free")).merge(organ_truth, on=KEY))
    per_case = metrics.lesion_table(excluded).set_index("case_id").join(
        lesion_truth.groupby("case_id").agg(truth_ml=("volume_ml", "sum"), truth_count=("organ", "size")))
    untouched = merged[merged.lesion_ml == 0]
    return {
        "n": n, "seed": seed, "voxel_mm": voxel_mm, "margin_mm": margin_mm, "n_lesions": len(lesion_truth),
        "hosts": {str(k): int(v) for k, v in lesion_truth.host.value_counts().items()},
        "per_organ": bias_table(merged).to_dict("records"),
        "organs_without_lesion_voxels_suv_mean_pct": _mean_se(100 * (untouched.suv_mean / untouched.suv_mean_free - 1)),
        "mtv_equals_truth": bool(np.allclose(per_case.mtv_ml, per_case.truth_ml)),
        "count_equals_truth": bool((per_case.lesion_count == per_case.truth_count).all()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--voxel-mm", type=float, default=8.0)
    parser.add_argument("--margin", type=float, default=0.0, help="lesion margin (mm) of the exclusion")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run(args.n, args.seed, args.voxel_mm, margin_mm=args.margin)
    table = pd.DataFrame(result["per_organ"]).set_index("organ").T
    print(table.map(lambda v: f"{v[0]:+.2f} +- {v[1]:.2f}" if isinstance(v, (tuple, list)) else v).to_string())
    print({k: v for k, v in result.items() if k != "per_organ"})
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Choose stage 2's sampling schedule by measurement on validation phantoms (not the held-out ones).

For each candidate (final sigma of stage 2, augmentation level of its low-res input), the cascade generates
the twins of ``--n`` validation phantoms (seed 555; the fidelity benchmark holds out seed 777) with the same
stage-1 noise, and the twins are judged as in the fidelity report: voxel noise in eroded organs (SD ratio
synthetic / real per organ), organ SUVmax and SUVmean deviations (all cases, bundled segmenter on the
synthetic side). Weights are untouched: each candidate is a copy of the cascade folder with its sr.json
schedule changed (``generator.checkpoints.set_schedule``).

    python -m benchmarks.bench_generator_schedule --checkpoint DIR [--n 24] [--sigma-min 0.002 0.02 0.05] [--lowres-steps 10 16]
        [--sr-steps 2 4] [--lowres-sigma-min 0.002 0.1]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

VALIDATION_SEED = 555


def candidate_folder(checkpoint: Path, work: Path, sigma_min: float, lowres_noise: float, lowres_steps: int,
                     sr_steps: int | None = None, lowres_sigma_min: float | None = None) -> Path:
    """A copy of ``checkpoint`` whose stage 2 samples down to ``sigma_min`` at augmentation ``lowres_noise``
    in ``sr_steps`` steps (None: its own count) and whose stage 1 takes ``lowres_steps`` sampler steps down to
    ``lowres_sigma_min`` (None: its own; above 0 its last step returns the denoiser's posterior mean there,
    which leaves out the finest low-res texture)."""
    from generator.checkpoints import read_stage_json, set_schedule

    sr_name = "" if sr_steps is None else f"-sr{sr_steps}"
    lo_name = "" if lowres_sigma_min is None else f"-losmin{lowres_sigma_min:g}"
    folder = work / f"cascade-smin{sigma_min:g}-aug{lowres_noise:g}-steps{lowres_steps}{sr_name}{lo_name}"
    if not folder.is_dir():
        shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("*-state.*", "cache", "previews", ".totalgen*"))
        sr, _ = read_stage_json(folder / "sr.json")
        set_schedule(folder, "sr", dataclasses.replace(sr.schedule, sigma_min=sigma_min, lowres_noise=lowres_noise,
                                                       steps=sr_steps or sr.schedule.steps))
        lowres, _ = read_stage_json(folder / "lowres.json")
        set_schedule(folder, "lowres", dataclasses.replace(lowres.schedule, steps=lowres_steps,
                                                           sigma_min=lowres_sigma_min or lowres.schedule.sigma_min))
    return folder


def judge_twins(real_c, synth_c, work: Path, name: str) -> dict:
    """Noise ratios, SUVmax and SUVmean deviations of one candidate's twins (the fidelity report's texture
    section and geometric-mean SUVmean ratios; see the module docstring)."""
    from benchmarks.bench_generator_fidelity import texture_section
    from totalgen_eval.metrics import organ_metrics

    caches = {side: work / "cache" / f"{side}-{name}" for side in ("real", "synth")}
    caches["real_segmented"] = work / "cache" / "real-segmented"  # the same for every candidate
    tables = {side: organ_metrics(c, segmenter=seg, workers=1, cache_dir=caches[side], cohort_name=side,
                                  progress=False)
              for side, c, seg in (("real", real_c, "labels"), ("synth", synth_c, "model:bundled"),
                                   ("real_segmented", real_c, "model:bundled"))}
    texture = texture_section(real_c, synth_c, tables, "model:bundled", caches)
    means = [t.groupby("organ")["suv_mean"].apply(lambda v: np.exp(np.log(v).mean())) for t in tables.values()]
    suv_dev = 100 * (means[1] / means[0] - 1)
    ratios = {n["organ"]: n["ratio"] for n in texture["noise"]}
    return {"noise_ratio_worst": max(abs(r - 1) for r in ratios.values()), "noise_ratios": ratios,
            "suv_max_median_abs_dev_pct": texture["suv_max_median_abs_dev_pct"],
            "suv_max_same_segmenter_median_abs_dev_pct": texture["suv_max_same_segmenter_median_abs_dev_pct"],
            "suv_mean_median_abs_dev_pct": float(suv_dev.abs().median()), "suv_mean_dev_pct": suv_dev.round(2).to_dict()}


def run(checkpoint: Path, n: int = 24, work: Path = Path("/tmp/totalgen-schedule"), sigma_mins=(0.002, 0.02, 0.05),
        lowres_noises=(0.0, 0.02), guidance: float | None = None, lowres_steps=(16,),
        sr_steps=(None,), lowres_sigma_mins=(None,)) -> pd.DataFrame:
    """One row per candidate: sigma_min, lowres_noise, lowres_steps, sr_steps and lowres_sigma_min (None: the
    checkpoint's) and the figures of ``judge_twins``."""
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import make_cohort
    from totalgen_eval.synthesis import generate_cohort

    real = load_cohort(make_cohort(work / "validation", n=n, seed=VALIDATION_SEED, progress=False))
    rows = []
    for sigma_min, level, steps, n_sr, lo_min in itertools.product(sigma_mins, lowres_noises, lowres_steps, sr_steps,
                                                                   lowres_sigma_mins):
        folder = candidate_folder(checkpoint, work, sigma_min, level, steps, n_sr, lo_min)
        synth = generate_cohort(work / f"synth-{folder.name}", match=real.root, checkpoint=folder, guidance=guidance,
                                progress=False)
        figures = judge_twins(real, load_cohort(synth), work, folder.name)
        rows.append({"sigma_min": sigma_min, "lowres_noise": level, "lowres_steps": steps, "sr_steps": n_sr,
                     "lowres_sigma_min": lo_min, **figures})
        print(json.dumps(rows[-1]), flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--work", type=Path, default=Path("/tmp/totalgen-schedule"))
    ap.add_argument("--sigma-min", type=float, nargs="+", default=[0.002, 0.02, 0.05])
    ap.add_argument("--lowres-noise", type=float, nargs="+", default=[0.0, 0.02])
    ap.add_argument("--lowres-steps", type=int, nargs="+", default=[16])
    ap.add_argument("--sr-steps", type=int, nargs="+", default=[None], help="stage 2 steps (default: the checkpoint's)")
    ap.add_argument("--lowres-sigma-min", type=float, nargs="+", default=[None],
                    help="stage 1's final sigma (default: the checkpoint's)")
    ap.add_argument("--guidance", type=float, default=None)
    args = ap.parse_args(argv)
    table = run(args.checkpoint, args.n, args.work, tuple(args.sigma_min), tuple(args.lowres_noise), args.guidance,
                tuple(args.lowres_steps), tuple(args.sr_steps), tuple(args.lowres_sigma_min))
    print(table.drop(columns=["noise_ratios", "suv_mean_dev_pct"]).to_string(index=False))
    return table


if __name__ == "__main__":
    main()

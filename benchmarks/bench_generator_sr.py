"""Stage 2 alone: super-resolve the *true* low-res of validation phantoms and judge it with their true labels.

The cascade's fidelity mixes both stages and the segmenter. Here stage 1 and the segmenter are left out: each
validation phantom (seed 555, never used to judge published figures) is placed on the generator's canvas,
averaged down by the SR factor exactly as in training, and super-resolved by stage 2; the result lies on the
phantom's own grid, so its true organ labels apply. Per organ (labels as drawn, mean over cases): SUVmean
ratio synthetic / real, voxel noise as the SD inside the organ eroded by one voxel (ratio), and SUVmax
deviation. One row per checkpoint x final sigma x step count; the same per-case noise for every candidate.

    python -m benchmarks.bench_generator_sr --checkpoint DIR [DIR ...] [--n 16] [--sigma-min 0.05 0.2] [--sr-steps 4]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.generator_texture import NOISE_GOAL, SUVMAX_GOAL_PCT, eroded_organ_sd

VALIDATION_SEED = 555


def organ_figures(pet: np.ndarray, organ_map: np.ndarray, organs: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per organ: SUVmean, SUVmax and eroded-organ SD (SUV) of ``pet`` over ``organ_map`` (0 background,
    i = organs[i-1]); arrays (i, j, k)."""
    sd = eroded_organ_sd(pet, organ_map, organs)
    out = {}
    for index, name in enumerate(organs, start=1):
        values = pet[organ_map == index]
        out[name] = {"suv_mean": float(values.mean()) if values.size else np.nan,
                     "suv_max": float(values.max()) if values.size else np.nan, "suv_sd_core": sd[name]}
    return out


def true_lowres(cohort, canvas_voxel_mm: float, factor: int):
    """(normalised RAS+ low-res batch (N, 2, ...), demographics (N, 4), organ maps (N, X, Y, Z), true PET SUV
    (N, X, Y, Z) on the canvas): the training's canvas placement, averaged down by ``factor``; the true PET is
    the canvas volume mapped back to SUV (what stage 2 is trained to reproduce)."""
    import torch

    from generator.cascade import demographics_tensor
    from generator.intensity import unit_to_pet
    from generator.stages import downsample
    from totalgen_eval.organs import organ_label_map
    from totalgen_eval.training_data import CanvasReader, canvas_grid

    cases = list(cohort)
    canvas = canvas_grid(canvas_voxel_mm)
    read = CanvasReader(cases, canvas)
    x_hi = torch.stack([torch.from_numpy(read(i)) for i in range(len(cases))])
    maps = []
    for case in cases:
        labels, affine = case.read_labels()
        if tuple(labels.shape) != tuple(canvas.shape) or not np.allclose(affine, canvas.affine):
            raise ValueError(f"{case.case_id}: not on the generator's canvas (make the phantoms at its voxel)")
        maps.append(organ_label_map(labels))
    demo = demographics_tensor(cohort.to_frame())
    return downsample(x_hi, factor), demo, np.stack(maps), unit_to_pet(x_hi[:, 1]).numpy()


def judge(synth_pet: np.ndarray, real_pet: np.ndarray, maps: np.ndarray) -> dict:
    """Per-organ ratios over cases and the two texture goals (noise within NOISE_GOAL; median |SUVmax dev|)."""
    from totalgen_eval.organs import ORGAN_NAMES

    rows = []
    for side, pets in (("real", real_pet), ("synth", synth_pet)):
        for k in range(len(maps)):
            for organ, fig in organ_figures(pets[k], maps[k], ORGAN_NAMES).items():
                rows.append({"side": side, "case": k, "organ": organ, **fig})
    means = pd.DataFrame(rows).groupby(["organ", "side"], sort=False)[["suv_mean", "suv_max", "suv_sd_core"]].mean()
    real, synth = means.xs("real", level="side"), means.xs("synth", level="side")
    ratio = synth / real
    suv_max_dev = 100 * (ratio["suv_max"] - 1)
    noise = ratio["suv_sd_core"]
    return {"suv_mean_dev_pct": (100 * (ratio["suv_mean"] - 1)).round(2).to_dict(),
            "noise_ratios": noise.round(3).to_dict(), "suv_max_dev_pct": suv_max_dev.round(2).to_dict(),
            "noise_organs_within": int(((noise - 1).abs() <= NOISE_GOAL).sum()),
            "noise_worst": float((noise - 1).abs().max()),
            "suv_mean_median_abs_dev_pct": float((100 * (ratio["suv_mean"] - 1)).abs().median()),
            "suv_max_median_abs_dev_pct": float(suv_max_dev.abs().median()),
            "suv_max_goal_met": bool(suv_max_dev.abs().median() <= SUVMAX_GOAL_PCT)}


def super_resolved_pet(cascade, x_lo, demo, sigma_min: float, sr_steps: int | None, seed: int = 0,
                       batch_size: int = 8) -> np.ndarray:
    """PET SUV (N, X, Y, Z) of ``cascade``'s stage 2 on ``x_lo``, sampled down to ``sigma_min`` in ``sr_steps``
    steps (None: the checkpoint's); per-case noise from ``seed`` as in ``generate``. Sets the cascade's
    stage-2 schedule to that final sigma."""
    from generator.cascade import case_noise

    cascade.sr_config = dataclasses.replace(
        cascade.sr_config, schedule=dataclasses.replace(cascade.sr_config.schedule, sigma_min=sigma_min))
    plan = cascade.plan(cascade.settings(sr_steps=sr_steps))
    out = []
    for start in range(0, len(x_lo), batch_size):
        rows = range(start, min(len(x_lo), start + batch_size))
        noises = [case_noise(seed, r, plan.noise_shapes) for r in rows]
        _, pet = cascade.super_resolve(plan, x_lo[list(rows)], noises, demo[list(rows)])
        out.append(pet.numpy())
    return np.concatenate(out)


def validation_cohort(work: Path, n: int):
    """The ``n`` validation phantoms (seed VALIDATION_SEED) under ``work/validation``, made there once."""
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import make_cohort

    root = work / "validation"
    return load_cohort(root if (root / "cohort.csv").is_file()
                       else make_cohort(root, n=n, seed=VALIDATION_SEED, progress=False))


def run(checkpoints: list[Path], n: int = 16, work: Path = Path("/tmp/totalgen-sr"), sigma_mins=(0.2,),
        sr_steps=(None,)) -> pd.DataFrame:
    """One row per checkpoint x sigma_min x sr_steps with the figures of :func:`judge`."""
    from generator import load_cascade
    from generator.precision import resolve_precision
    real = validation_cohort(work, n)
    rows, truth = [], None
    for folder in checkpoints:
        cascade = load_cascade(folder)
        cascade.precision = resolve_precision("auto", cascade.device)
        if truth is None:
            truth = true_lowres(real, cascade.sr_config.voxel_mm, cascade.sr_config.sr_factor)
        x_lo, demo, maps, real_pet = truth
        for sigma_min, steps in itertools.product(sigma_mins, sr_steps):
            synth_pet = super_resolved_pet(cascade, x_lo, demo, sigma_min, steps)
            rows.append({"checkpoint": str(folder), "sigma_min": sigma_min, "sr_steps": steps,
                         **judge(synth_pet, real_pet, maps)})
            print(json.dumps(rows[-1]), flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("/tmp/totalgen-sr"))
    ap.add_argument("--sigma-min", type=float, nargs="+", default=[0.2])
    ap.add_argument("--sr-steps", type=int, nargs="+", default=[None], help="stage 2 steps (default: the checkpoint's)")
    args = ap.parse_args(argv)
    table = run(args.checkpoint, args.n, args.work, tuple(args.sigma_min), tuple(args.sr_steps))
    cols = ["checkpoint", "sigma_min", "sr_steps", "noise_organs_within", "noise_worst",
            "suv_mean_median_abs_dev_pct", "suv_max_median_abs_dev_pct"]
    print(table[cols].to_string(index=False))
    return table


if __name__ == "__main__":
    main()

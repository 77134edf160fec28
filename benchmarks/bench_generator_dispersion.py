"""Stage 1 alone: does it keep each subject's organ uptake, or pull it to the population's?

The cascade's synthetic cohort has a narrower between-subject spread of organ SUVmean than the real one (the
fidelity report's spread table). This benchmark finds the noise levels where stage 1 loses it: the *true*
low-res of validation phantoms (``bench_generator_sr.validation_cohort``, seed 555) is noised to sigma
``s`` and denoised by stage 1 with its own sampler and guidance, from ``s`` down (SDEdit). Anatomy
survives up to about s = 1, so the phantoms' true labels still apply: the organ interiors at the low-res
grid (voxels whose 8 fine voxels all belong to the organ). Per organ and ``s``, over subjects:

* bias: the geometric mean of the organ's mean SUV, denoised / true - 1 (%), with its standard error (the
  subjects' log ratios vary: about +-9 % for the bladder at s = 5 with 48 subjects);
* spread: the SD of its log, denoised / true (1 = the subjects' spread kept; 0 = every subject alike);
* r: the correlation of the logs (does a subject keep its own uptake).

A perfect denoiser gives bias 0 and spread 1 at every ``s``; below about s = 0.2 the subject's uptake is
plain to see in the noisy input, so a loss there is the network's, not the data's.

    python -m benchmarks.bench_generator_dispersion [--checkpoint DIR ...] [--n 48] [--sigma 0.05 0.2 1 5]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_generator_sr import true_lowres, validation_cohort

INTERIOR = 0.99  # share of a low-res voxel's fine voxels inside the organ


def interior_masks(maps: np.ndarray, n_organs: int, factor: int):
    """(N, organs, X / f, Y / f, Z / f) bool: low-res voxels wholly inside each organ of fine ``maps``
    (N, X, Y, Z; 0 background, i = organ i - 1)."""
    import torch
    import torch.nn.functional as F

    onehot = torch.stack([torch.from_numpy(maps == k + 1) for k in range(n_organs)], 1).float()
    return F.avg_pool3d(onehot, factor) >= INTERIOR


def organ_means(x_lo, masks) -> np.ndarray:
    """(N, organs) mean SUV over each organ's interior of normalised low-res ``x_lo`` (N, 2, ...); NaN where
    an organ has fewer than 2 interior voxels."""
    from generator.intensity import unit_to_pet

    suv = unit_to_pet(x_lo[:, 1])
    out = np.full(masks.shape[:2], np.nan)
    for b in range(masks.shape[0]):
        for k in range(masks.shape[1]):
            if int(masks[b, k].sum()) >= 2:
                out[b, k] = float(suv[b][masks[b, k]].mean())
    return out


def dispersion(truth: np.ndarray, est: np.ndarray, organs: tuple[str, ...]) -> list[dict]:
    """Per organ: bias of the geometric mean (%) with its standard error (of the mean log ratio, in %), SD
    ratio and correlation of the logs, est against truth ((subjects, organs) positive means; NaN figures
    where fewer than 3 subjects have the organ on both sides)."""
    rows = []
    for k, organ in enumerate(organs):
        ok = np.isfinite(truth[:, k]) & np.isfinite(est[:, k]) & (truth[:, k] > 0) & (est[:, k] > 0)
        if ok.sum() < 3:
            rows.append({"organ": organ, "subjects": int(ok.sum()), "bias_pct": np.nan, "bias_se_pct": np.nan,
                         "spread": np.nan, "r": np.nan})
            continue
        lt, le = np.log(truth[ok, k]), np.log(est[ok, k])
        paired = le - lt
        rows.append({"organ": organ, "subjects": int(ok.sum()),
                     "bias_pct": round(100 * math.expm1(paired.mean()), 2),
                     "bias_se_pct": round(100 * float(paired.std(ddof=1)) / math.sqrt(len(paired)), 2),
                     "spread": round(float(le.std() / lt.std()), 3),
                     "r": round(float(np.corrcoef(lt, le)[0, 1]), 3)})
    return rows


def denoised_from(cascade, x0, demo, s: float, noise, batch_size: int = 8):
    """Stage 1's sample from ``x0 + s * noise`` (normalised low-res (N, 2, ...)), with the checkpoint's
    sampler and guidance, on a Karras schedule from ``s`` to its sigma_min with the share of its steps that
    lies below ``s`` (at least 2)."""
    import torch

    from generator.diffusion import karras_sigmas
    from generator.stages import lowres_condition

    plan = cascade.plan(cascade.settings())
    sched = cascade.lowres_config.schedule
    if not sched.sigma_min < s <= sched.sigma_max:
        raise ValueError(f"sigma {s:g} outside the stage's range ({sched.sigma_min:g}, {sched.sigma_max:g}]")
    share = math.log(s / sched.sigma_min) / math.log(sched.sigma_max / sched.sigma_min)
    sigmas = karras_sigmas(max(2, round(share * len(plan.lowres_sigmas[:-1]))), sched.sigma_min, s, sched.rho)
    out = []
    with torch.inference_mode():
        for start in range(0, len(x0), batch_size):
            rows = slice(start, start + batch_size)
            x = x0[rows] + s * noise[rows]
            cond = {"demographics": demo[rows], "image": lowres_condition(x) if plan.lowres_positions else None}
            out.append(plan.lowres_sampler(plan.lowres_model, x, sigmas, cond).float())
    return torch.cat(out)


def run(checkpoints: list[Path | None], n: int = 48, sigmas=(0.05, 0.2, 1.0, 5.0),
        work: Path = Path("/tmp/totalgen-dispersion"), seed: int = 0) -> pd.DataFrame:
    """One row per checkpoint x sigma x organ (see the module docstring); the same noise for every candidate."""
    import torch

    from generator import load_cascade
    from totalgen_eval.organs import ORGAN_NAMES

    real = validation_cohort(work, n)
    rows, truth = [], None
    for folder in checkpoints:
        cascade = load_cascade(folder)
        if cascade.lowres_config.mirror_x:
            raise ValueError(f"{folder}: stage 1 trained on mirrored anatomy; the true labels do not fit it")
        if truth is None:
            x0, demo, maps, _ = true_lowres(real, cascade.sr_config.voxel_mm, cascade.sr_config.sr_factor)
            masks = interior_masks(maps, len(ORGAN_NAMES), cascade.sr_config.sr_factor)
            truth = organ_means(x0, masks)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        for s in sigmas:
            est = organ_means(denoised_from(cascade, x0, demo, s, noise), masks)
            for row in dispersion(truth, est, ORGAN_NAMES):
                rows.append({"checkpoint": str(folder or "bundled"), "sigma": s, **row})
            print(json.dumps({"checkpoint": str(folder or "bundled"), "sigma": s,
                              **{r["organ"]: [r["bias_pct"], r["spread"]] for r in rows[-len(ORGAN_NAMES):]}}),
                  flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, nargs="+", default=[None], help="cascade folders (default: bundled)")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.05, 0.2, 1.0, 5.0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/totalgen-dispersion"))
    ap.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = ap.parse_args(argv)
    table = run(args.checkpoint, args.n, tuple(args.sigma), args.work)
    wide = table.pivot_table(index=["checkpoint", "sigma"], columns="organ", values=["bias_pct", "spread"],
                             sort=False)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(wide.round(2).to_string())
    if args.out:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()

"""The image_metrics table: FID on 2.5D features, MMD on 3D features, MS-SSIM between twins.

Columns (ARCHITECTURE.md): ``metric, modality, value, ci_low, ci_high, features``. Per modality (ct, pet):
``fid_axial``, ``fid_coronal``, ``fid_sagittal`` (FID over the slice features of each plane, every slice of
every case pooled, as MAISI does), ``fid_2.5d`` (their mean), ``mmd_3d`` (unbiased MMD^2, Gaussian kernel, on
standardised 3D features) and ``ms_ssim_twins`` (mean MS-SSIM of each synthetic case and its ``twin_of``
real case on the body box grid). Confidence intervals: 95 % percentile bootstrap over cases (both cohorts
resampled independently; over pairs for MS-SSIM).

Reference rows, the yardstick: the same metric between two random halves A and B of the real cohort
(``<metric>_real_halves``; MS-SSIM: ``ms_ssim_real_pairs``, real cases of one half paired with the other's).
FID's finite-sample bias grows as samples shrink, so a value over all cases is not comparable with one over
halves: ``<metric>_synth_half`` is the synthetic counterpart at the reference's size (a random half of the
synthetic cases against the same real half B; no interval). The synthetic cohort is as close to the real one
as the data can tell when ``_synth_half`` lies within the reference's interval.

FID intervals are shifted by the bootstrap's own bias (the mean of the replicates minus the estimate: a
resample repeats cases, which makes the two sets look less alike) and clipped at 0; MMD^2 leaves
repeated-case pairs out of its sums and MS-SSIM is a mean, so theirs are plain percentile intervals.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from .cases import CaseImages
from .distances import (MomentStats, case_weights, frechet_distance, frechet_distances, kernel_matrix,
                        mmd2_from_counts, mmd2_from_kernel, percentile_ci, standardise)
from .features import MODALITIES
from .grids import BODY_SHAPE, PLANES
from .similarity import ms_ssim

if TYPE_CHECKING:
    from ..cohort import Cohort

COLUMNS: tuple[str, ...] = ("metric", "modality", "value", "ci_low", "ci_high", "features")
REFERENCE_SUFFIX = "_real_halves"
SYNTH_HALF_SUFFIX = "_synth_half"
DEFAULT_N_BOOT = 100


def _row(metric: str, modality: str, value: float, reps: np.ndarray, features: str, shift: bool = False) -> dict:
    low, high = percentile_ci(reps)
    if shift and np.isfinite(low):
        bias = float(np.mean(reps)) - value
        low, high = max(0.0, low - bias), max(0.0, high - bias)
    return {"metric": metric, "modality": modality, "value": float(value), "ci_low": low, "ci_high": high,
            "features": features}


def fid_rows(real: Sequence[CaseImages], synth: Sequence[CaseImages], modality: str, features: str,
             n_boot: int, rng: np.random.Generator, suffix: str = "") -> list[dict]:
    """Per-plane FIDs and their mean (``fid_2.5d``) with bootstrap CIs over cases."""
    wa, wb = case_weights(len(real), n_boot, rng), case_weights(len(synth), n_boot, rng)
    rows, values, reps = [], [], []
    for plane in PLANES:
        a = MomentStats.from_cases([c.features[modality].planes[plane] for c in real])
        b = MomentStats.from_cases([c.features[modality].planes[plane] for c in synth])
        value = frechet_distance(*a.gaussian(), *b.gaussian())
        r = frechet_distances(*a.gaussians(wa), *b.gaussians(wb)) if n_boot else np.zeros(0)
        rows.append(_row(f"fid_{plane}{suffix}", modality, value, r, features, shift=True))
        values.append(value)
        reps.append(r)
    mean_reps = np.mean(reps, axis=0) if n_boot else np.zeros(0)
    return [_row(f"fid_2.5d{suffix}", modality, float(np.mean(values)), mean_reps, features, shift=True)] + rows


def mmd_row(real: Sequence[CaseImages], synth: Sequence[CaseImages], modality: str, features: str,
            n_boot: int, rng: np.random.Generator, suffix: str = "") -> dict:
    """Unbiased MMD^2 (Gaussian kernel, median bandwidth, standardised 3D features) with a case bootstrap."""
    x = np.stack([c.features[modality].vector for c in real])
    y = np.stack([c.features[modality].vector for c in synth])
    x, y = standardise(x, y)
    k = kernel_matrix(np.concatenate([x, y]), "rbf")
    ix, iy = np.arange(len(x)), np.arange(len(x), len(x) + len(y))
    value = mmd2_from_kernel(k, ix, iy)
    reps = np.array([mmd2_from_counts(k, np.bincount(rng.choice(ix, len(ix)), minlength=len(ix)),
                                      np.bincount(rng.choice(iy, len(iy)) - len(ix), minlength=len(iy)))
                     for _ in range(n_boot)])
    return _row(f"mmd_3d{suffix}", modality, value, reps, features)


def ms_ssim_rows(pairs: Sequence[tuple[CaseImages, CaseImages]], metric: str, n_boot: int,
                 rng: np.random.Generator) -> list[dict]:
    """Mean MS-SSIM per modality over (synthetic, real) pairs, bootstrap CI over pairs."""
    if len(pairs) < 2:
        return []
    a = np.stack([p[0].body for p in pairs])
    b = np.stack([p[1].body for p in pairs])
    shape = "x".join(map(str, a.shape[2:]))
    rows = []
    for k, modality in enumerate(MODALITIES):
        values = ms_ssim(a[:, k], b[:, k])
        reps = np.array([values[rng.integers(0, len(values), len(values))].mean() for _ in range(n_boot)])
        rows.append(_row(metric, modality, float(values.mean()), reps, f"voxels (body box {shape})"))
    return rows


def twin_pairs(real: Sequence[CaseImages], synth: Sequence[CaseImages],
               twins: Mapping[str, str]) -> list[tuple[CaseImages, CaseImages]]:
    """(synthetic, real) pairs for every synthetic case whose ``twins`` entry names a real case present."""
    by_id = {c.case_id: c for c in real}
    return [(s, by_id[twins[s.case_id]]) for s in synth if twins.get(s.case_id) in by_id]


def real_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of ``range(n)`` (the second one case larger when n is odd)."""
    order = rng.permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def comparison_rows(a: Sequence[CaseImages], b: Sequence[CaseImages], features: str, n_boot: int,
                    rng: np.random.Generator, suffix: str = "") -> list[dict]:
    """FID and MMD rows for both modalities between two case collections (features required)."""
    rows = []
    with _one_blas_thread():  # small matrices: threads cost more than they give
        for modality in MODALITIES:
            rows += fid_rows(a, b, modality, features, n_boot, rng, suffix)
            rows.append(mmd_row(a, b, modality, features, n_boot, rng, suffix))
    return rows


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        from contextlib import nullcontext
        return nullcontext()
    return threadpool_limits(1)


def reference_rows(real: Sequence[CaseImages], synth: Sequence[CaseImages], features: str, n_boot: int,
                   rng: np.random.Generator) -> list[dict]:
    """Real half A vs real half B (with intervals), a random synthetic half vs the same real half B
    (values only) and MS-SSIM between real cases of the two halves."""
    ia, ib = real_halves(len(real), rng)
    half_a, half_b = [real[i] for i in ia], [real[i] for i in ib]
    synth_half = [synth[i] for i in np.sort(rng.permutation(len(synth))[:max(2, len(ia))])]
    rows = comparison_rows(half_a, half_b, features, n_boot, rng, REFERENCE_SUFFIX)
    rows += comparison_rows(synth_half, half_b, features, 0, rng, SYNTH_HALF_SUFFIX)
    return rows + ms_ssim_rows(list(zip(half_b, half_a)), "ms_ssim_real_pairs", n_boot, rng)


def image_metrics_from(real: Sequence[CaseImages], synth: Sequence[CaseImages], features: str = "bundled",
                       twins: Mapping[str, str] | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                       reference: bool = True) -> pd.DataFrame:
    """The image_metrics table from per-case images (see the module docstring); rows sorted by modality.

    Each side needs >= 2 cases with features; the reference rows need >= 4 real cases.
    """
    if len(real) < 2 or len(synth) < 2:
        raise ValueError("image metrics need at least two cases in each cohort")
    rng = np.random.default_rng(seed)
    rows = comparison_rows(real, synth, features, n_boot, rng)
    rows += ms_ssim_rows(twin_pairs(real, synth, twins or {}), "ms_ssim_twins", n_boot, rng)
    if reference and len(real) >= 4:
        rows += reference_rows(real, synth, features, n_boot, rng)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {m: i for i, m in enumerate(MODALITIES)}
    return table.sort_values("modality", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def twins_from_frame(synth_frame: pd.DataFrame) -> dict[str, str]:
    """``{synthetic case_id: real case_id}`` from a cohort frame's ``twin_of`` column (empty without one)."""
    if "twin_of" not in synth_frame.columns:
        return {}
    pairs = synth_frame[["case_id", "twin_of"]].dropna()
    return {str(c): str(t) for c, t in zip(pairs["case_id"], pairs["twin_of"]) if str(t).strip()}


def image_metrics(real: Cohort, synth: Cohort, features: str = "bundled", n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                  workers: int = 1, device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """The image_metrics table of two Cohorts (twins from the synthetic cohort's ``twin_of``)."""
    from .cases import cohort_images
    from .features import load_extractor

    extractor = load_extractor(features, device=device)
    real_i = cohort_images(real, extractor, workers, progress, "images (real)", BODY_SHAPE)
    synth_i = cohort_images(synth, extractor, workers, progress, "images (synthetic)", BODY_SHAPE)
    return image_metrics_from(real_i, synth_i, extractor.name, twins_from_frame(synth.to_frame()), n_boot, seed)

"""Distances between two samples of feature vectors: Frechet (FID) and kernel MMD, with case bootstraps.

FID (Heusel et al. 2017) between Gaussians fitted to two sets of feature rows:
``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2``; the trace of the matrix square root comes
from two symmetric eigendecompositions, so it stays real and finite for singular covariances (fewer rows
than features). It equals MONAI's ``FIDMetric`` (scipy ``sqrtm`` of S1 S2) where both are defined.

For the bootstrap, each case's slice features are kept as sufficient statistics (row count, sum, sum of
outer products), so resampling cases is a weighted sum rather than a re-stack of rows.

MMD: the unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3). MONAI's ``MMDMetric`` is the same estimate
with a linear kernel on equally many samples; here the kernel is Gaussian on standardised features with
the median pairwise distance as bandwidth (or linear, to match MONAI).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MomentStats:
    """Per-case sufficient statistics of feature rows: counts (n,), sums (n, F), outer products (n, F, F)."""

    counts: np.ndarray
    sums: np.ndarray
    outer: np.ndarray

    @classmethod
    def from_cases(cls, rows: Sequence[np.ndarray]) -> "MomentStats":
        """From one (n_rows, F) array per case."""
        rows = [np.asarray(r, np.float64) for r in rows]
        return cls(np.array([len(r) for r in rows], float), np.stack([r.sum(axis=0) for r in rows]),
                   np.stack([r.T @ r for r in rows]))

    def __len__(self) -> int:
        return len(self.counts)

    def subset(self, index: np.ndarray) -> "MomentStats":
        return MomentStats(self.counts[index], self.sums[index], self.outer[index])

    def gaussian(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean (F,) and covariance (F, F; n - 1 denominator) of the rows, cases weighted by ``weights``."""
        w = np.ones(len(self)) if weights is None else np.asarray(weights, float)
        n = float(w @ self.counts)
        mean = (w @ self.sums) / n
        second = np.tensordot(w, self.outer, axes=1)
        cov = (second - n * np.outer(mean, mean)) / max(n - 1.0, 1.0)
        return mean, cov


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (squared units of the features); >= 0."""
    vals, vecs = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    middle = root1 @ cov2 @ root1
    inner = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_root = float(np.sqrt(np.clip(inner, 0.0, None)).sum())
    diff = np.asarray(mu1) - np.asarray(mu2)
    return max(0.0, float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_root))


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of feature rows (n_a, F) and (n_b, F)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def fid_from_stats(a: MomentStats, b: MomentStats, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """FID between the rows of two case collections (cases weighted by ``wa``/``wb``, default 1)."""
    return frechet_distance(*a.gaussian(wa), *b.gaussian(wb))


def case_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) bootstrap counts: each row resamples n cases with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaNs ignored); (nan, nan) without replicates."""
    r = np.asarray(replicates, float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(r, alpha)), float(np.quantile(r, 1 - alpha))


def standardise(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both samples scaled by the pooled mean and SD of each feature (features without spread dropped)."""
    pooled = np.concatenate([x, y])
    sd = pooled.std(axis=0)
    keep = sd > 1e-12 * max(1.0, float(np.abs(pooled).max(initial=0.0)))
    mean = pooled.mean(axis=0)
    return (x[:, keep] - mean[keep]) / sd[keep], (y[:, keep] - mean[keep]) / sd[keep]


def sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (len(x), len(y)), clipped at 0."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.clip(d, 0.0, None)


def kernel_matrix(z: np.ndarray, kernel: str = "rbf", bandwidth: float | None = None) -> np.ndarray:
    """Kernel between all rows of ``z``: "linear" (dot products) or "rbf" exp(-d^2 / (2 h^2)) with h the
    median pairwise distance unless given."""
    if kernel == "linear":
        return z @ z.T
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r} (rbf, linear)")
    d2 = sq_distances(z, z)
    if bandwidth is None:
        off = d2[np.triu_indices(len(z), 1)]
        off = off[off > 0]
        bandwidth = float(np.sqrt(np.median(off))) if off.size else 1.0
    return np.exp(-d2 / (2.0 * bandwidth ** 2))


def mmd2_from_kernel(k: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    """Unbiased MMD^2 between the rows ``ix`` and ``iy`` of a pooled kernel matrix. Pairs of the same
    original row (bootstrap duplicates) are left out of the within-sample sums, as the diagonal is."""
    def within(idx):
        block = k[np.ix_(idx, idx)]
        distinct = idx[:, None] != idx[None, :]
        return float(block[distinct].sum() / max(distinct.sum(), 1))
    return within(ix) + within(iy) - 2.0 * float(k[np.ix_(ix, iy)].mean())


def mmd2(x: np.ndarray, y: np.ndarray, kernel: str = "rbf", standardize: bool = True) -> float:
    """Unbiased MMD^2 between samples x (m, F) and y (n, F); m, n >= 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("MMD needs at least two samples on each side")
    if standardize:
        x, y = standardise(x, y)
    k = kernel_matrix(np.concatenate([x, y]), kernel)
    return mmd2_from_kernel(k, np.arange(len(x)), np.arange(len(x), len(x) + len(y)))

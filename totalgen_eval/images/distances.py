"""Distances between two samples of feature vectors: Frechet (FID) and kernel MMD, with case bootstraps.

FID (Heusel et al. 2017) between Gaussians fitted to two sets of feature rows:
``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2``; the trace of the matrix square root comes
from the eigenvalues of the symmetric R^T S2 R (S1 = R R^T, by Cholesky, or by a symmetric eigendecomposition
when S1 is singular: fewer rows than features), so it stays real and finite. It equals MONAI's ``FIDMetric``
(scipy ``sqrtm`` of S1 S2) where both are defined.

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
        means, covs = self.gaussians(w[None])
        return means[0], covs[0]

    def gaussians(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means (B, F) and covariances (B, F, F) for each row of case weights (B, n), in one matrix product
        (bootstrap replicates read the outer products once, not once per replicate)."""
        w = np.asarray(weights, float)
        n = w @ self.counts
        means = (w @ self.sums) / n[:, None]
        second = (w @ self.outer.reshape(len(self), -1)).reshape(len(w), *self.outer.shape[1:])
        centred = second - n[:, None, None] * means[:, :, None] * means[:, None, :]
        return means, centred / np.maximum(n - 1.0, 1.0)[:, None, None]


def _root_factors(cov: np.ndarray) -> np.ndarray:
    """A factor R of each covariance with cov = R R^T: Cholesky where every one of the stack is positive
    definite, else the symmetric square root (singular covariances: fewer rows than features)."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        return (vecs * np.sqrt(np.clip(vals, 0.0, None))[:, None, :]) @ np.swapaxes(vecs, 1, 2)


def frechet_distances(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> np.ndarray:
    """:func:`frechet_distance` of each pair of a stack: means (B, F), covariances (B, F, F); returns (B,).
    tr (S1^1/2 S2 S1^1/2)^1/2 is taken from R^T S2 R with S1 = R R^T (the same eigenvalues as S1 S2)."""
    root1 = _root_factors((cov1 + np.swapaxes(cov1, 1, 2)) / 2)
    middle = np.swapaxes(root1, 1, 2) @ cov2 @ root1
    inner = np.linalg.eigvalsh((middle + np.swapaxes(middle, 1, 2)) / 2)
    tr_root = np.sqrt(np.clip(inner, 0.0, None)).sum(axis=1)
    diff = np.asarray(mu1) - np.asarray(mu2)
    traces = np.trace(cov1, axis1=1, axis2=2) + np.trace(cov2, axis1=1, axis2=2)
    return np.maximum(0.0, np.einsum("bf,bf->b", diff, diff) + traces - 2.0 * tr_root)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (squared units of the features); >= 0."""
    stack = [np.asarray(x, np.float64)[None] for x in (mu1, cov1, mu2, cov2)]
    return float(frechet_distances(*stack)[0])


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


def _within_counted(k: np.ndarray, counts: np.ndarray) -> float:
    """Mean kernel over pairs of distinct rows of a sample holding row i ``counts[i]`` times."""
    pairs = counts.sum() ** 2 - counts @ counts
    return float((counts @ k @ counts - counts ** 2 @ np.diag(k)) / max(pairs, 1.0))


def mmd2_from_counts(k: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray) -> float:
    """:func:`mmd2_from_kernel` of a bootstrap resample given as counts: the pooled kernel's first
    ``len(counts_x)`` rows are sample x, the rest sample y, row i drawn ``counts[i]`` times. One matrix-vector
    product per block instead of gathering the resampled rows."""
    cx, cy = np.asarray(counts_x, float), np.asarray(counts_y, float)
    nx = len(cx)
    cross = cx @ k[:nx, nx:] @ cy / (cx.sum() * cy.sum())
    return _within_counted(k[:nx, :nx], cx) + _within_counted(k[nx:, nx:], cy) - 2.0 * float(cross)


def mmd2(x: np.ndarray, y: np.ndarray, kernel: str = "rbf", standardize: bool = True) -> float:
    """Unbiased MMD^2 between samples x (m, F) and y (n, F); m, n >= 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("MMD needs at least two samples on each side")
    if standardize:
        x, y = standardise(x, y)
    k = kernel_matrix(np.concatenate([x, y]), kernel)
    return mmd2_from_kernel(k, np.arange(len(x)), np.arange(len(x), len(x) + len(y)))

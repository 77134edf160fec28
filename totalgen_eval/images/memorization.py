"""The memorization check: is a synthetic case closer to a training case than real cases ever are?

Each case is its body-box arrays (CT and PET scaled to [0, 1] on a 32 x 24 x 96 grid fitted to the body,
see ``grids.body_arrays``); the distance between two cases is the root mean square difference over both
channels (0 = identical; scaled units). For every synthetic case, its nearest training case; for every
real case not in the training cohort (the reference: scans the generator never saw; a real case at
distance ~0 from a training case is that scan and is left out), its nearest training case too. A synthetic
case is flagged when it lies closer to its nearest training case than the real cases' 1st percentile (the
lower order statistic, so with fewer than 100 real cases: the smallest real distance). An independent draw
from the real population is flagged about 1 % of the time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from .cases import CaseImages

if TYPE_CHECKING:
    from ..cohort import Cohort

PERCENTILE = 1.0
DUPLICATE_DISTANCE = 1e-6  # a real case this close to a training case is that case (left out of the reference)
COLUMNS: tuple[str, ...] = ("case_id", "nearest_train_id", "distance", "flagged")


@dataclass(frozen=True)
class Memorization:
    """``synthetic``: memorization.csv (case_id, nearest_train_id, distance, flagged); ``real``: the
    reference (case_id, nearest_train_id, distance); ``threshold`` the flagging distance; ``left_out``
    the real cases also found in training (distance ~0: the same scan), not part of the reference."""

    synthetic: pd.DataFrame
    real: pd.DataFrame
    threshold: float
    percentile: float = PERCENTILE
    left_out: tuple[str, ...] = ()

    def summary(self) -> dict:
        """Headline figures for summary.json."""
        d = self.real["distance"]
        return {"n_synthetic": int(len(self.synthetic)), "n_flagged": int(self.synthetic["flagged"].sum()),
                "threshold": float(self.threshold), "percentile": float(self.percentile),
                "n_real_reference": int(len(self.real)), "real_left_out": list(self.left_out),
                "synthetic_median_distance": float(self.synthetic["distance"].median()),
                "real_median_distance": float(d.median()) if len(d) else float("nan")}


def nearest(query: np.ndarray, reference: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``reference`` (m, d) of each ``query`` row's (n, d) nearest row, and the RMS distance."""
    q = np.asarray(query, np.float64).reshape(len(query), -1)
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    r2 = (r * r).sum(1)
    idx, dist = np.empty(len(q), int), np.empty(len(q))
    for s in range(0, len(q), chunk):
        block = q[s:s + chunk]
        d2 = np.clip((block * block).sum(1)[:, None] + r2[None, :] - 2.0 * block @ r.T, 0.0, None)
        idx[s:s + chunk] = d2.argmin(1)
        dist[s:s + chunk] = np.sqrt(d2[np.arange(len(block)), idx[s:s + chunk]] / q.shape[1])
    return idx, dist


def _stack(cases: Sequence[CaseImages]) -> np.ndarray:
    return np.stack([c.body.astype(np.float32).reshape(-1) for c in cases])


def memorization_from(synth: Sequence[CaseImages], train: Sequence[CaseImages], real: Sequence[CaseImages],
                      percentile: float = PERCENTILE) -> Memorization:
    """The check from body-box arrays already read (see the module docstring)."""
    if not train or not synth:
        raise ValueError("the memorization check needs training and synthetic cases")
    train_ids = [c.case_id for c in train]
    reference = _stack(train)
    s_idx, s_dist = nearest(_stack(synth), reference)
    real_rows, left_out = [], []
    if real:
        r_idx, r_dist = nearest(_stack(real), reference)
        for case, i, d in zip(real, r_idx, r_dist):
            if d < DUPLICATE_DISTANCE:  # case ids may repeat across cohorts; the images decide
                left_out.append(case.case_id)
            else:
                real_rows.append((case.case_id, train_ids[i], float(d)))
    real_table = pd.DataFrame(real_rows, columns=["case_id", "nearest_train_id", "distance"])
    threshold = (float(np.percentile(real_table["distance"], percentile, method="lower"))
                 if len(real_table) else float("nan"))
    table = pd.DataFrame({"case_id": [c.case_id for c in synth], "nearest_train_id": [train_ids[i] for i in s_idx],
                          "distance": s_dist, "flagged": s_dist < threshold if np.isfinite(threshold) else False})
    return Memorization(table[list(COLUMNS)], real_table, threshold, percentile, tuple(left_out))


def memorization_check(synth: Cohort, train: Cohort, real: Cohort, workers: int = 1, progress: bool = False,
                       percentile: float = PERCENTILE) -> Memorization:
    """The check on three Cohorts: synthetic, the generator's training cohort, and real held-out cases."""
    from .cases import cohort_images

    read = [cohort_images(c, None, workers, progress, f"memorization ({name})")
            for c, name in ((synth, "synthetic"), (train, "training"), (real, "real"))]
    return memorization_from(*read, percentile=percentile)

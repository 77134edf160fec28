"""Everything image-level a comparison computes, in one call that reads each case once (for ``compare``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .cases import cohort_images
from .features import FeatureExtractor, load_extractor
from .memorization import Memorization, memorization_from
from .metrics import COLUMNS, DEFAULT_N_BOOT, REFERENCE_SUFFIX, SYNTH_HALF_SUFFIX, image_metrics_from, twins_from_frame

if TYPE_CHECKING:
    from ..cohort import Cohort


@dataclass(frozen=True)
class ImageResults:
    """``table``: image_metrics.csv; ``memorization``: None without a training cohort; ``features``: the
    extractor's description; ``seconds``: wall time."""

    table: pd.DataFrame
    memorization: Memorization | None
    features: str
    seconds: float
    note: str = ""  # why the table is empty, when it is

    def summary(self) -> dict[str, Any]:
        """Headline image-level figures for summary.json."""
        out: dict[str, Any] = {"features": self.features, "seconds": round(self.seconds, 2)}
        if self.note:
            out["note"] = self.note
        rows = self.table.set_index(["metric", "modality"])
        for metric in ("fid_2.5d", "mmd_3d", "ms_ssim_twins"):
            for modality in ("ct", "pet"):
                if (metric, modality) not in rows.index:
                    continue
                entry = {"value": _num(rows.loc[(metric, modality), "value"]),
                         "ci": [_num(rows.loc[(metric, modality), "ci_low"]),
                                _num(rows.loc[(metric, modality), "ci_high"])]}
                for suffix, key in ((SYNTH_HALF_SUFFIX, "synth_half"), (REFERENCE_SUFFIX, "real_halves")):
                    if (metric + suffix, modality) in rows.index:
                        entry[key] = _num(rows.loc[(metric + suffix, modality), "value"])
                out[f"{metric}_{modality}"] = entry
        if self.memorization is not None:
            out["memorization"] = self.memorization.summary()
        return out


def _num(x: Any) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def compare_images(real: Cohort, synth: Cohort, train: Cohort | None = None,
                   features: str | FeatureExtractor = "bundled", n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   workers: int = 1, device: str = "cpu", progress: bool = False) -> ImageResults:
    """Image metrics of two Cohorts and, with a training Cohort, the memorization check. ``features``:
    ``bundled``, ``model:PATH`` or an extractor already loaded."""
    import time

    started = time.perf_counter()
    extractor = features if isinstance(features, FeatureExtractor) else load_extractor(features, device=device)
    real_i = cohort_images(real, extractor, workers, progress, "images (real)")
    synth_i = cohort_images(synth, extractor, workers, progress, "images (synthetic)")
    note = "" if min(len(real_i), len(synth_i)) >= 2 else "not computed: fewer than two cases in a cohort"
    table = pd.DataFrame(columns=list(COLUMNS)) if note else \
        image_metrics_from(real_i, synth_i, extractor.name, twins_from_frame(synth.to_frame()), n_boot, seed)
    memo = None
    if train is not None:
        train_i = cohort_images(train, None, workers, progress, "images (training)")
        memo = memorization_from(synth_i, train_i, real_i)
    return ImageResults(table, memo, extractor.description, time.perf_counter() - started, note)

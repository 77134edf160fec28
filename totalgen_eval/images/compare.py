"""Everything image-level a comparison computes, in one call that reads each case once (for ``compare``), with
its per-case images and its table cached when given a cache folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..cache import cache_key, read_cached_table
from ..provenance import write_table
from .cases import CaseImages, cohort_images, images_key
from .grids import BODY_SHAPE
from .features import FeatureExtractor, load_extractor
from .memorization import Memorization, memorization_from
from .metrics import COLUMNS, DEFAULT_N_BOOT, REFERENCE_SUFFIX, SYNTH_HALF_SUFFIX, image_metrics_from, twins_from_frame

if TYPE_CHECKING:
    from ..cohort import Cohort

SIDE_NAMES = {"real": "real", "synth": "synthetic", "train": "training"}  # cache folders -> progress labels


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


def _table_cache(cache_dir: Path | None, real: Cohort, synth: Cohort, extractor: FeatureExtractor,
                 twins: dict[str, str], n_boot: int, seed: int) -> Path | None:
    """Where the image_metrics table of these cases is kept: ``<cache_dir>/image_metrics_<key>.csv``, the key
    made of every case's images key (its files, the extractor, IMAGES_VERSION), the twins, n_boot and seed."""
    if cache_dir is None:
        return None
    keys = [[images_key(c, extractor, BODY_SHAPE) for c in cohort] for cohort in (real, synth)]
    return Path(cache_dir) / f"image_metrics_{cache_key(keys, twins, n_boot, seed)}.csv"


def _cohort_reader(extractor: FeatureExtractor, workers: int, progress: bool, cache_dir: Path | None):
    """A function reading one side's case images (``<cache_dir>/<side>/images`` as their cache)."""
    def read(cohort: Cohort, side: str, with_features: bool = True) -> list[CaseImages]:
        folder = None if cache_dir is None else Path(cache_dir) / side / "images"
        return cohort_images(cohort, extractor if with_features else None, workers, progress,
                             f"images ({SIDE_NAMES[side]})", cache_dir=folder)
    return read


def compare_images(real: Cohort, synth: Cohort, train: Cohort | None = None,
                   features: str | FeatureExtractor = "bundled", n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   workers: int = 1, device: str = "cpu", progress: bool = False,
                   cache_dir: Path | None = None) -> ImageResults:
    """Image metrics of two Cohorts and, with a training Cohort, the memorization check. ``features``:
    ``bundled``, ``model:PATH`` or an extractor already loaded. With ``cache_dir`` (compare: ``<out>/cache``)
    each case's images are kept under ``<cache_dir>/<real|synth|train>/images`` and the table beside them:
    run again on unchanged cases, nothing is recomputed."""
    import time

    started = time.perf_counter()
    extractor = features if isinstance(features, FeatureExtractor) else load_extractor(features, device=device)
    read = _cohort_reader(extractor, workers, progress, cache_dir)
    twins = twins_from_frame(synth.to_frame())
    note = "" if min(len(real), len(synth)) >= 2 else "not computed: fewer than two cases in a cohort"
    path = _table_cache(cache_dir, real, synth, extractor, twins, n_boot, seed)
    table = read_cached_table(path, COLUMNS) if path is not None and not note else None
    real_i = synth_i = None
    if table is None:
        real_i, synth_i = read(real, "real"), read(synth, "synth")
        table = pd.DataFrame(columns=list(COLUMNS)) if note else \
            image_metrics_from(real_i, synth_i, extractor.name, twins, n_boot, seed)
        if path is not None and not note:
            write_table(table, path)
    memo = None
    if train is not None:
        real_i, synth_i = real_i or read(real, "real"), synth_i or read(synth, "synth")
        memo = memorization_from(synth_i, read(train, "train", with_features=False), real_i)
    return ImageResults(table, memo, extractor.description, time.perf_counter() - started, note)

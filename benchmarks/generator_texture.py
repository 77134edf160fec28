"""Voxel texture of generated PET inside organs: the noise table and SUVmax of the fidelity benchmark.

Inside each organ eroded by one voxel (so that partial volume at the organ's edge does not count), the SUV
standard deviation over voxels (ddof 0) measures voxel noise; its ratio synthetic / real, organ by organ, is
what stage 2 must get right (goal: within 20 %). Organ SUVmax comes from the organ table (metrics module).
The synthetic side is segmented while the phantoms have true labels, so the SUVmax comparison also shows the
phantoms segmented the same way: the segmenter's own deviation (an organ label that takes in a hot
neighbour's edge raises SUVmax on real and synthetic volumes alike) and the synthetic deviation against it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

NOISE_GOAL = 0.20  # |SD ratio - 1| per organ
SUVMAX_GOAL_PCT = 10.0  # median over organs of |SUVmax deviation|


def eroded_organ_sd(pet: np.ndarray, organ_map: np.ndarray, organs: tuple[str, ...]) -> dict[str, float]:
    """SUV standard deviation (ddof 0) inside each organ of ``organ_map`` (0 background, i = organs[i-1])
    eroded by one voxel (6-connectivity); NaN where fewer than 8 voxels remain. Arrays (i, j, k)."""
    out = {}
    for index, name in enumerate(organs, start=1):
        core = ndimage.binary_erosion(organ_map == index)
        out[name] = float(pet[core].std()) if core.sum() >= 8 else np.nan
    return out


def noise_table(cohort, segmenter: str, cache_dir, organs: tuple[str, ...]) -> pd.DataFrame:
    """[case_id, organ, suv_sd_core]: eroded-organ SUV SD of every case of ``cohort`` (labels from
    ``segmenter``, cached under ``cache_dir/labels`` as the organ table does)."""
    from totalgen_eval.organs import organ_label_map
    from totalgen_eval.segment import case_labels

    rows = []
    for case in cohort:
        pet, _ = case.read_pet()
        labels, _ = case_labels(case, segmenter, cache_dir)
        for organ, sd in eroded_organ_sd(pet, organ_label_map(labels, organs), organs).items():
            rows.append({"case_id": case.case_id, "organ": organ, "suv_sd_core": sd})
    return pd.DataFrame(rows)


def noise_comparison(real: pd.DataFrame, synth: pd.DataFrame) -> pd.DataFrame:
    """[organ, real_sd, synth_sd, ratio, within_goal]: mean eroded-organ SUV SD per organ on both sides."""
    means = [t.groupby("organ", sort=False)["suv_sd_core"].mean() for t in (real, synth)]
    out = pd.DataFrame({"real_sd": means[0], "synth_sd": means[1]}).reset_index(names="organ")
    out["ratio"] = out["synth_sd"] / out["real_sd"]
    out["within_goal"] = (out["ratio"] - 1).abs() <= NOISE_GOAL
    return out


def suv_max_comparison(real: pd.DataFrame, synth: pd.DataFrame, real_segmented: pd.DataFrame | None = None
                       ) -> pd.DataFrame:
    """[organ, real_suv_max, synth_suv_max, deviation_pct]: mean organ SUVmax per organ (organ tables); with
    ``real_segmented`` (the real cases' table from the synthetic side's segmenter) also real_seg_suv_max,
    segmenter_dev_pct (segmented real vs real) and same_segmenter_dev_pct (synthetic vs segmented real)."""
    means = [t.groupby("organ", sort=False)["suv_max"].mean() for t in (real, synth)]
    out = pd.DataFrame({"real_suv_max": means[0], "synth_suv_max": means[1]}).reset_index(names="organ")
    out["deviation_pct"] = 100 * (out["synth_suv_max"] / out["real_suv_max"] - 1)
    if real_segmented is not None:
        seg = real_segmented.groupby("organ")["suv_max"].mean().reindex(out["organ"]).to_numpy()
        out["real_seg_suv_max"] = seg
        out["segmenter_dev_pct"] = 100 * (seg / out["real_suv_max"] - 1)
        out["same_segmenter_dev_pct"] = 100 * (out["synth_suv_max"] / seg - 1)
    return out


def texture_summary(noise: pd.DataFrame, suv_max: pd.DataFrame) -> dict:
    """The two goals: every organ's SD ratio within 20 %; median |SUVmax deviation| <= 10 %."""
    median_abs = float(suv_max["deviation_pct"].abs().median())
    out = {"noise_organs_within": int(noise["within_goal"].sum()), "noise_organs": int(len(noise)),
           "noise_goal_met": bool(noise["within_goal"].all()), "suv_max_median_abs_dev_pct": median_abs,
           "suv_max_goal_met": bool(median_abs <= SUVMAX_GOAL_PCT)}
    if "same_segmenter_dev_pct" in suv_max:
        same = float(suv_max["same_segmenter_dev_pct"].abs().median())
        out.update(suv_max_same_segmenter_median_abs_dev_pct=same,
                   suv_max_same_segmenter_goal_met=bool(same <= SUVMAX_GOAL_PCT))
    return out

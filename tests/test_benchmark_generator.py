"""The generator benchmarks' arithmetic: voxel noise in eroded organs, SUVmax deviations, the paired
demographic-response effects and the issue's rule that judges them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import bench_generator_response as response
from benchmarks.generator_texture import eroded_organ_sd, noise_comparison, suv_max_comparison, texture_summary


def test_eroded_organ_sd_is_the_sd_of_the_core_voxels():
    rng = np.random.default_rng(0)
    pet = rng.normal(2.0, 0.3, (12, 12, 12))
    organ_map = np.zeros(pet.shape, np.uint8)
    organ_map[2:9, 3:8, 1:11] = 1  # 7 x 5 x 10: one voxel off each face leaves 5 x 3 x 8
    organ_map[10, 10, 10] = 2  # too small to keep a core
    sd = eroded_organ_sd(pet, organ_map, ("liver", "spleen"))
    assert sd["liver"] == pytest.approx(float(np.std(pet[3:8, 4:7, 2:10])), rel=1e-12)
    assert np.isnan(sd["spleen"])


def test_noise_and_suv_max_comparisons_and_their_goals():
    real = pd.DataFrame({"case_id": ["a", "b", "a", "b"], "organ": ["liver", "liver", "brain", "brain"],
                         "suv_sd_core": [0.2, 0.4, 1.0, 1.0], "suv_max": [4.0, 6.0, 10.0, 10.0]})
    synth = real.assign(suv_sd_core=[0.3, 0.5, 1.5, 1.5], suv_max=[5.0, 5.0, 11.5, 11.5])
    noise = noise_comparison(real, synth).set_index("organ")
    assert noise.loc["liver", "ratio"] == pytest.approx(0.4 / 0.3) and bool(noise.loc["liver", "within_goal"]) is False
    assert noise.loc["brain", "ratio"] == pytest.approx(1.5)
    suv_max = suv_max_comparison(real, synth).set_index("organ")
    assert suv_max.loc["liver", "deviation_pct"] == pytest.approx(0.0)
    assert suv_max.loc["brain", "deviation_pct"] == pytest.approx(15.0)
    summary = texture_summary(noise.reset_index(), suv_max.reset_index())
    assert summary["suv_max_median_abs_dev_pct"] == pytest.approx(7.5) and summary["suv_max_goal_met"]
    assert summary["noise_organs_within"] == 0 and not summary["noise_goal_met"]
    assert "suv_max_same_segmenter_median_abs_dev_pct" not in summary


def test_suv_max_against_the_phantoms_segmented_like_the_synthetic_side():
    real = pd.DataFrame({"organ": ["liver", "liver", "lungs", "lungs"], "suv_max": [4.0, 6.0, 0.5, 0.7]})
    synth = real.assign(suv_max=[6.0, 6.0, 1.6, 2.0])  # means: liver 6 (real 5), lungs 1.8 (real 0.6)
    segmented = real.assign(suv_max=[5.0, 5.0, 1.5, 1.5])  # the segmenter alone: liver 5 (+0 %), lungs 1.5 (+150 %)
    suv_max = suv_max_comparison(real, synth, segmented).set_index("organ")
    assert suv_max.loc["lungs", "deviation_pct"] == pytest.approx(200.0)
    assert suv_max.loc["lungs", "segmenter_dev_pct"] == pytest.approx(150.0)
    assert suv_max.loc["lungs", "same_segmenter_dev_pct"] == pytest.approx(20.0)  # 1.8 / 1.5
    assert suv_max.loc["liver", "same_segmenter_dev_pct"] == pytest.approx(20.0)  # 6 / 5
    noise = pd.DataFrame({"organ": ["liver", "lungs"], "within_goal": [True, True]})
    summary = texture_summary(noise, suv_max.reset_index())
    assert summary["suv_max_median_abs_dev_pct"] == pytest.approx(110.0)  # median of 20 and 200
    assert summary["suv_max_same_segmenter_median_abs_dev_pct"] == pytest.approx(20.0)
    assert not summary["suv_max_same_segmenter_goal_met"]


def test_truth_effects_follow_the_phantom_formulas():
    from totalgen_eval.phantom.population import ORGAN_MODEL

    truth = response.truth_effects().set_index(["contrast", "organ", "metric"])["truth_pct"]
    brain = ORGAN_MODEL["brain"]  # volume x vol_age_ratio per decade after its onset (40 y): 30 -> 70 y is 3 decades
    assert truth[("age 30 -> 70 y", "brain", "volume_ml")] == pytest.approx(100 * (brain.vol_age_ratio ** 3 - 1))
    liver = ORGAN_MODEL["liver"]  # volume x (w / 75) ** exponent
    assert truth[("weight 60 -> 90 kg", "liver", "volume_ml")] == pytest.approx(100 * (1.5 ** liver.vol_weight_exp - 1))
    assert truth[("sex F -> M", "heart", "volume_ml")] == pytest.approx(100 * (700 / 560 - 1))
    assert truth[("sex F -> M", "heart", "suv_mean")] == 0.0  # no sex term in the heart's uptake


def test_paired_effects_take_the_mean_log_ratio_over_paired_cases():
    names = response.settings()
    base = pd.DataFrame({"case_index": [0, 1, 2], "organ": "liver", "volume_ml": [1000.0, 1200.0, 900.0],
                         "suv_mean": [2.0, 2.0, 2.0]})
    tables = {name: base.copy() for name in names}
    tables["M-base"] = base.assign(volume_ml=base["volume_ml"] * [1.1, 1.2, 1.3])
    effects = response.paired_effects(tables, "synth_pct").set_index(["contrast", "organ", "metric"])
    logs = np.log([1.1, 1.2, 1.3])
    expected = 100 * (np.exp(logs.mean()) - 1)
    assert effects.loc[("sex F -> M", "liver", "volume_ml"), "synth_pct"] == pytest.approx(expected)
    se = 100 * np.exp(logs.mean()) * logs.std(ddof=1) / np.sqrt(3)
    assert effects.loc[("sex F -> M", "liver", "volume_ml"), "synth_pct_se"] == pytest.approx(se)
    assert effects.loc[("age 30 -> 70 y", "liver", "volume_ml"), "synth_pct"] == 0.0


@pytest.mark.parametrize("truth, synth, verdict", [(0.0, 4.9, "ok"), (0.0, -5.1, "spurious"), (14.8, -9.9, "wrong sign"),
                                                   (20.0, 13.0, "size off"), (20.0, 15.0, "ok"), (3.0, 0.5, "ok"),
                                                   (-3.0, 1.0, "wrong sign"), (10.0, np.nan, "not measured")])
def test_the_issue_rule_judges_each_effect(truth, synth, verdict):
    assert response.judge(pd.Series({"truth_pct": truth, "synth_pct": synth})) == verdict


def test_stage2_alone_judges_per_organ_ratios_over_cases():
    from benchmarks.bench_generator_sr import judge

    maps = np.zeros((2, 6, 6, 6), np.uint8)
    maps[:, 1:5, 1:5, 1:5] = 5  # the fifth organ (liver) only: a 4-voxel cube, its core 2 x 2 x 2
    real = np.zeros((2, 6, 6, 6))
    real[:, 1:5, 1:5, 1:5] = 2.0
    real[0, 2, 2, 2] = 4.0  # case 0: one hot voxel in the core
    synth = real.copy()
    synth[:, 1:5, 1:5, 1:5] *= 1.5  # every liver figure x 1.5
    out = judge(synth, real, maps)
    assert out["suv_mean_dev_pct"]["liver"] == pytest.approx(50.0)
    assert out["suv_max_dev_pct"]["liver"] == pytest.approx(50.0)  # mean SUVmax (4 + 2) / 2 -> (6 + 3) / 2
    assert out["noise_ratios"]["liver"] == pytest.approx(1.5)  # case 1's core SD is 0 on both sides
    assert np.isnan(out["noise_ratios"]["spleen"])  # absent organs stay NaN and do not count
    assert out["suv_max_median_abs_dev_pct"] == pytest.approx(50.0) and out["suv_max_goal_met"] is False
    assert out["noise_organs_within"] == 0


def test_the_spread_is_the_sd_of_the_log_over_cases_and_its_ratio():
    from benchmarks.generator_spread import spread_comparison

    logs = np.array([0.0, 0.2, 0.4])  # SD (ddof 1) 0.2
    real = pd.DataFrame({"organ": ["liver"] * 4, "suv_mean": list(np.exp(logs)) + [0.0],  # 0: no log, left out
                         "volume_ml": [1000.0, 1000.0, 1000.0 * np.exp(0.3), np.nan]})
    synth = real.assign(suv_mean=list(2 * np.exp(logs / 2)) + [np.nan], volume_ml=[900.0, 900.0, 900.0 * np.exp(0.3), 1.0])
    table = spread_comparison(real, synth, twins=real).set_index("metric")
    assert table.loc["suv_mean", "real_log_sd"] == pytest.approx(0.2, rel=1e-12)
    assert table.loc["suv_mean", "ratio"] == pytest.approx(0.5, rel=1e-12)
    assert table.loc["suv_mean", "twins_ratio"] == pytest.approx(1.0, rel=1e-12)
    expected = np.std(np.log([900.0, 900.0, 900.0 * np.exp(0.3), 1.0]), ddof=1) / np.std([0, 0, 0.3], ddof=1)
    assert table.loc["volume_ml", "ratio"] == pytest.approx(expected, rel=1e-12)


def test_dispersion_reads_a_shift_as_bias_and_a_pull_to_the_mean_as_lost_spread():
    from benchmarks.bench_generator_dispersion import dispersion

    truth = np.exp(np.random.default_rng(1).normal(1.0, 0.3, (40, 1)))
    scaled = dispersion(truth, 1.1 * truth, ("liver",))[0]
    assert (scaled["bias_pct"], scaled["spread"], scaled["r"]) == (pytest.approx(10.0), 1.0, 1.0)
    centre = np.log(truth).mean()
    pulled = dispersion(truth, np.exp(centre + 0.5 * (np.log(truth) - centre)), ("liver",))[0]
    assert (pulled["bias_pct"], pulled["spread"], pulled["r"]) == (0.0, 0.5, 1.0)
    half = np.log(truth[:, 0]) - centre  # the log ratios of ``pulled``: -half / 2
    assert pulled["bias_se_pct"] == pytest.approx(100 * np.std(half / 2, ddof=1) / np.sqrt(40), abs=0.006)
    assert scaled["bias_se_pct"] == 0.0
    few = truth.copy()
    few[2:, 0] = np.nan  # an organ two subjects have: no figures
    assert np.isnan(dispersion(few, few, ("aorta",))[0]["spread"])
    zero = 1.1 * truth
    zero[0, 0] = 0.0  # a mean floored at SUV 0 has no log: that subject is left out
    assert dispersion(truth, zero, ("liver",))[0]["subjects"] == 39


def test_interior_masks_keep_low_res_voxels_wholly_inside_an_organ():
    from benchmarks.bench_generator_dispersion import interior_masks

    maps = np.zeros((1, 8, 8, 8), np.uint8)
    maps[0, 0:4, 0:4, 0:4] = 1  # aligned with the 2-blocks: 2 x 2 x 2 of them
    maps[0, 5:8, 5:8, 5:8] = 2  # from 5: only the block 6..7 on each axis lies wholly inside
    masks = interior_masks(maps, 2, 2).numpy()
    assert masks.shape == (1, 2, 4, 4, 4)
    assert masks[0, 0].sum() == 8 and masks[0, 0, :2, :2, :2].all()
    assert masks[0, 1].sum() == 1 and masks[0, 1, 3, 3, 3]

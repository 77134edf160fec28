"""Concordance statistics against independent computations (scipy/statsmodels called directly, hand work)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

from totalgen_eval.errors import InputError
from totalgen_eval.stats import (CONCORDANCE_COLUMNS, TRENDS_COLUMNS, bh_adjust, cell_statistics, compare_tables,
                                 run_stats)
from totalgen_eval.stats.trends import fit_trends

METRICS = ("volume_ml", "suv_mean", "suv_max")


def organ_table(demo: pd.DataFrame, values: dict[str, dict[str, np.ndarray]], cohort: str) -> pd.DataFrame:
    """An organ_metrics table from demographics (one row per case) and {organ: {metric: values per case}}."""
    parts = []
    for organ, metrics in values.items():
        part = demo.copy()
        part["cohort"], part["organ"], part["n_voxels"] = cohort, organ, 1000
        part["age_group"] = "bogus"  # must be recomputed, never trusted
        for m in ("volume_ml", "suv_mean", "suv_median", "suv_std", "suv_max", "suv_peak", "hu_mean"):
            part[m] = metrics.get(m, np.full(len(demo), 1.0 + np.arange(len(demo)) % 7))
        part["touches_border"] = False
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def demographics(n: int, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"case_id": [f"{prefix}{i:03d}" for i in range(n)], "age": rng.uniform(20, 90, n),
                         "sex": np.where(np.arange(n) % 2 == 0, "F", "M"), "height_m": rng.normal(1.72, 0.09, n),
                         "weight_kg": rng.normal(78, 13, n)})


def random_pair(n: int = 60, seed: int = 1, shift: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    tables = []
    for prefix, k in (("r", 1.0), ("s", shift)):
        demo = demographics(n, rng, prefix)
        tables.append(organ_table(demo, {
            "liver": {"volume_ml": rng.normal(1500, 220, n), "suv_mean": k * rng.lognormal(np.log(2), 0.18, n),
                      "suv_max": rng.lognormal(np.log(4), 0.3, n)},
            "spleen": {"volume_ml": rng.lognormal(np.log(200), 0.35, n), "suv_mean": rng.normal(1.8, 0.3, n),
                       "suv_max": rng.lognormal(np.log(3), 0.3, n)}}, prefix))
    return tables[0], tables[1]


def cell_values(table: pd.DataFrame, organ: str, metric: str, sex: str = "all") -> np.ndarray:
    rows = table[(table["organ"] == organ) & ((table["sex"] == sex) | (sex == "all"))]
    return rows[metric].to_numpy(float)


def row(conc: pd.DataFrame, organ: str, metric: str, sex: str = "all", age: str = "all") -> pd.Series:
    hit = conc[(conc.organ == organ) & (conc.metric == metric) & (conc.sex == sex) & (conc.age_group == age)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.fixture(scope="module")
def pair_result():
    real, synth = random_pair(shift=1.08)
    return real, synth, compare_tables(real, synth, n_boot=300, seed=3)


def test_columns_are_the_contract(pair_result):
    _, _, res = pair_result
    assert list(res.concordance.columns) == list(CONCORDANCE_COLUMNS)
    assert list(res.trends.columns) == list(TRENDS_COLUMNS)
    assert CONCORDANCE_COLUMNS[:4] == ("organ", "metric", "sex", "age_group") and CONCORDANCE_COLUMNS[-1] == "p_adjusted"


@pytest.mark.parametrize("organ,metric,sex", [("liver", "suv_mean", "all"), ("spleen", "volume_ml", "M"),
                                              ("liver", "suv_max", "F")])
def test_each_statistic_matches_scipy(pair_result, organ, metric, sex):
    real, synth, res = pair_result
    r, s = cell_values(real, organ, metric, sex), cell_values(synth, organ, metric, sex)
    got = row(res.concordance, organ, metric, sex)
    assert got.n_real == r.size and got.n_synth == s.size
    assert got.real_mean == pytest.approx(r.sum() / r.size) and got.synth_mean == pytest.approx(s.sum() / s.size)
    assert got.real_sd == pytest.approx(np.sqrt(((r - r.mean()) ** 2).sum() / (r.size - 1)))
    assert got.deviation_pct == pytest.approx(100 * (s.mean() - r.mean()) / r.mean())
    assert got.welch_p == pytest.approx(scipy.stats.ttest_ind(s, r, equal_var=False).pvalue, rel=1e-9)
    assert got.mannwhitney_p == pytest.approx(scipy.stats.mannwhitneyu(s, r, alternative="two-sided").pvalue, rel=1e-9)
    assert got.ks_p == pytest.approx(scipy.stats.ks_2samp(s, r).pvalue, rel=1e-9)
    assert got.wasserstein == pytest.approx(scipy.stats.wasserstein_distance(s, r) / np.std(r, ddof=1), rel=1e-9)
    assert got.deviation_ci_low < got.deviation_pct < got.deviation_ci_high


def test_tost_matches_two_hand_computed_welch_t_tests_on_logs(pair_result):
    real, synth, res = pair_result
    margin = 0.05
    for organ, metric in (("liver", "suv_mean"), ("spleen", "volume_ml")):
        lr, ls = np.log(cell_values(real, organ, metric)), np.log(cell_values(synth, organ, metric))
        vr, vs = lr.var(ddof=1) / lr.size, ls.var(ddof=1) / ls.size
        se = np.sqrt(vr + vs)
        df = (vr + vs) ** 2 / (vr ** 2 / (lr.size - 1) + vs ** 2 / (ls.size - 1))
        d = ls.mean() - lr.mean()
        p_low = scipy.stats.t.sf((d - np.log(1 - margin)) / se, df)   # H0: d <= log(0.95)
        p_high = scipy.stats.t.cdf((d - np.log(1 + margin)) / se, df)  # H0: d >= log(1.05)
        got = row(res.concordance, organ, metric)
        assert got.tost_p == pytest.approx(max(p_low, p_high), rel=1e-6)
        assert bool(got.equivalent) == (max(p_low, p_high) < 0.05)


def test_tost_declares_equivalence_for_identical_large_samples():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.7, 0.1, 400)
    stats, _ = cell_statistics(x, x * 1.01, margin=0.05, min_n=5, n_boot=0, alpha=0.05, rng=None)
    assert stats["tost_p"] < 1e-6 and np.isnan(stats["deviation_ci_low"])


def test_benjamini_hochberg_hand_worked_example():
    # sorted 0.01, 0.03, 0.04, 0.20 (m = 4): raw 0.04, 0.06, 0.0533, 0.20 -> step-up minimum 0.04, 0.0533, 0.0533, 0.20
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.20])
    np.testing.assert_allclose(bh_adjust(p), [0.04, 0.16 / 3, np.nan, 0.16 / 3, 0.20], equal_nan=True)


def test_p_adjusted_is_bh_over_the_whole_tables_welch_p(pair_result):
    _, _, res = pair_result
    conc = res.concordance
    ok = conc["welch_p"].notna()
    assert ok.sum() > 20
    expected = multipletests(conc.loc[ok, "welch_p"], method="fdr_bh")[1]
    np.testing.assert_allclose(conc.loc[ok, "p_adjusted"], expected)
    assert conc.loc[~ok, "p_adjusted"].isna().all()


def test_subgroups_counted_by_hand_and_age_group_recomputed():
    real_demo = pd.DataFrame({"case_id": [f"r{i}" for i in range(15)],
                              "age": [30] * 6 + [70] * 4 + [50] * 5, "sex": ["F"] * 10 + ["M"] * 5,
                              "height_m": 1.7, "weight_kg": 70.0})
    synth_demo = pd.DataFrame({"case_id": [f"s{i}" for i in range(12)],
                               "age": [30] * 2 + [50] * 3 + [85] * 7, "sex": ["F"] * 5 + ["M"] * 7,
                               "height_m": 1.7, "weight_kg": 70.0})
    vals = lambda n: {"liver": {m: np.linspace(1, 2, n) for m in METRICS}}  # noqa: E731
    res = compare_tables(organ_table(real_demo, vals(15), "real"), organ_table(synth_demo, vals(12), "synth"),
                         n_boot=0, trends=False)
    conc = res.concordance[res.concordance.metric == "suv_mean"].set_index(["sex", "age_group"])
    expected = {("all", "all"): (15, 12), ("F", "all"): (10, 5), ("M", "all"): (5, 7),
                ("all", "18-40"): (6, 2), ("all", "40-60"): (5, 3), ("all", "60-80"): (4, 0), ("all", "80+"): (0, 7),
                ("F", "18-40"): (6, 2), ("F", "40-60"): (0, 3), ("F", "60-80"): (4, 0), ("M", "40-60"): (5, 0),
                ("M", "80+"): (0, 7)}
    got = {k: (int(v.n_real), int(v.n_synth)) for k, v in conc.iterrows()}
    assert got == expected
    paper = compare_tables(organ_table(real_demo, vals(15), "real"), organ_table(synth_demo, vals(12), "synth"),
                           n_boot=0, trends=False, age_bins=(65,), metrics=("suv_mean",)).concordance
    assert row(paper, "liver", "suv_mean", "all", "<=65")[["n_real", "n_synth"]].tolist() == [11, 5]
    assert row(paper, "liver", "suv_mean", "all", ">65")[["n_real", "n_synth"]].tolist() == [4, 7]


def test_small_cells_are_kept_with_means_and_nan_tests():
    real, synth = random_pair(n=60)
    res = compare_tables(real, synth, min_n=40, n_boot=50, trends=False)
    conc = res.concordance
    small = conc[(conc.n_real < 40) | (conc.n_synth < 40)]
    assert len(small) > 0 and small["real_mean"].notna().all() and small["deviation_pct"].notna().all()
    for c in ("welch_p", "mannwhitney_p", "ks_p", "wasserstein", "tost_p", "deviation_ci_low", "p_adjusted"):
        assert small[c].isna().all(), c
    assert small["equivalent"].isna().all()
    big = conc[(conc.n_real >= 40) & (conc.n_synth >= 40)]
    assert len(big) == 6 and big["welch_p"].notna().all()  # the 2 organs x 3 metrics "all" cells (60 vs 60)
    assert res.summary["headline"]["cells_below_min_n"] == len(small)


def test_missing_columns_are_named():
    real, synth = random_pair(n=10)
    with pytest.raises(InputError, match="sex, suv_mean"):
        compare_tables(real, synth.drop(columns=["sex", "suv_mean"]))
    with pytest.raises(InputError, match="real table: missing column"):
        compare_tables(real.drop(columns=["age"]), synth)


def test_zero_variance_all_nan_and_empty_organs_give_nan_with_reasons_and_no_warnings():
    rng = np.random.default_rng(5)
    n = 20
    real = organ_table(demographics(n, rng, "r"), {"liver": {"volume_ml": np.full(n, 1500.0),
                                                             "suv_mean": np.full(n, np.nan),
                                                             "suv_max": rng.normal(4, 1, n)}}, "real")
    synth = organ_table(demographics(n, rng, "s"), {"liver": {"volume_ml": np.full(n, 1500.0),
                                                              "suv_mean": rng.normal(2, 0.3, n),
                                                              "suv_max": rng.normal(4, 1, n)}}, "synth")
    synth.loc[:4, "n_voxels"] = 0  # organ absent in five synthetic cases
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = compare_tables(real, synth, n_boot=100)
    conc = res.concordance
    vol = row(conc, "liver", "volume_ml")
    assert vol.real_sd == 0 and vol.deviation_pct == 0 and np.isnan(vol.welch_p) and np.isnan(vol.tost_p)
    suv = row(conc, "liver", "suv_mean")
    assert suv.n_real == 0 and suv.n_synth == n - 5 and np.isnan(suv.real_mean) and np.isnan(suv.welch_p)
    assert row(conc, "liver", "suv_max").n_synth == n - 5
    reasons = {(x["metric"], x["sex"], x["age_group"]): x["reason"] for x in res.summary["notes"]["concordance"]}
    assert "zero variance" in reasons[("volume_ml", "all", "all")]
    assert res.summary["excluded_rows"]["real"]["suv_mean"] == {"no_voxels": 0, "missing_value": n}
    assert res.summary["excluded_rows"]["synth"]["suv_max"] == {"no_voxels": 5, "missing_value": 0}
    assert any("constant" in x["reason"] for x in res.summary["notes"]["trends"])


def test_non_positive_values_skip_tost_only():
    rng = np.random.default_rng(2)
    real, synth = rng.normal(0.5, 1, 30), rng.normal(0.5, 1, 30)
    stats, reason = cell_statistics(real, synth, margin=0.05, min_n=5, n_boot=0, alpha=0.05, rng=None)
    assert np.isnan(stats["tost_p"]) and np.isfinite(stats["welch_p"]) and "log" in reason


def test_a_subgroup_missing_from_one_cohort():
    real, synth = random_pair(n=40)
    synth = synth[synth.sex == "M"]
    res = compare_tables(real, synth, n_boot=0)
    f = row(res.concordance, "liver", "suv_mean", "F")
    assert f.n_synth == 0 and f.n_real == 20 and np.isnan(f.synth_mean) and np.isnan(f.welch_p)
    assert not (res.trends["term"] == "sex_M").any()
    assert any("single sex" in x["reason"] for x in res.summary["notes"]["trends"])


def trend_cohorts(synth_slope: float, seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    tables = []
    for prefix, slope in (("r", 0.010), ("s", synth_slope)):
        demo = demographics(n, rng, prefix)
        male = (demo["sex"] == "M").to_numpy()
        suv = 1.2 + slope * demo["age"].to_numpy() + 0.15 * male + 0.01 * (demo["weight_kg"].to_numpy() - 78)
        tables.append(organ_table(demo, {"liver": {"suv_mean": suv + rng.normal(0, 0.2, n)}}, prefix))
    return tables


def test_trends_recover_a_different_age_slope():
    real, synth = trend_cohorts(synth_slope=0.025, seed=11)
    trends = compare_tables(real, synth, metrics=("suv_mean",), n_boot=0).trends.set_index("term")
    age = trends.loc["age"]
    assert age.real_ci_low < 0.010 < age.real_ci_high and age.synth_ci_low < 0.025 < age.synth_ci_high
    assert age.interaction_p < 1e-6 and age.difference == pytest.approx(age.synth_effect - age.real_effect)
    assert trends.loc["sex_M"].real_ci_low < 0.15 < trends.loc["sex_M"].real_ci_high
    assert age.n_real == 300 and "weight_kg:synth" in age.formula
    # a full interaction model gives each cohort's own OLS coefficients: fit them separately
    for table, col in ((real, "real_effect"), (synth, "synth_effect")):
        t = table.assign(sex_M=(table["sex"] == "M").astype(float))
        alone = smf.ols("suv_mean ~ age + sex_M + height_m + weight_kg", data=t).fit()
        for term in ("age", "sex_M", "height_m", "weight_kg"):
            assert trends.loc[term, col] == pytest.approx(alone.params[term], rel=1e-8, abs=1e-12)


def test_trends_equal_slopes_interaction_p_is_calibrated():
    # equal trends in both cohorts: the interaction tests should reject about alpha = 5% of the time
    p = []
    for seed in range(100):
        real, synth = trend_cohorts(synth_slope=0.010, seed=seed, n=100)
        rows, notes = fit_trends(real, synth, "liver", "suv_mean", min_n=5, alpha=0.05)
        assert notes == [] and [r["term"] for r in rows] == ["age", "sex_M", "height_m", "weight_kg"]
        p.append([r["interaction_p"] for r in rows])
    rejected = (np.array(p) < 0.05).mean(axis=0)
    assert ((rejected >= 0.01) & (rejected <= 0.11)).all(), rejected


def test_bootstrap_ci_covers_the_true_deviation_about_95_percent():
    rng = np.random.default_rng(2024)
    true_dev, covered, sims = 5.0, 0, 200
    for i in range(sims):
        real, synth = rng.normal(10.0, 2.0, 40), rng.normal(10.5, 2.0, 40)
        stats, _ = cell_statistics(real, synth, margin=0.05, min_n=5, n_boot=500, alpha=0.05,
                                   rng=np.random.default_rng(i))
        covered += stats["deviation_ci_low"] <= true_dev <= stats["deviation_ci_high"]
    assert 0.90 <= covered / sims <= 0.99


def test_seeded_results_repeat(pair_result):
    real, synth, res = pair_result
    again = compare_tables(real, synth, n_boot=300, seed=3)
    pd.testing.assert_frame_equal(res.concordance, again.concordance)


def test_summary_figures_by_hand(pair_result):
    _, _, res = pair_result
    conc, s = res.concordance, res.summary
    tested = conc[conc.welch_p.notna()]
    assert s["headline"]["share_within_margin"] == pytest.approx((tested.deviation_pct.abs() <= 5).mean())
    assert s["headline"]["share_equivalent"] == pytest.approx((tested.tost_p < 0.05).mean())
    liver_suv = tested[tested.metric == "suv_mean"].deviation_pct.abs()
    assert s["per_metric"]["suv_mean"]["median_abs_deviation_pct"] == pytest.approx(np.median(liver_suv))
    worst = [abs(c["deviation_pct"]) for c in s["worst_cells"]]
    assert len(worst) == 10 and worst == sorted(worst, reverse=True)
    assert worst[0] == pytest.approx(tested.deviation_pct.abs().max())
    assert s["parameters"]["margin"] == 0.05 and s["seed"] == 3 and "scipy" in s["versions"]


def test_run_stats_writes_the_three_files(tmp_path):
    real, synth = random_pair(n=30)
    real.to_csv(tmp_path / "real.csv", index=False)
    synth.to_csv(tmp_path / "synth.csv", index=False)
    res = run_stats(tmp_path / "real.csv", tmp_path / "synth.csv", tmp_path / "out", n_boot=100, age_bins=(65,))
    back = pd.read_csv(tmp_path / "out" / "concordance.csv")
    assert list(back.columns) == list(CONCORDANCE_COLUMNS) and len(back) == len(res.concordance)
    assert list(pd.read_csv(tmp_path / "out" / "trends.csv").columns) == list(TRENDS_COLUMNS)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["parameters"]["age_bins"] == [65.0] and summary["headline"]["cells"] == len(back)
    with pytest.raises(InputError, match="no such file"):
        run_stats(tmp_path / "absent.csv", tmp_path / "synth.csv", tmp_path / "out")
    synth.drop(columns=["suv_max"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad.csv: missing column\(s\) suv_max"):
        run_stats(tmp_path / "real.csv", tmp_path / "bad.csv", tmp_path / "out")

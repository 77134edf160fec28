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
from totalgen_eval.pipeline import run_stats
from totalgen_eval.stats import CONCORDANCE_COLUMNS, TRENDS_COLUMNS, StatsParams, bh_adjust, compare_tables
from totalgen_eval.stats.trends import fit_trends
from totalgen_eval.stats.verdicts import n_to_decide

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
    return real, synth, compare_tables(real, synth, seed=3)


def test_columns_are_the_contract(pair_result):
    _, _, res = pair_result
    assert list(res.concordance.columns) == list(CONCORDANCE_COLUMNS)
    assert CONCORDANCE_COLUMNS[:4] == ("organ", "metric", "sex", "age_group")
    for c in ("family", "n_real", "n_synth", "deviation_pct", "deviation_ci_low", "deviation_ci_high", "p_value",
              "p_adjusted", "equivalent", "verdict"):
        assert c in CONCORDANCE_COLUMNS
    assert list(res.trends.columns) == list(TRENDS_COLUMNS)


def pooled_logs(real: pd.DataFrame, synth: pd.DataFrame, organ: str, metric: str) -> pd.DataFrame:
    data = pd.concat([real.assign(synth=0.0), synth.assign(synth=1.0)], ignore_index=True)
    data = data[data.organ == organ]
    return data.assign(y=np.log(data[metric]), sex_M=(data["sex"] == "M").astype(float))


@pytest.mark.parametrize("robust", [False, True])
def test_primary_estimate_is_statsmodels_formula_ols(robust):
    real, synth = random_pair(shift=1.08)
    res = compare_tables(real, synth, robust=robust)
    data = pooled_logs(real, synth, "liver", "suv_mean")
    cov = "HC3" if robust else "nonrobust"
    inter = smf.ols("y ~ synth * sex_M + age + height_m + weight_kg", data=data).fit(cov_type=cov)
    plain = smf.ols("y ~ synth + sex_M + age + height_m + weight_kg", data=data).fit(cov_type=cov)
    names = list(inter.params.index)
    men = np.zeros(len(names))
    men[[names.index("synth"), names.index("synth:sex_M")]] = 1.0
    expected = {"F": (inter.params["synth"], inter.pvalues["synth"], inter.bse["synth"]),
                "M": (float(np.squeeze(inter.t_test(men).effect)), float(inter.t_test(men).pvalue),
                      float(np.squeeze(inter.t_test(men).sd))),
                "all": (plain.params["synth"], plain.pvalues["synth"], plain.bse["synth"])}
    for sex, (d, p, se) in expected.items():
        got = row(res.concordance, "liver", "suv_mean", sex)
        assert got.family == "primary"
        assert got.deviation_pct == pytest.approx(100 * np.expm1(d), rel=1e-9)
        if not robust:  # statsmodels' robust p-values use the normal; ours keep Student t
            assert got.p_value == pytest.approx(p, rel=1e-7)
        t = scipy.stats.t.ppf(0.5 + got.ci_level / 2, inter.df_resid if sex != "all" else plain.df_resid)
        assert got.deviation_ci_low == pytest.approx(100 * np.expm1(d - t * se), rel=1e-7)
        t90 = scipy.stats.t.ppf(0.95, inter.df_resid if sex != "all" else plain.df_resid)
        assert got.equivalence_ci_high == pytest.approx(100 * np.expm1(d + t90 * se), rel=1e-7)


def test_descriptive_cells_are_welch_on_logs_without_tests(pair_result):
    real, synth, res = pair_result
    conc = res.concordance
    desc = conc[conc.family == "descriptive"]
    assert len(desc) and (desc.age_group != "all").all() and desc.p_value.isna().all() and desc.p_adjusted.isna().all()
    assert (desc.verdict == "not tested").all() and desc.equivalent.isna().all()
    r = row(conc, "spleen", "volume_ml", "all", "40-60")
    pick = lambda t: np.log(t[(t.organ == "spleen") & (t.age >= 40) & (t.age < 60)]["volume_ml"].to_numpy())  # noqa: E731
    welch = scipy.stats.ttest_ind(pick(synth), pick(real), equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert r.deviation_pct == pytest.approx(100 * np.expm1(pick(synth).mean() - pick(real).mean()), rel=1e-9)
    assert (r.deviation_ci_low, r.deviation_ci_high) == pytest.approx((100 * np.expm1(ci.low), 100 * np.expm1(ci.high)))
    assert r.ci_level == 0.95


def test_bh_within_each_family_and_the_verdict_never_contradicts_its_intervals(pair_result):
    _, _, res = pair_result
    conc = res.concordance
    for fam in ("primary", "secondary"):
        cells = conc[conc.family == fam]
        assert set(cells.metric) == ({"volume_ml", "suv_mean"} if fam == "primary" else {"suv_max"})
        assert set(cells.age_group) == {"all"}
        np.testing.assert_allclose(cells.p_adjusted, multipletests(cells.p_value, method="fdr_bh")[1])
        discoveries = int((cells.p_adjusted < 0.05).sum())
        assert cells.ci_level.unique() == pytest.approx(1 - max(discoveries, 1) * 0.05 / len(cells))
    bound = 100 * 0.05
    tested = conc[conc.verdict != "not tested"]
    excludes_zero = (tested.deviation_ci_low > 0) | (tested.deviation_ci_high < 0)
    inside = (tested.equivalence_ci_low > -100 * (1 - 1 / 1.05)) & (tested.equivalence_ci_high < bound)
    assert ((tested.verdict == "differs") == excludes_zero).all()
    assert (inside[tested.verdict == "equivalent"]).all()
    assert (~inside[tested.verdict == "inconclusive"]).all() and (~excludes_zero[tested.verdict == "inconclusive"]).all()
    assert (tested.equivalent.astype(bool) == inside).all()
    assert set(tested.verdict) >= {"equivalent", "inconclusive"}


def test_benjamini_hochberg_hand_worked_example():
    # sorted 0.01, 0.03, 0.04, 0.20 (m = 4): raw 0.04, 0.06, 0.0533, 0.20 -> step-up minimum 0.04, 0.0533, 0.0533, 0.20
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.20])
    np.testing.assert_allclose(bh_adjust(p), [0.04, 0.16 / 3, np.nan, 0.16 / 3, 0.20], equal_nan=True)


def test_equivalence_at_and_inside_the_margin():
    rng = np.random.default_rng(0)
    n = 400
    demo_r, demo_s = demographics(n, rng, "r"), demographics(n, rng, "s")
    base = lambda: rng.lognormal(np.log(2), 0.05, n)  # noqa: E731
    real = organ_table(demo_r, {"liver": {"suv_mean": base()}}, "real")
    same = compare_tables(real, organ_table(demo_s, {"liver": {"suv_mean": base()}}, "s"), metrics=("suv_mean",))
    assert row(same.concordance, "liver", "suv_mean").verdict == "equivalent"
    # a spread half as large with an equal geometric mean is not an arithmetic-mean shortfall judged equivalent:
    # it is the ratio of geometric means that is judged, and mean_ratio_pct reports the arithmetic one beside it
    wide = organ_table(demo_r, {"liver": {"suv_mean": rng.lognormal(np.log(2), 0.6, n)}}, "real")
    narrow = organ_table(demo_s, {"liver": {"suv_mean": rng.lognormal(np.log(2), 0.3, n)}}, "s")
    cell = row(compare_tables(wide, narrow, metrics=("suv_mean",)).concordance, "liver", "suv_mean")
    assert abs(cell.deviation_pct) < 8 and cell.mean_ratio_pct < -8


def test_n_to_decide_by_hand():
    # sd 0.2 on the log scale, 50 a side: se = 0.2 * sqrt(2/50) = 0.04
    se = 0.2 * np.sqrt(2 / 50)
    z = scipy.stats.norm.ppf
    outside = np.ceil(2 * (0.2 * (z(0.975) + z(0.8)) / 0.08) ** 2)
    assert n_to_decide(0.08, se, 50, 50, margin=0.05, alpha=0.05) == outside
    inside = np.ceil(2 * (0.2 * (z(0.95) + z(0.8)) / (np.log(1.05) - 0.01)) ** 2)
    assert n_to_decide(-0.01, se, 50, 50, margin=0.05, alpha=0.05) == inside


def test_paired_twins_are_paired_t_on_logs():
    rng = np.random.default_rng(4)
    n = 40
    demo = demographics(n, rng, "r")
    real = organ_table(demo, {"liver": {"suv_mean": rng.lognormal(np.log(2), 0.2, n)}}, "real")
    synth_demo = demo.assign(case_id=[f"s{i:03d}" for i in range(n)])
    synth = organ_table(synth_demo, {"liver": {"suv_mean": real["suv_mean"].to_numpy() * rng.lognormal(0.05, 0.1, n)}},
                        "synth")
    synth["twin_of"] = synth["case_id"].str.replace("s", "r", regex=False)
    res = compare_tables(real, synth, metrics=("suv_mean",))
    for sex in ("all", "F", "M"):
        pick = (demo.sex == sex) | (sex == "all")
        diff = np.log(synth.loc[pick.to_numpy(), "suv_mean"].to_numpy()) - np.log(real.loc[pick.to_numpy(), "suv_mean"].to_numpy())
        ref = scipy.stats.ttest_1samp(diff, 0.0)
        got = row(res.concordance, "liver", "suv_mean", sex)
        assert got.paired_n == pick.sum() and got.paired_p == pytest.approx(ref.pvalue, rel=1e-9)
        assert got.paired_deviation_pct == pytest.approx(100 * np.expm1(diff.mean()), rel=1e-9)
    assert res.summary["twins"] == n
    desc = res.concordance[res.concordance.family == "descriptive"]
    assert (desc.paired_n == 0).all()


def test_no_duplicate_cells_when_strata_coincide():
    rng = np.random.default_rng(8)
    n = 30
    demo = demographics(n, rng, "r").assign(sex="F")
    demo.loc[:9, "age"] = 30.0  # the only under-40s: all women (so are the rest)
    vals = {"liver": {"suv_mean": rng.lognormal(0.7, 0.2, n)}}
    res = compare_tables(organ_table(demo, vals, "r"), organ_table(demo.assign(case_id=demo.case_id + "s"), vals, "s"),
                         metrics=("suv_mean",))
    conc = res.concordance
    assert not ((conc.sex == "F") & (conc.age_group == "all")).any()  # the same cases as all / all
    assert not ((conc.sex == "F") & (conc.age_group == "18-40")).any()
    keys = [tuple(sorted(k)) for k in conc[["sex", "age_group"]].itertuples(index=False)]
    assert len(keys) == len(set(keys))


def test_cases_without_a_needed_demographic_are_left_out_and_counted():
    real, synth = random_pair(n=60)
    real.loc[real.case_id.isin(["r000", "r001", "r003"]), "height_m"] = np.nan
    res = compare_tables(real, synth, metrics=("suv_mean",))
    r = row(res.concordance, "liver", "suv_mean")
    assert r.n_real == 60 and r.n_left_out == 3
    assert any("left out of the adjusted model" in x["reason"] for x in res.summary["notes"]["concordance"])
    # no height or weight at all (AutoPET): the model adjusts for age and sex only, nobody is left out
    bare = compare_tables(real.drop(columns=["height_m", "weight_kg"]), synth.drop(columns=["height_m", "weight_kg"]),
                          metrics=("suv_mean",))
    assert row(bare.concordance, "liver", "suv_mean").n_left_out == 0


def test_subgroups_counted_by_hand_and_age_group_recomputed():
    real_demo = pd.DataFrame({"case_id": [f"r{i}" for i in range(15)],
                              "age": [30] * 6 + [70] * 4 + [50] * 5, "sex": ["F"] * 10 + ["M"] * 5,
                              "height_m": 1.7, "weight_kg": 70.0})
    synth_demo = pd.DataFrame({"case_id": [f"s{i}" for i in range(12)],
                               "age": [30] * 2 + [50] * 3 + [85] * 7, "sex": ["F"] * 5 + ["M"] * 7,
                               "height_m": 1.7, "weight_kg": 70.0})
    vals = lambda n: {"liver": {m: np.linspace(1, 2, n) for m in METRICS}}  # noqa: E731
    res = compare_tables(organ_table(real_demo, vals(15), "real"), organ_table(synth_demo, vals(12), "synth"),
                         trends=False)
    conc = res.concordance[res.concordance.metric == "suv_mean"].set_index(["sex", "age_group"])
    # F / 18-40 holds the same cases as all / 18-40 and is left out as a duplicate
    expected = {("all", "all"): (15, 12), ("F", "all"): (10, 5), ("M", "all"): (5, 7),
                ("all", "18-40"): (6, 2), ("all", "40-60"): (5, 3), ("all", "60-80"): (4, 0), ("all", "80+"): (0, 7),
                ("F", "40-60"): (0, 3), ("M", "40-60"): (5, 0)}
    got = {k: (int(v.n_real), int(v.n_synth)) for k, v in conc.iterrows()}
    assert got == expected
    paper = compare_tables(organ_table(real_demo, vals(15), "real"), organ_table(synth_demo, vals(12), "synth"),
                           trends=False, age_bins=(65,), metrics=("suv_mean",)).concordance
    assert row(paper, "liver", "suv_mean", "all", "<=65")[["n_real", "n_synth"]].tolist() == [11, 5]
    assert row(paper, "liver", "suv_mean", "all", ">65")[["n_real", "n_synth"]].tolist() == [4, 7]


def test_small_cells_keep_estimates_without_intervals_or_tests():
    real, synth = random_pair(n=60)
    conc = compare_tables(real, synth, min_n=40, trends=False).concordance
    small = conc[(conc.n_real < 40) | (conc.n_synth < 40)]
    assert len(small) > 0 and small["real_mean"].notna().all() and small["deviation_pct"].notna().all()
    for c in ("deviation_ci_low", "equivalence_ci_low", "p_value", "p_adjusted"):
        assert small[c].isna().all(), c
    assert (small.verdict == "not tested").all() and small["equivalent"].isna().all()


def test_missing_columns_are_named():
    real, synth = random_pair(n=10)
    with pytest.raises(InputError, match="sex, suv_mean"):
        compare_tables(real, synth.drop(columns=["sex", "suv_mean"]))
    with pytest.raises(InputError, match="real table: missing column"):
        compare_tables(real.drop(columns=["age"]), synth)


@pytest.mark.parametrize("kwargs, option", [(dict(margin=float("nan")), "--margin"), (dict(margin=1.5), "--margin"),
                                            (dict(alpha=0.0), "--alpha"), (dict(min_n=1), "--min-n")])
def test_settings_are_validated_once(kwargs, option):
    with pytest.raises(InputError, match=option):
        StatsParams(**kwargs)


def test_zero_variance_nan_non_positive_and_empty_organs_without_warnings():
    rng = np.random.default_rng(5)
    n = 20
    real = organ_table(demographics(n, rng, "r"), {"liver": {"volume_ml": np.full(n, 1500.0),
                                                             "suv_mean": np.full(n, np.nan),
                                                             "suv_max": rng.normal(4, 1, n)}}, "real")
    synth = organ_table(demographics(n, rng, "s"), {"liver": {"volume_ml": np.full(n, 1500.0),
                                                              "suv_mean": rng.normal(2, 0.3, n),
                                                              "suv_max": rng.normal(4, 1, n)}}, "synth")
    synth.loc[:4, "n_voxels"] = 0  # organ absent in five synthetic cases
    synth.loc[5, "suv_max"] = -1.0  # cannot enter the log
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = compare_tables(real, synth)
    conc = res.concordance
    vol = row(conc, "liver", "volume_ml")
    assert vol.real_sd == 0 and vol.deviation_pct == pytest.approx(0, abs=1e-9) and vol.verdict == "not tested"
    assert np.isnan(vol.deviation_ci_low)  # an unadjusted CI of zero width would claim certainty it lacks
    suv = row(conc, "liver", "suv_mean")
    assert suv.n_real == 0 and suv.n_synth == n - 5 and np.isnan(suv.real_mean) and suv.verdict == "not tested"
    assert row(conc, "liver", "suv_max").n_synth == n - 6
    reasons = [x["reason"] for x in res.summary["notes"]["concordance"]]
    assert any("<= 0" in r for r in reasons) and any("constant" in r for r in reasons)
    assert res.summary["excluded_rows"]["real"]["suv_mean"] == {"no_voxels": 0, "missing_value": n}
    assert res.summary["excluded_rows"]["synth"]["suv_max"] == {"no_voxels": 5, "missing_value": 0}


def test_a_subgroup_missing_from_one_cohort():
    real, synth = random_pair(n=40)
    synth = synth[synth.sex == "M"]
    res = compare_tables(real, synth)
    f = row(res.concordance, "liver", "suv_mean", "F")
    assert f.n_synth == 0 and f.n_real == 20 and np.isnan(f.synth_mean) and f.verdict == "not tested"
    m = row(res.concordance, "liver", "suv_mean", "M")
    assert m.verdict != "not tested" and np.isfinite(m.p_value)  # fitted within men alone
    assert not (res.trends["term"] == "sex_M").any()
    assert any("single sex" in x["reason"] for x in res.summary["notes"]["trends"])


def trend_cohorts(synth_slope: float, seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    tables = []
    for prefix, slope in (("r", 0.010), ("s", synth_slope)):
        demo = demographics(n, rng, prefix)
        male = (demo["sex"] == "M").to_numpy()
        log_suv = 0.2 + slope * demo["age"].to_numpy() + 0.15 * male + 0.01 * (demo["weight_kg"].to_numpy() - 78)
        tables.append(organ_table(demo, {"liver": {"suv_mean": np.exp(log_suv + rng.normal(0, 0.1, n))}}, prefix))
    return tables


def test_trends_recover_a_different_age_slope():
    real, synth = trend_cohorts(synth_slope=0.025, seed=11)
    trends = compare_tables(real, synth, metrics=("suv_mean",)).trends.set_index("term")
    age = trends.loc["age"]
    pct = lambda b: 100 * np.expm1(b)  # noqa: E731  effects are % per unit of the log-scale coefficient
    assert age.real_ci_low < pct(0.010) < age.real_ci_high and age.synth_ci_low < pct(0.025) < age.synth_ci_high
    assert age.interaction_p < 1e-6 and age.verdict == "differs" and age.p_adjusted >= age.interaction_p
    assert trends.loc["sex_M"].real_ci_low < pct(0.15) < trends.loc["sex_M"].real_ci_high
    assert age.n_real == 300 and "weight_kg:synth" in age.formula and age.formula.startswith("log_metric ~")
    # a full interaction model gives each cohort's own OLS coefficients: fit them separately on log(SUV)
    for table, col in ((real, "real_effect"), (synth, "synth_effect")):
        t = table.assign(sex_M=(table["sex"] == "M").astype(float), y=np.log(table["suv_mean"]))
        alone = smf.ols("y ~ age + sex_M + height_m + weight_kg", data=t).fit()
        for term in ("age", "sex_M", "height_m", "weight_kg"):
            assert trends.loc[term, col] == pytest.approx(pct(alone.params[term]), rel=1e-8, abs=1e-10)
    # BH over every trend term of the table; the others are "not shown to differ", never "same"
    np.testing.assert_allclose(trends["p_adjusted"], multipletests(trends["interaction_p"], method="fdr_bh")[1])
    assert set(trends.loc[trends.p_adjusted >= 0.05, "verdict"]) <= {"not shown to differ"}


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


def test_seeded_results_repeat(pair_result):
    real, synth, res = pair_result
    again = compare_tables(real, synth, seed=3)
    pd.testing.assert_frame_equal(res.concordance, again.concordance)


def test_summary_counts_verdicts_of_primary_cells_by_hand(pair_result):
    _, _, res = pair_result
    conc, s = res.concordance, res.summary
    primary = conc[conc.family == "primary"]
    assert s["headline"]["primary_cells"] == len(primary) == 2 * 2 * 3
    for verdict in ("differs", "equivalent", "inconclusive", "not tested"):
        assert s["headline"][verdict] == (primary.verdict == verdict).sum()
        for metric in ("volume_ml", "suv_mean"):
            assert s["headline"]["per_metric"][metric][verdict] == ((primary.metric == metric) & (primary.verdict == verdict)).sum()
    worst = [abs(c["deviation_pct"]) for c in s["worst_cells"]]
    assert worst == sorted(worst, reverse=True) and all(c["family"] == "primary" for c in s["worst_cells"])
    assert s["parameters"]["margin"] == 0.05 and s["seed"] == 3 and "scipy" in s["versions"]
    assert "share_within_margin" not in json.dumps(s)


def test_run_stats_writes_the_three_files(tmp_path):
    real, synth = random_pair(n=30)
    real.to_csv(tmp_path / "real.csv", index=False)
    synth.to_csv(tmp_path / "synth.csv", index=False)
    res = run_stats(tmp_path / "real.csv", tmp_path / "synth.csv", tmp_path / "out", StatsParams(age_bins=(65,)))
    back = pd.read_csv(tmp_path / "out" / "concordance.csv")
    assert list(back.columns) == list(CONCORDANCE_COLUMNS) and len(back) == len(res.concordance)
    assert list(pd.read_csv(tmp_path / "out" / "trends.csv").columns) == list(TRENDS_COLUMNS)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["parameters"]["age_bins"] == [65.0] and summary["headline"]["primary_cells"] == 12
    with pytest.raises(InputError, match="no such file"):
        run_stats(tmp_path / "absent.csv", tmp_path / "synth.csv", tmp_path / "out", StatsParams())
    synth.drop(columns=["suv_max"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"missing column\(s\) suv_max"):
        run_stats(tmp_path / "real.csv", tmp_path / "bad.csv", tmp_path / "out", StatsParams())


@pytest.mark.parametrize("terms", [["age"], ["age", "sex_M"], ["age", "sex_M", "height_m", "weight_kg"]])
def test_trend_design_is_the_formula_design(terms):
    from totalgen_eval.stats.trends import trend_formula, trend_model

    rng = np.random.default_rng(len(terms))
    n = 60
    data = pd.DataFrame({"log_metric": rng.normal(0, 1, n), "age": rng.uniform(20, 90, n),
                         "sex_M": (np.arange(n) % 2).astype(float), "height_m": rng.normal(1.7, 0.1, n),
                         "weight_kg": rng.normal(78, 13, n), "synth": (np.arange(n) >= n // 2).astype(float),
                         "sex": "F"})
    data.loc[[4, 9], "sex_M"] = np.nan  # a variable the model does not use may be missing: the row stays
    if "sex_M" in terms:
        data = data[data["sex_M"].notna()]
    ours, formula = trend_model(data, terms), smf.ols(trend_formula(terms), data=data)
    assert ours.exog_names == formula.exog_names
    np.testing.assert_array_equal(ours.exog, formula.exog)
    np.testing.assert_array_equal(ours.endog, formula.endog)
    fit, ref = ours.fit(), formula.fit()
    np.testing.assert_array_equal(fit.params.to_numpy(), ref.params.to_numpy())
    np.testing.assert_array_equal(fit.conf_int(0.05).to_numpy(), ref.conf_int(0.05).to_numpy())

"""Figures: panels, cell values, margin marks and NaN cells read back from the artists."""
import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

from totalgen_eval import plots
from totalgen_eval.demographics import age_group

ORGANS4 = ("brain", "liver", "spleen", "kidneys")
BASE = {"brain": (1300.0, 7.5), "liver": (1500.0, 2.1), "spleen": (200.0, 1.8), "kidneys": (320.0, 2.5)}


def make_organ_metrics(n: int = 30, seed: int = 0, organs=ORGANS4, synth_demographics: bool = True,
                       liver_suv_shift: float = 1.0) -> pd.DataFrame:
    """A hand-made organ_metrics table: 2 cohorts x n cases x organs, seeded, with an age and sex effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for cohort in ("real", "synth"):
        for k in range(n):
            age, sex = rng.uniform(25, 90), "MF"[k % 2]
            height, weight = 1.6 + 0.15 * (sex == "M") + rng.normal(0, 0.06), rng.normal(75, 12)
            for o in organs:
                vol, suv = BASE[o]
                vol *= (1.15 if sex == "M" else 1.0) * rng.lognormal(0, 0.1)
                suv *= (1 - 0.004 * (age - 50)) * rng.lognormal(0, 0.08)
                if cohort == "synth" and o == "liver":
                    suv *= liver_suv_shift
                keep = cohort == "real" or synth_demographics
                rows.append(dict(case_id=f"{cohort}-{k:03d}", cohort=cohort, age=age if keep else np.nan,
                                 sex=sex if keep else np.nan, height_m=height if keep else np.nan,
                                 weight_kg=weight if keep else np.nan, organ=o, n_voxels=int(vol / 0.512),
                                 volume_ml=vol, suv_mean=suv, suv_median=suv, suv_std=0.2 * suv, suv_max=2 * suv,
                                 suv_peak=1.5 * suv, hu_mean=40.0, touches_border=False))
    table = pd.DataFrame(rows)
    table.insert(6, "age_group", age_group(table["age"], (60, 80)))
    return table


def _cell(organ, sex, age, dev, n_real=20, n_synth=20, metric="suv_mean", p_value=0.01, equivalent=False,
          verdict=None):
    """A concordance row with every column of the contract (intervals +-3 points around ``dev``)."""
    family = "descriptive" if age != "all" else ("primary" if metric in ("volume_ml", "suv_mean") else "secondary")
    untested = not np.isfinite(p_value) or family == "descriptive"
    if verdict is None:
        verdict = "not tested" if untested else ("equivalent" if equivalent else "differs" if p_value < 0.05
                                                 else "inconclusive")
    small = n_real < 5 or n_synth < 5
    return dict(organ=organ, metric=metric, sex=sex, age_group=age, family=family, n_real=n_real, n_synth=n_synth,
                n_left_out=0, deviation_pct=dev, deviation_ci_low=np.nan if small else dev - 3,
                deviation_ci_high=np.nan if small else dev + 3, ci_level=0.95,
                equivalence_ci_low=np.nan if small else dev - 2, equivalence_ci_high=np.nan if small else dev + 2,
                p_value=np.nan if untested else p_value, p_adjusted=np.nan if untested else p_value,
                equivalent=None if untested else equivalent, verdict=verdict, n_to_decide=np.nan,
                real_mean=2.0, synth_mean=2.0 * (1 + dev / 100) if dev == dev else np.nan, real_sd=0.3, synth_sd=0.3,
                mean_ratio_pct=dev, wasserstein=0.1, paired_n=0, paired_deviation_pct=np.nan, paired_ci_low=np.nan,
                paired_ci_high=np.nan, paired_p=np.nan, paired_p_adjusted=np.nan)


def make_concordance() -> pd.DataFrame:
    """Hand-made concordance cells: 3 organs x (all, F, M, 60-80, 80+, F 60-80); a NaN cell; an untested cell."""
    devs = {
        "liver": [10.0, 12.5, 7.6, -2.0, 4.9, 20.0],
        "brain": [-1.0, -6.0, 5.0, np.nan, 0.5, -5.2],
        "heart": [0.0, 3.0, -4.9, 6.1, -7.0, 1.0],
    }
    groups = [("all", "all"), ("F", "all"), ("M", "all"), ("all", "60-80"), ("all", "80+"), ("F", "60-80")]
    rows = []
    for organ, values in devs.items():  # rows deliberately not in canonical order
        for (s, a), dev in zip(groups, values):
            untested = organ == "heart" and (s, a) == ("F", "60-80")
            rows.append(_cell(organ, s, a, dev, n_real=3 if untested else 20,
                              p_value=np.nan if untested else 0.01, equivalent=organ == "heart" and s == "all"))
    rows.append(_cell("liver", "all", "all", 99.0, metric="volume_ml"))  # another metric: must not leak in
    return pd.DataFrame(rows)


def _texts(fig: Figure, prefix: str) -> dict[str, str]:
    return {t.get_gid().split(":", 1)[1]: t.get_text() for ax in fig.axes for t in ax.texts
            if (t.get_gid() or "").startswith(prefix + ":")}


def _patch_keys(fig: Figure, prefix: str) -> set[str]:
    return {p.get_gid().split(":", 1)[1] for ax in fig.axes for p in ax.patches
            if (p.get_gid() or "").startswith(prefix + ":")}


def test_age_group_order_and_subgroup_labels():
    assert plots.age_group_order(["80+", "<18", "60-80", "18-40", "all", np.nan, "40-60"]) == \
        ["<18", "18-40", "40-60", "60-80", "80+"]
    assert plots.age_group_order([">65", "<=65"]) == ["<=65", ">65"]
    assert [plots.subgroup_label(*g) for g in (("all", "all"), ("F", "all"), ("all", "80+"), ("M", "<=65"))] == \
        ["all", "F", "80+", "M <=65"]


def test_heatmap_cells_equal_the_table():
    conc = make_concordance()
    fig = plots.deviation_heatmap(conc, "suv_mean", margin=0.05)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["brain", "heart", "liver"]  # canonical organ order
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all", "F", "M", "60-80", "80+", "F 60-80"]
    rows = conc[conc["metric"] == "suv_mean"]
    values = _texts(fig, "value")
    assert len(values) == len(rows)
    mesh = ax.collections[0]
    grid = np.ma.masked_invalid(mesh.get_array()).reshape(3, 6)
    organ_row = {"brain": 0, "heart": 1, "liver": 2}
    col = {("all", "all"): 0, ("F", "all"): 1, ("M", "all"): 2, ("all", "60-80"): 3, ("all", "80+"): 4,
           ("F", "60-80"): 5}
    for r in rows.itertuples():
        key = f"{r.organ}|{r.sex}|{r.age_group}"
        cell = grid[organ_row[r.organ], col[(r.sex, r.age_group)]]
        if np.isnan(r.deviation_pct):
            assert values[key] == "n/a" and cell is np.ma.masked
        else:
            assert float(values[key]) == pytest.approx(r.deviation_pct, abs=0.05)
            assert float(cell) == pytest.approx(r.deviation_pct)
    assert _texts(fig, "n")["brain|all|all"] == "20/20"
    assert mesh.norm.vmin == -mesh.norm.vmax and mesh.norm.vmax >= 20.0  # centred at 0, symmetric


def test_heatmap_marks_exactly_the_cells_outside_the_margin():
    conc = make_concordance()
    rows = conc[conc["metric"] == "suv_mean"]
    for margin in (0.05, 0.10):
        fig = plots.deviation_heatmap(conc, "suv_mean", margin=margin)
        expected = {f"{r.organ}|{r.sex}|{r.age_group}" for r in rows.itertuples()
                    if np.isfinite(r.deviation_pct) and abs(r.deviation_pct) > 100 * margin}
        assert _patch_keys(fig, plots.OUTSIDE_GID) == expected
    untested = {f"{r.organ}|{r.sex}|{r.age_group}" for r in rows.itertuples()
                if np.isfinite(r.deviation_pct) and np.isnan(r.deviation_ci_low)}
    assert _patch_keys(fig, plots.UNTESTED_GID) == untested == {"heart|F|60-80"}


def test_heatmap_all_nan_and_unknown_metric():
    conc = make_concordance().assign(deviation_pct=np.nan)
    fig = plots.deviation_heatmap(conc, "suv_mean", 0.05)
    assert set(_texts(fig, "value").values()) == {"n/a"} and not _patch_keys(fig, plots.OUTSIDE_GID)
    with pytest.raises(ValueError, match="no concordance rows for metric 'hu_mean'"):
        plots.deviation_heatmap(conc, "hu_mean", 0.05)


def test_forest_one_panel_per_organ_with_its_own_axis_points_and_margin_band():
    conc = make_concordance()
    fig = plots.forest_plot(conc, "suv_mean", margin=0.05)
    assert [ax.get_title() for ax in fig.axes] == ["brain", "heart", "liver"]  # canonical organ order
    groups = [("all", "all"), ("F", "all"), ("M", "all"), ("all", "60-80"), ("all", "80+")]  # no sex x age rows
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [plots.subgroup_label(*g) for g in groups]
    rows = conc[conc["metric"] == "suv_mean"].set_index(["organ", "sex", "age_group"])
    for ax, organ in zip(fig.axes, ["brain", "heart", "liver"]):
        band = [p for p in ax.patches if p.get_alpha() == pytest.approx(0.35)]
        assert len(band) == 1
        assert band[0].get_x() == pytest.approx(-5.0) and band[0].get_x() + band[0].get_width() == pytest.approx(5.0)
        points = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_marker() in ("o", "D")])
        want = [rows.loc[(organ, *g), "deviation_pct"] for g in groups]
        assert sorted(points) == pytest.approx(sorted(w for w in want if np.isfinite(w)))
        widest = max(abs(rows.loc[(organ, *g), c]) for g in groups for c in ("deviation_ci_low", "deviation_ci_high")
                     if np.isfinite(rows.loc[(organ, *g), c]))
        assert ax.get_xlim()[1] == pytest.approx(1.08 * max(widest, 7.5))  # its own axis, fitted to its intervals
    # verdict colours: the liver's tested cells differ (red), heart's all-subjects cell is equivalent (filled)
    liver = fig.axes[2]
    assert {ln.get_markerfacecolor() for ln in liver.lines if ln.get_marker() == "o"} == {"#c0392b"}
    assert len(plots.forest_plot(conc, "suv_mean", 0.05, groups=[("all", "all")]).axes) == 3


def test_distributions_one_panel_per_organ_and_sex():
    table = make_organ_metrics(n=24)
    fig = plots.distributions(table, "volume_ml")
    assert len(fig.axes) == len(ORGANS4) * 2
    for i, organ in enumerate(plots.organ_order(ORGANS4)):
        values = table.loc[table["organ"] == organ, "volume_ml"]
        for ax in fig.axes[2 * i: 2 * i + 2]:
            assert ax.collections, "a panel without violins"
            low, high = ax.get_ylim()
            assert low <= values.min() and high >= values.max()  # its own scale per organ
        assert organ in fig.axes[2 * i].get_ylabel() and "mL" in fig.axes[2 * i].get_ylabel()


def test_distributions_without_synthetic_demographics_is_overall():
    table = make_organ_metrics(n=12, synth_demographics=False)
    assert not plots.has_demographics(table)
    fig = plots.distributions(table, "suv_mean")
    assert len(fig.axes) == len(ORGANS4)


def test_trend_plot_lines_match_least_squares():
    table = make_organ_metrics(n=30)
    trends = pd.DataFrame([dict(organ="liver", metric="suv_mean", term="age", per="year", real_effect=-0.01,
                                synth_effect=-0.02, interaction_p=0.03)])
    fig = plots.trend_plot(table, trends, "suv_mean")
    assert len(fig.axes) == len(ORGANS4)
    liver_ax = [ax for ax in fig.axes if ax.get_title(loc="right") == "liver"][0]
    note = liver_ax.get_title(loc="left")  # above the panel, not over the data
    assert "real -0.01" in note and "synthetic -0.02" in note and "p = 0.03" in note
    sub = table[(table["organ"] == "liver") & (table["cohort"] == "synth") & (table["sex"] == "F")]
    fit = stats.linregress(sub["age"], sub["suv_mean"])
    slopes = [np.diff(ln.get_ydata())[0] / np.diff(ln.get_xdata())[0] for ln in liver_ax.lines]
    assert len(liver_ax.lines) == 4  # 2 cohorts x 2 sexes
    assert any(s == pytest.approx(fit.slope, rel=1e-9) for s in slopes)
    no_notes = plots.trend_plot(table, None, "suv_mean")
    assert not any(ax.get_title(loc="left") for ax in no_notes.axes)
    assert [ax.get_title() for ax in no_notes.axes] == list(plots.organ_order(ORGANS4))


def test_figures_render_headless_without_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plots.distributions(make_organ_metrics(n=8, organs=("liver",)), "suv_mean")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == before


def test_subgroups_without_synthetic_cases_are_left_out():
    rows = [_cell(o, "all", "all", 2.0) for o in ("liver", "spleen")]
    rows += [_cell(o, s, a, np.nan, n_synth=0, p_value=np.nan) for o in ("liver", "spleen")
             for s, a in (("F", "all"), ("M", "all"), ("all", "60-80"))]
    conc = pd.DataFrame(rows)
    heat = plots.deviation_heatmap(conc, "suv_mean", 0.05)
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == ["all"]
    assert [t.get_text() for t in plots.forest_plot(conc, "suv_mean", 0.05).axes[0].get_yticklabels()] == ["all"]


def test_forest_marks_untested_cells_with_crosses():
    fig = plots.forest_plot(make_concordance(), "suv_mean", 0.05, groups=[("F", "60-80")])
    crosses = [(ax.get_title(), ln) for ax in fig.axes for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0][0] == "heart"  # heart F 60-80: n 3, no interval
    assert list(crosses[0][1].get_xdata()) == [1.0] and list(crosses[0][1].get_ydata()) == [0]


def test_heatmap_colour_scale_ignores_untested_cells():
    conc = make_concordance()
    conc.loc[(conc["organ"] == "heart") & (conc["sex"] == "F") & (conc["age_group"] == "60-80"), "deviation_pct"] = 99.0
    fig = plots.deviation_heatmap(conc, "suv_mean", 0.05)
    mesh = fig.axes[0].collections[0]
    tested = conc[(conc["metric"] == "suv_mean") & conc["deviation_ci_low"].notna()]["deviation_pct"].abs().max()
    assert mesh.norm.vmax == pytest.approx(tested) and mesh.norm.vmin == -mesh.norm.vmax
    assert fig.axes[1].get_label() == "<colorbar>" and fig.axes[1].collections  # the colour bar exists
    assert _texts(fig, "value")["heart|F|60-80"] == "+99.0"  # still printed, only its colour clips


def test_violin_density_matches_scipy_gaussian_kde():
    from totalgen_eval.plots.cohorts import kde_outline

    values = np.random.default_rng(3).lognormal(0.5, 0.3, size=40)
    grid, density = kde_outline(values)
    assert grid[0] == values.min() and grid[-1] == values.max()  # cut at the data, no tails
    assert density == pytest.approx(stats.gaussian_kde(values)(grid), rel=1e-10)

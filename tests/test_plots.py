"""Figures: panels, cell values, margin marks and NaN cells read back from the artists."""
import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

from totalgen_eval import plots

from conftest import ORGANS4, concordance_cell, make_concordance, make_organ_metrics

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
    rows = [concordance_cell(o, "all", "all", 2.0) for o in ("liver", "spleen")]
    rows += [concordance_cell(o, s, a, np.nan, n_synth=0, p_value=np.nan) for o in ("liver", "spleen")
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

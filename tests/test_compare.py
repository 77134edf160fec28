"""`totalgen-eval compare` end to end through Typer's CliRunner on phantom cohorts with a known shift."""
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from typer.testing import CliRunner

from totalgen_eval import volumes
from totalgen_eval.cli import app
from totalgen_eval.phantom import PhantomConfig, make_cohort
from totalgen_eval.stats import StatsParams

SHIFT = 1.10  # liver SUV x 1.10 in women only


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """A phantom cohort and its copy whose women's liver PET is multiplied by SHIFT: the only true difference.

    No subject variation and one BMI for all, so liver SUV varies only with age and sex and a 10% shift in
    20 women is detectable (the calibration benchmark covers realistic variation)."""
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(3)
    height = rng.uniform(1.55, 1.90, 40)
    demographics = pd.DataFrame({"age": rng.uniform(25, 85, 40), "sex": ["F", "M"] * 20,
                                 "height_m": height, "weight_kg": 25.0 * height**2})
    real = make_cohort(root / "real", n=40, seed=3, config=PhantomConfig(subject_variation=False),
                       workers=2, progress=False, demographics=demographics)
    synth = root / "synth"
    shutil.copytree(real, synth)
    frame = pd.read_csv(synth / "cohort.csv")
    frame.assign(twin_of=frame["case_id"]).to_csv(synth / "cohort.csv", index=False)  # each copy is its twin
    for row in frame.itertuples():
        if row.sex != "F":
            continue
        pet, affine = volumes.read_volume(synth / row.pet)
        labels, _ = volumes.read_volume(synth / row.labels, dtype=None)
        pet[labels == 5] *= SHIFT
        volumes.write_volume(pet.astype(np.float32), affine, synth / row.pet)
    return real, synth, frame


def _run(*args):
    return CliRunner().invoke(app, list(map(str, args)))


@pytest.mark.slow  # compare end to end with figures and report: ~30-100 s
def test_compare_flags_the_shifted_cells(cohorts, tmp_path):
    real, synth, frame = cohorts
    out = tmp_path / "results"
    result = _run("compare", real, synth, "--out", out, "--organs", "liver,spleen", "--metrics", "suv_mean,volume_ml",
                  "--no-progress", "--workers", "1")
    assert result.exit_code == 0, result.output
    conc = pd.read_csv(out / "concordance.csv", keep_default_na=False, na_values=[""])
    table = pd.read_csv(out / "organ_metrics.csv")

    # every cell's deviation (ratio of geometric means, %), computed independently from the real table and the
    # known shift: descriptive cells from the log means; the sex strata of the adjusted model are exact (the
    # copy differs only by log(SHIFT) in women); the all-subjects cell with statsmodels' formula OLS
    real_t = table[table.cohort == "real"]
    pooled = pd.concat([table.assign(synth=(table.cohort == "synth").astype(float))], ignore_index=True)
    for row in conc.itertuples():
        shifted = (row.organ, row.metric) == ("liver", "suv_mean")
        cell = real_t[real_t.organ == row.organ]
        if row.sex != "all":
            cell = cell[cell.sex == row.sex]
        if row.age_group != "all":
            cell = cell[cell.age_group == row.age_group]
        values = cell[row.metric].to_numpy()
        factor = np.where(cell.sex.to_numpy() == "F", SHIFT, 1.0) if shifted else 1.0
        if row.family == "descriptive":
            expected = 100 * np.expm1(np.mean(np.log(values * factor)) - np.mean(np.log(values)))
        elif row.sex != "all":
            expected = 100 * (SHIFT - 1) if shifted and row.sex == "F" else 0.0
        else:
            data = pooled[pooled.organ == row.organ].assign(y=lambda f: np.log(f[row.metric]))
            fit = smf.ols("y ~ synth + C(sex) + age + height_m + weight_kg", data=data).fit()
            expected = 100 * np.expm1(fit.params["synth"])
        assert row.deviation_pct == pytest.approx(expected, rel=1e-4, abs=1e-4), row  # float32 PET

    # exactly the shifted primary cell is flagged (and the all-subjects cell that holds its cases); the men's
    # cell of the same organ and metric and every other organ are not; the verdict agrees with the CI beside it
    flagged = conc[conc.verdict == "differs"]
    assert set(zip(flagged.organ, flagged.metric, flagged.sex)) == {("liver", "suv_mean", "F"), ("liver", "suv_mean", "all")}
    assert (flagged.family == "primary").all() and (conc.loc[conc.family == "descriptive", "verdict"] == "not tested").all()
    women = conc[(conc.organ == "liver") & (conc.metric == "suv_mean") & (conc.sex == "F") & (conc.age_group == "all")]
    assert women.p_adjusted.iloc[0] < 0.05 and women.deviation_ci_low.iloc[0] > 0
    # the twins' paired analysis: every pair's log difference is log(SHIFT) in women's liver SUV and 0 elsewhere
    primary = conc[conc.family == "primary"].set_index(["organ", "metric", "sex"])
    assert primary.loc[("liver", "suv_mean", "F"), "paired_deviation_pct"] == pytest.approx(100 * (SHIFT - 1), rel=1e-4)
    assert primary.loc[("liver", "suv_mean", "M"), "paired_deviation_pct"] == pytest.approx(0.0, abs=1e-4)
    assert (primary["paired_n"] == primary["n_synth"]).all()

    # every output file, the config, the report referencing every figure
    for name in ("organ_metrics.csv", "concordance.csv", "trends.csv", "summary.json", "config.json",
                 "report.html", "report.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["real_is_phantom"] and config["options"]["organs"] == ["liver", "spleen"]
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs and len(list((out / "figures").glob("*.svg"))) == len(pngs)

    class Images(HTMLParser):
        count = 0

        def handle_starttag(self, tag, attrs):
            if tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
                self.count += 1

    parser = Images()
    parser.feed((out / "report.html").read_text())
    assert parser.count == len(pngs)
    md = (out / "report.md").read_text()
    assert all(f"figures/{name}" in md for name in pngs)
    assert "phantom" in md.lower()

    # a second comparison into the same folder is refused without --force; statistics options may change
    other = _run("compare", synth, real, "--out", out, "--organs", "liver", "--no-progress")
    assert other.exit_code == 2 and "--force" in other.output
    again = _run("compare", real, synth, "--out", out, "--organs", "liver,spleen", "--margin", "0.1", "--no-progress")
    assert again.exit_code == 0, again.output

    # plot redraws from the tables alone
    for png in (out / "figures").glob("*.png"):
        png.unlink()
    redraw = _run("plot", out)
    assert redraw.exit_code == 0, redraw.output
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == pngs


def test_one_segmenter_for_both_sides_unless_chosen(cohorts, tmp_path):
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.pipeline import CompareConfig, choose_segmenters

    real, synth, _ = cohorts
    r, s = load_cohort(real), load_cohort(synth)
    both_labelled = CompareConfig.from_options(real=real, synth=synth, out=tmp_path)
    assert choose_segmenters(both_labelled, r, s) == ("labels", "labels")
    one = CompareConfig.from_options(real=real, synth=synth, out=tmp_path, synth_segmenter="model:bundled")
    assert choose_segmenters(one, r, s) == ("model:bundled", "model:bundled")
    two = CompareConfig.from_options(real=real, synth=synth, out=tmp_path, real_segmenter="labels",
                                     synth_segmenter="model:bundled")
    assert choose_segmenters(two, r, s) == ("labels", "model:bundled")  # the user's choice; the report warns


def test_compare_bad_input_is_one_line(cohorts, tmp_path):
    real, _, _ = cohorts
    (tmp_path / "empty").mkdir()
    result = _run("compare", real, tmp_path / "empty", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "no cohort found" in result.output and "Traceback" not in result.output
    bad = _run("compare", real, real, "--out", tmp_path / "r", "--metrics", "suv_mode")
    assert bad.exit_code == 2 and "unknown metric" in bad.output


# ------------------------------------------------------------------------------------------ kept organ tables

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Six phantoms with their labels: a side's organ table computed in about a second."""
    return make_cohort(tmp_path_factory.mktemp("small") / "real", n=6, seed=5, workers=1, progress=False)


def _side(cohort_root, out, **options):
    """(organ table of the real side through pipeline._metric_table, how many times organ_metrics ran)."""
    from totalgen_eval import metrics
    from totalgen_eval.parallel import load_checked, make_scheduler
    from totalgen_eval.pipeline import CompareConfig, _metric_table

    calls = []
    real_organ_metrics = metrics.organ_metrics

    def counted(*args, **kwargs):
        calls.append(1)
        return real_organ_metrics(*args, **kwargs)

    cfg = CompareConfig(real=cohort_root, synth=cohort_root, out=out, images=False, **options)
    cohort = load_checked(cohort_root, cfg.skip_bad)
    with pytest.MonkeyPatch.context() as mp, make_scheduler(None, 1) as scheduler:
        mp.setattr(metrics, "organ_metrics", counted)
        table = _metric_table(cfg, "real", cohort, "labels", scheduler, False)
    return table, len(calls)


def _kept(out):
    return sorted((out / "cache" / "real").glob("organ_metrics_*.json"))


def test_a_side_table_is_kept_whole_and_read_back_equal(small, tmp_path):
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.metrics import organ_metrics

    first, ran = _side(small, tmp_path / "out")
    assert ran == 1 and len(_kept(tmp_path / "out")) == 1
    again, ran = _side(small, tmp_path / "out")
    assert ran == 0
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    assert again.attrs == {**first.attrs, "n_computed": 0}
    fresh = organ_metrics(load_cohort(small), segmenter="labels", cohort_name="real", progress=False)
    pd.testing.assert_frame_equal(again, fresh, check_exact=True)  # what no cache at all gives


def test_a_touched_case_file_or_other_options_make_a_new_table(small, tmp_path):
    import os
    import shutil

    root = tmp_path / "cohort"
    shutil.copytree(small, root)
    out = tmp_path / "out"
    _side(root, out)
    labels = root / pd.read_csv(root / "cohort.csv")["labels"].iloc[2]
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, ran = _side(root, out)
    assert ran == 1 and len(_kept(out)) == 1  # the table of the old files is gone
    _, ran = _side(root, out, stats=StatsParams(age_bins=(18, 50, 70)))
    assert ran == 1 and len(_kept(out)) == 1


def test_a_damaged_kept_table_is_recomputed(small, tmp_path):
    out = tmp_path / "out"
    first, _ = _side(small, out)
    kept = _kept(out)[0]
    kept.write_bytes(kept.read_bytes()[:-100])
    with pytest.warns(RuntimeWarning, match="unusable cache file"):
        again, ran = _side(small, out)
    assert ran == 1
    pd.testing.assert_frame_equal(again, first, check_exact=True)


def test_no_table_is_kept_when_a_case_fails_during_the_run(small, tmp_path):
    import shutil

    root = tmp_path / "cohort"
    shutil.copytree(small, root)
    row = pd.read_csv(root / "cohort.csv").iloc[1]
    pet, affine = volumes.read_volume(root / row["pet"])
    volumes.write_volume(np.zeros_like(pet), affine, root / row["pet"])  # headers fine, no uptake to measure
    table, ran = _side(root, tmp_path / "out", skip_bad=True)
    assert ran == 1 and row["case_id"] not in set(table["case_id"]) and _kept(tmp_path / "out") == []
    _, ran = _side(root, tmp_path / "out", skip_bad=True)
    assert ran == 1  # the failed case is tried again, as without a kept table

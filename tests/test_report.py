"""The report: verdict rule, files written, self-contained HTML, redraw from the tables, notices."""
import base64
import html
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_plots import _cell, make_concordance, make_organ_metrics
from totalgen_eval import plots, report
from totalgen_eval.errors import InputError
from totalgen_eval.report import verdicts as v

KINDS = ("heatmap", "forest", "distributions", "trends")
HOSTILE = "<script>alert('x')</script> & | *"


class _Page(HTMLParser):
    """Collects <img> sources, text and whether every opened element was closed in order."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.images, self.text, self.stack, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    return page


def _comparison(table: pd.DataFrame, liver_dev: float = 12.0) -> dict:
    """A hand-made comparison of one metric (suv_mean) over the organs in ``table``."""
    groups = [("all", "all"), ("F", "all"), ("M", "all"), ("all", "<60"), ("all", "60-80"), ("all", "80+")]
    rows = [_cell(o, s, a, liver_dev if o == "liver" else 1.0, welch_p=0.001 if o == "liver" else 0.5)
            for o in table["organ"].unique() for s, a in groups]
    return {"concordance": pd.DataFrame(rows), "trends": None, "summary": {}}


def _config(**flags) -> dict:
    return {"options": {"margin": 0.05, "min_n": 5, "real": "cohorts/real", "synth": HOSTILE},
            "real_is_phantom": False, "synth_is_phantom": False, "synth_has_demographics": True,
            "versions": {"numpy": np.__version__}, **flags}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    table = make_organ_metrics(n=16, organs=("liver", "spleen"))
    comparison, config = _comparison(table), _config(real_is_phantom=True)
    report.write_tables(out, table, comparison, config)
    return out, report.write_report(out, table, comparison, config)


@pytest.mark.parametrize("row,expected", [
    (dict(n_real=4, n_synth=30, deviation_pct=1.0, equivalent=True), v.TOO_FEW),
    (dict(n_real=30, n_synth=30, deviation_pct=np.nan), v.NO_DATA),
    (dict(n_real=30, n_synth=30, deviation_pct=1.0, equivalent=True, p_adjusted=0.5), "equivalent within 5%"),
    (dict(n_real=30, n_synth=30, deviation_pct=1.0, equivalent="True"), "equivalent within 5%"),  # read from CSV
    (dict(n_real=30, n_synth=30, deviation_pct=1.0, tost_p=0.01), "equivalent within 5%"),  # no equivalent column
    (dict(n_real=30, n_synth=30, deviation_pct=-8.0, equivalent=False, p_adjusted=0.01), v.DIFFERS),
    (dict(n_real=30, n_synth=30, deviation_pct=3.0, equivalent=False, p_adjusted=0.01), v.NOT_SHOWN),
    (dict(n_real=30, n_synth=30, deviation_pct=8.0, equivalent=False, p_adjusted=0.2), v.INCONCLUSIVE),
    (dict(n_real=30, n_synth=30, deviation_pct=5.0, equivalent=False, p_adjusted=0.01), v.NOT_SHOWN),  # on the edge
])
def test_verdict_rule(row, expected):
    assert v.verdict(row, margin=0.05, min_n=5, alpha=0.05) == expected


def test_verdict_follows_margin_and_min_n():
    row = dict(n_real=8, n_synth=8, deviation_pct=-8.0, equivalent=False, p_adjusted=0.01)
    assert v.verdict(row, margin=0.10, min_n=5) == v.NOT_SHOWN
    assert v.verdict(row, margin=0.05, min_n=10) == v.TOO_FEW
    assert v.equivalent_text(0.1) == "equivalent within 10%"


def test_organ_verdicts_use_the_all_subjects_cell():
    conc = make_concordance()
    got = v.organ_verdicts(conc, margin=0.05, min_n=5).set_index(["organ", "metric"])["verdict"]
    assert got[("liver", "suv_mean")] == v.DIFFERS  # +10%, p_adj 0.01
    assert got[("heart", "suv_mean")] == "equivalent within 5%"
    assert got[("brain", "suv_mean")] == v.NOT_SHOWN
    assert len(got) == 4  # 3 organs x suv_mean + liver volume


def test_headline_counts_tested_cells():
    conc = make_concordance()
    h = v.headline(conc, margin=0.05).set_index("metric")
    dev = conc.loc[conc["metric"] == "suv_mean"]
    dev = dev[dev["welch_p"].notna() & dev["deviation_pct"].notna()]["deviation_pct"].abs()
    assert h.loc["suv_mean", "cells_tested"] == len(dev) == 16
    assert h.loc["suv_mean", "share_within_margin"] == pytest.approx((dev <= 5).sum() / len(dev))
    assert h.loc["suv_mean", "median_abs_deviation_pct"] == pytest.approx(float(np.median(dev)))


def test_write_report_writes_every_file(written):
    out, paths = written
    figures = {f"figures/{k}_suv_mean.{ext}" for k in KINDS for ext in ("png", "svg")}
    assert set(paths) == figures | {"report.html", "report.md"}
    for rel, path in paths.items():
        assert path == out / rel and path.stat().st_size > 0
    assert {p.name for p in (out / "figures").iterdir()} == {Path(f).name for f in figures}


def test_html_is_self_contained_and_embeds_every_figure(written):
    out, paths = written
    page = parse(out / "report.html")
    pngs = sorted(p for p in paths if p.endswith(".png"))
    assert len(page.images) == len(pngs) == 4
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in page.images
                if src.startswith("data:image/png;base64,")}
    assert embedded == {(out / p).read_bytes() for p in pngs}
    text = " ".join(page.text)
    for section in ("Headline", "Verdict per organ", "Worst cells", "Demographic trends", "Concordance table",
                    "Data sources", "Parameters", "Package versions"):
        assert section in text
    assert "liver" in text and v.DIFFERS in text


def test_html_and_markdown_escape_table_text(written):
    out, _ = written
    raw = (out / "report.html").read_text(encoding="utf-8")
    assert HOSTILE not in raw and html.escape(HOSTILE) in raw
    assert HOSTILE in " ".join(parse(out / "report.html").text)  # shown as text, not markup
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in md and r"\<script\>" in md


def test_markdown_links_every_figure(written):
    out, paths = written
    md = (out / "report.md").read_text(encoding="utf-8")
    for rel in (p for p in paths if p.endswith(".png")):
        assert f"]({rel})" in md
    assert "## Verdict per organ" in md


def test_phantom_notice_only_when_flagged(written, tmp_path):
    out, _ = written
    for name in ("report.html", "report.md"):
        assert report.PHANTOM_NOTICE in (out / name).read_text(encoding="utf-8").lower()
    table = make_organ_metrics(n=8, organs=("liver",))
    paths = report.write_report(tmp_path, table, _comparison(table), _config())
    assert report.PHANTOM_NOTICE not in paths["report.html"].read_text(encoding="utf-8").lower()


def test_redraw_from_the_tables_reproduces_the_file_set(written, tmp_path):
    out, paths = written
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    (copy / "report.md").unlink()
    (copy / "figures").mkdir()
    (copy / "figures" / "heatmap_hu_mean.png").write_bytes(b"stale")  # an earlier run's figure
    again = report.redraw(copy)
    assert set(again) == set(paths)
    assert not (copy / "figures" / "heatmap_hu_mean.png").exists()
    assert len(parse(copy / "report.html").images) == 4
    assert report.PHANTOM_NOTICE in (copy / "report.md").read_text(encoding="utf-8").lower()  # config.json read


def test_redraw_refuses_a_folder_without_tables(tmp_path):
    with pytest.raises(InputError, match="concordance.csv|organ_metrics.csv"):
        report.redraw(tmp_path)


def test_synthetic_without_demographics_is_overall_only(tmp_path):
    table = make_organ_metrics(n=10, organs=("liver",), synth_demographics=False)
    comparison = {"concordance": pd.DataFrame([_cell("liver", "all", "all", 3.0)]), "trends": None, "summary": {}}
    paths = report.write_report(tmp_path, table, comparison, _config(synth_has_demographics=False))
    assert not any(p.startswith("figures/trends") for p in paths)
    text = paths["report.md"].read_text(encoding="utf-8")
    assert "comparison is overall only" in text and "trends_suv_mean: skipped" in text


def test_stats_output_goes_through_the_report(tmp_path):
    stats = pytest.importorskip("totalgen_eval.stats", reason="stats module not available")
    table = make_organ_metrics(n=24, organs=("liver", "spleen"), liver_suv_shift=1.25)
    comparison = stats.compare_tables(table[table["cohort"] == "real"], table[table["cohort"] == "synth"],
                                      metrics=("suv_mean",), age_bins=(60, 80), n_boot=200, seed=0)
    paths = report.write_report(tmp_path, table, comparison, _config())
    page = parse(paths["report.html"])
    assert len(page.images) == 4
    verdicts = v.organ_verdicts(comparison.concordance, 0.05, 5).set_index("organ")["verdict"]
    assert verdicts["liver"] == v.DIFFERS  # +25% on 24 cases a side
    liver = comparison.concordance.query("organ == 'liver' and sex == 'all' and age_group == 'all'").iloc[0]
    assert f"{liver['deviation_pct']:+.1f}%" in " ".join(page.text)
    trends = comparison.trends
    fitted = trends[trends["interaction_p"].notna()]
    assert len(fitted) > 0 and "age effect per year" in "".join(
        ax.get_title(loc="left") for ax in plots.trend_plot(table, trends, "suv_mean").axes)


def test_statistics_notes_and_exclusions_are_reported(tmp_path):
    table = make_organ_metrics(n=8, organs=("liver",))
    comparison = _comparison(table)
    comparison["summary"] = {"parameters": {"alpha": 0.01, "bootstrap_method": "BCa"},
                             "excluded_rows": {"synth": {"suv_mean": {"no_voxels": 3, "missing_value": 0}}},
                             "notes": {"trends": [{"organ": "liver", "metric": "suv_mean", "reason": "too few <cases>"}]}}
    md = report.write_report(tmp_path, table, comparison, _config())["report.md"].read_text(encoding="utf-8")
    assert "synth.suv_mean.no_voxels | 3" in md and "missing_value" not in md
    assert r"too few \<cases\>" in md and "BCa" in md
    assert "p \\< 0.01" in md  # alpha from the statistics' parameters drives the verdict rule

"""The report: verdict rule, files written, self-contained HTML, redraw from the tables, notices."""
import base64
import html
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from totalgen_eval import plots, report
from totalgen_eval.errors import InputError
from totalgen_eval.stats import TRENDS_COLUMNS, Comparison, StatsParams, compare_tables
from totalgen_eval.stats.summary import summarize

from conftest import concordance_cell, make_organ_metrics

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


def _comparison(table: pd.DataFrame, liver_dev: float = 12.0, params: StatsParams = StatsParams()) -> Comparison:
    """A hand-made comparison of one metric (suv_mean) over the organs in ``table``: the liver differs."""
    groups = [("all", "all"), ("F", "all"), ("M", "all"), ("all", "<60"), ("all", "60-80"), ("all", "80+")]
    rows = [concordance_cell(o, s, a, liver_dev if o == "liver" else 1.0, p_value=0.001 if o == "liver" else 0.5,
                  equivalent=o != "liver") for o in table["organ"].unique() for s, a in groups]
    concordance = pd.DataFrame(rows)
    trends = pd.DataFrame(columns=list(TRENDS_COLUMNS))
    return Comparison(concordance, trends, {**summarize(concordance, trends), "parameters": vars(params)}, params)


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


def test_verdict_table_shows_each_primary_cell_with_its_verdict_and_intervals(written):
    out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    section = md.split("## Verdicts (primary cells)")[1].split("\n## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| liver") or ln.startswith("| spleen")]
    assert len(lines) == 6  # 2 organs x (all, F, M); age cells are descriptive, not verdicts
    assert all("differs" in ln and "+12.0%" in ln and r"\[+9.0%, +15.0%\] (95%)" in ln for ln in lines if ln.startswith("| liver"))
    assert all("equivalent" in ln and r"\[-1.0%, +3.0%\]" in ln for ln in lines if ln.startswith("| spleen"))
    assert "false-coverage-rate adjusted interval" in section  # the rule says which CI decides "differs"


def test_headline_is_the_summary_verdict_counts(written):
    out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    headline = md.split("## Headline")[1].split("\n## ")[0]
    assert "(6 cells): 3 differ, 3 are equivalent within 5%, 0 are inconclusive" in headline
    assert "share" not in headline.lower()


def test_write_report_writes_every_file(written):
    out, paths = written
    figures = {f"figures/{k}_suv_mean.{ext}" for k in KINDS for ext in ("png", "svg")}
    figures |= {"figures/suvmax.png", "figures/suvmax.svg"}  # the organ table has SUVmax: its own figure
    assert set(paths) == figures | {"report.html", "report.md"}
    for rel, path in paths.items():
        assert path == out / rel and path.stat().st_size > 0
    assert {p.name for p in (out / "figures").iterdir()} == {Path(f).name for f in figures}


def test_html_is_self_contained_and_embeds_every_figure(written):
    out, paths = written
    page = parse(out / "report.html")
    pngs = sorted(p for p in paths if p.endswith(".png"))
    assert len(page.images) == len(pngs) == 5
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in page.images
                if src.startswith("data:image/png;base64,")}
    assert embedded == {(out / p).read_bytes() for p in pngs}
    text = " ".join(page.text)
    for section in ("Headline", "Verdicts (primary cells)", "Worst primary cells", "Demographic trends",
                    "Concordance table", "Data sources", "Parameters", "Package versions"):
        assert section in text
    assert "liver" in text and "differs" in text


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
    assert "## Verdicts (primary cells)" in md


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
    assert len(parse(copy / "report.html").images) == 5
    assert report.PHANTOM_NOTICE in (copy / "report.md").read_text(encoding="utf-8").lower()  # config.json read


def test_redraw_refuses_a_folder_without_tables(tmp_path):
    with pytest.raises(InputError, match="concordance.csv|organ_metrics.csv"):
        report.redraw(tmp_path)


def test_synthetic_without_demographics_is_overall_only(tmp_path):
    table = make_organ_metrics(n=10, organs=("liver",), synth_demographics=False)
    concordance = pd.DataFrame([concordance_cell("liver", "all", "all", 3.0)])
    trends = pd.DataFrame(columns=list(TRENDS_COLUMNS))
    comparison = Comparison(concordance, trends, summarize(concordance, trends), StatsParams())
    paths = report.write_report(tmp_path, table, comparison, _config(synth_has_demographics=False))
    assert not any(p.startswith("figures/trends") for p in paths)
    text = paths["report.md"].read_text(encoding="utf-8")
    assert "comparison is overall only" in text and "trends_suv_mean: skipped" in text


def test_different_segmenters_are_called_out(tmp_path):
    table = make_organ_metrics(n=8, organs=("liver",))
    config = _config(segmenters={"real": "labels", "synth": "model:bundled"}, segmenters_differ=True)
    md = report.write_report(tmp_path, table, _comparison(table), config)["report.md"].read_text(encoding="utf-8")
    assert "mix generator and segmenter error" in md
    same = _config(segmenters={"real": "labels", "synth": "labels"}, segmenters_differ=False)
    md = report.write_report(tmp_path, table, _comparison(table), same)["report.md"].read_text(encoding="utf-8")
    assert "segmenter error" not in md


def test_stats_output_goes_through_the_report(tmp_path):
    table = make_organ_metrics(n=24, organs=("liver", "spleen"), liver_suv_shift=1.25)
    comparison = compare_tables(table[table["cohort"] == "real"], table[table["cohort"] == "synth"],
                                metrics=("suv_mean",), age_bins=(60, 80), seed=0)
    paths = report.write_report(tmp_path, table, comparison, _config())
    page = parse(paths["report.html"])
    assert len(page.images) == 5
    liver = comparison.concordance.query("organ == 'liver' and sex == 'all' and age_group == 'all'").iloc[0]
    assert liver["verdict"] == "differs"  # +25% on 24 cases a side
    assert f"{liver['deviation_pct']:+.1f}%" in " ".join(page.text)
    trends = comparison.trends
    assert trends["interaction_p"].notna().any() and "% per year" in "".join(
        ax.get_title(loc="left") for ax in plots.trend_plot(table, trends, "suv_mean").axes)
    md = paths["report.md"].read_text(encoding="utf-8")
    assert "not shown to differ" in md and set(trends.verdict) <= {"differs", "not shown to differ"}


def test_statistics_notes_and_exclusions_are_reported(tmp_path):
    table = make_organ_metrics(n=8, organs=("liver",))
    params = StatsParams(alpha=0.01)
    comparison = _comparison(table, params=params)
    comparison.summary.update({"excluded_rows": {"synth": {"suv_mean": {"no_voxels": 3, "missing_value": 0}}},
                               "notes": {"trends": [{"organ": "liver", "metric": "suv_mean", "reason": "too few <cases>"}]}})
    md = report.write_report(tmp_path, table, comparison, _config())["report.md"].read_text(encoding="utf-8")
    assert "synth.suv_mean.no_voxels | 3" in md and "missing_value" not in md
    assert r"too few \<cases\>" in md
    assert "p \\< 0.01" in md  # alpha from the comparison's parameters drives the verdict rule


def _stamps(folder: Path) -> dict[str, int]:
    """Each figure file's inode and modification time: a rewritten file (atomic replace) changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_figures_are_redrawn_only_when_their_inputs_change(tmp_path):
    from PIL import Image

    from totalgen_eval.report.figures import DIGEST_KEY

    table = make_organ_metrics(n=10, organs=("liver", "spleen"))
    first = report.write_report(tmp_path, table, _comparison(table), _config())
    before = _stamps(tmp_path / "figures")
    with Image.open(tmp_path / "figures" / "heatmap_suv_mean.png") as png:
        digest = png.info[DIGEST_KEY]
    assert f"{DIGEST_KEY} {digest}" in (tmp_path / "figures" / "heatmap_suv_mean.svg").read_text(encoding="utf-8")
    again = report.write_report(tmp_path, table, _comparison(table), _config())
    assert again.keys() == first.keys() and _stamps(tmp_path / "figures") == before
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 5
    changed = report.write_report(tmp_path, table, _comparison(table, liver_dev=30.0), _config())
    after = _stamps(tmp_path / "figures")
    redrawn = {name for name in after if after[name] != before[name]}
    assert redrawn == {f"{kind}_suv_mean.{ext}" for kind in ("heatmap", "forest") for ext in ("png", "svg")}
    assert "+30.0" in changed["report.md"].read_text(encoding="utf-8")


def test_a_figure_file_replaced_by_another_is_redrawn(tmp_path):
    table = make_organ_metrics(n=10, organs=("liver",))
    report.write_report(tmp_path, table, _comparison(table), _config())
    figures = tmp_path / "figures"
    shutil.copy(figures / "forest_suv_mean.png", figures / "heatmap_suv_mean.png")  # another figure's digest
    (figures / "suvmax.svg").write_text("<svg/>", encoding="utf-8")
    before = _stamps(figures)
    report.write_report(tmp_path, table, _comparison(table), _config())
    after = _stamps(figures)
    assert {name for name in after if after[name] != before[name]} == {
        "heatmap_suv_mean.png", "heatmap_suv_mean.svg", "suvmax.png", "suvmax.svg"}
    assert (figures / "heatmap_suv_mean.png").read_bytes() != (figures / "forest_suv_mean.png").read_bytes()


def test_cohorts_handed_over_draw_the_previews_without_config_paths(tmp_path):
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import make_cohort

    cohorts = {side: load_cohort(make_cohort(tmp_path / side, n=2, seed=seed, progress=False))
               for side, seed in (("real", 1), ("synth", 2))}
    table = make_organ_metrics(n=8, organs=("liver",))
    config = _config()  # names cohorts/real and a hostile synth path: neither can be read
    without = report.write_report(tmp_path / "a", table, _comparison(table), config)
    assert "figures/previews_cases.png" not in without
    assert "previews: skipped" in without["report.md"].read_text(encoding="utf-8")
    handed = report.write_report(tmp_path / "b", table, _comparison(table), config, cohorts=cohorts)
    assert "figures/previews_cases.png" in handed and "previews: skipped" not in \
        handed["report.md"].read_text(encoding="utf-8")

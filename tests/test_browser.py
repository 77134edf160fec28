"""The HTML report in a real browser: headless Chromium loads report.html and every figure is decoded and
drawn (naturalWidth > 0 for every <img>, and the screenshot shows a picture, not a blank, where each sits).

Needs the Debian package ``chromium`` (.ci/run installs it when apt is available); skips saying so otherwise.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium; "
                                                             ".ci/run does it where apt is available)")
WIDTH = 1280
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images).map(i => {
    const r = i.getBoundingClientRect();
    return {w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, top: r.top + window.scrollY,
            left: r.left + window.scrollX, width: r.width, height: r.height,
            id: i.closest("figure") ? i.closest("figure").id : ""};
  });
  document.body.setAttribute("data-probe", JSON.stringify({imgs: imgs,
                             height: document.documentElement.scrollHeight}));
});
</script>"""


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--disable-dev-shm-usage", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A compare run on small phantom cohorts with twins and a training cohort: every kind of figure."""
    from totalgen_eval.phantom import make_cohort
    from totalgen_eval.pipeline import CompareConfig, run_compare

    root = tmp_path_factory.mktemp("browser")
    real = make_cohort(root / "real", n=10, seed=31, progress=False)
    synth = make_cohort(root / "synth", n=10, seed=32, progress=False)
    train = make_cohort(root / "train", n=6, seed=33, progress=False)
    frame = pd.read_csv(synth / "cohort.csv")
    frame["twin_of"] = pd.read_csv(real / "cohort.csv")["case_id"]
    frame.to_csv(synth / "cohort.csv", index=False)
    cfg = CompareConfig(real=real, synth=synth, out=root / "results", real_segmenter="labels",
                        synth_segmenter="labels", train=train, force=True)
    run_compare(cfg, progress=False)
    return root / "results"


@needs_chromium
@pytest.mark.slow  # about 30 s: a compare run with image metrics, then two browser runs
def test_every_figure_is_drawn_in_chromium(results, tmp_path):
    html = (results / "report.html").read_text(encoding="utf-8")
    expected = set(re.findall(r'<figure id="fig-([^"]+)"', html))
    for name in ("previews_cases", "memorization_histogram", "memorization_closest", "suvmax",
                 "twins_scatter_suv_mean", "twins_bland_altman_volume_ml", "heatmap_suv_mean"):
        assert name in expected, name
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--dump-dom", probe_page.as_uri()).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the probe script did not run"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    imgs = probe["imgs"]
    assert {i["id"][len("fig-"):] for i in imgs} == expected
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in imgs), [i["id"] for i in imgs if not i["w"]]
    shot = tmp_path / "report.png"
    height = int(probe["height"])
    chromium(f"--window-size={WIDTH},{height}", f"--screenshot={shot}", (results / "report.html").as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= height * 0.99 and pixels.shape[1] == WIDTH
    for img in imgs:
        top, left = int(img["top"]) + 2, int(img["left"]) + 2
        box = pixels[top:top + int(img["height"]) - 4, left:left + int(img["width"]) - 4]
        assert box.size and box.std() > 0.02 and box.mean() < 0.995, (img["id"], box.std(), box.mean())
    shutil.copy(shot, results / "report_screenshot.png")  # kept beside the report for a look by eye


@pytest.mark.slow
def test_report_lists_the_image_sections(results):
    md = (results / "report.md").read_text(encoding="utf-8")
    for heading in ("## Image-level metrics", "## Memorization", "## Pictures", "## Demographics"):
        assert heading in md
    table = pd.read_csv(results / "image_metrics.csv")
    assert list(table.columns) == ["metric", "modality", "value", "ci_low", "ci_high", "features"]
    assert {"fid_2.5d", "fid_2.5d_real_halves", "ms_ssim_twins", "mmd_3d"} <= set(table["metric"])
    memo = pd.read_csv(results / "memorization.csv")
    assert list(memo.columns) == ["case_id", "nearest_train_id", "distance", "flagged"] and len(memo) == 10
    summary = json.loads((results / "summary.json").read_text())
    assert summary["images"]["memorization"]["n_synthetic"] == 10
    assert np.isfinite(summary["images"]["fid_2.5d_ct"]["value"])

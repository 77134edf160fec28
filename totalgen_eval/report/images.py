"""The report's image-level sections: image metrics with their reference, memorization, previews, twins,
SUVmax and the demographics table.

``image_sections`` is called once by the report writer: it saves the figures that are not up to date
(``figures.save_figures``), adds them to the writer's ``SavedFigures`` and returns the blocks with the new
sections before "Data sources". It reads ``image_metrics.csv``, ``memorization.csv`` and
``memorization_real.csv`` from the results folder, and the cohorts (for previews and twins) from the
paths in config.json; what is missing is skipped with a note, so ``plot`` redraws what it can.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import plots
from .figures import FigurePlan, SavedFigures, remove_stale, save_figures
from .render import Block, FigureRef, Heading, Items, Paragraph, Table

if TYPE_CHECKING:
    from ..cohort import Cohort

IMAGE_FIGURE_PREFIXES = ("previews_", "memorization_", "twins_", "suvmax")
N_PREVIEWS = 4
N_CLOSEST = 4
TWIN_METRICS = ("suv_mean", "volume_ml")
METRIC_TEXT = {"fid_2.5d": "FID, 2.5D (mean of 3 planes)", "fid_axial": "FID, axial slices",
               "fid_coronal": "FID, coronal slices", "fid_sagittal": "FID, sagittal slices",
               "mmd_3d": "MMD^2, 3D features", "ms_ssim_twins": "MS-SSIM, synthetic twin vs its real case"}


def _g(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return ""
    return "" if not np.isfinite(v) else f"{v:.4g}"


def _ci(low: Any, high: Any) -> str:
    return f"[{_g(low)}, {_g(high)}]" if _g(low) and _g(high) else ""


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


def _cohort(config: Mapping[str, Any], key: str, loaded: Mapping[str, Cohort | None] | None = None):
    """The cohort ``loaded[key]`` when given (compare hands over the ones it read), else the one named in
    config.json (cohorts.<key>.path, else options.<key>), or None if unreadable."""
    from ..cohort import load_cohort

    if loaded is not None and key in loaded:
        return loaded[key]

    path = ((config.get("cohorts") or {}).get(key) or {}).get("path") or (config.get("options") or {}).get(key)
    if not path:
        return None
    try:
        return load_cohort(path, skip_bad=True)
    except Exception:  # a moved or deleted cohort: the figures that need it are skipped
        return None


def metrics_blocks(table: pd.DataFrame | None, summary: Mapping[str, Any]) -> list[Block]:
    """The image metrics table (synthetic vs real, at half size, and the real-halves reference)."""
    blocks: list[Block] = [Heading("Image-level metrics")]
    if table is None or table.empty:
        note = (summary.get("images") or {}).get("note") or "compare --no-images, or no image_metrics.csv"
        return blocks + [Paragraph(f"Not computed ({note}).")]
    rows = table.set_index(["metric", "modality"])
    features = (summary.get("images") or {}).get("features") or str(table["features"].iloc[0])
    blocks.append(Paragraph(
        f"Features: {features}. FID on 2.5D features (one feature vector per slice of each plane, as NVIDIA MAISI "
        "does) and MMD^2 on 3D features compare the two cohorts as image distributions, CT and PET separately; "
        "lower is closer. The yardstick is the same metric between two random halves of the real cohort; since "
        "FID grows as samples shrink, the synthetic cohort is also measured at that size (a random synthetic "
        "half against the same real half). 95% bootstrap intervals over cases."))
    out, verdicts = [], []
    for (metric, modality), r in rows.iterrows():
        if metric not in METRIC_TEXT:
            continue
        ref_key = ("ms_ssim_real_pairs" if metric == "ms_ssim_twins" else metric + "_real_halves", modality)
        half_key = (metric + "_synth_half", modality)
        ref = rows.loc[ref_key] if ref_key in rows.index else None
        half = rows.loc[half_key] if half_key in rows.index else None
        out.append({"metric": METRIC_TEXT[metric], "modality": modality.upper(),
                    "synthetic vs real": f"{_g(r['value'])} {_ci(r['ci_low'], r['ci_high'])}",
                    "synthetic half vs real half": _g(half["value"]) if half is not None else "",
                    "reference: real half vs real half": "" if ref is None else
                    f"{_g(ref['value'])} {_ci(ref['ci_low'], ref['ci_high'])}"})
        if metric == "fid_2.5d" and half is not None and ref is not None and _g(ref["ci_high"]):
            inside = float(half["value"]) <= float(ref["ci_high"])
            verdicts.append(f"{modality.upper()}: FID at half size {_g(half['value'])} "
                            f"{'lies within' if inside else 'exceeds'} the real-vs-real interval "
                            f"{_ci(ref['ci_low'], ref['ci_high'])}.")
    blocks.append(Table(pd.DataFrame(out), caption="image_metrics.csv (all rows there)"))
    if verdicts:
        blocks.append(Items(tuple(verdicts)))
    return blocks


def memorization_blocks(memo: pd.DataFrame | None, summary: Mapping[str, Any], refs: Sequence[FigureRef]
                        ) -> list[Block]:
    """What the memorization check found, its histogram and the closest pairs."""
    blocks: list[Block] = [Heading("Memorization")]
    if memo is None:
        return blocks + [Paragraph("Not checked: pass the generator's training cohort with compare --train DIR.")]
    info = (summary.get("images") or {}).get("memorization") or {}
    flagged = memo[memo["flagged"].astype(str).str.lower().isin(["true", "1"])]
    blocks.append(Paragraph(
        f"For each synthetic case, its nearest training case (root mean square difference of CT and PET scaled "
        f"to [0, 1] on a grid fitted to the body). A synthetic case closer than the real cases' 1st percentile "
        f"(threshold {_g(info.get('threshold'))}, from {info.get('n_real_reference', '?')} real cases the "
        f"generator did not see) is flagged as a possible copy: {len(flagged)} of {len(memo)}."))
    blocks += [r for r in refs if r.name.startswith("memorization_")]
    if len(flagged):
        blocks.append(Table(flagged.assign(distance=flagged["distance"].map(_g)), caption="flagged cases"))
    return blocks


def _twins(synth) -> dict[str, str]:
    from ..images import twins_from_frame

    return twins_from_frame(synth.to_frame()) if synth is not None else {}


def _case_identity(cases: Sequence) -> list:
    """What a preview of ``cases`` is drawn from: each case's id and its PET and CT files' identities."""
    from ..cache import file_identity

    return [[c.case_id, file_identity(c.pet), file_identity(c.ct)] for c in cases]


def _preview_cases(real, synth, twins: Mapping[str, str]) -> tuple[list, list, bool]:
    """(real cases, synthetic cases, are they twins?) of the preview figure: the first real cases that have
    a twin beside their twins, else the first cases of each cohort."""
    back = {r: s for s, r in twins.items()}
    real_cases = [c for c in real if c.case_id in back][:N_PREVIEWS] or list(real)[:N_PREVIEWS]
    paired = bool(back) and real_cases[0].case_id in back
    synth_cases = [synth[back[c.case_id]] for c in real_cases] if paired else list(synth)[:N_PREVIEWS]
    return real_cases, synth_cases, paired


def _preview_plans(real, synth, twins: Mapping[str, str]) -> tuple[list[FigurePlan], list[str]]:
    """The previews figure when both cohorts named in config.json can be read."""
    from ..images import case_preview

    if real is None or synth is None or not len(real) or not len(synth):
        return [], ["previews: skipped, the cohorts named in config.json cannot be read."]
    real_cases, synth_cases, paired = _preview_cases(real, synth, twins)
    ref = FigureRef("previews_cases", "Coronal PET maximum intensity projections (SUV 0-8, inverted) and CT slices "
                    "through the body's centre, real (blue) beside synthetic (orange); twins side by side where the "
                    "synthetic cohort has twin_of.")
    return [FigurePlan(ref, lambda: plots.preview_figure([case_preview(c) for c in real_cases],
                                                         [case_preview(c) for c in synth_cases], twins=paired),
                       (_case_identity(real_cases), _case_identity(synth_cases), paired))], []


def _closest_plan(memo: pd.DataFrame, synth, train) -> FigurePlan:
    """The synthetic cases closest to a training case beside that case."""
    from ..images import case_preview

    top = memo.sort_values("distance").head(N_CLOSEST)
    pairs = [(synth[str(r.case_id)], train[str(r.nearest_train_id)]) for r in top.itertuples(index=False)]
    flags = top["flagged"].astype(str).str.lower().isin(["true", "1"]).tolist()
    ref = FigureRef("memorization_closest", "The synthetic cases closest to a training case (left) beside that "
                    "training case (right): PET MIP and CT slice.")
    return FigurePlan(ref, lambda: plots.closest_pairs_figure([(case_preview(s), case_preview(t)) for s, t in pairs],
                                                              top["distance"].tolist(), flags),
                      (top, [_case_identity(pair) for pair in pairs]))


def _memorization_plans(memo: pd.DataFrame | None, memo_real: pd.DataFrame | None, synth, train
                        ) -> tuple[list[FigurePlan], list[str]]:
    """The memorization histogram and the closest pairs, when memorization.csv holds cases."""
    if memo is None or not len(memo):
        return [], []
    reference = memo_real if memo_real is not None else memo.iloc[:0]
    threshold = float(reference["distance"].quantile(0.01, interpolation="lower")) if len(reference) else float("nan")
    ref = FigureRef("memorization_histogram", "Distance of each synthetic case (orange) and each real held-out case "
                    "(blue) to its nearest training case; dashed: the flagging threshold.")
    plans = [FigurePlan(ref, lambda: plots.memorization_histogram(memo, reference, threshold),
                        (memo, reference, threshold))]
    if synth is None or train is None:
        return plans, ["memorization_closest: skipped, the synthetic or training cohort cannot be read."]
    return plans + [_closest_plan(memo, synth, train)], []


def _table_plans(organ_metrics: pd.DataFrame, twins: Mapping[str, str]) -> tuple[list[FigurePlan], list[str]]:
    """The twin scatter and Bland-Altman plots of each twin metric, and the SUVmax figure."""
    plans, notes = [], []
    for m in (m for m in TWIN_METRICS if twins and m in organ_metrics.columns):
        label, inputs = plots.metric_label(m), (organ_metrics, twins)
        plans.append(FigurePlan(FigureRef(f"twins_scatter_{m}", f"{label}: each synthetic twin against its real case, "
                                          "per organ (dashed: identity; CCC: Lin's concordance)."),
                                lambda m=m: plots.twin_scatter(organ_metrics, twins, m), inputs))
        plans.append(FigurePlan(FigureRef(f"twins_bland_altman_{m}", f"{label}: Bland-Altman per organ, twin minus "
                                          "real case in % of their mean; bias (solid), limits of agreement (dashed, "
                                          "+-1.96 SD)."), lambda m=m: plots.bland_altman(organ_metrics, twins, m),
                                inputs))
    if not twins:
        notes.append("twin plots: skipped, the synthetic cohort has no twin_of (or cannot be read).")
    if "suv_max" in organ_metrics.columns:
        plans.append(FigurePlan(FigureRef("suvmax", "SUVmax per organ, every case (log scale), medians as bars."),
                                lambda: plots.suvmax_figure(organ_metrics), (organ_metrics,)))
    return plans, notes


def image_figures(out_dir: Path, organ_metrics: pd.DataFrame, config: Mapping[str, Any],
                  cohorts: Mapping[str, Cohort | None] | None = None) -> tuple[list[FigurePlan], list[str]]:
    """Every image-level figure that can be drawn (reference, how, from what), and notes for the rest;
    ``cohorts`` (real, synth, train) spare reading the cohorts named in config.json again."""
    real, synth, train = (_cohort(config, key, cohorts) for key in ("real", "synth", "train"))
    memo, memo_real = _read(out_dir / "memorization.csv"), _read(out_dir / "memorization_real.csv")
    twins = _twins(synth)
    plans, notes = [], []
    for more, why in (_preview_plans(real, synth, twins), _memorization_plans(memo, memo_real, synth, train),
                      _table_plans(organ_metrics, twins)):
        plans += more
        notes += why
    return plans, notes


def demographics_blocks(organ_metrics: pd.DataFrame, config: Mapping[str, Any]) -> list[Block]:
    """Table 1: real vs synthetic demographics and n per sex x age group."""
    from ..demographics import DEFAULT_AGE_BINS

    bins = (config.get("options") or {}).get("age_bins") or DEFAULT_AGE_BINS
    cohort = organ_metrics["cohort"].astype(str)
    table = plots.table_one(organ_metrics[cohort == "real"], organ_metrics[cohort == "synth"], bins)
    return [Heading("Demographics"), Table(table, caption="Table 1: cases compared (n per subgroup below)")]


def image_sections(out_dir: Path, blocks: list[Block], saved: SavedFigures, organ_metrics: pd.DataFrame,
                   config: Mapping[str, Any], summary: Mapping[str, Any],
                   cohorts: Mapping[str, Cohort | None] | None = None) -> list[Block]:
    """Save the image-level figures that are not up to date (adding them to ``saved``), then return ``blocks``
    with the new sections inserted."""
    out_dir = Path(out_dir)
    plans, notes = image_figures(out_dir, organ_metrics, config, cohorts)
    refs = saved.add(save_figures(plans, out_dir / "figures", notes))
    remove_stale(out_dir / "figures", lambda name: name.startswith(IMAGE_FIGURE_PREFIXES), saved.written)
    new = metrics_blocks(_read(out_dir / "image_metrics.csv"), summary)
    new += memorization_blocks(_read(out_dir / "memorization.csv"), summary, refs)
    new += [Heading("Pictures")] + [r for r in refs if r.name.startswith(("previews_", "suvmax"))]
    twin_refs = [r for r in refs if r.name.startswith("twins_")]
    if twin_refs:
        new += [Heading("Twins", 3), *twin_refs]
    if notes:
        new.append(Items(tuple(notes)))
    new += demographics_blocks(organ_metrics, config)
    at = next((i for i, b in enumerate(blocks) if isinstance(b, Heading) and b.text == "Data sources"), len(blocks))
    return list(blocks[:at]) + new + list(blocks[at:])

"""Fidelity of the bundled generator against a held-out phantom cohort (phantoms, not patients).

1. a held-out phantom cohort (seed not used for training; true organ labels);
2. its synthetic twins from the bundled cascade (`generate --match`);
3. a reference "perfect generator": phantom twins with the same demographics and another seed, i.e. the
   noise floor that sampling alone gives;
4. organ volumes and SUVmean per organ x subgroup (metrics.organ_metrics: true labels on the phantom sides,
   the bundled phantom segmenter on the synthetic side) compared by stats.compare_tables.
Goals (issue 6): |deviation| of SUVmean <= 5% in >= 80% of organ x subgroup cells, volume <= 10%; the
demographic effects reproduced (liver SUVmean rises with weight at fixed height, i.e. with BMI; organs
larger in men). Writes reports/generator_fidelity.md, .json and figures. When the segmenter is missing,
the organ part is reported as not run and whole-body figures (body volume, body SUVmean) are compared.

    python benchmarks/bench_generator_fidelity.py [--n 100] [--work /tmp/fidelity] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.bench_generator_response import guidance_text
from benchmarks.generator_spread import spread_comparison, spread_markdown

ROOT = Path(__file__).resolve().parents[1]
SUV_MARGIN, VOLUME_MARGIN, GOAL_SHARE = 5.0, 10.0, 0.80


def share_within(concordance: pd.DataFrame, metric: str, margin_pct: float) -> tuple[float, int]:
    """(share of cells with an interval whose |deviation_pct| <= margin_pct, their number) for one metric."""
    cells = concordance[(concordance["metric"] == metric) & concordance["deviation_pct"].notna()
                        & concordance["deviation_ci_low"].notna()]
    return (float((cells["deviation_pct"].abs() <= margin_pct).mean()) if len(cells) else float("nan")), int(len(cells))


def effect_checks(trends: pd.DataFrame) -> list[dict]:
    """The demographic effects the issue asks for: liver SUVmean with weight at fixed height (BMI), each
    organ's volume with sex. An effect is judged only where the real cohort shows it (its 95% CI excludes 0);
    it is reproduced when the synthetic effect has the same sign. ``interaction_p`` tells whether the sizes differ."""
    checks = []

    def add(effect: str, r: pd.Series) -> None:
        shown = bool(r["real_ci_low"] > 0 or r["real_ci_high"] < 0)
        checks.append({"effect": effect, "organ": r["organ"], "term": r["term"], "real": float(r["real_effect"]),
                       "synth": float(r["synth_effect"]), "interaction_p": float(r["interaction_p"]),
                       "judged": shown,
                       "reproduced": bool(shown and np.sign(r["real_effect"]) == np.sign(r["synth_effect"]))})

    liver = trends[(trends["organ"] == "liver") & (trends["metric"] == "suv_mean") & (trends["term"] == "weight_kg")]
    if not liver.empty:
        add("liver SUVmean rises with weight at fixed height (BMI)", liver.iloc[0])
    sex = trends[(trends["metric"] == "volume_ml") & (trends["term"] == "sex_M")]
    for _, r in sex.sort_values("organ").iterrows():
        if np.isfinite(r["real_effect"]):
            add(f"{r['organ']} larger in men", r)
    return checks


def body_table(cohort) -> pd.DataFrame:
    """Whole-body figures per case: body volume (CT > -500 HU, mL) and body SUVmean; no segmenter needed."""
    rows = []
    for case in cohort:
        ct, affine = case.read_ct()
        pet, _ = case.read_pet()
        body = ct > -500
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
        rows.append({"case_id": case.case_id, "sex": case.sex, "age": case.age, "body_volume_ml": body.sum() * voxel_ml,
                     "body_suv_mean": float(pet[body].mean()) if body.any() else np.nan,
                     "brain_top_suv_p99": float(np.percentile(pet, 99.9))})
    return pd.DataFrame(rows)


def compare_body(real: pd.DataFrame, synth: pd.DataFrame) -> pd.DataFrame:
    out = []
    for sex in ("all", "F", "M"):
        r = real if sex == "all" else real[real["sex"] == sex]
        s = synth if sex == "all" else synth[synth["sex"] == sex]
        for col in ("body_volume_ml", "body_suv_mean", "brain_top_suv_p99"):
            out.append({"figure": col, "sex": sex, "real_mean": r[col].mean(), "synth_mean": s[col].mean(),
                        "deviation_pct": 100 * (s[col].mean() - r[col].mean()) / r[col].mean()})
    return pd.DataFrame(out)


def whole_body(real_c, synth_c, twin_c) -> dict:
    """Whole-body figures compared with the real side: {"synthetic": rows, "phantom_twins": rows}."""
    real = body_table(real_c)
    return {name: compare_body(real, body_table(c)).round(3).to_dict("records")
            for name, c in (("synthetic", synth_c), ("phantom_twins", twin_c))}


def sample_figure(real_cohort, synth_cohort, path: Path, n: int = 3) -> None:
    """Coronal slices through the body centre: phantom (held-out) and its synthetic twin, CT and PET."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2 * n, figsize=(2.2 * 2 * n, 8))
    for i in range(n):
        for j, (cohort, name) in enumerate(((real_cohort, "phantom"), (synth_cohort, "synthetic twin"))):
            ct, _ = cohort[i].read_ct()
            pet, _ = cohort[i].read_pet()
            y = ct.shape[1] // 2
            ax_ct, ax_pet = axes[0, 2 * i + j], axes[1, 2 * i + j]
            ax_ct.imshow(ct[:, y, :].T, origin="lower", cmap="gray", vmin=-400, vmax=400)
            ax_pet.imshow(pet[:, y, :].T, origin="lower", cmap="hot", vmin=0, vmax=8)
            ax_ct.set_title(f"{name}\n{cohort[i].sex}, {cohort[i].age:.0f} y, {cohort[i].weight_kg:.0f} kg", fontsize=8)
            for ax in (ax_ct, ax_pet):
                ax.set_xticks([])
                ax.set_yticks([])
    axes[0, 0].set_ylabel("CT (-400..400 HU)")
    axes[1, 0].set_ylabel("PET (SUV 0..8)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def side_summary(comp) -> dict:
    """Shares within the margins, median |deviation| over organs (all cases) and effects of one comparison."""
    suv_share, suv_cells = share_within(comp.concordance, "suv_mean", SUV_MARGIN)
    vol_share, vol_cells = share_within(comp.concordance, "volume_ml", VOLUME_MARGIN)
    overall = comp.concordance[(comp.concordance["sex"] == "all") & (comp.concordance["age_group"] == "all")]
    median_abs = overall.groupby("metric")["deviation_pct"].apply(lambda d: float(d.abs().median()))
    return {"suv_mean_share_within_5pct": suv_share, "suv_mean_cells": suv_cells,
            "volume_share_within_10pct": vol_share, "volume_cells": vol_cells,
            "suv_mean_median_abs_dev_pct": median_abs.get("suv_mean", float("nan")),
            "volume_median_abs_dev_pct": median_abs.get("volume_ml", float("nan")),
            "effects": effect_checks(comp.trends)}


def goals_met(s: dict) -> dict[str, bool]:
    """The issue-6 goals of the synthetic side's summary ``s``."""
    return {"suv_mean": bool(s["suv_mean_share_within_5pct"] >= GOAL_SHARE),
            "volume": bool(s["volume_share_within_10pct"] >= GOAL_SHARE),
            "effects": bool(any(e["judged"] for e in s["effects"])
                            and all(e["reproduced"] for e in s["effects"] if e["judged"]))}


def write_heatmaps(concordance: pd.DataFrame, reports: Path) -> None:
    """generator_fidelity_{suv_mean,volume_ml}.png: deviation heatmaps at the goals' margins."""
    from totalgen_eval.plots import deviation_heatmap

    for metric in ("suv_mean", "volume_ml"):
        fig = deviation_heatmap(concordance, metric, SUV_MARGIN / 100 if metric == "suv_mean" else VOLUME_MARGIN / 100)
        fig.savefig(reports / f"generator_fidelity_{metric}.png", dpi=80)
        fig.clf()


def organ_comparison(real_c, twin_c, synth_c, segmenter: str, workers: int, work: Path,
                     reports: Path | None) -> dict:
    """Organ tables of the held-out phantoms (true labels), their phantom twins and the synthetic twins
    (``segmenter``), compared: shares within the margins, median |deviation|, effects, texture, heatmaps."""
    from totalgen_eval.metrics import organ_metrics
    from totalgen_eval.stats import compare_tables

    tables = {name: organ_metrics(cohort, segmenter=seg, workers=workers, cache_dir=work / "cache" / name,
                                  cohort_name=name, progress=False)
              for name, cohort, seg in (("real", real_c, "labels"), ("twins", twin_c, "labels"),
                                        ("synth", synth_c, segmenter), ("real_segmented", real_c, segmenter))}
    result: dict = {"texture": texture_section(real_c, synth_c, tables, segmenter,
                                               {side: work / "cache" / side for side in ("real", "synth")})}
    comps = {k: compare_tables(tables["real"], tables[k], metrics=("volume_ml", "suv_mean"), seed=0)
             for k in ("synth", "twins")}
    for k, comp in comps.items():
        result[k] = side_summary(comp)
        comp.concordance.to_csv(work / f"concordance_{k}.csv", index=False)
    conc = comps["synth"].concordance
    allrows = conc[(conc["sex"] == "all") & (conc["age_group"] == "all")]
    result["per_organ_all"] = allrows[["organ", "metric", "real_mean", "synth_mean", "deviation_pct"]].round(3).to_dict("records")
    result["spread"] = spread_comparison(tables["real"], tables["synth"], tables["twins"]).round(3).to_dict("records")
    if reports is not None:
        write_heatmaps(conc, reports)
    result["goals_met"] = goals_met(result["synth"])
    return result


def texture_section(real_c, synth_c, tables: dict, segmenter: str, caches: dict[str, Path]) -> dict:
    """Voxel noise inside eroded organs (true labels vs ``segmenter``, labels cached where the organ tables
    put them: ``caches["real"]``, ``caches["synth"]``) and organ SUVmax (``tables``), real vs synthetic, and
    against the real cases segmented by ``segmenter`` when ``tables`` has ``real_segmented``."""
    from benchmarks.generator_texture import noise_comparison, noise_table, suv_max_comparison, texture_summary
    from totalgen_eval.organs import ORGAN_NAMES

    noise = noise_comparison(noise_table(real_c, "labels", caches["real"], ORGAN_NAMES),
                             noise_table(synth_c, segmenter, caches["synth"], ORGAN_NAMES))
    suv_max = suv_max_comparison(tables["real"], tables["synth"], tables.get("real_segmented"))
    return {"noise": noise.round(4).to_dict("records"), "suv_max": suv_max.round(3).to_dict("records"),
            **texture_summary(noise, suv_max)}


def generate_settings(synth: Path) -> dict:
    """The generate run's settings (generate.json), the matched cohort named by its folder only (the
    published report does not carry this machine's paths)."""
    settings = json.loads((synth / "generate.json").read_text())["settings"]
    if settings.get("match"):
        settings["match"] = Path(settings["match"]).name
    return settings


def run(n: int = 100, work: Path = Path("/tmp/totalgen-fidelity"), heldout_seed: int = 777, twin_seed: int = 778,
        seed: int = 0, segmenter: str = "model:bundled", checkpoint: Path | None = None, workers: int = 1,
        reports: Path | None = None, guidance: float | None = None, response: dict | None = None) -> dict:
    """Run the benchmark in ``work``; the result dict (see the module docstring). With ``reports`` set, write
    generator_fidelity.{md,json} and its figures there."""
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.phantom import make_cohort
    from totalgen_eval.provenance import package_versions
    from totalgen_eval.synthesis import generate_cohort

    started = time.perf_counter()
    heldout = make_cohort(work / "heldout", n=n, seed=heldout_seed, progress=False)
    demo = load_cohort(heldout).to_frame()[["age", "sex", "height_m", "weight_kg"]]
    twins = make_cohort(work / "phantom_twins", seed=twin_seed, demographics=demo, progress=False)
    t = time.perf_counter()
    synth = generate_cohort(work / "synth", match=heldout, seed=seed, checkpoint=checkpoint, guidance=guidance,
                            progress=False)
    generate_seconds = time.perf_counter() - t
    real_c, twin_c, synth_c = load_cohort(heldout), load_cohort(twins), load_cohort(synth)
    if reports is not None:
        reports.mkdir(parents=True, exist_ok=True)
        sample_figure(real_c, synth_c, reports / "generator_fidelity_samples.png")
    result: dict = {"n": n, "heldout_seed": heldout_seed, "twin_seed": twin_seed, "generator_seed": seed,
                    "generator": generate_settings(synth), "generate_seconds": round(generate_seconds, 1),
                    "segmenter": segmenter, "goals": {"suv_mean_margin_pct": SUV_MARGIN,
                                                      "volume_margin_pct": VOLUME_MARGIN, "share": GOAL_SHARE},
                    "whole_body": whole_body(real_c, synth_c, twin_c)}
    try:
        result.update(organ_comparison(real_c, twin_c, synth_c, segmenter, workers, work, reports))
        result["organ_part"] = "run"
    except Exception as exc:  # the segmenter or another module is missing: say which part could not run
        result["organ_part"] = f"not run: {type(exc).__name__}: {exc}".splitlines()[0]
        result["organ_traceback"] = traceback.format_exc().splitlines()[-3:]
    result["response"] = response
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["versions"] = package_versions()
    if reports is not None:
        (reports / "generator_fidelity.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (reports / "generator_fidelity.md").write_text(markdown(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--heldout-seed", type=int, default=777)
    ap.add_argument("--twin-seed", type=int, default=778)
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--work", type=Path, default=Path("/tmp/totalgen-fidelity"))
    ap.add_argument("--segmenter", default="model:bundled")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the checkpoint's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reports", type=Path, default=ROOT / "reports")
    ap.add_argument("--no-write", action="store_true", help="print only; leave reports/ alone")
    ap.add_argument("--response", type=Path, default=None,
                    help="a bench_generator_response --json result to publish with this report")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(n=args.n, work=args.work, heldout_seed=args.heldout_seed, twin_seed=args.twin_seed, seed=args.seed,
                 segmenter=args.segmenter, checkpoint=args.checkpoint, workers=args.workers, guidance=args.guidance,
                 reports=None if args.no_write else args.reports,
                 response=json.loads(args.response.read_text()) if args.response else None)
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    """The published report: settings, goals, effects, per organ, texture, spread, response, whole body."""
    sections = [_header(r)]
    if r.get("organ_part") == "run":
        sections += [_goals(r), _effects(r), _per_organ(r), _texture(r.get("texture"))]
        if r.get("spread"):
            sections.append(spread_markdown(r["spread"], r["n"]))
    else:
        sections.append(f"## Organ-level comparison\n\n{r.get('organ_part')}\n")
    if r.get("response"):
        from benchmarks.bench_generator_response import markdown as response_markdown
        sections.append("## Demographic response (one input varied at a time, truth beside it)\n\n"
                        + response_markdown(r["response"]))
    sections += [_whole_body(r), f"Total benchmark time {r['seconds']} s. Regenerate: "
                 "`python -m benchmarks.bench_generator_fidelity`.\n"]
    return "\n".join(sections)


def _header(r: dict) -> str:
    g = r["generator"]
    return "\n".join([
        "# Generator fidelity against held-out phantoms", "",
        "Phantoms, not patients: the bundled generator was trained on procedural phantoms and is judged here "
        f"against {r['n']} held-out phantoms (seed {r['heldout_seed']}) and their synthetic twins (same "
        "demographics). A second phantom draw with the same demographics (seed "
        f"{r['twin_seed']}) is the reference of a perfect generator: its deviations are sampling noise.", "",
        f"Generator settings: stage 1 {g['lowres_sampler']} {g['lowres_steps']} steps, guidance {guidance_text(g)}; "
        f"stage 2 {g['sr_sampler']} {g['sr_steps']} steps; checkpoint {g['checkpoint_id']}; generation took "
        f"{r['generate_seconds']} s for {r['n']} cases on a shared 2-core CPU. Labels: true labels on the phantom "
        f"sides, segmenter `{r['segmenter']}` on the synthetic side.", ""])


def _goals(r: dict) -> str:
    s, t = r["synth"], r["twins"]
    return "\n".join([
        "## Goals", "", "| figure | synthetic | perfect-generator reference | goal |", "|---|---|---|---|",
        f"| SUVmean cells within 5% | {s['suv_mean_share_within_5pct']:.0%} of {s['suv_mean_cells']} | "
        f"{t['suv_mean_share_within_5pct']:.0%} of {t['suv_mean_cells']} | >= 80% |",
        f"| volume cells within 10% | {s['volume_share_within_10pct']:.0%} of {s['volume_cells']} | "
        f"{t['volume_share_within_10pct']:.0%} of {t['volume_cells']} | >= 80% |",
        f"| median over organs of abs. SUVmean deviation (all cases) | {s['suv_mean_median_abs_dev_pct']:.1f}% | "
        f"{t['suv_mean_median_abs_dev_pct']:.1f}% | |",
        f"| median over organs of abs. volume deviation (all cases) | {s['volume_median_abs_dev_pct']:.1f}% | "
        f"{t['volume_median_abs_dev_pct']:.1f}% | |", "",
        "Goals met: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["goals_met"].items()), "",
        f"The 80%-of-cells goals are judged cell by cell (organ x sex x age group, {r['n']} cases in all): a "
        "perfect generator (the second phantom draw) reaches the share in the reference column from sampling "
        "noise alone, so that column, not 100%, is the ceiling at this n.", ""])


def _effects(r: dict) -> str:
    lines = ["## Demographic effects (trends: real vs synthetic effect)", "",
             "Effects per kg (weight) or men minus women (sex), adjusted for the other demographics. Judged where "
             "the real cohort shows the effect (95% CI excludes 0); reproduced = same sign; interaction p = "
             "whether real and synthetic sizes differ.", "",
             "| effect | real | synthetic | interaction p | reproduced |", "|---|---|---|---|---|"]
    lines += [f"| {e['effect']} | {e['real']:.4g} | {e['synth']:.4g} | {e['interaction_p']:.2g} | "
              f"{('yes' if e['reproduced'] else 'no') if e['judged'] else 'not shown in the real cohort'} |"
              for e in r["synth"]["effects"]]
    return "\n".join(lines + [""])


def _per_organ(r: dict) -> str:
    lines = ["## Per organ (all cases)", "", "| organ | metric | phantom mean | synthetic mean | deviation % |",
             "|---|---|---|---|---|"]
    lines += [f"| {x['organ']} | {x['metric']} | {x['real_mean']:.4g} | {x['synth_mean']:.4g} | {x['deviation_pct']:+.1f} |"
              for x in r["per_organ_all"]]
    return "\n".join(lines + ["", "Figures: `generator_fidelity_suv_mean.png`, `generator_fidelity_volume_ml.png` "
                               "(deviation heatmaps), `generator_fidelity_samples.png` (coronal slices).", ""])


def _texture(t: dict | None) -> str:
    if not t:
        return ""
    lines = ["## Voxel noise and SUVmax", "",
             "SUV standard deviation over the voxels of each organ eroded by one voxel (mean over cases): voxel "
             "noise, what stage 2 draws. Goal: synthetic / real within 20 % in every organ "
             f"({t['noise_organs_within']} of {t['noise_organs']}: {'met' if t['noise_goal_met'] else 'not met'}).",
             "", "| organ | real SD | synthetic SD | ratio | organ SUVmax real | synthetic | deviation % "
             "| real, segmented | segmenter's own deviation % | synthetic vs segmented real % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, m in zip(t["noise"], t["suv_max"]):
        same = (f"{m['real_seg_suv_max']:.2f} | {m['segmenter_dev_pct']:+.1f} | {m['same_segmenter_dev_pct']:+.1f}"
                if "real_seg_suv_max" in m else " | | ")
        lines.append(f"| {n['organ']} | {n['real_sd']:.3f} | {n['synth_sd']:.3f} | {n['ratio']:.2f} | "
                     f"{m['real_suv_max']:.2f} | {m['synth_suv_max']:.2f} | {m['deviation_pct']:+.1f} | {same} |")
    lines += ["", f"Median over organs of |SUVmax deviation|: {t['suv_max_median_abs_dev_pct']:.1f} % "
                  f"(goal <= 10 %: {'met' if t['suv_max_goal_met'] else 'not met'})."]
    if "suv_max_same_segmenter_median_abs_dev_pct" in t:
        lines += ["", "The phantoms have true labels and the synthetic cases are segmented, so part of a deviation "
                  "can be the segmenter's: the last three columns segment the phantoms the same way (as the paper "
                  "segments both sides). Against them the median |SUVmax deviation| is "
                  f"{t['suv_max_same_segmenter_median_abs_dev_pct']:.1f} % ("
                  f"{'within' if t['suv_max_same_segmenter_goal_met'] else 'above'} the 10 % goal)."]
    return "\n".join(lines + [""])


def _whole_body(r: dict) -> str:
    lines = ["## Whole body (no segmenter needed)", "", "| figure | sex | phantom mean | synthetic mean | deviation % | "
             "phantom-twin deviation % |", "|---|---|---|---|---|---|"]
    for a, b in zip(r["whole_body"]["synthetic"], r["whole_body"]["phantom_twins"]):
        lines.append(f"| {a['figure']} | {a['sex']} | {a['real_mean']:.4g} | {a['synth_mean']:.4g} | "
                     f"{a['deviation_pct']:+.1f} | {b['deviation_pct']:+.1f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()

"""Commands on organ tables and results: stats, compare, plot, demo."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import (DEFAULT_MAX_VOXELS, Device, LesionMargin, Lesions, MaxVoxels, Progress, Scheduler, Seed, Segmenter,
                  SkipBad, Workers, _command, _parse, out, output_folder, say, set_max_voxels)


@_command()
def stats(
    real: Annotated[Path, typer.Argument(help="organ_metrics.csv of the real cohort.")],
    synth: Annotated[Path, typer.Argument(help="organ_metrics.csv of the synthetic cohort.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Results folder.")] = Path("results"),
    margin: Annotated[float, typer.Option(help="Equivalence margin on the ratio of geometric means (0.05 = 5%).")] = 0.05,
    alpha: Annotated[float, typer.Option(help="Level of the tests (BH within each family); equivalence uses the 1-2alpha CI.")] = 0.05,
    age_bins: Annotated[str, typer.Option(help="Age-group edges or a preset: default, paper, decades.")] = "default",
    min_n: Annotated[int, typer.Option(help="Fewest cases per side for a cell to be tested.")] = 5,
    robust: Annotated[bool, typer.Option("--robust", help="HC3 (heteroscedasticity-robust) standard errors.")] = False,
    seed: Seed = 0,
) -> None:
    """Concordance, trends and summary from two organ tables (no images needed)."""
    from ..demographics import parse_age_bins
    from ..pipeline import run_stats
    from ..stats import StatsParams

    params = StatsParams(margin=margin, alpha=alpha, age_bins=_parse(parse_age_bins, age_bins, "--age-bins"),
                         min_n=min_n, robust=robust, seed=seed)
    with output_folder(out_dir, "stats"):
        result = run_stats(real, synth, out_dir, params)
    _print_headline(result.summary)
    say(f"tables written to {out_dir}")


# compare / plot / demo ------------------------------------------------------------------------------------
@_command()
def compare(
    real: Annotated[Path, typer.Argument(help="The real (reference) cohort folder.")],
    synth: Annotated[Path, typer.Argument(help="The synthetic cohort folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Results folder (new, or one this tool "
                                          "wrote; locked while the run writes it).")] = Path("results"),
    segmenter: Segmenter = None,
    real_segmenter: Annotated[Optional[str], typer.Option(help="Segmenter for the real side only.")] = None,
    synth_segmenter: Annotated[Optional[str], typer.Option(help="Segmenter for the synthetic side only.")] = None,
    organs: Annotated[Optional[str], typer.Option(help="Comma list of organs (default: all nine).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metrics", help="Comma list (default volume_ml,suv_mean,suv_max).")] = None,
    age_bins: Annotated[str, typer.Option(help="Age-group edges (18,40,60,80) or a preset: default, paper, decades.")] = "default",
    margin: Annotated[float, typer.Option(help="Equivalence margin on the ratio of geometric means (0.05 = 5%).")] = 0.05,
    alpha: Annotated[float, typer.Option(help="Level of the tests (BH within each family); equivalence uses the 1-2alpha CI.")] = 0.05,
    min_n: Annotated[int, typer.Option(help="Fewest cases per side for a cell to be tested.")] = 5,
    robust: Annotated[bool, typer.Option("--robust", help="HC3 (heteroscedasticity-robust) standard errors.")] = False,
    workers: Workers = 1,
    device: Device = "cpu",
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a results folder of another comparison.")] = False,
    scheduler: Scheduler = None,
    skip_bad: SkipBad = False,
    progress: Progress = True,
    max_voxels: MaxVoxels = DEFAULT_MAX_VOXELS,
    lesions: Lesions = "exclude",
    lesion_margin: LesionMargin = 0.0,
    diagnosis: Annotated[Optional[str], typer.Option("--diagnosis", metavar="VALUE", help="Keep only the real cases "
                                                     "with this diagnosis (e.g. NEGATIVE; any value of the cohort's "
                                                     "diagnosis column, case-insensitive).")] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Image-level metrics (FID on 2.5D features, "
                                         "MMD, MS-SSIM between twins): image_metrics.csv.")] = True,
    features: Annotated[str, typer.Option("--features", metavar="SPEC", help="Feature extractor for FID/MMD: bundled "
                                          "(the phantom segmenter's encoder, trained on phantoms only) or model:PATH "
                                          "(a TorchScript file or a MONAI .json + .safetensors you have).")] = "bundled",
    train: Annotated[Optional[Path], typer.Option("--train", metavar="DIR", help="The generator's training cohort: "
                                                  "flag synthetic cases closer to a training case than real cases "
                                                  "are (memorization.csv).")] = None,
) -> None:
    """Segment, measure and compare two cohorts; write tables, figures and report.html."""
    from ..pipeline import CompareConfig, run_compare

    cfg = CompareConfig.from_options(real=real, synth=synth, out=out_dir, segmenter=segmenter,
                                     real_segmenter=real_segmenter, synth_segmenter=synth_segmenter,
                                     organs=organs, metrics=metric, age_bins=age_bins, margin=margin, alpha=alpha,
                                     min_n=min_n, robust=robust, workers=workers, device=device, seed=seed,
                                     force=force, skip_bad=skip_bad, scheduler=scheduler, lesions=lesions,
                                     lesion_margin_mm=lesion_margin, diagnosis=diagnosis, images=images,
                                     features=features, train=train)
    set_max_voxels(max_voxels)
    with output_folder(out_dir, "compare"):
        result = run_compare(cfg, progress=progress)
    _print_headline(result.comparison.summary)
    _print_images(result.comparison.summary.get("images"))
    say(f"report: {result.report}")


def _print_images(images: dict | None) -> None:
    """One line per image-level headline: FID (2.5D) per modality with the real-halves reference, memorization."""
    if not images:
        return
    for modality in ("ct", "pet"):
        fid = images.get(f"fid_2.5d_{modality}") or {}
        if fid.get("value") is not None:
            half, ref = (f"{v:.4g}" if v is not None else "n/a" for v in (fid.get("synth_half"), fid.get("real_halves")))
            say(f"FID 2.5D {modality.upper()}: {fid['value']:.4g} (synthetic half {half}; real half vs half {ref})")
    memo = images.get("memorization")
    if memo:
        say(f"memorization: {memo['n_flagged']} of {memo['n_synthetic']} synthetic cases closer to a training case "
            f"than the real cases' 1st percentile ({memo['threshold']:.4g})")


@_command()
def plot(results: Annotated[Path, typer.Argument(help="A results folder written by compare.")]) -> None:
    """Redraw the figures and the report from the tables in a results folder."""
    from ..report import redraw

    with output_folder(results, "plot"):
        paths = redraw(results)
    say(f"redrawn: {len(paths)} files in {results}")


@_command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Where the demo writes everything.")] = Path("demo-results"),
    n: Annotated[int, typer.Option("--n", min=5, help="Reference phantom cases (and as many synthetic twins).")] = 60,
    seed: Seed = 0,
    workers: Workers = 2,
    device: Device = "cpu",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A cascade folder (default: bundled weights).")] = None,
    progress: Progress = True,
) -> None:
    """End to end on the embedded default: phantom cohort -> generate twins -> compare -> report."""
    from ..pipeline import DemoConfig, run_demo

    with output_folder(out_dir, "demo"):
        result = run_demo(DemoConfig(out=out_dir, n=n, seed=seed, workers=workers, device=device,
                                     checkpoint=checkpoint), progress=progress)
    _print_headline(result.comparison.summary)
    say(f"report: {result.report}")


def _print_headline(summary: dict) -> None:
    """The short tables users see at the end of compare/stats/demo: verdicts of the primary cells per metric and
    the worst primary cells."""
    head = summary.get("headline", {})
    t = Table(title="primary cells (organ x volume/SUVmean x sex): verdicts")
    columns = ("differs", "equivalent", "inconclusive", "not tested", "median |dev| %")
    t.add_column("metric")
    for col in columns:
        t.add_column(col, justify="right")
    for metric, figs in head.get("per_metric", {}).items():
        med = figs.get("median_abs_deviation_pct")
        t.add_row(metric, *[str(figs.get(c, "")) for c in columns[:-1]],
                  f"{med:.3g}" if isinstance(med, float) else "")
    out.print(t)
    worst = summary.get("worst_cells", [])[:5]
    if worst:
        cols = ("organ", "metric", "sex", "deviation_pct", "p_adjusted", "verdict")
        w = Table(title="worst primary cells")
        for col in cols:
            w.add_column(col)
        for cell in worst:
            w.add_row(*[f"{cell.get(c):.3g}" if isinstance(cell.get(c), float) else str(cell.get(c)) for c in cols])
        out.print(w)

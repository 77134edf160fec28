"""Commands on organ tables and results: stats, compare, plot, demo."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import Device, Progress, Seed, Segmenter, Workers, _command, _parse, out


@_command()
def stats(
    real: Annotated[Path, typer.Argument(help="organ_metrics.csv of the real cohort.")],
    synth: Annotated[Path, typer.Argument(help="organ_metrics.csv of the synthetic cohort.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o")] = Path("results"),
    margin: Annotated[float, typer.Option(help="Equivalence margin as a fraction (0.05 = 5%).")] = 0.05,
    age_bins: Annotated[str, typer.Option(help="Age-group edges or a preset: default, paper, decades.")] = "default",
    min_n: Annotated[int, typer.Option(help="Fewest cases per side for a cell to be tested.")] = 5,
    seed: Seed = 0,
) -> None:
    """Concordance, trends and summary from two organ tables (no images needed)."""
    from ..demographics import parse_age_bins
    from ..stats import run_stats

    result = run_stats(real, synth, out_dir, margin=margin, age_bins=_parse(parse_age_bins, age_bins, "--age-bins"),
                       min_n=min_n, seed=seed)
    _print_headline(result.summary)
    out.print(f"tables written to {out_dir}")


# compare / plot / demo ------------------------------------------------------------------------------------
@_command()
def compare(
    real: Annotated[Path, typer.Argument(help="The real (reference) cohort folder.")],
    synth: Annotated[Path, typer.Argument(help="The synthetic cohort folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path("results"),
    segmenter: Segmenter = None,
    real_segmenter: Annotated[Optional[str], typer.Option(help="Segmenter for the real side only.")] = None,
    synth_segmenter: Annotated[Optional[str], typer.Option(help="Segmenter for the synthetic side only.")] = None,
    organs: Annotated[Optional[str], typer.Option(help="Comma list of organs (default: all nine).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metrics", help="Comma list (default volume_ml,suv_mean,suv_max).")] = None,
    age_bins: Annotated[str, typer.Option(help="Age-group edges (18,40,60,80) or a preset: default, paper, decades.")] = "default",
    margin: Annotated[float, typer.Option(help="Equivalence margin as a fraction (0.05 = 5%).")] = 0.05,
    min_n: Annotated[int, typer.Option(help="Fewest cases per side for a cell to be tested.")] = 5,
    workers: Workers = 1,
    device: Device = "cpu",
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a results folder of another comparison.")] = False,
    progress: Progress = True,
) -> None:
    """Segment, measure and compare two cohorts; write tables, figures and report.html."""
    from ..pipeline import CompareConfig, run_compare

    cfg = CompareConfig.from_options(real=real, synth=synth, out=out_dir, segmenter=segmenter,
                                     real_segmenter=real_segmenter, synth_segmenter=synth_segmenter,
                                     organs=organs, metrics=metric, age_bins=age_bins, margin=margin, min_n=min_n,
                                     workers=workers, device=device, seed=seed, force=force)
    result = run_compare(cfg, progress=progress)
    _print_headline(result.comparison.summary)
    out.print(f"report: {result.report}")


@_command()
def plot(results: Annotated[Path, typer.Argument(help="A results folder written by compare.")]) -> None:
    """Redraw the figures and the report from the tables in a results folder."""
    from ..report import redraw

    paths = redraw(results)
    out.print(f"redrawn: {len(paths)} files in {results}")


@_command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes everything.")] = Path("demo-results"),
    n: Annotated[int, typer.Option("--n", min=5, help="Reference phantom cases (and as many synthetic twins).")] = 60,
    seed: Seed = 0,
    workers: Workers = 2,
    device: Device = "cpu",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A cascade folder (default: bundled weights).")] = None,
    progress: Progress = True,
) -> None:
    """End to end on the embedded default: phantom cohort -> generate twins -> compare -> report."""
    from ..pipeline import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out_dir, n=n, seed=seed, workers=workers, device=device,
                                   checkpoint=checkpoint), progress=progress)
    _print_headline(result.comparison.summary)
    out.print(f"report: {result.report}")


def _print_headline(summary: dict) -> None:
    """The short table users see at the end of compare/stats/demo: headline figures and worst cells."""
    t = Table(title="concordance (synthetic vs real)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for key, value in summary.get("headline", {}).items():
        t.add_row(key.replace("_", " "), f"{value:.3g}" if isinstance(value, float) else str(value))
    out.print(t)
    worst = summary.get("worst_cells", [])[:5]
    if worst:
        w = Table(title="worst cells")
        for col in ("organ", "metric", "sex", "age_group", "deviation_pct", "p_adjusted"):
            w.add_column(col)
        for cell in worst:
            w.add_row(*[f"{cell.get(c):.3g}" if isinstance(cell.get(c), float) else str(cell.get(c)) for c in
                        ("organ", "metric", "sex", "age_group", "deviation_pct", "p_adjusted")])
        out.print(w)

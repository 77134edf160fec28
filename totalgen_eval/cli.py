"""The `totalgen-eval` command line: thin Typer commands over the library modules.

Every command that meets bad input prints one line ``error: <file>: <problem>`` and exits with status 2.
Long commands show a progress bar and can be interrupted and re-run: finished cases are kept.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import InputError

app = typer.Typer(
    name="totalgen-eval",
    help="Generate synthetic whole-body FDG PET/CT and judge it against real scans, organ by organ.\n\n"
         "Start with `totalgen-eval demo`; then `generate`, `compare`, `plot`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)
out = Console()

# Options shared by several commands ----------------------------------------------------------------
Seed = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same result.")]
Workers = Annotated[int, typer.Option("--workers", "-j", min=1, help="Parallel worker processes.")]
Device = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
Segmenter = Annotated[Optional[str], typer.Option(
    "--segmenter", help="labels | totalsegmentator | model:PATH | model:bundled (default: labels where the "
                        "cohort has them, else TotalSegmentator where its weights exist).")]


def _friendly(func: Callable) -> Callable:
    """Turn InputError / ValueError from the library into one red line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: finished cases are kept; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper


def _parse(func: Callable, value, what: str):
    """Parse an option value; a ValueError becomes an InputError naming the option."""
    try:
        return func(value)
    except ValueError as exc:
        raise InputError(str(exc), what) from None


def _command(name: str | None = None, **kw) -> Callable:
    def register(func: Callable) -> Callable:
        return app.command(name, **kw)(_friendly(func))
    return register


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        print(__version__)
        raise typer.Exit(0)


# inspect / phantoms / doctor --------------------------------------------------------------------------
@_command()
def inspect(
    cohort: Annotated[Path, typer.Argument(help="A cohort folder: cohort.csv, the TCIA FDG-PET-CT-Lesions layout, "
                                                "or nnU-Net imagesTr.")],
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the case table (with grids) to this CSV.")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Load the good cases, list the bad ones.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Read every volume (truncation, Bq/mL PET, NaNs).")] = False,
    resample_ct: Annotated[bool, typer.Option("--resample-ct", help="Accept CT on another grid than the PET "
                                                                    "(resampled linearly onto it when read).")] = False,
    channel_order: Annotated[str, typer.Option(help="nnU-Net channels: ct,pet (autoPET II-IV) or pet,ct (autoPET I).")] = "ct,pet",
) -> None:
    """Show what a cohort folder holds: layout, cases, demographics, files, problems."""
    from .cohort import check_cohort, inspect_frame, load_cohort, summarize
    from .provenance import write_table

    c = load_cohort(cohort, skip_bad=skip_bad, channel_order=channel_order, resample_ct=resample_ct)
    s = summarize(c)
    problems = list(c.problems) + (list(check_cohort(c, deep=True)) if deep else [])
    kind = f"{c.layout} layout" + (", [bold]phantom data[/bold] (not patients)" if c.is_phantom else "")
    t = Table(title=f"{cohort}  ({kind})", show_header=False)
    t.add_column("item")
    t.add_column("value")
    age = s["age"]
    t.add_row("cases", str(s["n_cases"]))
    t.add_row("sex", f"{s['sex']['F']} F, {s['sex']['M']} M, {s['sex']['missing']} missing")
    t.add_row("age (years)", "missing" if age["mean"] is None else
              f"{age['mean']:.1f} +- {age['sd'] or 0:.1f} (range {age['min']:g}-{age['max']:g}; {age['missing']} missing)")
    t.add_row("with height / weight", f"{s['with_height']} / {s['with_weight']}")
    t.add_row("with organ labels", str(s["with_labels"]))
    if "diagnosis" in s:
        t.add_row("diagnosis", ", ".join(f"{k} {v}" for k, v in s["diagnosis"].items()))
    t.add_row("problems", str(len(problems)))
    out.print(t)
    for case_id, problem in problems:
        out.print(f"[yellow]problem[/yellow] {case_id}: {problem}", highlight=False)
    if csv is not None:
        write_table(inspect_frame(c), csv)
        out.print(f"case table written to {csv}")


@_command()
def phantoms(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write the phantom cohort into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of cases.")] = 20,
    seed: Seed = 0,
    voxel_mm: Annotated[float, typer.Option("--voxel-mm", help="Isotropic voxel size (mm).")] = 8.0,
    layout: Annotated[str, typer.Option(help="ours (cohort.csv) or tcia (FDG-PET-CT-Lesions NIfTI layout).")] = "ours",
    workers: Workers = 1,
    progress: Progress = True,
) -> None:
    """Make a procedural phantom cohort with known ground truth (truth.csv): not real patients."""
    from .phantom import PhantomConfig, make_cohort

    if layout not in ("ours", "tcia"):
        raise InputError(f"unknown layout {layout!r} (ours or tcia)", "--layout")
    path = make_cohort(out_dir, n=n, seed=seed, config=PhantomConfig(voxel_mm=voxel_mm), layout=layout,
                       workers=workers, progress=progress)
    out.print(f"{n} phantom cases written to {path}")


@_command()
def doctor() -> None:
    """What is installed, which segmentation backends and weights are usable, which device."""
    import platform

    from .provenance import package_versions

    t = Table(title="totalgen-eval doctor")
    t.add_column("item")
    t.add_column("status")
    for name, version in package_versions().items():
        t.add_row(name, version or "[red]not installed[/red]")
    try:
        import torch
        t.add_row("torch threads", str(torch.get_num_threads()))
        t.add_row("cuda", f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "not available (cpu)")
    except ImportError:
        t.add_row("torch", "[red]not importable[/red]")
    try:
        from isal import igzip  # noqa: F401
        t.add_row("isal gzip", "yes")
    except ImportError:
        t.add_row("isal gzip", "no (plain gzip: slower reads)")
    try:
        from .segment import totalsegmentator_weights
        found, searched = totalsegmentator_weights()
        t.add_row("TotalSegmentator weights", ("[green]found[/green] " if found else "[yellow]absent[/yellow]; looked in ")
                  + ", ".join(str(p) for p in searched))
    except ImportError as exc:
        t.add_row("TotalSegmentator weights", f"unknown ({exc})")
    for label, finder in (("bundled phantom segmenter", "_bundled_segmenter"), ("bundled generator", "_bundled_generator")):
        t.add_row(label, globals()[finder]())
    t.add_row("platform", platform.platform())
    out.print(t)


def _bundled_segmenter() -> str:
    from importlib.resources import files
    found = [p.name for p in files("totalgen_eval").joinpath("weights").iterdir() if p.name.endswith(".safetensors")]
    return ", ".join(found) if found else "[yellow]absent[/yellow]"


def _bundled_generator() -> str:
    from importlib.resources import files
    found = [p.name for p in files("generator").joinpath("weights").iterdir() if p.name.endswith(".safetensors")]
    return ", ".join(found) if found else "[yellow]absent[/yellow]"


# segment / metrics / stats ----------------------------------------------------------------------------
@_command()
def segment(
    cohort: Annotated[Path, typer.Argument(help="A cohort folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where labels are cached.")] = Path("segmentations"),
    segmenter: Segmenter = None,
    fast: Annotated[bool, typer.Option("--fast/--full", help="TotalSegmentator's 3 mm model (fast) or 1.5 mm.")] = True,
    device: Device = "cpu",
    workers: Workers = 1,
    progress: Progress = True,
) -> None:
    """Organ labels (TotalSegmentator class ids) for every case, cached by content hash."""
    from .cohort import load_cohort
    from .segment import segment_cohort

    c = load_cohort(cohort)
    paths = segment_cohort(c, segmenter=segmenter, cache_dir=out_dir, device=device, fast=fast,
                           workers=workers, progress=progress)
    out.print(f"labels for {len(paths)} cases in {out_dir}")


@_command()
def metrics(
    cohort: Annotated[Path, typer.Argument(help="A cohort folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The organ table (CSV).")] = Path("organ_metrics.csv"),
    segmenter: Segmenter = None,
    organs: Annotated[Optional[str], typer.Option(help="Comma list of organs (default: all nine).")] = None,
    age_bins: Annotated[str, typer.Option(help="Age-group edges (18,40,60,80) or a preset: default, paper, decades.")] = "default",
    device: Device = "cpu",
    workers: Workers = 1,
    progress: Progress = True,
) -> None:
    """Per-case organ table: volume (mL), SUV mean/median/SD/max/peak, HU mean, one row per case x organ."""
    from .cohort import load_cohort
    from .demographics import parse_age_bins
    from .metrics import write_metrics
    from .organs import parse_organs

    c = load_cohort(cohort)
    table = write_metrics(c, output, segmenter=segmenter, workers=workers, device=device, progress=progress,
                          organs=_parse(parse_organs, organs, "--organs"),
                          age_bins=_parse(parse_age_bins, age_bins, "--age-bins"))
    out.print(f"{table['case_id'].nunique()} cases x {table['organ'].nunique()} organs written to {output}")


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
    from .demographics import parse_age_bins
    from .stats import run_stats

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
    from .pipeline import CompareConfig, run_compare

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
    from .report import redraw

    paths = redraw(results)
    out.print(f"redrawn: {len(paths)} files in {results}")


@_command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes everything.")] = Path("demo-results"),
    n: Annotated[int, typer.Option("--n", min=5, help="Reference phantom cases (and as many synthetic twins).")] = 60,
    seed: Seed = 0,
    workers: Workers = 2,
    device: Device = "cpu",
    progress: Progress = True,
) -> None:
    """End to end on the embedded default: phantom cohort -> generate twins -> compare -> report."""
    from .pipeline import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out_dir, n=n, seed=seed, workers=workers, device=device), progress=progress)
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


# generate / train / benchmark -------------------------------------------------------------------------
@_command()
def generate(
    n: Annotated[Optional[int], typer.Option("--n", min=1, help="Number of cases (ignored with --match).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the synthetic cohort.")] = Path("synth"),
    match: Annotated[Optional[Path], typer.Option("--match", help="One synthetic twin per case of this cohort.")] = None,
    sex: Annotated[Optional[str], typer.Option("--sex", help="Only F or M.")] = None,
    age: Annotated[Optional[str], typer.Option("--age", help="Age range in years, e.g. 40-70.")] = None,
    height: Annotated[Optional[str], typer.Option("--height", help="Height (m) or range, e.g. 1.6-1.8.")] = None,
    weight: Annotated[Optional[str], typer.Option("--weight", help="Weight (kg) or range, e.g. 60-90.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the checkpoint's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (1 = none).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Volumes denoised together.")] = 8,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A cascade folder (default: bundled weights).")] = None,
    seed: Seed = 0,
    device: Device = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Start afresh in a folder that holds another run.")] = False,
    progress: Progress = True,
) -> None:
    """Sample a synthetic PET/CT cohort from the bundled cascaded diffusion generator."""
    from .synthesis import generate_cohort

    if n is None and match is None:
        n = 500
    path = generate_cohort(out_dir, n=n, match=match, sex=sex, age=age, height=height, weight=weight, steps=steps,
                           guidance=guidance, batch_size=batch_size, checkpoint=checkpoint, seed=seed,
                           device=device, force=force, progress=progress)
    out.print(f"synthetic cohort written to {path}")


@_command()
def train(
    cohort: Annotated[Path, typer.Argument(help="Training cohort folder.")],
    stage: Annotated[str, typer.Option("--stage", help="lowres (stage 1) or sr (stage 2).")] = "lowres",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder (resumes if it holds one).")] = Path("runs/lowres"),
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    seed: Seed = 0,
    device: Device = "cpu",
    progress: Progress = True,
) -> None:
    """Train one stage of the cascade on a cohort (resumable; works under torchrun for DDP)."""
    from .training_data import train_stage

    if stage not in ("lowres", "sr"):
        raise InputError(f"unknown stage {stage!r} (lowres or sr)", "--stage")
    path = train_stage(cohort, stage=stage, out=out_dir, steps=steps, batch_size=batch_size, seed=seed,
                       device=device, progress=progress)
    out.print(f"checkpoint written to {path}")


@_command()
def benchmark(
    suite: Annotated[str, typer.Option("--suite", help="regression, perf or all.")] = "regression",
    update: Annotated[bool, typer.Option("--update", help="Rewrite the baselines with the current figures.")] = False,
    publish: Annotated[bool, typer.Option("--publish", help="Regenerate the reports/ folder.")] = False,
    fast: Annotated[bool, typer.Option("--fast/--full", help="The CI subset or the full suite.")] = True,
) -> None:
    """Regression and performance benchmarks against committed baselines (benchmarks/baselines/*.json).

    Exits 1 naming every figure that regressed; --update rewrites the baselines deliberately."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise InputError("the benchmarks live in the source checkout (git clone); not in an installed wheel", root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.suite import run_suite

    try:
        ok = run_suite(suite, update=update, publish=publish, fast=fast, echo=out.print)
    except ValueError as exc:
        raise InputError(str(exc), "--suite") from None
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""Commands on cohorts: inspect, phantoms, doctor, segment, metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import InputError
from .app import Device, Progress, Seed, Segmenter, Workers, _command, _parse, out


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
    from ..cohort import check_cohort, inspect_frame, load_cohort, summarize
    from ..provenance import write_table

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
    from ..phantom import PhantomConfig, make_cohort

    if layout not in ("ours", "tcia"):
        raise InputError(f"unknown layout {layout!r} (ours or tcia)", "--layout")
    path = make_cohort(out_dir, n=n, seed=seed, config=PhantomConfig(voxel_mm=voxel_mm), layout=layout,
                       workers=workers, progress=progress)
    out.print(f"{n} phantom cases written to {path}")


@_command()
def doctor() -> None:
    """What is installed, which segmentation backends and weights are usable, which device."""
    import platform

    from ..provenance import package_versions

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
        from ..segment import totalsegmentator_weights
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


# segment / metrics ----------------------------------------------------------------------------
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
    from ..cohort import load_cohort
    from ..segment import segment_cohort

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
    from ..cohort import load_cohort
    from ..demographics import parse_age_bins
    from ..metrics import write_metrics
    from ..organs import parse_organs

    c = load_cohort(cohort)
    table = write_metrics(c, output, segmenter=segmenter, workers=workers, device=device, progress=progress,
                          organs=_parse(parse_organs, organs, "--organs"),
                          age_bins=_parse(parse_age_bins, age_bins, "--age-bins"))
    out.print(f"{table['case_id'].nunique()} cases x {table['organ'].nunique()} organs written to {output}")

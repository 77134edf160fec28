"""Commands on cohorts: inspect, phantoms, doctor, segment, metrics."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import InputError, check_number, printable
from .app import (DEFAULT_MAX_VOXELS, MAX_CASES, Device, LesionMargin, Lesions, MaxVoxels, Progress, Scheduler, Seed,
                  Segmenter, SkipBad, Workers, _command, _parse, out, output_folder, protect, say, set_max_voxels)

if TYPE_CHECKING:
    import pandas as pd


# inspect / phantoms / doctor --------------------------------------------------------------------------
@_command()
def inspect(
    cohort: Annotated[Path, typer.Argument(help="A cohort folder: cohort.csv, the TCIA FDG-PET-CT-Lesions layout, "
                                                "or nnU-Net imagesTr.")],
    csv: Annotated[Optional[Path], typer.Option("--csv", metavar="CSV", help="Also write the case table (with grids) "
                                                "to this CSV (never one of the cohort's own files).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Load the good cases, list the bad ones.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Read every volume (truncation, Bq/mL PET, NaNs).")] = False,
    resample_ct: Annotated[bool, typer.Option("--resample-ct", help="Accept CT on another grid than the PET "
                                                                    "(resampled linearly onto it when read).")] = False,
    channel_order: Annotated[str, typer.Option(metavar="ORDER", help="nnU-Net channels: ct,pet (autoPET II-IV) or "
                                               "pet,ct (autoPET I).")] = "ct,pet",
    max_voxels: MaxVoxels = DEFAULT_MAX_VOXELS,
) -> None:
    """Show what a cohort folder holds: layout, cases, demographics, files, problems.

    An interrupted `generate` folder is reported as incomplete (run the same generate command to finish it)."""
    from ..cohort import check_cohort, inspect_frame, load_cohort, summarize
    from ..provenance import write_table

    set_max_voxels(max_voxels)
    c = load_cohort(cohort, skip_bad=skip_bad, channel_order=channel_order, resample_ct=resample_ct)
    if csv is not None:
        protect([csv], c)
    problems = list(c.problems) + (list(check_cohort(c, deep=True)) if deep else [])
    out.print(_summary_table(c, cohort, summarize(c), len(problems)))
    for case_id, problem in problems:
        out.print(Text.assemble(("problem ", "yellow"), printable(f"{case_id}: {problem}")), soft_wrap=True)
    if csv is not None:
        write_table(inspect_frame(c), csv)
        say(f"case table written to {csv}")


def _summary_table(c, cohort: Path, s: dict, n_problems: int) -> Table:
    """The table `inspect` prints: cases, sex, age, height/weight, labels, lesions, diagnoses, problems."""
    kind = f"{c.layout} layout" + (", phantom data (not patients)" if c.is_phantom else "")
    t = Table(title=Text(printable(f"{cohort}  ({kind})")), show_header=False)
    t.add_column("item")
    t.add_column("value")
    age = s["age"]
    t.add_row("cases", str(s["n_cases"]))
    t.add_row("sex", f"{s['sex']['F']} F, {s['sex']['M']} M, {s['sex']['missing']} missing")
    t.add_row("age (years)", "missing" if age["mean"] is None else
              f"{age['mean']:.1f} +- {age['sd'] or 0:.1f} (range {age['min']:g}-{age['max']:g}; {age['missing']} missing)")
    t.add_row("with height / weight", f"{s['with_height']} / {s['with_weight']}")
    t.add_row("with organ labels", str(s["with_labels"]))
    if s.get("with_lesions"):
        t.add_row("with lesion masks", str(s["with_lesions"]))
    if "diagnosis" in s:
        t.add_row("diagnosis", printable(", ".join(f"{k} {v}" for k, v in s["diagnosis"].items())))
    t.add_row("problems", str(n_problems))
    return t


@_command()
def phantoms(
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", metavar="DIR",
                                                    help="Folder to write the phantom cohort into.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_CASES, metavar="N", help="Number of cases.")] = 20,
    seed: Seed = 0,
    voxel_mm: Annotated[float, typer.Option("--voxel-mm", metavar="MM", help="Isotropic voxel size (mm), 1-32.")] = 8.0,
    layout: Annotated[str, typer.Option(metavar="LAYOUT", help="ours (cohort.csv) or tcia (FDG-PET-CT-Lesions NIfTI "
                                                              "layout).")] = "ours",
    workers: Workers = 1,
    progress: Progress = True,
    lesions: Annotated[bool, typer.Option("--lesions", help="Give every case 1-3 hot spherical lesions (liver and "
                                          "elsewhere): a lesion mask per case and their truth in truth.csv.")] = False,
    out_arg: Annotated[Optional[Path], typer.Argument(metavar="OUT", hidden=True,
                                                      help="Deprecated: the folder as an argument; use --out.")] = None,
) -> None:
    """Make a procedural phantom cohort with known ground truth (truth.csv): not real patients.

    Example: `totalgen-eval phantoms --out real/ --n 200`."""
    from ..phantom import PhantomConfig, make_cohort

    out_dir = _one_out(out_dir, out_arg)
    if layout not in ("ours", "tcia"):
        raise InputError(f"unknown layout {layout!r} (ours or tcia)", "--layout")
    check_number(voxel_mm, "--voxel-mm", 1.0, 32.0)
    with output_folder(out_dir, "phantoms"):
        path = make_cohort(out_dir, n=n, seed=seed, config=PhantomConfig(voxel_mm=voxel_mm), layout=layout,
                           workers=workers, progress=progress, lesions=1.0 if lesions else 0.0)
    say(f"{n} phantom cases written to {path}")


def _one_out(option: Path | None, argument: Path | None) -> Path:
    """The output folder from --out, or from the deprecated positional argument (with a one-line warning)."""
    import warnings

    if option is not None and argument is not None and option != argument:
        raise InputError(f"two output folders given ({argument} and --out {option}); give --out only", "--out")
    if option is None and argument is None:
        raise InputError("no output folder: give --out DIR", "--out")
    if option is None:
        warnings.warn(f"the output folder as an argument is deprecated: use --out {argument}", FutureWarning)
    return option or argument


@_command()
def doctor() -> None:
    """What is installed, which segmentation backends and weights are usable, which device."""
    import platform

    from ..provenance import package_versions

    t = Table(title="totalgen-eval doctor")
    t.add_column("item")
    t.add_column("status")
    for name, version in package_versions().items():
        t.add_row(name, version or Text("not installed", style="red"))
    try:
        import torch
        t.add_row("torch threads", str(torch.get_num_threads()))
        t.add_row("cuda", f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "not available (cpu)")
    except ImportError:
        t.add_row("torch", Text("not importable", style="red"))
    try:
        from isal import igzip  # noqa: F401
        t.add_row("isal gzip", "yes")
    except ImportError:
        t.add_row("isal gzip", "no (plain gzip: slower reads)")
    try:
        from ..segment import totalsegmentator_weights
        found, searched = totalsegmentator_weights()
        t.add_row("TotalSegmentator weights", Text.assemble(("found ", "green") if found else ("absent", "yellow"),
                                                            "" if found else "; looked in ",
                                                            printable(", ".join(str(p) for p in searched))))
    except ImportError as exc:
        t.add_row("TotalSegmentator weights", f"unknown ({exc})")
    for label, finder in (("bundled phantom segmenter", "_bundled_segmenter"), ("bundled generator", "_bundled_generator")):
        t.add_row(label, globals()[finder]())
    t.add_row("platform", platform.platform())
    out.print(t)


def _bundled_segmenter() -> Text:
    from importlib.resources import files
    found = [p.name for p in files("totalgen_eval").joinpath("weights").iterdir() if p.name.endswith(".safetensors")]
    return Text(", ".join(found)) if found else Text("absent", style="yellow")


def _bundled_generator() -> Text:
    from importlib.resources import files
    found = [p.name for p in files("generator").joinpath("weights").iterdir() if p.name.endswith(".safetensors")]
    return Text(", ".join(found)) if found else Text("absent", style="yellow")


# segment / metrics ----------------------------------------------------------------------------
@_command()
def segment(
    cohort: Annotated[Path, typer.Argument(help="A cohort folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Where labels are cached.")] = Path("segmentations"),
    segmenter: Segmenter = None,
    fast: Annotated[bool, typer.Option("--fast/--full", help="TotalSegmentator's 3 mm model (fast) or 1.5 mm.")] = True,
    device: Device = "cpu",
    workers: Workers = 1,
    scheduler: Scheduler = None,
    skip_bad: SkipBad = False,
    progress: Progress = True,
    max_voxels: MaxVoxels = DEFAULT_MAX_VOXELS,
) -> None:
    """Organ labels (TotalSegmentator class ids) for every case, cached by input identity and settings."""
    from ..parallel import load_checked, make_scheduler
    from ..segment import segment_cohort

    set_max_voxels(max_voxels)
    make_scheduler(scheduler, workers)  # a bad --scheduler fails before any work
    c = load_checked(cohort, skip_bad)
    with output_folder(out_dir, "segment"):
        done = segment_cohort(c, segmenter=segmenter, cache_dir=out_dir, device=device, fast=fast,
                              workers=workers, progress=progress, skip_bad=skip_bad, scheduler=scheduler)
    out.print(f"labels for {len(done.labels)} cases in {out_dir}", highlight=False, markup=False)
    if len(done.excluded):
        out.print(f"{len(done.excluded)} cases left out: {out_dir / 'excluded.csv'}", highlight=False, markup=False)


@_command()
def metrics(
    cohort: Annotated[Path, typer.Argument(help="A cohort folder.")],
    output: Annotated[Path, typer.Option("--out", "-o", metavar="CSV", help="The organ table (CSV; never one of the "
                                         "cohort's own files).")] = Path("organ_metrics.csv"),
    segmenter: Segmenter = None,
    organs: Annotated[Optional[str], typer.Option(help="Comma list of organs (default: all nine).")] = None,
    age_bins: Annotated[str, typer.Option(help="Age-group edges (18,40,60,80) or a preset: default, paper, decades.")] = "default",
    device: Device = "cpu",
    workers: Workers = 1,
    scheduler: Scheduler = None,
    skip_bad: SkipBad = False,
    progress: Progress = True,
    max_voxels: MaxVoxels = DEFAULT_MAX_VOXELS,
    lesions: Lesions = "exclude",
    lesion_margin: LesionMargin = 0.0,
    output_old: Annotated[Optional[Path], typer.Option("--output", hidden=True, help="Deprecated: --out.")] = None,
) -> None:
    """Per-case organ table: volume (mL), SUV mean/median/SD/max/peak, HU mean, lesion volume inside the organ,
    one row per case x organ; lesions.csv (MTV, TLG, lesion count per case) when cases have lesion masks."""
    from ..demographics import parse_age_bins
    from ..metrics import write_metrics
    from ..organs import parse_organs
    from ..parallel import load_checked, make_scheduler

    organ_names = _parse(parse_organs, organs, "--organs")
    bins = _parse(parse_age_bins, age_bins, "--age-bins")
    _check_lesion_options(lesions, lesion_margin)
    make_scheduler(scheduler, workers)  # a bad --scheduler fails before any work
    if output_old is not None:
        output = _one_out(None, output_old)
    set_max_voxels(max_voxels)
    c = load_checked(cohort, skip_bad)
    protect(_metrics_outputs(output), c)
    table = write_metrics(c, output, segmenter=segmenter, workers=workers, device=device, progress=progress,
                          organs=organ_names, age_bins=bins, skip_bad=skip_bad, scheduler=scheduler, lesions=lesions,
                          lesion_margin_mm=lesion_margin)
    _print_metrics_written(table, output)


def _check_lesion_options(lesions: str, lesion_margin: float) -> None:
    """Refuse (InputError) an unknown --lesions mode or a --lesion-margin (mm) outside 0-1000."""
    from ..metrics import LESION_MODES

    if lesions not in LESION_MODES:
        raise InputError(f"{lesions!r}: choose {' or '.join(LESION_MODES)}", "--lesions")
    check_number(lesion_margin, "--lesion-margin", 0.0, 1000.0)


def _metrics_outputs(output: Path) -> list[Path]:
    """Every file the metrics command writes beside the organ table ``output`` (itself included)."""
    from ..metrics import lesions_path

    return [output, output.with_name(output.name + ".json"), lesions_path(output), output.parent / "excluded.csv"]


def _print_metrics_written(table: pd.DataFrame, output: Path) -> None:
    """Print what the metrics command wrote: cases x organs, the per-case cache, the cases left out."""
    from ..metrics import excluded_table
    from ..metrics.cohort import default_cache_dir

    out.print(f"{table['case_id'].nunique()} cases x {table['organ'].nunique()} organs written to {output} "
              f"(per-case cache: {default_cache_dir(output)})", highlight=False, markup=False)
    n_excluded = len(excluded_table(table))
    if n_excluded:
        out.print(f"{n_excluded} cases left out: {output.parent / 'excluded.csv'}", highlight=False, markup=False)

"""Commands of the generator: generate, train, benchmark."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .app import Device, Progress, Seed, _command, out


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
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Stage 1 sampler steps (default: the checkpoint's, 16).")] = None,
    sr_steps: Annotated[Optional[int], typer.Option("--sr-steps", min=1, help="Stage 2 (super-resolution) sampler steps "
                                                    "(default: the checkpoint's, 4; 2 gives less hot-voxel noise but lower small-organ SUVmean).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (1 = none).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Volumes denoised together.")] = 8,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A cascade folder (default: bundled weights).")] = None,
    seed: Seed = 0,
    device: Device = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Start afresh in a folder that holds another run.")] = False,
    progress: Progress = True,
) -> None:
    """Sample a synthetic PET/CT cohort from the bundled cascaded diffusion generator.

    Writes CT (HU) and PET (SUV) NIfTI on the 8 mm canvas, cohort.csv with the conditioning demographics and
    generate.json. Demographics come from the population model stored with the weights (optionally
    constrained by --sex/--age/--height/--weight) or, with --match, from a real cohort (one twin per case).
    Values outside the training range are clamped with a warning. Re-running continues an interrupted run.

    Examples: `totalgen-eval generate --n 500`, `totalgen-eval generate --match real/ --out twins/`,
    `totalgen-eval generate --n 100 --sex F --age 40-70`."""
    from ..synthesis import generate_cohort

    if n is None and match is None:
        n = 500
    path = generate_cohort(out_dir, n=n, match=match, sex=sex, age=age, height=height, weight=weight, steps=steps,
                           guidance=guidance, batch_size=batch_size, checkpoint=checkpoint, seed=seed,
                           device=device, force=force, progress=progress, sr_steps=sr_steps)
    out.print(f"synthetic cohort written to {path}")


@_command()
def train(
    cohort: Annotated[Path, typer.Argument(help="Training cohort folder.")],
    stage: Annotated[str, typer.Option("--stage", help="lowres (stage 1) or sr (stage 2).")] = "lowres",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder (resumes if it holds one).")] = Path("runs/lowres"),
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Cases a step (per process under torchrun).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 autocast where the device runs it fast), "
                                           "bf16 or fp32.")] = "auto",
    checkpointing: Annotated[bool, typer.Option("--grad-checkpointing/--no-grad-checkpointing",
                                                help="Recompute activations in the backward pass: less memory for "
                                                "large canvases on GPUs, about a third more compute.")] = False,
    seed: Seed = 0,
    device: Device = "cpu",
    progress: Progress = True,
) -> None:
    """Train one stage of the cascade on a cohort (resumable).

    Data-parallel on several GPUs or processes with the same command under torchrun (batch size per
    process; rank 0 writes the files), e.g. `torchrun --standalone --nproc-per-node 4 -m totalgen_eval
    train data/ --stage lowres --out run/ --device cuda --precision bf16`."""
    import os

    from ..training_data import train_stage

    if stage not in ("lowres", "sr"):
        raise InputError(f"unknown stage {stage!r} (lowres or sr)", "--stage")
    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"unknown precision {precision!r} (auto, bf16 or fp32)", "--precision")
    path = train_stage(cohort, stage=stage, out=out_dir, steps=steps, batch_size=batch_size, seed=seed,
                       device=device, progress=progress, precision=precision, checkpointing=checkpointing)
    if int(os.environ.get("RANK", "0")) == 0:
        out.print(f"checkpoint written to {path}")


@_command()
def benchmark(
    suite: Annotated[str, typer.Option("--suite", help="regression, perf or all.")] = "regression",
    update: Annotated[bool, typer.Option("--update", help="Rewrite the baselines with the current figures.")] = False,
    publish: Annotated[bool, typer.Option("--publish", help="Run the full configurations and regenerate reports/ "
                                          "(calibration, generator fidelity and speed, the demo report).")] = False,
    fast: Annotated[bool, typer.Option("--fast/--full", help="The small CI configurations (minutes) or the full "
                                       "ones (--publish implies --full).")] = True,
) -> None:
    """Regression and performance benchmarks against committed baselines (benchmarks/baselines/*.json).

    Suites: regression (statistics calibration, generator fidelity on held-out phantoms), perf (speeds of
    metrics, reading, phantoms, the generator and the demo), all. Every figure is printed beside its
    baseline and tolerance; the command exits 1 naming every figure that regressed. --update rewrites the
    baselines deliberately (tolerances and notes kept).

    Examples: `totalgen-eval benchmark` (the CI subset), `totalgen-eval benchmark --suite all --publish`."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise InputError("the benchmarks live in the source checkout (git clone); not in an installed wheel", root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.suite import run_suite

    try:
        ok = run_suite(suite, update=update, publish=publish, fast=fast,
                       echo=lambda line: out.print(line, soft_wrap=True, highlight=False))
    except ValueError as exc:
        raise InputError(str(exc), "--suite") from None
    raise typer.Exit(0 if ok else 1)

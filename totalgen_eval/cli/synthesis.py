"""Commands of the generator: generate, train, benchmark."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError, check_number
from .app import (DEFAULT_MAX_VOXELS, MAX_CASES, Device, MaxVoxels, Progress, Seed, SkipBad, _command,
                  output_folder, say, set_max_voxels)

MAX_STEPS = 1000  # sampler steps of either stage (generator.config.LIMITS)
MAX_GUIDANCE = 50.0


# generate / train / benchmark -------------------------------------------------------------------------
@_command()
def generate(
    n: Annotated[Optional[int], typer.Option("--n", min=1, max=MAX_CASES, metavar="N",
                                             help="Number of cases (ignored with --match).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for the synthetic cohort.")] = Path("synth"),
    match: Annotated[Optional[Path], typer.Option("--match", metavar="COHORT",
                                                  help="One synthetic twin per case of this cohort.")] = None,
    sex: Annotated[Optional[str], typer.Option("--sex", metavar="F|M", help="Only F or M.")] = None,
    age: Annotated[Optional[str], typer.Option("--age", metavar="RANGE", help="Age range in years, e.g. 40-70.")] = None,
    height: Annotated[Optional[str], typer.Option("--height", metavar="RANGE", help="Height (m) or range, e.g. 1.6-1.8.")] = None,
    weight: Annotated[Optional[str], typer.Option("--weight", metavar="RANGE", help="Weight (kg) or range, e.g. 60-90.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, max=MAX_STEPS, metavar="N",
                                                 help="Stage 1 sampler steps (default: the checkpoint's, 16).")] = None,
    sr_steps: Annotated[Optional[int], typer.Option("--sr-steps", min=1, max=MAX_STEPS, metavar="N",
                                                    help="Stage 2 (super-resolution) sampler steps "
                                                    "(default: the checkpoint's, 4; 2 gives less hot-voxel noise but lower small-organ SUVmean).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", metavar="SCALE",
                                                      help="Classifier-free guidance scale, 0-50 (1 = none).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256, metavar="N", help="Volumes denoised together.")] = 8,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", metavar="DIR",
                                                       help="A cascade folder (default: bundled weights).")] = None,
    seed: Seed = 0,
    device: Device = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Start afresh in a folder that holds another generate run "
                                        "(only ever deletes what generate wrote).")] = False,
    skip_bad: SkipBad = False,
    progress: Progress = True,
    max_voxels: MaxVoxels = DEFAULT_MAX_VOXELS,
) -> None:
    """Sample a synthetic PET/CT cohort from the bundled cascaded diffusion generator.

    Writes CT (HU) and PET (SUV) NIfTI on the 8 mm canvas, cohort.csv with the conditioning demographics and
    generate.json. Demographics come from the population model stored with the weights (optionally
    constrained by --sex/--age/--height/--weight) or, with --match, from a real cohort (one twin per case).
    Values outside the training range are clamped with a warning. Re-running continues an interrupted run.

    Examples: `totalgen-eval generate --n 500`, `totalgen-eval generate --match real/ --out twins/`,
    `totalgen-eval generate --n 100 --sex F --age 40-70`."""
    from ..synthesis import generate_cohort

    n = _checked_generate_options(n, match, guidance, out_dir)
    set_max_voxels(max_voxels)
    with output_folder(out_dir, "generate"):
        path = generate_cohort(out_dir, n=n, match=match, sex=sex, age=age, height=height, weight=weight,
                               steps=steps, guidance=guidance, batch_size=batch_size, checkpoint=checkpoint, seed=seed,
                               device=device, force=force, progress=progress, sr_steps=sr_steps, skip_bad=skip_bad)
    say(f"synthetic cohort written to {path}")


def _checked_generate_options(n: int | None, match: Path | None, guidance: float | None, out_dir: Path) -> int | None:
    """The number of cases to generate (500 without --n and --match; None with --match), after checking
    --guidance and that the output folder is not inside (or the parent of) the --match cohort."""
    from ..provenance import refuse_inputs

    if guidance is not None:
        check_number(guidance, "--guidance", 0.0, MAX_GUIDANCE)
    if match is not None:
        refuse_inputs([out_dir], [match], f"--match {match}")
    return 500 if n is None and match is None else n


@_command()
def train(
    cohort: Annotated[Path, typer.Argument(help="Training cohort folder.")],
    stage: Annotated[str, typer.Option("--stage", help="lowres (stage 1) or sr (stage 2).")] = "lowres",
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Checkpoint folder (resumes if it holds one).")] = Path("runs/lowres"),
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, max=10**8, metavar="N", help="Optimiser steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, max=4096, metavar="N",
                                                                   help="Cases a step (per process under torchrun).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 autocast where the device runs it "
                                                     "fast), bf16 or fp32 (default: the config's, auto).")] = None,
    checkpointing: Annotated[Optional[bool], typer.Option("--grad-checkpointing/--no-grad-checkpointing",
                                                          help="Recompute activations in the backward pass: less memory for "
                                                          "large canvases on GPUs, about a third more compute.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", metavar="FILE",
                                                   help="Training config JSON (grid, channels, SR factor, patch size, "
                                                   "learning-rate schedule ...; see generator/configs/).")] = None,
    demographics: Annotated[Optional[Path], typer.Option("--demographics", metavar="FILE",
                                                         help="CSV: case_id and any of age, sex, height_m, weight_kg "
                                                         "(e.g. from AutoPET's DICOM headers); wins over the cohort's.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, max=256, metavar="N",
                                                   help="DataLoader worker processes reading the cached cases.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", min=1, max=10**8, metavar="N",
                                                            help="Steps between checkpoints (default 200).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", metavar="DIR",
                                                 help="Fine-tune: start from the stage saved in DIR (e.g. "
                                                 "generator/weights), with a fresh optimiser.")] = None,
    seed: Seed = 0,
    device: Device = "cpu",
    progress: Progress = True,
) -> None:
    """Train one stage of the cascade on a cohort (resumable).

    Data-parallel on several GPUs or processes with the same command under torchrun (batch size per
    process; rank 0 writes the files), e.g. `torchrun --standalone --nproc-per-node 4 -m totalgen_eval
    train data/ --stage lowres --out run/ --device cuda --precision bf16`."""
    from ..training_data import train_stage

    _check_train_options(stage, precision)
    writer = _is_writer()
    with output_folder(out_dir, "train") if writer else nullcontext():
        path = train_stage(cohort, stage=stage, out=out_dir, steps=steps, batch_size=batch_size, seed=seed,
                           device=device, progress=progress, precision=precision, checkpointing=checkpointing,
                           config_path=config, demographics_csv=demographics, workers=workers,
                           checkpoint_every=checkpoint_every, init=init)
    if writer:
        say(f"checkpoint written to {path}")


def _check_train_options(stage: str, precision: str | None) -> None:
    """Refuse (InputError) an unknown --stage or --precision."""
    if stage not in ("lowres", "sr"):
        raise InputError(f"unknown stage {stage!r} (lowres or sr)", "--stage")
    if precision is not None and precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"unknown precision {precision!r} (auto, bf16 or fp32)", "--precision")


def _is_writer() -> bool:
    """True in a process that writes files: the only one, or rank 0 under torchrun (it alone locks the folder)."""
    return int(os.environ.get("RANK", "0")) == 0


@_command()
def benchmark(
    suite: Annotated[str, typer.Option("--suite", metavar="SUITE", help="regression, perf or all.")] = "regression",
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

    Runs `python -m benchmarks` of the source checkout in a subprocess (the benchmarks are not part of the
    installed package). Examples: `totalgen-eval benchmark` (the CI subset), `totalgen-eval benchmark --suite
    all --publish`."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise InputError("the benchmarks live in the source checkout (git clone), not in the installed package; "
                         "run `python -m benchmarks` there", "benchmark")
    argv = [sys.executable, "-m", "benchmarks", "--suite", suite, "--fast" if fast else "--full"]
    argv += ["--update"] * update + ["--publish"] * publish
    raise typer.Exit(subprocess.call(argv, cwd=root))

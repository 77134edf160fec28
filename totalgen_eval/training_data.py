"""Training data for the generator: a cohort placed on the generator's canvas, and `train` glue.

The canvas is 448 x 320 x 1152 mm (x, y, z) at 8 mm, shape (56, 40, 144), top (z max) at z = 0 mm.
Phantom cohorts are rendered on it already and are used as they are. Other cohorts are moved onto it
around the body: the body (CT > -500 HU) is centred in x and y and its top is put ``TOP_MARGIN_MM`` below
the canvas top; CT and PET are smoothed against aliasing when their voxels are much finer than 8 mm and
resampled linearly (outside: -1000 HU, SUV 0). Volumes are returned normalised (``generator.intensity``)
as a float32 tensor (N, 2, X, Y, Z) with channels (CT, PET).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .provenance import package_versions, to_jsonable, write_json
from .volumes import Grid, resample_to_grid

TOP_MARGIN_MM = 16.0
CANVAS_VOXEL_MM = 8.0
BODY_HU = -500.0
STAGES = ("lowres", "sr")


def canvas_grid(voxel_mm: float = CANVAS_VOXEL_MM) -> Grid:
    """The generator's canvas grid at ``voxel_mm``."""
    from generator.config import FOV_MM
    from generator.stages import canvas_affine

    shape = tuple(int(round(f / voxel_mm)) for f in FOV_MM)
    return Grid(shape, canvas_affine(voxel_mm, FOV_MM))


def body_shift_mm(ct: np.ndarray, grid: Grid, canvas: Grid) -> np.ndarray:
    """Translation (mm, RAS+) that centres the body in x, y and puts its top TOP_MARGIN_MM below the canvas top."""
    body = ct > BODY_HU
    if not body.any():
        raise ValueError("no body found (no CT voxel above -500 HU)")
    idx = np.argwhere(body)
    xyz = idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    lo, hi = canvas.bounds_mm()
    top_canvas = hi[2] + canvas.spacing_mm[2] / 2
    target = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, top_canvas - TOP_MARGIN_MM])
    current = np.array([xyz[:, 0].mean(), xyz[:, 1].mean(), xyz[:, 2].max()])
    return target - current


def place_on_canvas(ct: np.ndarray, pet: np.ndarray, grid: Grid, canvas: Grid) -> tuple[np.ndarray, np.ndarray]:
    """CT (HU) and PET (SUV) on ``canvas``: as they are if already on it, else moved around the body and resampled."""
    if grid.same_as(canvas):
        return ct.astype(np.float32), pet.astype(np.float32)
    shift = body_shift_mm(ct, grid, canvas)
    moved = grid.affine.copy()
    moved[:3, 3] += shift
    source = Grid(grid.shape, moved)
    ratio = np.asarray(canvas.spacing_mm) / np.asarray(grid.spacing_mm)
    sigma = np.where(ratio > 1.5, 0.4 * ratio, 0.0)
    if sigma.any():
        ct = ndimage.gaussian_filter(ct.astype(np.float32), sigma)
        pet = ndimage.gaussian_filter(pet.astype(np.float32), sigma)
    return (resample_to_grid(ct, source, canvas, order=1, cval=-1000.0).astype(np.float32),
            resample_to_grid(pet, source, canvas, order=1, cval=0.0).astype(np.float32))


def cohort_arrays(cohort_path: str | Path, voxel_mm: float = CANVAS_VOXEL_MM,
                  progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict]:
    """(volumes (N, 2, X, Y, Z) normalised float32, demographics columns) of a cohort on the canvas.

    Cases without age or sex are skipped (warning). Missing height/weight are drawn from a population
    model fitted to the complete cases (given sex and age), which needs at least 10 of them (InputError).
    """
    from generator.intensity import to_unit
    from generator.population import PopulationModel

    from .cohort import load_cohort

    cohort = load_cohort(cohort_path)
    canvas = canvas_grid(voxel_mm)
    rows = [c for c in cohort if c.sex in ("F", "M") and np.isfinite(c.age)]
    if len(rows) < len(cohort):
        warnings.warn(f"{len(cohort) - len(rows)} case(s) without age or sex skipped", UserWarning, stacklevel=2)
    demo = {"case_id": np.array([c.case_id for c in rows]), "age": np.array([c.age for c in rows], float),
            "sex": np.array([c.sex for c in rows]), "height_m": np.array([c.height_m for c in rows], float),
            "weight_kg": np.array([c.weight_kg for c in rows], float)}
    complete = np.isfinite(demo["height_m"]) & np.isfinite(demo["weight_kg"])
    if not rows:
        raise InputError("no case with age and sex to train on", cohort_path)
    if not complete.all() and complete.sum() < 10:
        raise InputError(f"only {int(complete.sum())} case(s) with height and weight; filling in the others needs "
                         "at least 10", cohort_path)
    if not complete.all():
        fitted = PopulationModel.fit({k: v[complete] for k, v in demo.items()})
        filled = fitted.fill_missing(demo, np.random.default_rng(0))
        demo.update(height_m=filled["height_m"], weight_kg=filled["weight_kg"])
    volumes = torch.empty((len(rows), 2, *canvas.shape), dtype=torch.float32)
    for i, case in enumerate(rows):
        ct, affine = case.read_ct(resample=True)
        pet, _ = case.read_pet()
        try:
            ct, pet = place_on_canvas(ct, pet, Grid(tuple(pet.shape), affine), canvas)
        except ValueError as exc:
            raise InputError(str(exc), case.ct) from None
        volumes[i] = to_unit(torch.from_numpy(ct), torch.from_numpy(pet))
        if progress is not None:
            progress(i + 1, len(rows))
    return volumes, demo


def stage_config(stage: str, out: Path, volumes: torch.Tensor):
    """The stage's config: the saved one when ``out`` holds a run of it, else the default with sigma_data
    set to the standard deviation of its training target in these data (rounded to 3 decimals)."""
    from generator.checkpoints import read_stage_json
    from generator.config import default_lowres, default_sr
    from generator.training import target_std

    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r} (lowres or sr)", "--stage")
    state = out / f"{stage}-state.json"
    if state.is_file():
        return read_stage_json(state)[0]
    config = default_lowres() if stage == "lowres" else default_sr()
    return dataclasses.replace(config, sigma_data=round(target_std(config, volumes), 3))


def train_stage(cohort_path: str | Path, stage: str = "lowres", out: str | Path = "runs/cascade",
                steps: int | None = None, batch_size: int | None = None, seed: int = 0, device: str = "cpu",
                progress: bool = True, threads: int | None = None, checkpoint_every: int = 200,
                precision: str = "auto", checkpointing: bool = False) -> Path:
    """Train stage ``lowres`` or ``sr`` of the generator on a cohort; returns the EMA weights' path.

    ``out`` is a cascade folder: train both stages into the same folder and pass it to
    ``generate --checkpoint``. It also receives population.json (the cohort's demographics model),
    ``<stage>-loss.csv`` and ``train-<stage>.json`` (command settings, cohort, versions). Re-running the
    same command resumes from the last checkpoint; a folder holding another architecture is refused.
    Under ``torchrun`` the loop runs data-parallel (DDP, ``generator.distributed``): every process reads the
    cohort, ``batch_size`` is per process, rank 0 writes the files and shows progress. ``precision`` "auto"
    trains with bf16 autocast where the device runs it fast (AMX/AVX512-BF16 CPUs, recent GPUs), else
    float32; ``checkpointing`` trades compute for activation memory (large canvases on GPUs).
    """
    from generator.distributed import barrier, join_world, leave_world

    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r} (lowres or sr)", "--stage")
    if threads:
        torch.set_num_threads(int(threads))
    world = join_world(device)
    bar = _progress_bar(progress and world.is_main)
    try:
        volumes, demo = _load_cohort(cohort_path, bar)
        config = stage_config(stage, Path(out), volumes)
        if world.is_main:
            _write_population(demo, Path(out))
        barrier(world)
        path, settings = _run_training(cohort_path, stage, Path(out), config, volumes, demo, bar,
                                       dict(steps=steps, batch_size=batch_size, seed=seed, device=world.device,
                                            checkpoint_every=checkpoint_every, precision=precision,
                                            checkpointing=checkpointing))
        if world.is_main:
            write_json(dict(settings, world_size=world.size, versions=package_versions()),
                       Path(out) / f"train-{stage}.json")
        leave_world(world)
        return path
    finally:
        if bar is not None:
            bar.stop()


def _load_cohort(cohort_path: str | Path, bar) -> tuple[torch.Tensor, dict]:
    """The cohort on the canvas, with a progress task when ``bar`` is given."""
    if bar is None:
        return cohort_arrays(cohort_path)
    task = bar.add_task("loading cohort", total=None)
    return cohort_arrays(cohort_path, progress=lambda i, n: bar.update(task, completed=i, total=n))


def _write_population(demo: dict, out: Path) -> None:
    """population.json: the training cohort's demographics model (what ``generate`` samples from)."""
    from generator.population import PopulationModel

    out.mkdir(parents=True, exist_ok=True)
    PopulationModel.fit(demo).save(out / "population.json")


def _run_training(cohort_path: str | Path, stage: str, out: Path, config, volumes: torch.Tensor, demo: dict,
                  bar, options: dict) -> tuple[Path, dict]:
    """Run the training loop; returns (EMA weights path, the record for ``train-<stage>.json``)."""
    from generator.cascade import demographics_tensor
    from generator.checkpoints import CheckpointError, read_stage_json
    from generator.training import train_stage as train_loop

    total = options["steps"] or config.steps
    callback = None
    if bar is not None:
        task = bar.add_task(f"training {stage}", total=total)

        def callback(p) -> None:
            bar.update(task, completed=p.step, description=f"training {stage} loss {p.loss:.3f}")
    settings = {"cohort": Path(cohort_path).resolve().name, "n_cases": int(volumes.shape[0]), "stage": stage,
                "steps": total, "batch_size": options["batch_size"] or config.batch_size, "seed": options["seed"],
                "device": str(options["device"]), "threads": torch.get_num_threads(),
                "precision": options["precision"], "checkpointing": options["checkpointing"]}
    started = time.time()
    try:
        path = train_loop(config, volumes, demographics_tensor(demo), out, callback=callback,
                          meta={"cohort": settings["cohort"], "n_cases": settings["n_cases"]}, **options)
    except CheckpointError as exc:
        raise InputError(f"{exc}; use another --out", out) from None
    final = read_stage_json(out / f"{stage}.json")[1] if (out / f"{stage}.json").is_file() else {}
    return path, {"settings": settings, "config": to_jsonable(dataclasses.asdict(config)),
                  "wall_seconds_this_run": round(time.time() - started, 1), "final": final}


def _progress_bar(enabled: bool):
    """A started rich progress display, or None."""
    if not enabled:
        return None
    from .parallel import progress_bar

    bar = progress_bar()
    bar.start()
    return bar

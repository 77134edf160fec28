"""Training data for the generator: a cohort placed on the generator's canvas, and `train` glue.

The canvas is 448 x 320 x 1152 mm (x, y, z) at 8 mm, shape (56, 40, 144), top (z max) at z = 0 mm.
Phantom cohorts are rendered on it already and are used as they are. Other cohorts are moved onto it
around the body: the body (CT > -500 HU) is centred in x and y and its top is put ``TOP_MARGIN_MM`` below
the canvas top; CT and PET are smoothed against aliasing when their voxels are much finer than 8 mm and
resampled linearly (outside: -1000 HU, SUV 0). Volumes are normalised (``generator.intensity``), channels
(CT, PET): for training they are cached once per case as .npy under the output folder (``streamed_cohort``,
any voxel size) and streamed by ``generator.data``; ``cohort_arrays`` holds a small cohort in memory.
Demographics may come from a side CSV (``read_demographics_csv``); a missing field stays NaN.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .provenance import package_versions, to_jsonable, write_json
from .volumes import Grid, resample_to_grid

if TYPE_CHECKING:
    from generator.distributed import World

TOP_MARGIN_MM = 16.0
CANVAS_VOXEL_MM = 8.0
BODY_HU = -500.0
STAGES = ("lowres", "sr")


def canvas_grid(voxel_mm: float = CANVAS_VOXEL_MM, fov_mm: tuple[float, float, float] | None = None) -> Grid:
    """The generator's canvas grid at ``voxel_mm`` over ``fov_mm`` (default: generator.config.FOV_MM)."""
    from generator.config import FOV_MM
    from generator.stages import canvas_affine

    fov = fov_mm or FOV_MM
    shape = tuple(int(round(f / voxel_mm)) for f in fov)
    return Grid(shape, canvas_affine(voxel_mm, fov))


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


DEMOGRAPHIC_FIELDS = ("age", "sex", "height_m", "weight_kg")


def read_demographics_csv(path: str | Path) -> dict[str, dict[str, object]]:
    """case_id -> {field: value} from a side CSV with ``case_id`` and any of age, sex, height_m, weight_kg
    (blank cells are left out; AutoPET users take height and weight from the DICOM headers)."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype={"case_id": str})
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the demographics table ({exc})", path) from None
    fields = [c for c in DEMOGRAPHIC_FIELDS if c in table.columns]
    if "case_id" not in table.columns or not fields:
        raise InputError("expected a case_id column and at least one of " + ", ".join(DEMOGRAPHIC_FIELDS), path)
    out: dict[str, dict[str, object]] = {}
    for row in table.itertuples(index=False):
        values = {f: getattr(row, f) for f in fields if not pd.isna(getattr(row, f))}
        out[str(row.case_id)] = values
    return out


def cohort_demographics(cases: list, side: dict[str, dict[str, object]] | None = None) -> dict[str, np.ndarray]:
    """Columns case_id, age, sex, height_m, weight_kg of ``cases`` (NaN / None where unknown); a side
    table's values win where it has them."""
    side = side or {}
    rows = [{f: side.get(c.case_id, {}).get(f, getattr(c, f)) for f in DEMOGRAPHIC_FIELDS} for c in cases]
    return {"case_id": np.array([c.case_id for c in cases]),
            "age": np.array([_number(r["age"]) for r in rows]),
            "sex": np.array([str(r["sex"]).upper() if r["sex"] in ("F", "M", "f", "m") else None for r in rows],
                            dtype=object),
            "height_m": np.array([_number(r["height_m"]) for r in rows]),
            "weight_kg": np.array([_number(r["weight_kg"]) for r in rows])}


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def demographics_table(demo: dict[str, np.ndarray]) -> torch.Tensor:
    """(N, 4) float32 (age years, sex F=0/M=1, height m, weight kg) with NaN for every unknown field."""
    sex = [1.0 if s == "M" else 0.0 if s == "F" else np.nan for s in demo["sex"]]
    table = np.stack([demo["age"], np.asarray(sex, float), demo["height_m"], demo["weight_kg"]], 1)
    return torch.as_tensor(table, dtype=torch.float32)


class CanvasReader:
    """Case ``i`` of ``cases`` read and placed on ``canvas``: normalised float32 (2, X, Y, Z) (CT, PET)."""

    def __init__(self, cases: list, canvas: Grid):
        self.cases, self.canvas = cases, canvas

    def __call__(self, i: int) -> np.ndarray:
        from generator.intensity import to_unit

        case = self.cases[i]
        ct, affine = case.read_ct(resample=True)
        pet, _ = case.read_pet()
        try:
            ct, pet = place_on_canvas(ct, pet, Grid(tuple(pet.shape), affine), self.canvas)
        except ValueError as exc:
            raise InputError(str(exc), case.ct) from None
        return to_unit(torch.from_numpy(ct), torch.from_numpy(pet)).numpy()


def cache_name(case, voxel_mm: float) -> str:
    """A stable cache file name for ``case`` at ``voxel_mm``: its id and a digest of its files' paths, sizes
    and modification times (a changed file is read again)."""
    import hashlib
    import re

    stats = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (Path(case.ct), Path(case.pet))]
    digest = hashlib.sha256("|".join(stats + [f"{voxel_mm:g}"]).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', case.case_id)[:80]}-{digest}"


def cohort_arrays(cohort_path: str | Path, voxel_mm: float = CANVAS_VOXEL_MM,
                  progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict]:
    """(volumes (N, 2, X, Y, Z) normalised float32 in memory, demographics columns, NaN where unknown)."""
    from .cohort import load_cohort

    cases = list(load_cohort(cohort_path))
    read = CanvasReader(cases, canvas_grid(voxel_mm))
    volumes = torch.empty((len(cases), 2, *read.canvas.shape), dtype=torch.float32)
    for i in range(len(cases)):
        volumes[i] = torch.from_numpy(read(i))
        if progress is not None:
            progress(i + 1, len(cases))
    return volumes, cohort_demographics(cases)


def streamed_cohort(cohort_path: str | Path, out: Path, recipe, side: dict[str, dict[str, object]] | None = None,
                    progress: Callable[[int, int], None] | None = None):
    """(NpyCache of the cohort on the recipe's data grid under ``out/cache``, demographics columns).

    Every case is read once (here, so a bad case stops the run before training) and cached as .npy; a
    re-run reuses the cache. ``side``: read_demographics_csv's table. No case is refused for a missing field.
    """
    from generator.data import NpyCache

    from .cohort import load_cohort

    cases = list(load_cohort(cohort_path))
    if not cases:
        raise InputError("no case to train on", cohort_path)
    demo = cohort_demographics(cases, side)
    canvas = canvas_grid(recipe.voxel_mm, tuple(recipe.fov_mm))
    names = [cache_name(c, recipe.voxel_mm) for c in cases]
    cache = NpyCache(CanvasReader(cases, canvas), names, out / "cache" / f"{recipe.voxel_mm:g}mm", recipe.sr_factor)
    for i in range(len(cases)):
        cache.ensure(i)
        if progress is not None:
            progress(i + 1, len(cases))
    return cache, demo


def stage_config(recipe, out: Path, source, demographics: torch.Tensor):
    """The stage's config: the saved one when ``out`` holds a run of it; else the recipe's, with sigma_data
    and the sampling schedule (stage 2's augmentation level included) of the stage it starts from
    (``recipe.init``; InputError naming it when it cannot be), or, for a fresh start, sigma_data
    set to the standard deviation of its training target in these data (rounded to 3 decimals)."""
    from generator.checkpoints import initial_stage, read_stage_json
    from generator.data import CanvasCases
    from generator.train_config import stage_config as recipe_stage
    from generator.training import target_std

    state = out / f"{recipe.stage}-state.json"
    if state.is_file():
        return read_stage_json(state)[0]
    config = recipe_stage(recipe, sigma_data=0.5)
    if recipe.init is not None:
        try:
            start = initial_stage(recipe.init, config)[1]
        except (OSError, ValueError) as exc:  # CheckpointError is a ValueError
            raise InputError(f"cannot fine-tune from it: {exc}", recipe.init) from None
        return dataclasses.replace(config, sigma_data=start.sigma_data, schedule=start.schedule)
    return dataclasses.replace(config, sigma_data=round(target_std(CanvasCases(source, demographics, config)), 3))


def training_recipe(stage: str, out: Path, config_path: str | Path | None, overrides: dict):
    """The TrainConfig: ``config_path``, else the one saved in ``out``, else the stage default; then the
    options given on the command line (``overrides``, None = not given)."""
    from generator.train_config import TrainConfig, check_train_config, load_train_config, train_config_from_dict

    saved = out / f"{stage}-train-config.json"
    source = config_path or (saved if saved.is_file() else None)
    try:
        recipe = load_train_config(source) if source else TrainConfig(stage=stage)
        if recipe.stage != stage:
            raise ValueError(f"it is for stage {recipe.stage}, not {stage}")
        recipe = dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
        check_train_config(recipe)
        return train_config_from_dict(dataclasses.asdict(recipe))
    except ValueError as exc:
        raise InputError(f"training config: {exc}", config_path or "--config") from None


def train_stage(cohort_path: str | Path, stage: str = "lowres", out: str | Path = "runs/cascade",
                steps: int | None = None, batch_size: int | None = None, seed: int = 0, device: str = "cpu",
                progress: bool = True, threads: int | None = None, checkpoint_every: int | None = None,
                precision: str | None = None, checkpointing: bool | None = None,
                config_path: str | Path | None = None, demographics_csv: str | Path | None = None,
                workers: int | None = None, init: str | Path | None = None) -> Path:
    """Train stage ``lowres`` or ``sr`` of the generator on a cohort (any layout); returns the EMA weights' path.

    ``out`` is a cascade folder: train both stages into the same folder and pass it to
    ``generate --checkpoint``. It also receives population.json (the cohort's demographics model, when at
    least 2 cases have all four fields), ``<stage>-loss.csv``, ``<stage>-train-config.json`` (the recipe),
    ``train-<stage>.json`` (command settings, cohort, versions) and ``cache/`` (the cases on the data grid,
    .npy). Demographics may come from ``demographics_csv`` (case_id + any of age, sex, height_m, weight_kg);
    a missing field is handled per field by the network. ``config_path``: a TrainConfig JSON
    (``generator/configs/``); the other options override it. ``init``: fine-tune, starting from the stage
    saved in that folder (e.g. the bundled ``generator/weights``). Re-running the same command resumes.
    Under ``torchrun`` the loop runs data-parallel (DDP): rank 0 caches the cohort and writes the files.
    """
    from generator.distributed import join_world, leave_world

    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r} (lowres or sr)", "--stage")
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    recipe = training_recipe(stage, out, config_path, dict(
        steps=steps, batch_size=batch_size, precision=precision, grad_checkpointing=checkpointing,
        checkpoint_every=checkpoint_every, workers=workers, init=None if init is None else str(Path(init).resolve())))
    side = read_demographics_csv(demographics_csv) if demographics_csv else None
    world = join_world(device)
    bar = _progress_bar(progress and world.is_main)
    try:
        source, demo, config = _prepared_stage(world, cohort_path, out, recipe, side, bar)
        path, settings = _run_training(cohort_path, stage, out, config, recipe, source, demo, bar,
                                       dict(seed=seed, device=world.device))
        _write_run_record(world, settings, out / f"train-{stage}.json")
        leave_world(world)
        return path
    finally:
        if bar is not None:
            bar.stop()


def _prepared_stage(world: World, cohort_path: str | Path, out: Path, recipe, side: dict | None, bar):
    """(the cohort cached on the data grid, its demographics columns, the stage's config). Rank 0 caches the
    cohort and writes population.json and ``<stage>-train-config.json`` while the other ranks wait."""
    from generator.distributed import barrier
    from generator.train_config import train_config_dict

    if not world.is_main:
        barrier(world)  # rank 0 fills the cache first
    source, demo = _load_cohort(cohort_path, out, recipe, side, bar)
    config = stage_config(recipe, out, source, demographics_table(demo))
    if world.is_main:
        _write_population(demo, out)
        write_json(train_config_dict(recipe), out / f"{recipe.stage}-train-config.json")
        barrier(world)
    return source, demo, config


def _write_run_record(world: World, record: dict, path: Path) -> None:
    """On rank 0 only: ``path`` (train-<stage>.json) holds ``record`` with the world size and package versions."""
    if world.is_main:
        write_json(dict(record, world_size=world.size, versions=package_versions()), path)


def _load_cohort(cohort_path: str | Path, out: Path, recipe, side, bar):
    """The cohort cached on the data grid, with a progress task when ``bar`` is given."""
    if bar is None:
        return streamed_cohort(cohort_path, out, recipe, side)
    task = bar.add_task("caching cohort", total=None)
    return streamed_cohort(cohort_path, out, recipe, side,
                           progress=lambda i, n: bar.update(task, completed=i, total=n))


def _write_population(demo: dict, out: Path) -> None:
    """population.json: the training cohort's demographics model (what ``generate`` samples from)."""
    from generator.population import PopulationModel

    out.mkdir(parents=True, exist_ok=True)
    try:
        PopulationModel.fit(demo).save(out / "population.json")
    except ValueError as exc:
        warnings.warn(f"no population.json written ({exc}); generate --checkpoint needs one: copy it from a "
                      "cascade trained on a cohort with heights and weights", UserWarning, stacklevel=2)


def _run_training(cohort_path: str | Path, stage: str, out: Path, config, recipe, source, demo: dict,
                  bar, options: dict) -> tuple[Path, dict]:
    """Run the training loop; returns (EMA weights path, the record for ``train-<stage>.json``)."""
    from generator.checkpoints import CheckpointError, read_stage_json
    from generator.training import train_stage as train_loop

    total = recipe.steps or config.steps
    callback = None
    if bar is not None:
        task = bar.add_task(f"training {stage}", total=total)

        def callback(p) -> None:
            bar.update(task, completed=p.step, description=f"training {stage} loss {p.loss:.3f}")
    missing = {f: int(np.sum(pd_isna(demo[f]))) for f in DEMOGRAPHIC_FIELDS}
    settings = {"cohort": Path(cohort_path).resolve().name, "n_cases": len(source), "stage": stage,
                "steps": total, "batch_size": config.batch_size, "grad_accum": recipe.grad_accum,
                "seed": options["seed"], "device": str(options["device"]), "threads": torch.get_num_threads(),
                "precision": recipe.precision, "checkpointing": recipe.grad_checkpointing, "missing": missing}
    started = time.time()
    try:
        path = train_loop(config, source, demographics_table(demo), out, callback=callback,
                          meta={"cohort": settings["cohort"], "n_cases": settings["n_cases"]}, steps=total,
                          checkpoint_every=recipe.checkpoint_every, precision=recipe.precision,
                          checkpointing=recipe.grad_checkpointing, recipe=recipe, **options)
    except CheckpointError as exc:  # of the init weights (they name its folder) or of a state in ``out``
        if recipe.init is not None and str(recipe.init) in str(exc):
            raise InputError(f"cannot fine-tune from it: {exc}", recipe.init) from None
        raise InputError(f"{exc}; use another --out", out) from None
    final = read_stage_json(out / f"{stage}.json")[1] if (out / f"{stage}.json").is_file() else {}
    return path, {"settings": settings, "config": to_jsonable(dataclasses.asdict(config)),
                  "recipe": to_jsonable(dataclasses.asdict(recipe)),
                  "wall_seconds_this_run": round(time.time() - started, 1), "final": final}


def pd_isna(values) -> np.ndarray:
    """Missing entries of a demographics column (NaN numbers, None sex)."""
    return np.array([v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values])


def _progress_bar(enabled: bool):
    """A started rich progress display, or None."""
    if not enabled:
        return None
    from .parallel import progress_bar

    bar = progress_bar()
    bar.start()
    return bar

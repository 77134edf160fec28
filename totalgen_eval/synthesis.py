"""`generate`: a synthetic PET/CT cohort from the cascaded generator, written in our cohort layout.

Demographics come from one of three sources:
* the population model stored with the weights (``n`` cases), optionally constrained to one sex and to
  ranges of age (years), height (m) and weight (kg) given as "40-70" or a single value "1.75";
* ``match``: one synthetic twin per case of a cohort (its age, sex, height, weight; a missing height or
  weight is drawn from the population model given sex and age; cases without age or sex are skipped).
Demographics outside the training range are clamped to it with a warning (see generator.Cascade.prepare);
cohort.csv records the values the generator was conditioned on.

Output folder: ``cases/<case_id>_{ct,pet}.nii.gz`` (CT int16 HU, PET float32 SUV, 8 mm canvas affine),
``cohort.csv`` (case_id, age, sex, height_m, weight_kg, ct, pet, source="synthetic", generator, seed,
case_index, twin_of) and ``generate.json`` (settings, checkpoint, versions, status). An interrupted run is
resumed by the same command: finished cases are kept; a folder holding a run with other settings is
refused unless ``force``.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .demographics import parse_sex
from .errors import InputError
from .parallel import EXCLUDED_COLUMNS, write_excluded
from .provenance import foreign_files, package_versions, read_marker, to_jsonable, write_json
from .volumes import write_volume

if TYPE_CHECKING:
    from generator.cascade import SamplingSettings

GENERATE_JSON = "generate.json"
MAX_CASES = 100_000
CASE_DIR = "cases"
SETTINGS_KEYS = ("n", "seed", "match", "match_digest", "sex", "age", "height", "weight", "lowres_sampler",
                 "lowres_steps", "guidance", "guidance_sigma", "sr_sampler", "sr_steps", "checkpoint_id")


def parse_range(text: str | float | None, what: str) -> tuple[float, float] | None:
    """"40-70" -> (40, 70); "1.75" -> (1.75, 1.75); None -> None; InputError naming ``what`` otherwise."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, float)):
        return float(text), float(text)
    parts = str(text).strip().split("-")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"{text!r} is not a number or a range such as 40-70", what) from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2 or values[0] > values[1]:
        raise InputError(f"{text!r} is not a range low-high with low <= high", what)
    return values[0], values[1]


def _sex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_sex(value)
    except ValueError as exc:
        raise InputError(str(exc), "--sex") from None


def sampled_demographics(population, n: int, seed: int, sex: str | None = None, age: str | None = None,
                         height: str | None = None, weight: str | None = None) -> pd.DataFrame:
    """``n`` rows (case_id, age, sex, height_m, weight_kg) drawn from the population model, constrained.

    Case i is drawn from (seed, i) alone, so ``n = 2`` gives the first two cases of ``n = 6``."""
    try:
        cols = population.sample_cases(seed, range(n), sex=_sex(sex), age=parse_range(age, "--age"),
                                       height=parse_range(height, "--height"), weight=parse_range(weight, "--weight"))
    except ValueError as exc:
        raise InputError(str(exc), "--sex") from None
    frame = pd.DataFrame(cols)
    frame.insert(0, "case_id", [f"synth-{i:04d}" for i in range(n)])
    frame["twin_of"] = None
    return frame


def matched_demographics(match: str | Path, population, seed: int, skip_bad: bool = False) -> pd.DataFrame:
    """One row per case of the cohort at ``match`` (twin_of = its case_id); missing height/weight sampled.

    Bad cases of ``match`` stop the run unless ``skip_bad``; the cases left out (bad, or without age or sex)
    are in ``frame.attrs["excluded"]`` (records case_id, cohort, reason)."""
    from .parallel import excluded_frame, load_checked

    cohort = load_checked(match, skip_bad)
    real = cohort.to_frame()
    ok = real["sex"].isin(["F", "M"]) & real["age"].notna()
    if (~ok).any():
        warnings.warn(f"{int((~ok).sum())} case(s) of {match} without age or sex get no twin", UserWarning,
                      stacklevel=3)
    left_out = list(cohort.problems) + [(cid, "no age or sex to match") for cid in real.loc[~ok, "case_id"]]
    real = real[ok].reset_index(drop=True)
    if real.empty:
        raise InputError("no case with age and sex to match", match)
    cols = {k: real[k].to_numpy() for k in ("age", "sex", "height_m", "weight_kg")}
    if population is not None:
        cols = population.fill_missing_cases(cols, seed)  # twin i's fill-in from (seed, i) alone
    elif real[["height_m", "weight_kg"]].isna().any().any():
        raise InputError("height/weight missing and the checkpoint has no population model to fill them in", match)
    frame = pd.DataFrame(cols)
    frame.insert(0, "case_id", [f"synth-{i:04d}" for i in range(len(frame))])
    frame["twin_of"] = real["case_id"].to_numpy()
    frame.attrs["excluded"] = excluded_frame(left_out, cohort.name).to_dict("records")
    return frame


def frame_digest(frame: pd.DataFrame) -> str:
    """Short digest of the demographics (rounded) that a run conditions on."""
    text = frame[["age", "sex", "height_m", "weight_kg"]].round(6).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _case_paths(root: Path, case_id: str) -> dict[str, Path]:
    return {"ct": root / CASE_DIR / f"{case_id}_ct.nii.gz", "pet": root / CASE_DIR / f"{case_id}_pet.nii.gz"}


def _check_folder(root: Path, settings: dict, force: bool) -> None:
    """InputError unless ``root`` is new, empty, or holds a run with the same settings (or ``force``)."""
    info = root / GENERATE_JSON
    marker = read_marker(root)
    made_here = marker.get("command") == "generate" if marker is not None else info.is_file()
    if force:
        if foreign_files(root) and not made_here:
            raise InputError("holds files that generate did not write; --force only ever replaces a generate run: "
                             "use another --out", root)
        for p in list((root / CASE_DIR).glob("synth-*.nii.gz")) if (root / CASE_DIR).is_dir() else []:
            p.unlink()
        for name in (GENERATE_JSON, "cohort.csv"):
            (root / name).unlink(missing_ok=True)
        return
    if info.is_file():
        try:
            old = json.loads(info.read_text()).get("settings", {})
        except json.JSONDecodeError:
            old = {}
        differ = [k for k in SETTINGS_KEYS if old.get(k) != settings.get(k)]
        if differ:
            text = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in differ[:4])
            raise InputError(f"holds a generate run with other settings ({text}); use another --out or --force", root)
    elif foreign_files(root) and not made_here:
        raise InputError("is not empty and holds no generate run; use another --out", root)


def generate_cohort(out: str | Path, n: int | None = None, seed: int = 0, match: str | Path | None = None,
                    sex: str | None = None, age: str | None = None, height: str | None = None,
                    weight: str | None = None, steps: int | None = None, guidance: float | None = None,
                    batch_size: int = 8, checkpoint: str | Path | None = None, device: str = "cpu",
                    force: bool = False, progress: bool = True, sr_steps: int | None = None,
                    cascade: Any = None, skip_bad: bool = False) -> Path:
    """Generate a synthetic cohort into ``out`` and return ``out`` (see the module docstring).

    n: cases to sample (default 500; ignored with ``match``). steps/guidance/sr_steps: sampler settings
    (default: the checkpoint's). checkpoint: a cascade folder (default: the bundled weights); ``cascade``:
    an already loaded generator.Cascade (tests, benchmarks). batch_size and device do not change the
    result beyond float rounding (per-case seeding), so they are not part of the resume check.
    skip_bad: with ``match``, bad cases of that cohort get no twin and are listed in ``out/excluded.csv``.
    """
    root = Path(out)
    _check_options(n, match, steps, guidance, sr_steps)
    cascade = cascade if cascade is not None else _load_cascade(checkpoint, device)
    demo, used = _conditioning(cascade, n, seed, match, (sex, age, height, weight), skip_bad, checkpoint)
    settings = _run_settings(cascade, demo, seed, match, dict(sex=sex, age=age, height=height, weight=weight),
                             cascade.settings(steps, guidance, sr_steps))
    _check_folder(root, settings, force)
    (root / CASE_DIR).mkdir(parents=True, exist_ok=True)
    if match is not None:
        write_excluded(pd.DataFrame(demo.attrs.get("excluded", []), columns=list(EXCLUDED_COLUMNS)), root)
    record = _running_record(settings, cascade, demo, batch_size, device)
    write_json(record, root / GENERATE_JSON)
    demo["generator"] = cascade.checkpoint_id
    demo["seed"] = int(seed)
    demo["case_index"] = np.arange(len(demo))
    started = time.perf_counter()
    generated = _write_cases(root, cascade, demo, used, dict(seed=seed, steps=steps, guidance=guidance,
                                                             batch_size=batch_size, sr_steps=sr_steps), progress)
    record.update(status="complete", seconds_this_run=round(time.perf_counter() - started, 2),
                  generated_this_run=generated)
    write_json(record, root / GENERATE_JSON)
    return root


def _run_settings(cascade: Any, demo: pd.DataFrame, seed: int, match: str | Path | None,
                  constraints: dict[str, str | None], sampler: SamplingSettings) -> dict:
    """What fixes the cases of a run (a resumed run must match them): case count, seed, the matched cohort
    (path and content digest), the demographic constraints (sex, age, height, weight as given), the
    sampler settings and the checkpoint's id."""
    return {"n": len(demo), "seed": int(seed), "match": str(Path(match).resolve()) if match else None,
            "match_digest": frame_digest(demo) if match else None, **constraints,
            "lowres_sampler": sampler.lowres_sampler, "lowres_steps": sampler.lowres_steps,
            "guidance": sampler.guidance,
            "guidance_sigma": None if sampler.guidance_sigma is None else list(sampler.guidance_sigma),
            "sr_sampler": sampler.sr_sampler, "sr_steps": sampler.sr_steps, "checkpoint_id": cascade.checkpoint_id}


def _running_record(settings: dict, cascade: Any, demo: pd.DataFrame, batch_size: int, device: str) -> dict:
    """generate.json while the run goes on: its settings, status "running", batch size, device, precision,
    the checkpoint's files, the number of clamped conditions and the package versions."""
    return {"settings": settings, "status": "running", "batch_size": batch_size, "device": str(device),
            "precision": getattr(cascade, "precision", "fp32"),
            "checkpoint": to_jsonable({k: v for k, v in cascade.meta.items() if k in ("folder", "lowres", "sr")}),
            "n_clamped": int(demo["clamped"].sum()), "versions": package_versions()}


def _check_options(n: int | None, match: str | Path | None, steps: int | None, guidance: float | None,
                   sr_steps: int | None) -> None:
    """InputError naming the option for a bad case count or sampler setting, before any weights are loaded."""
    from generator.config import check_sampling

    if match is None and (isinstance(n, bool) or not isinstance(n, (int, np.integer, type(None)))
                          or not 1 <= (500 if n is None else n) <= MAX_CASES):
        raise InputError(f"{n!r} is not a number of cases from 1 to {MAX_CASES}", "--n")
    try:
        check_sampling(steps, guidance, sr_steps)
    except ValueError as exc:
        raise InputError(str(exc), "--" + str(exc).split(" ", 1)[0].replace("_", "-")) from None


def _load_cascade(checkpoint: str | Path | None, device: str):
    """generator.load_cascade with its errors as InputError naming the checkpoint."""
    from generator import CheckpointError, load_cascade

    try:
        return load_cascade(checkpoint, device=device)
    except (CheckpointError, FileNotFoundError) as exc:
        raise InputError(str(exc), checkpoint or "--checkpoint") from None


def _conditioning(cascade: Any, n: int | None, seed: int, match: str | Path | None, limits: tuple,
                  skip_bad: bool, checkpoint: str | Path | None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(cohort rows with the demographics the cascade conditions on and a ``clamped`` column, those columns
    as ``Cascade.prepare`` returns them). ``limits``: the --sex, --age, --height, --weight texts."""
    population = cascade.population
    if match is not None:
        demo = matched_demographics(match, population, seed, skip_bad)
    elif population is None:
        raise InputError("the checkpoint has no population.json to sample demographics from; use --match",
                         checkpoint or "--checkpoint")
    else:
        demo = sampled_demographics(population, 500 if n is None else int(n), seed, *limits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            used = cascade.prepare(demo)
        except ValueError as exc:
            raise InputError(str(exc), match or "--sex") from None
    for w in caught:
        warnings.warn(str(w.message), UserWarning, stacklevel=3)
    clamped = np.zeros(len(demo), bool)
    for col in ("age", "height_m", "weight_kg"):
        clamped |= ~np.isclose(np.asarray(used[col], float), demo[col].to_numpy(float))
    for col in ("age", "sex", "height_m", "weight_kg"):
        demo[col] = used[col]
    demo["clamped"] = clamped
    return demo, used


def _write_cases(root: Path, cascade: Any, demo: pd.DataFrame, used: dict[str, np.ndarray], sampling: dict,
                 progress: bool) -> int:
    """Generate and write the cases whose files are missing (cohort.csv after each batch); returns how many."""
    done = np.array([all(p.is_file() for p in _case_paths(root, cid).values()) for cid in demo["case_id"]], bool)
    todo = np.flatnonzero(~done)
    batch_size = sampling["batch_size"]
    bar = _bar(progress, len(demo), int(done.sum()))
    try:
        if len(todo):
            for row, ct, pet in cascade.iter_generate(
                    {k: np.asarray(used[k])[todo] for k in ("age", "sex", "height_m", "weight_kg")}, indices=todo,
                    callback=(lambda k: bar[0].advance(bar[1], k)) if bar else None, **sampling):
                i = int(todo[row])
                paths = _case_paths(root, demo.at[i, "case_id"])
                write_volume(np.clip(np.rint(ct), -32768, 32767).astype(np.int16), cascade.affine, paths["ct"])
                write_volume(pet.astype(np.float32), cascade.affine, paths["pet"])
                done[i] = True
                if row % max(1, batch_size) == batch_size - 1:
                    _write_table(root, demo, done)
    finally:
        if bar:
            bar[0].stop()
        _write_table(root, demo, done)
    return int(len(todo))


def _write_table(root: Path, demo: pd.DataFrame, done: np.ndarray) -> None:
    """cohort.csv with the finished cases."""
    from .cohort import write_cohort_csv

    frame = demo[done].copy()
    frame["ct"] = [f"{CASE_DIR}/{cid}_ct.nii.gz" for cid in frame["case_id"]]
    frame["pet"] = [f"{CASE_DIR}/{cid}_pet.nii.gz" for cid in frame["case_id"]]
    frame["source"] = "synthetic"
    cols = ["case_id", "age", "sex", "height_m", "weight_kg", "ct", "pet", "source", "generator", "seed",
            "case_index", "twin_of", "clamped"]
    write_cohort_csv(root, frame[cols])


def _bar(enabled: bool, total: int, completed: int):
    if not enabled:
        return None
    from .parallel import progress_bar

    bar = progress_bar()
    task = bar.add_task("generating", total=total, completed=completed)
    bar.start()
    return bar, task

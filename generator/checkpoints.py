"""Checkpoints: safetensors weights with their stage config as JSON; the bundled weights' registry.

A cascade folder holds ``lowres.safetensors`` + ``lowres.json`` (stage 1), ``sr.safetensors`` + ``sr.json``
(stage 2) and ``population.json`` (the training cohort's demographics). Training also keeps
``<stage>-state.safetensors`` + ``<stage>-state.json`` (weights, EMA, optimiser, step) to resume.
Pickle files (.pt, .pth, .ckpt, .pkl, or anything that is not safetensors) are refused: loading them can run
arbitrary code.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ScheduleConfig, StageConfig, stage_from_dict, to_dict
from .diffusion import Denoiser
from .networks import UNet3D

FORMAT = "totalgen-generator-stage"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
STAGES = ("lowres", "sr")
#: Bundled cascades: name -> folder inside the package. The first is the default.
BUNDLED = {"phantom-8mm": Path(__file__).parent / "weights"}
TRAIN_HINT = ("train them: totalgen-eval phantoms --out data/phantoms --n 400 && "
              "totalgen-eval train data/phantoms --stage lowres --out DIR && "
              "totalgen-eval train data/phantoms --stage sr --out DIR (see generator/weights/TRAINING.md)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: pickle, not safetensors, wrong architecture, wrong stage."""


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(obj: Any, path: Path) -> Path:
    """Indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def check_safetensors(path: str | Path) -> Path:
    """Return ``path`` if it is a safetensors file; CheckpointError for pickles and other formats."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints are refused (loading them can run code); "
                              "save the state dict with safetensors.torch.save_file instead")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with open(path, "rb") as fh:
        head = fh.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if len(head) < 9 or head[8:9] != b"{" or n <= 0 or n > path.stat().st_size:
        kind = "a zip/pickle archive" if head[:2] == b"PK" else "not a safetensors file"
        raise CheckpointError(f"{path}: {kind}; only safetensors checkpoints are loaded")
    return path


def file_digest(path: str | Path, n: int = 12) -> str:
    """First ``n`` hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError naming the file when it is truncated or corrupt."""
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None


def build_denoiser(config: StageConfig) -> Denoiser:
    """A freshly initialised preconditioned network for ``config``."""
    return Denoiser(UNet3D(config.network), config.sigma_data)


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``tensors`` into ``module``; CheckpointError naming the first mismatch otherwise."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or extra or bad:
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                f"{bad[0]} has shape {tuple(tensors[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
        raise CheckpointError(f"{source}: weights of another architecture than its config describes ({what}, "
                              f"{len(missing)} missing, {len(extra)} unexpected, {len(bad)} mis-shaped tensors)")
    module.load_state_dict(tensors)


def save_stage(denoiser: Denoiser, config: StageConfig, folder: str | Path, meta: dict | None = None) -> Path:
    """Write ``<kind>.safetensors`` and ``<kind>.json`` (config + meta) into ``folder``; returns the weights path."""
    folder = Path(folder)
    weights = folder / f"{config.kind}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in denoiser.net.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    write_json({"format": FORMAT, "version": FORMAT_VERSION, "config": to_dict(config), "meta": meta or {}},
               folder / f"{config.kind}.json")
    return weights


def read_stage_json(path: str | Path) -> tuple[StageConfig, dict]:
    """(config, meta) from a stage JSON; CheckpointError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stage config not found (every .safetensors needs its .json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a generator stage config (format {data.get('format') if isinstance(data, dict) else None!r})")
    try:
        return stage_from_dict(data["config"]), data.get("meta", {})
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_stage(path: str | Path, device: torch.device | str = "cpu",
               expect: StageConfig | None = None) -> tuple[Denoiser, StageConfig, dict]:
    """Load a stage from ``<kind>.safetensors`` (its ``.json`` beside it) onto ``device``, in eval mode.

    ``expect``: refuse (CheckpointError) a checkpoint whose architecture or grid differs from it.
    """
    path = Path(path)
    weights = check_safetensors(path.with_suffix(".safetensors") if path.suffix == ".json" else path)
    config, meta = read_stage_json(weights.with_suffix(".json"))
    if expect is not None:
        check_same_architecture(expect, config, weights)
    denoiser = build_denoiser(config)
    load_state_strict(denoiser.net, read_tensors(weights), weights)
    meta = dict(meta, sha256=file_digest(weights))
    return denoiser.to(device).eval(), config, meta


def initial_stage(folder: str | Path, config: StageConfig) -> tuple[Path, StageConfig]:
    """(weights path, saved config) of the stage ``config.kind`` in ``folder``, checked to be readable and of
    ``config``'s architecture (FileNotFoundError, CheckpointError otherwise); what a fine-tuning starts from."""
    weights = check_safetensors(Path(folder) / f"{config.kind}.safetensors")
    found, _ = read_stage_json(weights.with_suffix(".json"))
    check_same_architecture(config, found, weights)
    return weights, found


def load_initial_weights(folder: str | Path, config: StageConfig, model: torch.nn.Module,
                         ema: torch.nn.Module) -> dict[str, str]:
    """Start a training from the stage ``config.kind`` saved in ``folder``: its weights into ``model`` and
    ``ema`` (Denoisers); CheckpointError for another architecture. Returns the record a run keeps of it:
    the absolute folder and the weights' digest (``file_digest``)."""
    weights, _ = initial_stage(folder, config)
    tensors = read_tensors(weights)
    load_state_strict(model.net, tensors, weights)
    load_state_strict(ema.net, tensors, weights)
    return {"folder": str(Path(folder).resolve()), "sha256": file_digest(weights)}


def check_same_architecture(expected: StageConfig, found: StageConfig, source: Path) -> None:
    """CheckpointError unless kind, grid, network, SR factor and the x orientation of the training data agree."""
    for name in ("kind", "shape", "voxel_mm", "network", "mirror_x", "sr_factor"):
        a, b = getattr(expected, name), getattr(found, name)
        if a != b:
            raise CheckpointError(f"{source}: checkpoint of another architecture ({name} {b} here, {a} expected)")


def save_training_state(folder: Path, config: StageConfig, model: torch.nn.Module, ema: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, step: int, extra: dict) -> Path:
    """Everything needed to resume: weights, EMA, AdamW moments, step; tensors in safetensors."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    path = folder / f"{config.kind}-state.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT + "-state"}))
    write_json({"format": FORMAT, "version": FORMAT_VERSION, "config": to_dict(config),
                "meta": dict(extra, step=step)}, folder / f"{config.kind}-state.json")
    return path


def load_training_state(folder: Path, config: StageConfig, model: torch.nn.Module, ema: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict | None:
    """Restore a saved training state into the given objects; None if there is none. Returns its meta."""
    path = folder / f"{config.kind}-state.safetensors"
    if not path.is_file():
        return None
    check_safetensors(path)
    saved, meta = read_stage_json(path.with_suffix(".json"))
    check_same_architecture(config, saved, path)
    tensors = read_tensors(path)
    load_state_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    load_state_strict(ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, path)
    opt = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            param = params[int(idx)]
            if value.shape == param.shape:  # moments in their parameter's memory layout (channels-last)
                value = torch.empty_like(param, dtype=value.dtype).copy_(value)
            state.setdefault(int(idx), {})[name] = value
    opt["state"] = state
    optimizer.load_state_dict(opt)
    return meta


def set_schedule(folder: str | Path, kind: str, schedule: ScheduleConfig) -> Path:
    """Rewrite the default sampling schedule saved in ``<kind>.json`` (weights untouched; not architecture)."""
    path = Path(folder) / f"{kind}.json"
    data = json.loads(path.read_text())
    data["config"]["schedule"] = to_dict(schedule)
    read_stage_json(path)  # still a valid stage config
    return write_json(data, path)


def bundled_folder(name: str | None = None) -> Path:
    """The folder of a bundled cascade (default: the first); FileNotFoundError telling how to train."""
    name = name or next(iter(BUNDLED))
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled cascade {name!r}; available: {', '.join(BUNDLED)}")
    folder = BUNDLED[name]
    missing = [f for f in ("lowres.safetensors", "lowres.json", "sr.safetensors", "sr.json", "population.json")
               if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: bundled generator weights missing ({', '.join(missing)}); {TRAIN_HINT}")
    return folder

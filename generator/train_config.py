"""The typed training configuration of one stage (what `train --config FILE` reads), and its cost estimate.

A ``TrainConfig`` names the data grid and the network (voxel size, canvas, channels, SR factor, patch size)
and the optimisation (learning rate with warm-up and cosine decay, gradient accumulation, checkpointing,
validation and preview intervals), the loss (``loss_pool``: multiscale terms, which the logged training
loss includes and the validation loss does not) and, for a fine-tuning, ``init``: the folder of a trained
stage whose weights, noise scale and sampling schedule the run starts from (a fresh optimiser and
learning-rate schedule; the grid and network must match). ``stage_config`` turns it into the ``StageConfig`` saved with the weights;
the ``TrainConfig`` itself is saved beside the checkpoint as ``<stage>-train-config.json``.

Grids: ``voxel_mm`` is the high-res (stage 2) voxel; stage 1 works at ``voxel_mm * sr_factor``. Both cover
``fov_mm`` (x, y, z) of the canvas. ``estimate_cost`` measures a training step's parameters, floating-point
operations and saved activations by running the network on PyTorch's meta device (shapes only, no memory).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import FOV_MM, StageConfig, check_stage, default_lowres, default_sr
from .stages import sr_in_channels

STAGE_NAMES = ("lowres", "sr")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """One stage's training recipe (units: mm, voxels, optimiser steps). None: the stage's default."""

    stage: str = "lowres"
    voxel_mm: float = 8.0
    fov_mm: tuple[float, float, float] = FOV_MM
    sr_factor: int = 2
    channels: tuple[int, ...] | None = None
    blocks_per_level: int = 1
    emb_dim: int = 64
    patch_size: tuple[int, int, int] | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    steps: int | None = None
    lr: float | None = None
    warmup_steps: int = 100
    lr_final: float = 1.0
    grad_checkpointing: bool = False
    precision: str = "auto"
    checkpoint_every: int = 200
    val_fraction: float = 0.0
    val_every: int = 0
    preview_every: int = 0
    workers: int = 0
    cond_dropout: float = 0.1
    field_dropout: float = 0.1
    lowres_noise_max: float = 0.0
    lowres_noise: float = 0.0
    loss_pool: tuple[int, ...] = ()
    init: str | None = None

    @property
    def stage_voxel_mm(self) -> float:
        """The voxel (mm) of this stage's output grid."""
        return self.voxel_mm * (self.sr_factor if self.stage == "lowres" else 1)


def _tuple(value: Any) -> Any:
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


def check_train_config(tc: TrainConfig) -> None:
    """ValueError naming the first field outside its range (the network and grid are checked by stage_config)."""
    if tc.stage not in STAGE_NAMES:
        raise ValueError(f"stage = {tc.stage!r}: lowres or sr expected")
    if tc.precision not in PRECISIONS:
        raise ValueError(f"precision = {tc.precision!r}: one of {', '.join(PRECISIONS)} expected")
    for name, low, high in (("grad_accum", 1, 4096), ("warmup_steps", 0, 10**9), ("checkpoint_every", 1, 10**9),
                            ("val_every", 0, 10**9), ("preview_every", 0, 10**9), ("workers", 0, 256)):
        value = getattr(tc, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} = {value!r}: a whole number in [{low}, {high}] expected")
    for name in ("lr_final", "val_fraction", "cond_dropout", "field_dropout", "lowres_noise_max", "lowres_noise"):
        value = getattr(tc, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} = {value!r}: a number in [0, 1] expected")
    if tc.val_fraction >= 0.5:
        raise ValueError(f"val_fraction = {tc.val_fraction!r}: below 0.5 expected")
    if tc.patch_size is not None and tc.stage != "sr":
        raise ValueError("patch_size: only stage 2 (sr) trains on patches")
    if (tc.lowres_noise_max or tc.lowres_noise) and tc.stage != "sr":
        raise ValueError("lowres_noise_max, lowres_noise: only stage 2 (sr) augments its low-res input")
    if tc.init is not None and (not isinstance(tc.init, str) or not tc.init):
        raise ValueError(f"init = {tc.init!r}: the folder of a stage's weights (a path) or null expected")
    if not isinstance(tc.loss_pool, tuple) or not all(isinstance(f, int) and not isinstance(f, bool)
                                                       for f in tc.loss_pool):
        raise ValueError(f"loss_pool = {tc.loss_pool!r}: a list of block sizes (whole numbers) expected")


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from JSON values (lists become tuples); ValueError for unknown keys or bad values."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names - {"_comment", "_estimate"})
    if unknown:
        raise ValueError(f"unknown training config key {unknown[0]!r}")
    try:
        tc = TrainConfig(**{k: _tuple(v) for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ValueError(f"not a training config ({exc})") from None
    check_train_config(tc)
    stage_config(tc, sigma_data=0.5)  # the grid and network are checked before any data are read
    return tc


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training config JSON file (ValueError naming the problem); its ``init``, when relative, is
    taken relative to the file's folder."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the training config ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("a training config is a JSON object")
    if isinstance(data.get("init"), str) and data["init"]:  # a path in the file is relative to the file
        data = dict(data, init=str((Path(path).parent / data["init"]).resolve()))
    return train_config_from_dict(data)


def train_config_dict(tc: TrainConfig) -> dict[str, Any]:
    """The config as JSON-ready values."""
    return dataclasses.asdict(tc)


def stage_config(tc: TrainConfig, sigma_data: float) -> StageConfig:
    """The StageConfig (saved with the weights) of ``tc``: the stage default on ``tc``'s grid and network.

    New trainings learn per-field null values for missing demographics (``field_nulls``). ValueError when
    the grid or network is out of range (e.g. a canvas axis not divisible by 2 ** (levels - 1)).
    """
    base = default_lowres() if tc.stage == "lowres" else default_sr()
    voxel = tc.stage_voxel_mm
    shape = tuple(int(round(f / voxel)) for f in tc.fov_mm)
    if any(abs(s * voxel - f) > 1e-6 * f for s, f in zip(shape, tc.fov_mm)):
        raise ValueError(f"fov_mm = {tc.fov_mm} is not a whole number of {voxel:g} mm voxels")
    in_channels = (sr_in_channels(base.network.out_channels, tc.lowres_noise_max > 0) if tc.stage == "sr"
                   else base.network.in_channels)
    network = dataclasses.replace(base.network, channels=tc.channels or base.network.channels, in_channels=in_channels,
                                  blocks_per_level=tc.blocks_per_level, emb_dim=tc.emb_dim, field_nulls=True)
    config = dataclasses.replace(
        base, voxel_mm=voxel, shape=shape, fov_mm=tuple(tc.fov_mm), sigma_data=sigma_data, network=network,
        sr_factor=tc.sr_factor, patch_size=tc.patch_size, cond_dropout=tc.cond_dropout,
        field_dropout=tc.field_dropout, lr=tc.lr or base.lr, batch_size=tc.batch_size or base.batch_size,
        steps=tc.steps or base.steps, patch_slices=None if tc.patch_size else base.patch_slices,
        lowres_noise_max=tc.lowres_noise_max, loss_pool=tuple(tc.loss_pool),
        schedule=dataclasses.replace(base.schedule, lowres_noise=tc.lowres_noise))
    check_stage(config)
    return config


def learning_rate(step: int, lr: float, warmup: int, total: int, final: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``final * lr`` at ``total``."""
    if warmup and step < warmup:
        return lr * step / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


def estimate_cost(config: StageConfig, batch_size: int | None = None, checkpointing: bool = False
                  ) -> dict[str, float]:
    """Parameters, forward GFLOP and saved activations (GiB, float32) of one training step, from the code.

    The network runs forward on the meta device (no memory, no arithmetic) on one training input (a patch
    for a patch-trained stage 2), with gradient checkpointing when asked; saved activations are the bytes
    autograd keeps for the backward pass, counted per saved tensor (an upper bound: a tensor saved by two
    operations counts twice; with checkpointing, one block's recomputed activations come on top at a time).
    A training step costs about 3 forward passes (forward + backward); with gradient checkpointing about 4.
    """
    batch = batch_size or config.batch_size
    spatial = config.patch_size or (config.shape[:2] + (config.patch_slices or config.shape[2],))
    with torch.device("meta"):
        from .networks import UNet3D

        from .networks import set_gradient_checkpointing

        net = set_gradient_checkpointing(UNet3D(config.network).train(), checkpointing)
        x = torch.empty(batch, config.network.in_channels, *spatial)
        c_noise, cond = torch.empty(batch), torch.empty(batch, config.network.cond_dim)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * 4)
        return t

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, c_noise, cond)
    params = sum(p.numel() for p in net.parameters())
    return {"parameters": float(params), "batch": float(batch), "input_voxels": float(math.prod(spatial)),
            "forward_gflop": flops.get_total_flops() / 1e9, "activations_gib": sum(saved) / 2**30,
            "weights_and_adam_gib": params * 4 * 5 / 2**30}


def estimated_step(cost: dict[str, float], tflops: float = 100.0, checkpointing: bool = False) -> dict[str, float]:
    """Memory (GiB) and time (s) of one step from ``estimate_cost`` on a GPU sustaining ``tflops`` TFLOP/s.

    Assumed, not measured: 3 forward passes a step (4 with checkpointing), bf16 activations (half of the
    float32 count), 1 GiB of CUDA context and workspace.
    """
    passes = 4 if checkpointing else 3
    act = cost["activations_gib"] / 2
    return {"memory_gib": round(act + cost["weights_and_adam_gib"] + 1.0, 1),
            "seconds": round(passes * cost["forward_gflop"] / (tflops * 1e3), 3)}


ESTIMATE_NOTE = ("estimated from the code (meta-device forward, generator.train_config.estimate_cost), not measured: "
                 "no GPU was available. Memory: bf16 activations + float32 weights and AdamW + 1 GiB; time: 3 forward "
                 "passes a micro-batch (4 with checkpointing) at {tflops:g} TFLOP/s sustained")


def annotate_estimate(path: str | Path, tflops: float = 100.0) -> dict[str, Any]:
    """Rewrite the ``_estimate`` block of a training config file from the code; returns it."""
    tc = load_train_config(path)
    config = stage_config(tc, sigma_data=0.5)
    cost = estimate_cost(config, tc.batch_size, tc.grad_checkpointing)
    step = estimated_step(cost, tflops, tc.grad_checkpointing)
    estimate = {"note": ESTIMATE_NOTE.format(tflops=tflops), "stage_grid": list(config.shape),
                "stage_voxel_mm": config.voxel_mm, "parameters": int(cost["parameters"]),
                "forward_gflop_per_micro_batch": round(cost["forward_gflop"], 1),
                "saved_activations_gib_float32": round(cost["activations_gib"], 2), "memory_gib": step["memory_gib"],
                "seconds_per_step": round(step["seconds"] * tc.grad_accum, 3)}
    Path(path).write_text(json.dumps(dict(train_config_dict(tc), _estimate=estimate), indent=2) + "\n")
    return estimate

"""Training of one cascade stage: EDM loss, AdamW, EMA, periodic checkpoints, a loss log, resume, DDP.

Data come as tensors already on the canvas and normalised (``generator.intensity``):
``volumes`` (N, 2, X, Y, Z) at the 8 mm canvas (stage 1 trains on their 2x2x2 average, stage 2 on the
residual), ``demographics`` (N, 4) raw (age years, sex F=0/M=1, height m, weight kg).

Distributed: launched by ``torchrun`` (environment WORLD_SIZE > 1), the loop initialises torch.distributed
(gloo on CPU, nccl on CUDA), wraps the network in DistributedDataParallel and draws each rank's batches
from its own shard (cases rank::world_size); rank 0 alone writes files. Only the single-process path is
tested.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import build_denoiser, load_training_state, save_stage, save_training_state
from .config import StageConfig
from .diffusion import Denoiser, edm_loss
from .precision import autocast, resolve_precision
from .stages import downsample, lowres_condition, sr_training_pair


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback receives after every step."""

    step: int
    total: int
    loss: float
    seconds: float


def stage_batch(config: StageConfig, volumes: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training target x0, conditioning image or None) of a stage for a batch of 8 mm canvas volumes.

    With ``config.patch_slices`` (and a generator), one random z-window per case is cut from the target
    and the conditioning image after they were computed on the whole volume.
    """
    if config.kind == "lowres":
        x_lo = downsample(volumes)
        return x_lo, (lowres_condition(x_lo) if config.network.in_channels > config.network.out_channels else None)
    if config.kind != "sr":
        raise ValueError(f"unknown stage kind {config.kind!r} (lowres or sr)")
    x0, image = sr_training_pair(volumes)
    length = x0.shape[-1]
    if generator is None or not config.patch_slices or config.patch_slices >= length:
        return x0, image
    size = config.patch_slices
    starts = torch.randint(0, (length - size) // 4 + 1, (x0.shape[0],), generator=generator) * 4
    x0 = torch.stack([x[..., s:s + size] for x, s in zip(x0, starts.tolist())])
    image = torch.stack([c[..., s:s + size] for c, s in zip(image, starts.tolist())])
    return x0, image


def target_std(config: StageConfig, volumes: torch.Tensor, n: int = 64) -> float:
    """Standard deviation of a stage's training target over the first ``n`` cases (for sigma_data)."""
    x0, _ = stage_batch(config, volumes[:n].float())
    return float(x0.std())


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1 + step) / (10 + step))


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); initialises torch.distributed under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def train_stage(config: StageConfig, volumes: torch.Tensor, demographics: torch.Tensor, out: str | Path,
                steps: int | None = None, batch_size: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu", checkpoint_every: int = 200, log_every: int = 10,
                callback: Callable[[TrainProgress], None] | None = None, meta: dict | None = None,
                precision: str = "auto") -> Path:
    """Train (or resume training of) one stage and return the path of its EMA weights.

    volumes (N, 2, X, Y, Z) normalised 8 mm canvas; demographics (N, 4). ``out`` is a cascade folder:
    it receives ``<kind>.safetensors/.json`` (EMA weights, what sampling uses), ``<kind>-state.*`` (resume)
    and ``<kind>-loss.csv`` (step, loss, lr, seconds). A folder holding a state of another architecture
    raises CheckpointError. ``steps``/``batch_size`` override the config's (they are saved in it).
    ``precision``: "auto" (bf16 autocast where the device runs it fast, see generator.precision), "bf16", "fp32".
    """
    out = Path(out)
    device = torch.device(device)
    config = dataclasses.replace(config, steps=steps or config.steps, batch_size=batch_size or config.batch_size)
    rank, world = _distributed(device)
    precision = resolve_precision(precision, device)
    model: Denoiser = build_denoiser(config).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    resumed = load_training_state(out, config, model, ema, optimizer)
    start = int(resumed["step"]) if resumed else 0
    elapsed = float(resumed.get("seconds", 0.0)) if resumed else 0.0
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + rank * 7919 + start)
    shard = torch.arange(rank, volumes.shape[0], world)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model.net, device_ids=[device.index] if device.type == "cuda" else None)
        model_ddp = Denoiser(net, config.sigma_data)  # type: ignore[arg-type]
    else:
        model_ddp = model
    log_path = out / f"{config.kind}-loss.csv"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not log_path.exists() or start == 0:
            log_path.write_text("step,loss,lr,seconds\n")
    t0 = time.perf_counter() - elapsed
    recent: list[float] = []
    model.train()
    step = start

    def save() -> None:
        if rank != 0:
            return
        info = dict(meta or {}, seed=seed, precision=precision, seconds=round(time.perf_counter() - t0, 1),
                    loss_recent=(sum(recent) / len(recent) if recent else None), world_size=world)
        save_training_state(out, config, model, ema, optimizer, step, info)
        save_stage(ema, config, out, dict(info, step=step))

    for step in range(start + 1, config.steps + 1):
        idx = shard[torch.randint(len(shard), (config.batch_size,), generator=gen)]
        x0, image = stage_batch(config, volumes[idx].to(device).float(), gen)
        cond = {"demographics": demographics[idx].to(device).float(), "image": image,
                "keep": (torch.rand(config.batch_size, generator=gen) >= config.cond_dropout).to(device)}
        lr = config.lr * min(1.0, step / 100)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(precision, device):
            loss = edm_loss(model_ddp, x0, cond, config.p_mean, config.p_std, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        update_ema(ema, model, ema_decay_at(step, config.ema_decay))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {step}; lower the learning rate")
        recent = (recent + [value])[-50:]
        seconds = time.perf_counter() - t0
        if rank == 0 and (step % log_every == 0 or step == config.steps):
            with open(log_path, "a") as fh:
                fh.write(f"{step},{sum(recent[-log_every:]) / len(recent[-log_every:]):.6f},{lr:.3g},{seconds:.1f}\n")
        if callback is not None:
            callback(TrainProgress(step, config.steps, value, seconds))
        if step % checkpoint_every == 0 or step == config.steps:
            save()
    if start >= config.steps and rank == 0 and not (out / f"{config.kind}.safetensors").exists():
        save()
    return out / f"{config.kind}.safetensors"


def read_loss_log(path: str | Path) -> list[dict]:
    """The loss log as a list of {step, loss, lr, seconds} rows."""
    lines = Path(path).read_text().strip().splitlines()[1:]
    return [dict(zip(("step", "loss", "lr", "seconds"), map(float, ln.split(",")))) for ln in lines]


def stage_summary(folder: str | Path, kind: str) -> dict:
    """The meta block saved with a stage's EMA weights."""
    return json.loads((Path(folder) / f"{kind}.json").read_text()).get("meta", {})

"""Training of one cascade stage: EDM loss, AdamW, EMA, periodic checkpoints, a loss log, resume, DDP.

Data come as tensors already on the canvas and normalised (``generator.intensity``):
``volumes`` (N, 2, X, Y, Z) at the 8 mm canvas (stage 1 trains on their 2x2x2 average, stage 2 on the
residual), ``demographics`` (N, 4) raw (age years, sex F=0/M=1, height m, weight kg).

Randomness is keyed, not streamed: the cases of step ``s`` come from (seed, s) and everything drawn for item
``i`` of its batch (z-window, condition dropout, noise level, noise) from (seed, s, i). A run therefore
resumes exactly, and its result does not depend on how the batch is split over processes.

Distributed (``torchrun``, see ``generator.distributed``): ``batch_size`` is per process; the global batch
of ``batch_size x world size`` items is drawn as above and rank r takes items r, r + W, r + 2W, ...; the
network is wrapped in DistributedDataParallel (gradients averaged), so W processes with batch B follow one
process with batch W x B up to float rounding. The logged loss is averaged over the processes; rank 0 alone
writes files, and every process leaves the loop after its last checkpoint is written.

For GPUs: ``precision="bf16"`` (or "auto") trains under bf16 autocast (weights, optimiser and loss stay
float32); ``checkpointing=True`` recomputes each residual block's activations in the backward pass (large
canvases; about a third more compute). Neither is exercised on a GPU by the tests (the test machine has none).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoints import build_denoiser, load_training_state, save_stage, save_training_state
from .config import StageConfig
from .diffusion import Denoiser, edm_loss_at, sample_training_sigmas
from .distributed import World, barrier, join_world, parameter_spread, world_mean
from .networks import set_gradient_checkpointing
from .precision import autocast, resolve_precision
from .stages import downsample, lowres_condition, sr_training_pair

WARMUP_STEPS = 100
RECENT_STEPS = 50


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback receives after every step."""

    step: int
    total: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class Batch:
    """One process's share of a training step: target x0, conditioning, noise levels (B,), unit noise."""

    x0: torch.Tensor
    cond: dict
    sigma: torch.Tensor
    noise: torch.Tensor


@dataclass
class Trainee:
    """What the loop updates: the network, its EMA, the optimiser, and the (DDP-wrapped) denoiser it calls."""

    model: Denoiser
    ema: Denoiser
    optimizer: torch.optim.Optimizer
    denoiser: Denoiser
    start: int
    seconds: float


def stage_batch(config: StageConfig, volumes: torch.Tensor, starts: list[int | None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training target x0, conditioning image or None) of a stage for a batch of 8 mm canvas volumes.

    ``starts``: one z-window start per case (``patch_start``), cut from the target and the conditioning image
    after they were computed on the whole volume; None (or None entries) keeps the whole volume.
    """
    if config.kind == "lowres":
        x_lo = downsample(volumes)
        return x_lo, (lowres_condition(x_lo) if config.network.in_channels > config.network.out_channels else None)
    if config.kind != "sr":
        raise ValueError(f"unknown stage kind {config.kind!r} (lowres or sr)")
    x0, image = sr_training_pair(volumes)
    if starts is None or any(s is None for s in starts):
        return x0, image
    size = config.patch_slices
    x0 = torch.stack([x[..., s:s + size] for x, s in zip(x0, starts)])
    image = torch.stack([c[..., s:s + size] for c, s in zip(image, starts)])
    return x0, image


def patch_start(config: StageConfig, length: int, generator: torch.Generator) -> int | None:
    """A random z-window start (a multiple of 4 slices) for stage 2 with ``patch_slices``, else None."""
    size = config.patch_slices
    if config.kind != "sr" or not size or size >= length:
        return None
    return int(torch.randint(0, (length - size) // 4 + 1, (1,), generator=generator)) * 4


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


def learning_rate_at(step: int, lr: float) -> float:
    """Linear warm-up over the first WARMUP_STEPS steps, then ``lr``."""
    return lr * min(1.0, step / WARMUP_STEPS)


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from the integers ``key`` (e.g. seed, step, item)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def draw_batch(config: StageConfig, volumes: torch.Tensor, demographics: torch.Tensor, step: int, seed: int,
               world: World) -> Batch:
    """This process's ``config.batch_size`` items of step ``step``'s global batch, on ``world.device``.

    The global batch (batch_size x world.size cases, drawn with replacement from (seed, step)) is dealt out
    as items rank, rank + W, ...; each item's z-window, dropout, noise level and noise come from
    (seed, step, item), so the union over processes is what one process with the whole batch draws.
    """
    total = config.batch_size * world.size
    cases = torch.randint(volumes.shape[0], (total,), generator=keyed_generator(seed, step))
    items = list(range(world.rank, total, world.size))
    gens = [keyed_generator(seed, step, item) for item in items]
    starts = [patch_start(config, volumes.shape[-1], g) for g in gens]
    idx = cases[items]
    x0, image = stage_batch(config, volumes[idx].to(world.device).float(), starts)
    keep = torch.cat([torch.rand(1, generator=g) >= config.cond_dropout for g in gens])
    sigma = torch.cat([sample_training_sigmas(1, config.p_mean, config.p_std, g) for g in gens])
    noise = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens])
    cond = {"demographics": demographics[idx].to(world.device).float(), "image": image,
            "keep": keep.to(world.device)}
    return Batch(x0, cond, sigma.to(world.device), noise.to(world.device))


def prepare(config: StageConfig, out: Path, seed: int, world: World, checkpointing: bool = False) -> Trainee:
    """A fresh (seeded) or resumed network, EMA and AdamW; the denoiser wrapped in DDP in a larger world."""
    torch.manual_seed(seed)  # the same initial weights on every process and in every run
    model = build_denoiser(config).to(world.device)
    set_gradient_checkpointing(model.net, checkpointing)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    resumed = load_training_state(out, config, model, ema, optimizer) or {}
    denoiser = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.device.index] if world.device.type == "cuda" else None
        denoiser = Denoiser(DistributedDataParallel(model.net, device_ids=ids), config.sigma_data)  # type: ignore[arg-type]
    return Trainee(model, ema, optimizer, denoiser, int(resumed.get("step", 0)), float(resumed.get("seconds", 0.0)))


def optimise(trainee: Trainee, batch: Batch, lr: float, grad_clip: float, precision: str,
             device: torch.device) -> torch.Tensor:
    """One AdamW step on ``batch`` at learning rate ``lr``; returns this process's loss (detached)."""
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr
    with autocast(precision, device):
        loss = edm_loss_at(trainee.denoiser, batch.x0, batch.cond, batch.sigma, batch.noise)
    trainee.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), grad_clip)
    trainee.optimizer.step()
    return loss.detach()


def save_checkpoint(trainee: Trainee, config: StageConfig, out: Path, step: int, info: dict) -> None:
    """The resumable state and the EMA weights (what sampling uses) at ``step``."""
    save_training_state(out, config, trainee.model, trainee.ema, trainee.optimizer, step, info)
    save_stage(trainee.ema, config, out, dict(info, step=step))


def train_stage(config: StageConfig, volumes: torch.Tensor, demographics: torch.Tensor, out: str | Path,
                steps: int | None = None, batch_size: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu", checkpoint_every: int = 200, log_every: int = 10,
                callback: Callable[[TrainProgress], None] | None = None, meta: dict | None = None,
                precision: str = "auto", checkpointing: bool = False) -> Path:
    """Train (or resume training of) one stage and return the path of its EMA weights.

    volumes (N, 2, X, Y, Z) normalised 8 mm canvas; demographics (N, 4). ``out`` is a cascade folder:
    it receives ``<kind>.safetensors/.json`` (EMA weights, what sampling uses), ``<kind>-state.*`` (resume)
    and ``<kind>-loss.csv`` (step, loss, lr, seconds). A folder holding a state of another architecture
    raises CheckpointError. ``steps``/``batch_size`` (per process) override the config's (they are saved in
    it). ``precision``: "auto" (bf16 autocast where the device runs it fast, see generator.precision), "bf16",
    "fp32". ``checkpointing``: gradient checkpointing of the residual blocks (memory for compute).
    """
    out = Path(out)
    config = dataclasses.replace(config, steps=steps or config.steps, batch_size=batch_size or config.batch_size)
    world = join_world(device)
    precision = resolve_precision(precision, world.device)
    trainee = prepare(config, out, seed, world, checkpointing)
    log = LossLog(out / f"{config.kind}-loss.csv", log_every, fresh=trainee.start == 0) if world.is_main else None
    info = dict(meta or {}, seed=seed, precision=precision, world_size=world.size,
                global_batch=config.batch_size * world.size)
    t0 = time.perf_counter() - trainee.seconds
    for step in range(trainee.start + 1, config.steps + 1):
        lr = learning_rate_at(step, config.lr)
        batch = draw_batch(config, volumes, demographics, step, seed, world)
        value = world_mean(optimise(trainee, batch, lr, config.grad_clip, precision, world.device), world)
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {step}; lower the learning rate")
        update_ema(trainee.ema, trainee.model, ema_decay_at(step, config.ema_decay))
        seconds = time.perf_counter() - t0
        if log is not None:
            log.add(step, value, lr, seconds, last=step == config.steps)
        if callback is not None:
            callback(TrainProgress(step, config.steps, value, seconds))
        if world.is_main and (step % checkpoint_every == 0 or step == config.steps):
            save_checkpoint(trainee, config, out, step, dict(info, seconds=round(seconds, 1),
                                                             loss_recent=log.recent_mean() if log else None))
    weights = out / f"{config.kind}.safetensors"
    if world.is_main and trainee.start >= config.steps and not weights.exists():
        save_checkpoint(trainee, config, out, trainee.start, dict(info, seconds=round(trainee.seconds, 1)))
    spread = parameter_spread(trainee.model, world)
    if spread > 0:
        raise RuntimeError(f"processes out of sync after training: parameters differ by up to {spread:.3g}")
    barrier(world)
    return weights


class LossLog:
    """``<kind>-loss.csv``: the mean loss of the last ``every`` steps, every ``every`` steps and at the end."""

    def __init__(self, path: Path, every: int, fresh: bool):
        self.path, self.every, self.recent = path, every, []
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or not path.exists():
            path.write_text("step,loss,lr,seconds\n")

    def add(self, step: int, loss: float, lr: float, seconds: float, last: bool = False) -> None:
        """Record a step's (process-averaged) loss; append a line every ``every`` steps and at the last."""
        self.recent = (self.recent + [loss])[-RECENT_STEPS:]
        if step % self.every == 0 or last:
            window = self.recent[-self.every:]
            with open(self.path, "a") as fh:
                fh.write(f"{step},{sum(window) / len(window):.6f},{lr:.3g},{seconds:.1f}\n")

    def recent_mean(self) -> float | None:
        """Mean loss over the last RECENT_STEPS steps (None before the first)."""
        return sum(self.recent) / len(self.recent) if self.recent else None


def read_loss_log(path: str | Path) -> list[dict]:
    """The loss log as a list of {step, loss, lr, seconds} rows."""
    lines = Path(path).read_text().strip().splitlines()[1:]
    return [dict(zip(("step", "loss", "lr", "seconds"), map(float, ln.split(",")))) for ln in lines]

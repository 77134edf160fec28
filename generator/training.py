"""Training of one cascade stage: EDM loss, AdamW, EMA, periodic checkpoints, a loss log, resume, DDP.

Data come as a volume source (``generator.data``: an in-memory tensor, or cases streamed from an .npy cache
on disk through a DataLoader), normalised (``generator.intensity``) on the data grid (stage 1 trains on its
f x f x f average, stage 2 on the residual, on random 3D patches when configured), and demographics (N, 4)
raw (age years, sex F=0/M=1, height m, weight kg; NaN where unknown).

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

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import build_denoiser, load_initial_weights, load_training_state, save_stage, save_training_state
from .config import StageConfig
from .diffusion import Denoiser, edm_loss_at, sample_training_sigmas
from .distributed import World, barrier, join_world, parameter_spread, world_mean
from .networks import channels_last, set_gradient_checkpointing
from .precision import autocast, checked_precision
from .data import CanvasCases, TensorVolumes, collate, keyed_generator, split_cases, step_keys, step_loader
from .previews import coronal_image, sample_preview, write_png
from .train_config import TrainConfig, learning_rate

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
    init: dict | None = None  # the weights a fine-tuning started from (load_initial_weights), kept on resume


def target_std(dataset: CanvasCases, n: int = 64) -> float:
    """Standard deviation of a stage's training target over the first ``n`` cases (for sigma_data)."""
    x0 = torch.stack([dataset[(i, 0, i)]["x0"] for i in range(min(n, len(dataset)))])
    return float(x0.std())


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1 + step) / (10 + step))


def noise_batch(config: StageConfig, items: dict, item_ids: list[int], step: int, seed: int,
                device: torch.device) -> Batch:
    """A Batch from loaded items: each item's condition dropout, noise level, noise and (with
    ``config.field_dropout``) missing demographic fields come from (seed, step, item)."""
    gens = [keyed_generator(seed, step, item) for item in item_ids]
    x0 = items["x0"].to(device).float()
    keep = torch.cat([torch.rand(1, generator=g) >= config.cond_dropout for g in gens])
    sigma = torch.cat([sample_training_sigmas(1, config.p_mean, config.p_std, g) for g in gens])
    noise = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens])
    demo = items["demographics"].float().clone()
    if config.field_dropout > 0:
        drop = torch.stack([torch.rand(demo.shape[1], generator=g) < config.field_dropout for g in gens])
        demo[drop] = float("nan")
    image = items.get("image")
    cond = {"demographics": demo.to(device), "image": None if image is None else image.to(device).float(),
            "keep": keep.to(device)}
    return Batch(x0, cond, sigma.to(device), noise.to(device))


def draw_batch(config: StageConfig, volumes: torch.Tensor, demographics: torch.Tensor, step: int, seed: int,
               world: World) -> Batch:
    """This process's ``config.batch_size`` items of step ``step``'s global batch, on ``world.device``.

    The global batch (batch_size x world.size cases, drawn with replacement from (seed, step)) is dealt out
    as items rank, rank + W, ...; each item's patch, dropout, noise level and noise come from
    (seed, step, item), so the union over processes is what one process with the whole batch draws.
    """
    dataset = CanvasCases(TensorVolumes(volumes, config.sr_factor), demographics, config, seed)
    keys = step_keys(range(len(dataset)), config.batch_size, step, seed, world.rank, world.size)
    return noise_batch(config, collate([dataset[k] for k in keys]), [k[2] for k in keys], step, seed, world.device)


def prepare(config: StageConfig, out: Path, seed: int, world: World, checkpointing: bool = False,
            init: str | Path | None = None) -> Trainee:
    """A fresh (seeded, or ``init``'s weights) or resumed network, EMA and AdamW; the denoiser wrapped in DDP
    in a larger world."""
    torch.manual_seed(seed)  # the same initial weights on every process and in every run
    # channels-last 3D: with upsample_conv, a stage-2 step 1.47x faster on a 2-core CPU (fp32)
    model = channels_last(build_denoiser(config).to(world.device))
    set_gradient_checkpointing(model.net, checkpointing)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    resumed = load_training_state(out, config, model, ema, optimizer)
    origin = resumed.get("init") if resumed is not None else None
    if resumed is None and init is not None:
        origin = load_initial_weights(init, config, model, ema)
    resumed = resumed or {}
    denoiser = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.device.index] if world.device.type == "cuda" else None
        denoiser = Denoiser(DistributedDataParallel(model.net, device_ids=ids), config.sigma_data)  # type: ignore[arg-type]
    return Trainee(model, ema, optimizer, denoiser, int(resumed.get("step", 0)), float(resumed.get("seconds", 0.0)),
                   origin)


def optimise(trainee: Trainee, batch: Batch, lr: float, grad_clip: float, precision: str,
             device: torch.device, accum: int = 1, pool: tuple[int, ...] = ()) -> torch.Tensor:
    """One AdamW step on ``batch`` at learning rate ``lr``, its gradient accumulated over ``accum`` equal
    micro-batches (gradients synchronised across processes on the last only); returns the mean loss
    (``pool``: its multiscale terms, ``edm_loss_at``)."""
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr
    trainee.optimizer.zero_grad(set_to_none=True)
    parts = [torch.chunk(t, accum) for t in (batch.x0, batch.sigma, batch.noise)]
    conds = [{k: (None if v is None else torch.chunk(v, accum)[i]) for k, v in batch.cond.items()}
             for i in range(len(parts[0]))]
    no_sync = getattr(trainee.denoiser.net, "no_sync", contextlib.nullcontext)
    total = torch.zeros((), device=device)
    for i, cond in enumerate(conds):
        with (contextlib.nullcontext() if i == len(conds) - 1 else no_sync()):
            with autocast(precision, device):
                loss = edm_loss_at(trainee.denoiser, parts[0][i], cond, parts[1][i], parts[2][i], pool)
            (loss / len(conds)).backward()
        total += loss.detach() / len(conds)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), grad_clip)
    trainee.optimizer.step()
    return total


@torch.no_grad()
def validation_loss(ema: Denoiser, dataset: CanvasCases, cases: list[int], seed: int, device: torch.device,
                    n: int = 16) -> float:
    """EDM loss of the EMA network on up to ``n`` held-out cases at 4 fixed noise levels (the training
    distribution's quantiles) with fixed noise: comparable from one evaluation to the next."""
    config = dataset.config
    z = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    sigma = (config.p_mean + config.p_std * z).exp().to(device)
    losses = []
    for case in cases[:n]:
        item = collate([dataset[(case, 0, case)]] * len(z))
        batch = noise_batch(dataclasses.replace(config, cond_dropout=0.0, field_dropout=0.0), item,
                            [case] * len(z), 2**32 - 2, seed, device)
        losses.append(float(edm_loss_at(ema, batch.x0, batch.cond, sigma, batch.noise)))
    return sum(losses) / max(len(losses), 1)


def write_preview(ema: Denoiser, dataset: CanvasCases, case: int, step: int, seed: int, out: Path,
                  device: torch.device) -> Path:
    """``previews/<kind>-<step>.png``: the coronal middle slice of a volume sampled for ``case``."""
    item = dict(dataset[(case, 0, case)])
    if dataset.config.kind == "sr":
        item["low"] = dataset.source.low(case)
    volume = sample_preview(ema, dataset.config, item, seed, device)
    return write_png(out / "previews" / f"{dataset.config.kind}-{step:07d}.png", coronal_image(volume))


def save_checkpoint(trainee: Trainee, config: StageConfig, out: Path, step: int, info: dict) -> None:
    """The resumable state and the EMA weights (what sampling uses) at ``step``."""
    save_training_state(out, config, trainee.model, trainee.ema, trainee.optimizer, step, info)
    save_stage(trainee.ema, config, out, dict(info, step=step))


def train_stage(config: StageConfig, volumes, demographics: torch.Tensor, out: str | Path,
                steps: int | None = None, batch_size: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu", checkpoint_every: int = 200, log_every: int = 10,
                callback: Callable[[TrainProgress], None] | None = None, meta: dict | None = None,
                precision: str = "auto", checkpointing: bool = False, recipe: TrainConfig | None = None) -> Path:
    """Train (or resume training of) one stage and return the path of its EMA weights.

    volumes: (N, 2, X, Y, Z) normalised on the data grid, or a volume source streamed from disk
    (``generator.data.NpyCache``); demographics (N, 4), NaN where a field is unknown. ``out`` is a cascade
    folder: it receives ``<kind>.safetensors/.json`` (EMA weights, what sampling uses), ``<kind>-state.*``
    (resume), ``<kind>-loss.csv`` (step, loss, lr, seconds) and, with a ``recipe`` asking for them,
    ``<kind>-val.csv`` (step, val_loss) and ``previews/<kind>-<step>.png``. ``recipe`` (a TrainConfig) sets
    warm-up and cosine decay, gradient accumulation, the held-out split, DataLoader workers and the intervals;
    None: 100 warm-up steps then a constant rate. A folder holding a state of another architecture raises
    CheckpointError. ``steps``/``batch_size`` (per process and micro-batch) override the config's.
    ``precision``: "auto", "bf16", "fp32"; ``checkpointing``: gradient checkpointing of the residual blocks.
    """
    out, recipe = Path(out), recipe or TrainConfig(stage=config.kind)
    config = dataclasses.replace(config, steps=steps or config.steps, batch_size=batch_size or config.batch_size)
    world = join_world(device)
    precision = checked_precision(precision, world.device)
    trainee = prepare(config, out, seed, world, checkpointing, recipe.init)
    dataset = canvas_cases(volumes, demographics, config, seed)
    train_cases, val_cases = split_cases(len(dataset), recipe.val_fraction, seed)
    log = LossLog(out / f"{config.kind}-loss.csv", log_every, fresh=trainee.start == 0) if world.is_main else None
    info = run_info(meta, seed, precision, world, config, recipe, len(val_cases))
    if trainee.init is not None:
        info["init"] = trainee.init
    t0 = time.perf_counter() - trainee.seconds
    batches = step_loader(dataset, train_cases, config.batch_size * recipe.grad_accum,
                          range(trainee.start + 1, config.steps + 1), seed, world.rank, world.size, recipe.workers)
    for step, items, item_ids in batches:
        lr = learning_rate(step, config.lr, recipe.warmup_steps, config.steps, recipe.lr_final)
        batch = noise_batch(config, items, item_ids, step, seed, world.device)
        value = train_step(trainee, batch, lr, step, config, recipe, precision, world)
        seconds = time.perf_counter() - t0
        report_step(log, callback, TrainProgress(step, config.steps, value, seconds), lr)
        if world.is_main:
            after_step(trainee, dataset, val_cases or train_cases[:1], recipe, step, out, seed, world.device,
                       dict(info, seconds=round(seconds, 1), loss_recent=log.recent_mean() if log else None),
                       checkpoint_every)
    return finish(trainee, config, out, world, info)


def canvas_cases(volumes, demographics: torch.Tensor, config: StageConfig, seed: int) -> CanvasCases:
    """The stage's training items from ``volumes`` ((N, 2, X, Y, Z) tensor, normalised, or a volume source
    streamed from disk) and ``demographics`` (N, 4)."""
    source = TensorVolumes(volumes, config.sr_factor) if isinstance(volumes, torch.Tensor) else volumes
    return CanvasCases(source, demographics, config, seed)


def run_info(meta: dict | None, seed: int, precision: str, world: World, config: StageConfig, recipe: TrainConfig,
             n_validation: int) -> dict:
    """What every checkpoint records about the run: ``meta`` and the seed, precision, world size, gradient
    accumulation, global batch (items a step over all processes) and number of held-out cases."""
    return dict(meta or {}, seed=seed, precision=precision, world_size=world.size, grad_accum=recipe.grad_accum,
                global_batch=config.batch_size * recipe.grad_accum * world.size, validation_cases=n_validation)


def train_step(trainee: Trainee, batch: Batch, lr: float, step: int, config: StageConfig, recipe: TrainConfig,
               precision: str, world: World) -> float:
    """One optimiser step on ``batch`` at learning rate ``lr``, then the EMA update; returns the loss averaged
    over the processes (FloatingPointError when it is not finite)."""
    value = world_mean(optimise(trainee, batch, lr, config.grad_clip, precision, world.device, recipe.grad_accum,
                                config.loss_pool), world)
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss is {value} at step {step}; lower the learning rate")
    update_ema(trainee.ema, trainee.model, ema_decay_at(step, config.ema_decay))
    return value


def report_step(log: LossLog | None, callback: Callable[[TrainProgress], None] | None, progress: TrainProgress,
                lr: float) -> None:
    """Add the step's loss to the loss log (rank 0 holds one) and hand ``progress`` to ``callback``."""
    if log is not None:
        log.add(progress.step, progress.loss, lr, progress.seconds, last=progress.step == progress.total)
    if callback is not None:
        callback(progress)


def after_step(trainee: Trainee, dataset: CanvasCases, held_out: list[int], recipe: TrainConfig, step: int,
               out: Path, seed: int, device: torch.device, info: dict, checkpoint_every: int) -> None:
    """Rank 0's work after a step: validation loss, sample preview and checkpoint when their interval is due."""
    config, last = dataset.config, step == dataset.config.steps
    if recipe.val_every and recipe.val_fraction and (step % recipe.val_every == 0 or last):
        value = validation_loss(trainee.ema, dataset, held_out, seed, device)
        path = out / f"{config.kind}-val.csv"
        if not path.exists():
            path.write_text("step,val_loss\n")
        with open(path, "a") as fh:
            fh.write(f"{step},{value:.6f}\n")
        info = dict(info, val_loss=value)
    if recipe.preview_every and (step % recipe.preview_every == 0 or last):
        write_preview(trainee.ema, dataset, held_out[0], step, seed, out, device)
    if step % checkpoint_every == 0 or last:
        save_checkpoint(trainee, config, out, step, info)


def finish(trainee: Trainee, config: StageConfig, out: Path, world: World, info: dict) -> Path:
    """The EMA weights' path after the loop; a resumed finished run still writes them; processes checked in sync."""
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

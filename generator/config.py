"""Frozen configuration dataclasses for the networks, noise schedules, stages and the cascade.

Every checkpoint is saved with its stage config as JSON (``to_dict`` / ``stage_from_dict``); a stage is
rebuilt from that JSON alone, so a checkpoint cannot be loaded into a network of another shape.

Geometry: the canvas is ``fov_mm`` (x, y, z) in RAS+ with its top (z max) at z = 0 mm; tensors are
(B, C, X, Y, Z). Channels are (CT, PET) in the normalised space of ``generator.diffusion``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

FOV_MM: tuple[float, float, float] = (448.0, 320.0, 1152.0)
#: Demographic conditioning vector order; sex is coded F = 0, M = 1 (as in the paper's code).
COND_NAMES: tuple[str, ...] = ("age", "sex", "height_m", "weight_kg")


@dataclass(frozen=True)
class NetworkConfig:
    """A lean 3D UNet: ``len(channels)`` levels, GroupNorm + SiLU residual blocks, FiLM modulation.

    in_channels counts the noisy image plus any conditioning channels (stage 2: upsampled low-res and
    3 position channels); out_channels the denoised image channels. ``cond_center``/``cond_scale``
    normalise (age years, sex 0/1, height m, weight kg) before the embedding MLP. ``field_nulls``: a
    learned normalised value per field stands in for a missing (NaN) field (False: 0, the field's centre;
    the bundled weights predate it).
    """

    in_channels: int = 2
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    blocks_per_level: int = 1
    emb_dim: int = 64
    cond_dim: int = 4
    cond_center: tuple[float, ...] = (50.0, 0.5, 1.72, 78.0)
    cond_scale: tuple[float, ...] = (20.0, 0.5, 0.10, 16.0)
    field_nulls: bool = False


@dataclass(frozen=True)
class ScheduleConfig:
    """Karras sigma schedule and the default sampler of a stage.

    sampler: "dpmpp_2m" or "heun"; steps: number of sigma intervals; guidance: classifier-free guidance
    scale (1 = conditional model only, no extra network call); guidance_sigma: (low, high) noise levels
    between which guidance applies, the conditional model alone elsewhere (None: at every level; a
    guidance interval, Kynkaanniemi et al. 2024). lowres_noise (stage 2 with ``StageConfig.lowres_noise_max``
    > 0): the augmentation level of the low-res input at sampling.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    steps: int = 16
    sampler: str = "dpmpp_2m"
    guidance: float = 1.0
    guidance_sigma: tuple[float, float] | None = None
    lowres_noise: float = 0.0


@dataclass(frozen=True)
class StageConfig:
    """One stage of the cascade: grid, data statistics, EDM loss settings and optimiser settings.

    kind: "lowres" (stage 1: noise -> low-res PET/CT from demographics) or "sr" (stage 2: residual
    super-resolution; target = high-res minus trilinearly upsampled low-res).
    voxel_mm: isotropic voxel size (mm) of the stage's output; shape: (X, Y, Z) voxels.
    sigma_data: standard deviation of the training target (EDM preconditioning).
    p_mean, p_std: ln(sigma) ~ N(p_mean, p_std) during training.
    cond_dropout: probability of replacing the demographics by the learned null embedding (for CFG).
    patch_slices: train on random z-windows of this many slices (None: whole volumes); the target and
    conditioning are computed on the whole volume first, so windows see exactly what sampling sees.
    mirror_x: the weights were trained on anatomy mirrored along x (the patient's right at -x); sampling
    flips the generated volumes along x, which is exactly the network trained on unmirrored data. False for
    every new training; both stages of a cascade agree.
    patch_size: stage 2 trains on random 3D patches (X, Y, Z) voxels of its grid (the paper: 56 x 56 x 96);
    it wins over patch_slices. sr_factor: stage 2's grid is this many times finer than stage 1's on each axis.
    field_dropout: probability, per case and demographic field, of training with that field missing (NaN).
    lowres_noise_max: noise-conditioning augmentation of stage 2 (0: off): in training its normalised low-res
    input is corrupted by Gaussian noise of a level drawn uniformly in [0, lowres_noise_max], and the level is
    one more input channel (so stage 1's errors look like what stage 2 was trained to see through).
    loss_pool: block sizes of the multiscale loss terms (``diffusion.edm_loss_at``; empty: the plain EDM
    loss); each must divide every axis of a training input.
    """

    kind: str = "lowres"
    voxel_mm: float = 16.0
    shape: tuple[int, int, int] = (28, 20, 72)
    fov_mm: tuple[float, float, float] = FOV_MM
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    cond_dropout: float = 0.1
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    batch_size: int = 8
    steps: int = 3000
    grad_clip: float = 1.0
    patch_slices: int | None = None
    mirror_x: bool = False
    patch_size: tuple[int, int, int] | None = None
    sr_factor: int = 2
    field_dropout: float = 0.0
    lowres_noise_max: float = 0.0
    loss_pool: tuple[int, ...] = ()


def default_lowres() -> StageConfig:
    """Stage 1 defaults: 16 mm canvas (28, 20, 72), UNet (16, 32, 64), DPM-Solver++(2M) 16 steps from sigma 20.

    Input channels: 2 noisy image + 3 position channels (the lean UNet cannot see the whole canvas).

    sigma_max 20 is still ~45x the data's standard deviation; with 16 steps the probability-flow error on
    Gaussian data of std 0.02-0.43 stays within ~5% (sigma_max 80 needs ~24 steps for the same).
    """
    return StageConfig(kind="lowres", voxel_mm=16.0, shape=(28, 20, 72), sigma_data=0.5,
                       p_mean=-1.0, p_std=1.2, cond_dropout=0.1,
                       network=NetworkConfig(in_channels=5, out_channels=2, channels=(16, 32, 64)),
                       schedule=ScheduleConfig(sigma_min=0.002, sigma_max=20.0, steps=16, sampler="dpmpp_2m"),
                       lr=2e-3, ema_decay=0.998, batch_size=8, steps=4000)


def default_sr() -> StageConfig:
    """Stage 2 defaults: 8 mm canvas (56, 40, 144), residual target, UNet (8, 16, 32), 4 DPM++ steps.

    Input channels: 2 noisy residual + 2 upsampled low-res + 3 positions = 7. The residual is small
    (sigma_data 0.1), so its sigmas start low (sigma_max 1) and a few steps suffice (4: on Gaussian data of
    std 0.1 the sample std is within 1%; 3 steps under-generate it by ~10%). Trained on random
    48-slice z-windows (a third of the volume per sample: three times the steps for the same time),
    sampled over the whole volume (the network is fully convolutional).
    """
    return StageConfig(kind="sr", voxel_mm=8.0, shape=(56, 40, 144), sigma_data=0.1,
                       p_mean=-2.3, p_std=1.2, cond_dropout=0.1,
                       network=NetworkConfig(in_channels=7, out_channels=2, channels=(8, 16, 32)),
                       schedule=ScheduleConfig(sigma_min=0.002, sigma_max=1.0, steps=4, sampler="dpmpp_2m"),
                       lr=2e-3, ema_decay=0.998, batch_size=3, steps=3000, patch_slices=48)


def tiny_lowres(shape: tuple[int, int, int] = (8, 8, 16)) -> StageConfig:
    """A tiny stage 1 for tests: fov scaled so that voxel 16 mm still holds."""
    return dataclasses.replace(
        default_lowres(), shape=shape, fov_mm=tuple(16.0 * s for s in shape),
        network=NetworkConfig(in_channels=5, out_channels=2, channels=(4, 8), emb_dim=16),
        schedule=ScheduleConfig(steps=4), batch_size=4, steps=10)


def tiny_sr(lowres_shape: tuple[int, int, int] = (8, 8, 16)) -> StageConfig:
    """A tiny stage 2 matching ``tiny_lowres(lowres_shape)``."""
    return dataclasses.replace(
        default_sr(), shape=tuple(2 * s for s in lowres_shape), fov_mm=tuple(16.0 * s for s in lowres_shape),
        network=NetworkConfig(in_channels=7, out_channels=2, channels=(4, 8), emb_dim=16),
        schedule=ScheduleConfig(sigma_max=1.0, steps=2), batch_size=2, steps=10)


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-ready values (tuples become lists)."""
    return dataclasses.asdict(config)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def stage_from_dict(data: dict[str, Any]) -> StageConfig:
    """Rebuild a StageConfig from ``to_dict`` output; unknown keys or values beyond LIMITS raise ValueError.

    The limits are checked before any network is built, so an absurd config never allocates memory.
    """
    try:
        data = dict(data)
        network = NetworkConfig(**{k: _tuples(v) for k, v in data.pop("network").items()})
        schedule = ScheduleConfig(**{k: _tuples(v) for k, v in data.pop("schedule").items()})
        config = StageConfig(network=network, schedule=schedule, **{k: _tuples(v) for k, v in data.items()})
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a generator stage config ({exc})") from None
    check_stage(config)
    return config


# Limits of a stage config: far above anything this project trains, far below what exhausts a machine.
LIMITS: dict[str, float] = {
    "channels": 1024,          # per UNet level
    "levels": 8,
    "blocks_per_level": 8,
    "io_channels": 64,         # network in/out channels
    "emb_dim": 4096,
    "canvas_edge": 2048,       # voxels along one axis
    "canvas_voxels": 2**27,    # voxels of one stage's volume (134 M; the paper's 224 x 224 x 384 is 19 M)
    "parameters": 2**29,       # estimated network parameters (2 GiB as float32)
    "steps": 1000,             # sampler steps
    "guidance": 50.0,
    "batch_size": 4096,
}
SAMPLER_NAMES = ("euler", "heun", "dpmpp_2m")


def _number(value: Any, name: str, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``(low, high]`` with ``low_open``), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} is not a finite number")
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name} = {value!r} is outside {'(' if low_open else '['}{low:g}, {high:g}]")
    return float(value)


def _whole(value: Any, name: str, low: int, high: float) -> int:
    """``value`` as an int in [low, high], else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} = {value!r} is not a whole number")
    return int(_number(value, name, low, high))


def estimated_parameters(network: NetworkConfig) -> int:
    """An upper estimate of the UNet's parameter count (3x3x3 convs in and out of every block, FiLM, skips)."""
    e, b = network.emb_dim, network.blocks_per_level
    per_level = [4 * b * (27 * c * c + 2 * e * c) + 2 * 27 * c * c for c in network.channels]
    return int(sum(per_level) + 27 * network.channels[0] * (network.in_channels + network.out_channels) + 4 * e * e)


def check_network(network: NetworkConfig) -> None:
    """ValueError naming the first field of ``network`` outside LIMITS."""
    _whole(network.in_channels, "network.in_channels", 1, LIMITS["io_channels"])
    _whole(network.out_channels, "network.out_channels", 1, LIMITS["io_channels"])
    if not isinstance(network.channels, tuple) or not 1 <= len(network.channels) <= LIMITS["levels"]:
        raise ValueError(f"network.channels = {network.channels!r}: 1 to {LIMITS['levels']:g} levels expected")
    for i, c in enumerate(network.channels):
        _whole(c, f"network.channels[{i}]", 1, LIMITS["channels"])
    _whole(network.blocks_per_level, "network.blocks_per_level", 1, LIMITS["blocks_per_level"])
    _whole(network.emb_dim, "network.emb_dim", 1, LIMITS["emb_dim"])
    _whole(network.cond_dim, "network.cond_dim", len(COND_NAMES), len(COND_NAMES))
    if not isinstance(network.field_nulls, bool):
        raise ValueError(f"network.field_nulls = {network.field_nulls!r}: true or false expected")
    for name in ("cond_center", "cond_scale"):
        values = getattr(network, name)
        if not isinstance(values, tuple) or len(values) != network.cond_dim:
            raise ValueError(f"network.{name} = {values!r}: {network.cond_dim} numbers expected")
        for i, v in enumerate(values):
            _number(v, f"network.{name}[{i}]", 0 if name == "cond_scale" else -1e6, 1e6,
                    low_open=name == "cond_scale")
    n = estimated_parameters(network)
    if n > LIMITS["parameters"]:
        raise ValueError(f"network of about {n:,} parameters exceeds the limit of {LIMITS['parameters']:,.0f}")


def check_schedule(schedule: ScheduleConfig) -> None:
    """ValueError naming the first field of ``schedule`` that is not finite or outside its range."""
    _number(schedule.sigma_min, "schedule.sigma_min", 0, 1e4, low_open=True)
    _number(schedule.sigma_max, "schedule.sigma_max", schedule.sigma_min, 1e4, low_open=True)
    _number(schedule.rho, "schedule.rho", 0, 100, low_open=True)
    _number(schedule.lowres_noise, "schedule.lowres_noise", 0, 10)
    check_sampling(schedule.steps, schedule.guidance)
    if schedule.guidance_sigma is not None:
        if not isinstance(schedule.guidance_sigma, tuple) or len(schedule.guidance_sigma) != 2:
            raise ValueError(f"schedule.guidance_sigma = {schedule.guidance_sigma!r}: (low, high) or null expected")
        _number(schedule.guidance_sigma[0], "schedule.guidance_sigma[0]", 0, 1e4)
        _number(schedule.guidance_sigma[1], "schedule.guidance_sigma[1]", schedule.guidance_sigma[0], 1e4)
    if schedule.sampler not in SAMPLER_NAMES:
        raise ValueError(f"schedule.sampler = {schedule.sampler!r}: one of {', '.join(SAMPLER_NAMES)} expected")


def check_sampling(steps: Any = None, guidance: Any = None, sr_steps: Any = None) -> None:
    """ValueError unless the given sampler settings are finite and in range (None: not given).

    Example: ``check_sampling(guidance=float("nan"))`` raises ``ValueError("guidance = nan is not a finite number")``.
    """
    for name, value in (("steps", steps), ("sr_steps", sr_steps)):
        if value is not None:
            _whole(value, name, 1, LIMITS["steps"])
    if guidance is not None:
        _number(guidance, "guidance", 0.0, LIMITS["guidance"])


def check_stage(config: StageConfig) -> None:
    """ValueError naming the first field of a stage config beyond LIMITS (grid, network, schedule, optimiser).

    Checked from numbers alone, before any tensor is allocated.
    """
    if config.kind not in ("lowres", "sr"):
        raise ValueError(f"kind = {config.kind!r}: lowres or sr expected")
    check_network(config.network)
    multiple = 2 ** (len(config.network.channels) - 1)  # each axis halves at every UNet level below the first
    _check_grid(config, multiple)
    for name, low, high, low_open in (("sigma_data", 0, 1e3, True), ("p_mean", -20, 20, False),
                                      ("p_std", 0, 20, True), ("cond_dropout", 0, 1, False), ("lr", 0, 10, True),
                                      ("field_dropout", 0, 1, False), ("lowres_noise_max", 0, 10, False),
                                      ("weight_decay", 0, 10, False), ("ema_decay", 0, 1, False),
                                      ("grad_clip", 0, 1e6, True)):
        _number(getattr(config, name), name, low, high, low_open)
    _whole(config.batch_size, "batch_size", 1, LIMITS["batch_size"])
    _whole(config.steps, "steps", 0, 10**9)
    _check_patches(config, multiple)
    _check_loss_pool(config)
    check_schedule(config.schedule)


def patch_shape(config: StageConfig) -> tuple[int, int, int] | None:
    """Stage 2's training patch (X, Y, Z) voxels: ``patch_size``, else a ``patch_slices`` z-window, else None."""
    if config.kind != "sr":
        return None
    if config.patch_size:
        return tuple(config.patch_size)
    if config.patch_slices and config.patch_slices < config.shape[2]:
        return (config.shape[0], config.shape[1], config.patch_slices)
    return None


def _check_loss_pool(config: StageConfig) -> None:
    """ValueError unless every multiscale block size is a whole number >= 2 dividing each training-input axis."""
    if not isinstance(config.loss_pool, tuple):
        raise ValueError(f"loss_pool = {config.loss_pool!r}: a list of block sizes expected")
    spatial = patch_shape(config) or tuple(config.shape)
    for f in config.loss_pool:
        _whole(f, "loss_pool", 2, min(spatial))
        if any(n % f for n in spatial):
            raise ValueError(f"loss_pool = {config.loss_pool!r}: {f} does not divide the training input "
                             f"{tuple(spatial)}")


def _voxel_counts(value: Any, name: str, high: Any) -> None:
    """ValueError unless ``value`` is a tuple of three whole voxel counts in [1, high] (high: a number or a
    per-axis tuple)."""
    if not isinstance(value, tuple) or len(value) != 3:
        raise ValueError(f"{name} = {value!r}: three voxel counts (X, Y, Z) expected")
    for i, v in enumerate(value):
        _whole(v, f"{name}[{i}]", 1, high[i] if isinstance(high, tuple) else high)


def _check_grid(config: StageConfig, multiple: int) -> None:
    """The canvas: shape (voxels, within LIMITS, each axis divisible by ``multiple``), voxel_mm and fov_mm."""
    _voxel_counts(config.shape, "shape", LIMITS["canvas_edge"])
    voxels = math.prod(config.shape)
    if voxels > LIMITS["canvas_voxels"]:
        raise ValueError(f"shape = {config.shape}: {voxels:,} voxels exceed the limit of {LIMITS['canvas_voxels']:,.0f}")
    if any(s % multiple for s in config.shape):
        raise ValueError(f"shape = {config.shape}: every axis must be divisible by {multiple} "
                         f"({len(config.network.channels)} UNet levels)")
    _number(config.voxel_mm, "voxel_mm", 0, 1000, low_open=True)
    if not isinstance(config.fov_mm, tuple) or len(config.fov_mm) != 3:
        raise ValueError(f"fov_mm = {config.fov_mm!r}: three lengths (mm) expected")
    for i, f in enumerate(config.fov_mm):
        _number(f, f"fov_mm[{i}]", 0, 1e5, low_open=True)
    _whole(config.sr_factor, "sr_factor", 1, 8)


def _check_patches(config: StageConfig, multiple: int) -> None:
    """Stage 2's training windows: patch_slices (z-window) and patch_size (inside the canvas, each axis
    divisible by ``multiple``)."""
    if config.patch_slices is not None:
        _whole(config.patch_slices, "patch_slices", 1, LIMITS["canvas_edge"])
    if config.patch_size is not None:
        _voxel_counts(config.patch_size, "patch_size", tuple(config.shape))
        if any(p % multiple for p in config.patch_size):
            raise ValueError(f"patch_size = {config.patch_size}: every axis must be divisible by {multiple}")

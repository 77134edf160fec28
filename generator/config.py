"""Frozen configuration dataclasses for the networks, noise schedules, stages and the cascade.

Every checkpoint is saved with its stage config as JSON (``to_dict`` / ``stage_from_dict``); a stage is
rebuilt from that JSON alone, so a checkpoint cannot be loaded into a network of another shape.

Geometry: the canvas is ``fov_mm`` (x, y, z) in RAS+ with its top (z max) at z = 0 mm; tensors are
(B, C, X, Y, Z). Channels are (CT, PET) in the normalised space of ``generator.diffusion``.
"""
from __future__ import annotations

import dataclasses
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
    normalise (age years, sex 0/1, height m, weight kg) before the embedding MLP.
    """

    in_channels: int = 2
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    blocks_per_level: int = 1
    emb_dim: int = 64
    cond_dim: int = 4
    cond_center: tuple[float, ...] = (50.0, 0.5, 1.72, 78.0)
    cond_scale: tuple[float, ...] = (20.0, 0.5, 0.10, 16.0)


@dataclass(frozen=True)
class ScheduleConfig:
    """Karras sigma schedule and the default sampler of a stage.

    sampler: "dpmpp_2m" or "heun"; steps: number of sigma intervals; guidance: classifier-free guidance
    scale (1 = conditional model only, no extra network call).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    steps: int = 16
    sampler: str = "dpmpp_2m"
    guidance: float = 1.0


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
    """Rebuild a StageConfig from ``to_dict`` output; unknown keys raise ValueError."""
    data = dict(data)
    try:
        network = NetworkConfig(**{k: _tuples(v) for k, v in data.pop("network").items()})
        schedule = ScheduleConfig(**data.pop("schedule"))
        return StageConfig(network=network, schedule=schedule, **{k: _tuples(v) for k, v in data.items()})
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not a generator stage config ({exc})") from None

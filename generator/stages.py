"""The two stages' data formulation: low-res from high-res, upsampling, positions, the SR residual.

All tensors are normalised (``generator.intensity``) and (B, C, X, Y, Z) with channels (CT, PET). Stage 1's
volume is the 2x2x2 average of the high-res volume taken in physical units (HU, SUV), then normalised;
stage 2 learns the residual high-res minus the trilinear upsampling (again in HU and SUV) of that low-res
volume (align_corners=False: the voxel centres of both canvas grids line up exactly).

Why physical units: averaging in the log-like normalised space under-states hot small structures (the
mean of logs is below the log of the mean: -9% of body SUV on the 8 mm phantoms), so the SR stage would have
to restore organ means; averaging SUV keeps the low-res organ SUV means right and leaves texture and edges
to the residual.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .intensity import from_unit, to_unit


def _physical(x: torch.Tensor) -> torch.Tensor:
    ct, pet = from_unit(x.float())
    return torch.stack([ct, pet], dim=1)


def _normalised(y: torch.Tensor) -> torch.Tensor:
    return to_unit(y[:, 0], y[:, 1])


def downsample(x_hi: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """f x f x f average in HU and SUV, normalised: (B, 2, fX, fY, fZ) -> (B, 2, X, Y, Z) (f = ``factor``)."""
    return _normalised(F.avg_pool3d(_physical(x_hi), factor))


def upsample(x_lo: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Trilinear x f upsampling in HU and SUV, normalised: (B, 2, X, Y, Z) -> (B, 2, fX, fY, fZ)."""
    return _normalised(F.interpolate(_physical(x_lo), scale_factor=float(factor), mode="trilinear",
                                     align_corners=False))


def position_channels(shape: tuple[int, int, int], batch: int = 1, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, 3, X, Y, Z) voxel-centre coordinates scaled to [-1, 1] across the canvas along x, y, z."""
    axes = [(torch.arange(n, dtype=dtype, device=device) + 0.5) / n * 2 - 1 for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1, -1)


def lowres_condition(x_lo: torch.Tensor) -> torch.Tensor | None:
    """Stage 1's conditioning image: the 3 position channels of its grid (B, 3, X, Y, Z).

    A lean UNet's receptive field does not span the 72-slice canvas; positions tell it where head and legs go.
    """
    return position_channels(tuple(x_lo.shape[2:]), x_lo.shape[0], x_lo.device, torch.float32)


def sr_condition(x_lo: torch.Tensor, factor: int = 2, aug_level: torch.Tensor | float | None = None,
                 aug_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(upsampled low-res (B, 2, ...), conditioning image (B, 5 or 6, ...)) for stage 2.

    The image is the upsampled low-res and 3 positions; with noise-conditioning augmentation (``aug_level``:
    (B,) or one number for the batch, and unit ``aug_noise`` like ``x_lo``) it is the upsampling of
    ``x_lo + aug_level * aug_noise``, the positions and a constant channel holding ``aug_level``. The returned
    upsampling is always the clean one: the generated residual is added to it.
    """
    up = upsample(x_lo, factor)
    pos = position_channels(tuple(up.shape[2:]), up.shape[0], up.device, up.dtype)
    if aug_level is None:
        return up, torch.cat([up, pos], dim=1)
    aug_level = torch.as_tensor(aug_level, dtype=up.dtype, device=up.device).expand(up.shape[0])
    level = aug_level.view(-1, 1, 1, 1, 1)
    seen = upsample(x_lo + level * aug_noise, factor) if bool((aug_level > 0).any()) else up
    return up, torch.cat([seen, pos, level.expand(-1, 1, *up.shape[2:])], dim=1)


def sr_training_pair(x_hi: torch.Tensor, factor: int = 2, aug_level: torch.Tensor | None = None,
                     aug_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual target, conditioning image) for stage 2 from a high-res batch (augmentation: ``sr_condition``)."""
    up, image = sr_condition(downsample(x_hi, factor), factor, aug_level, aug_noise)
    return x_hi - up, image


def sr_in_channels(lowres_out: int, augmented: bool) -> int:
    """Stage 2's input channels: noisy residual + upsampled low-res + 3 positions (+ 1 augmentation level)."""
    return 2 * lowres_out + 3 + int(augmented)


def flip_x(volume: torch.Tensor) -> torch.Tensor:
    """``volume`` (..., X, Y, Z) reversed along X: on the canvas (centred in x) world x -> -x, voxel centres
    onto voxel centres. How a stage trained on x-mirrored anatomy (``StageConfig.mirror_x``) gives RAS+ output."""
    return volume.flip(-3)


def canvas_affine(voxel_mm: float, fov_mm: tuple[float, float, float]) -> np.ndarray:
    """4x4 RAS+ affine of the canvas at ``voxel_mm``: diagonal, top of the canvas (z max) at z = 0 mm."""
    v = float(voxel_mm)
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = (-fov_mm[0] / 2 + v / 2, -fov_mm[1] / 2 + v / 2, -fov_mm[2] + v / 2)
    return affine

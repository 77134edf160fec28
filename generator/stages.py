"""The two stages' data formulation: low-res from high-res, upsampling, positions, the SR residual.

All tensors are normalised (``generator.intensity``) and (B, C, X, Y, Z). Stage 1's volume is the 2x2x2
average of the high-res volume; stage 2 learns the residual high-res minus the trilinear upsampling of
that low-res volume (align_corners=False: the voxel centres of both canvas grids line up exactly).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def downsample(x_hi: torch.Tensor) -> torch.Tensor:
    """2x2x2 average pooling: (B, C, 2X, 2Y, 2Z) -> (B, C, X, Y, Z)."""
    return F.avg_pool3d(x_hi, 2)


def upsample(x_lo: torch.Tensor) -> torch.Tensor:
    """Trilinear x2 upsampling: (B, C, X, Y, Z) -> (B, C, 2X, 2Y, 2Z)."""
    return F.interpolate(x_lo, scale_factor=2.0, mode="trilinear", align_corners=False)


def position_channels(shape: tuple[int, int, int], batch: int = 1, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, 3, X, Y, Z) voxel-centre coordinates scaled to [-1, 1] across the canvas along x, y, z."""
    axes = [(torch.arange(n, dtype=dtype, device=device) + 0.5) / n * 2 - 1 for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1, -1)


def sr_condition(x_lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(upsampled low-res (B, 2, ...), conditioning image (B, 5, ...) = upsampled + 3 positions)."""
    up = upsample(x_lo)
    pos = position_channels(tuple(up.shape[2:]), up.shape[0], up.device, up.dtype)
    return up, torch.cat([up, pos], dim=1)


def sr_training_pair(x_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual target, conditioning image) for stage 2 from a high-res batch."""
    up, image = sr_condition(downsample(x_hi))
    return x_hi - up, image


def canvas_affine(voxel_mm: float, fov_mm: tuple[float, float, float]) -> np.ndarray:
    """4x4 RAS+ affine of the canvas at ``voxel_mm``: diagonal, top of the canvas (z max) at z = 0 mm."""
    v = float(voxel_mm)
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = (-fov_mm[0] / 2 + v / 2, -fov_mm[1] / 2 + v / 2, -fov_mm[2] + v / 2)
    return affine

"""Sample previews during training: one volume sampled from the EMA weights, its coronal slice as a PNG.

The image shows CT (window -500..500 HU, i.e. the normalised [0, 1] range) and PET (normalised log SUV,
0..1) side by side, head at the top; written with a minimal grayscale PNG encoder (zlib), no imaging library.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .config import StageConfig
from .diffusion import Denoiser, karras_sigmas
from .sampling import get_sampler
from .stages import lowres_condition, sr_condition


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a 2D uint8 array (rows, columns) as an 8-bit grayscale PNG."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    rows, cols = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(rows))
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                     + chunk(b"IEND", b""))
    return path


def coronal_image(volume: torch.Tensor) -> np.ndarray:
    """uint8 (Z, 2X) image of the middle coronal slice of a normalised (2, X, Y, Z) volume: CT | PET, head up."""
    middle = volume[:, :, volume.shape[2] // 2, :].float().clamp(0, 1)  # (2, X, Z)
    panels = [np.flipud(middle[c].numpy().T) for c in range(2)]  # rows = z from the top
    return np.round(np.concatenate(panels, axis=1) * 255).astype(np.uint8)


@torch.no_grad()
def sample_preview(model: Denoiser, config: StageConfig, item: dict, seed: int, device: torch.device) -> torch.Tensor:
    """One normalised (2, X, Y, Z) volume sampled with the stage's schedule for a training item.

    Stage 1: from the item's demographics. Stage 2: the residual on the item's low-res condition (whole
    volume, ``item["low"]``), added to its upsampling.
    """
    s = config.schedule
    sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho).to(device)
    cond = {"demographics": item["demographics"][None].to(device)}
    g = torch.Generator().manual_seed(seed)
    if config.kind == "lowres":
        x = torch.randn((1, config.network.out_channels, *config.shape), generator=g).to(device) * sigmas[0]
        image = lowres_condition(x) if config.network.in_channels > config.network.out_channels else None
        return get_sampler(s.sampler)(model, x, sigmas, dict(cond, image=image))[0].float().cpu()
    low = item["low"][None].to(device)
    augmented = config.lowres_noise_max > 0
    aug = torch.randn(low.shape, generator=g).to(device) if augmented else None
    up, image = sr_condition(low, config.sr_factor, s.lowres_noise if augmented else None, aug)
    r = torch.randn(up.shape, generator=g).to(device) * sigmas[0]
    residual = get_sampler(s.sampler)(model, r, sigmas, dict(cond, image=image))
    return (up + residual)[0].float().cpu()

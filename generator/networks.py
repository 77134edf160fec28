"""One lean 3D UNet with demographic conditioning (FiLM from an embedding of noise level and demographics).

Tensors are (B, C, X, Y, Z). The embedding is the sum of a Fourier embedding of the noise level and an
MLP of the normalised demographics (age, sex, height, weight); a learned null embedding replaces the
demographic one where ``keep`` is False (condition dropout in training, the unconditional branch of
classifier-free guidance in sampling). A single missing field (NaN, e.g. AutoPET's height and weight) has its
normalised value replaced by a per-field null value: learned when ``NetworkConfig.field_nulls`` (trained with
per-field dropout, ``StageConfig.field_dropout``), else 0 (the field's ``cond_center``); with every field
given the embedding is exactly the one of a network without this (the bundled weights load unchanged). Every residual block modulates its second GroupNorm by a
per-channel scale and shift computed from that embedding (FiLM / adaptive GroupNorm).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .config import NetworkConfig


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8, at least 2 channels per group, dividing ``channels``."""
    for g in (8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class FourierEmbedding(nn.Module):
    """Sinusoidal features of a scalar (the EDM c_noise = ln(sigma) / 4), fixed log-spaced frequencies."""

    def __init__(self, dim: int, max_period: float = 100.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * 2 * math.pi, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, FiLM-modulated GroupNorm-SiLU-Conv, plus a (1x1) skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout, affine=False)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.checkpointing = False  # see set_gradient_checkpointing

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class UNet3D(nn.Module):
    """3D UNet: ``len(channels)`` levels with stride-2 convs down and nearest-upsample + conv up.

    forward(x, c_noise, cond, keep): x (B, in_channels, X, Y, Z) with X, Y, Z divisible by
    2 ** (levels - 1); c_noise (B,); cond (B, 4) raw demographics (age years, sex F=0/M=1, height m,
    weight kg) or None; keep (B,) bool, False -> null embedding (None: keep all when cond is given).
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        ch, e = config.channels, config.emb_dim
        self.noise_emb = nn.Sequential(FourierEmbedding(e), nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.cond_emb = nn.Sequential(nn.Linear(config.cond_dim, e), nn.SiLU(), nn.Linear(e, e))
        self.null_emb = nn.Parameter(torch.zeros(e))
        if config.field_nulls:  # learned normalised value of a missing field; 0 = the field's cond_center
            self.field_null = nn.Parameter(torch.zeros(config.cond_dim))
        else:
            self.register_buffer("field_null", torch.zeros(config.cond_dim), persistent=False)
        self.register_buffer("cond_center", torch.tensor(config.cond_center, dtype=torch.float32), persistent=False)
        self.register_buffer("cond_scale", torch.tensor(config.cond_scale, dtype=torch.float32), persistent=False)
        self.stem = nn.Conv3d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, c in enumerate(ch):
            cin = ch[i - 1] if i > 0 else ch[0]
            blocks = [ResBlock(cin if b == 0 else c, c, e) for b in range(config.blocks_per_level)]
            self.down_blocks.append(nn.ModuleList(blocks))
            if i < len(ch) - 1:
                self.downsamples.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(ch[-1], ch[-1], e)
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            self.upsamples.append(nn.Conv3d(ch[i + 1], ch[i], 3, padding=1))
            blocks = [ResBlock(2 * ch[i] if b == 0 else ch[i], ch[i], e) for b in range(config.blocks_per_level)]
            self.up_blocks.append(nn.ModuleList(blocks))
        self.out_norm = nn.GroupNorm(_groups(ch[0]), ch[0])
        self.out_conv = nn.Conv3d(ch[0], config.out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        # nearest-upsample + conv as one low-resolution conv (upsample_conv); False: upsample, then conv, as the
        # networks ran before 2026-12-03 (the same values up to float rounding; the speed benchmark's "before")
        self.fast_upsample = True

    @property
    def multiple(self) -> int:
        """Spatial sizes must be divisible by this."""
        return 2 ** (len(self.config.channels) - 1)

    def normalised_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, cond_dim) (cond - center) / scale, each missing (non-finite) field replaced by its null value."""
        z = (cond.float() - self.cond_center) / self.cond_scale
        return torch.where(torch.isfinite(z), z, self.field_null.to(z.dtype).expand_as(z))

    def embedding(self, c_noise: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, emb_dim): noise-level embedding plus demographic (or null) embedding, through SiLU."""
        emb = self.noise_emb(c_noise)
        if cond is None:
            demo = self.null_emb.expand_as(emb)
        else:
            demo = self.cond_emb(self.normalised_condition(cond))
            if keep is not None:
                demo = torch.where(keep[:, None], demo, self.null_emb.expand_as(demo))
        return F.silu(emb + demo)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embedding(c_noise, cond, keep)
        h = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            if i < len(self.downsamples):
                skips.append(h)
                h = self.downsamples[i](h)
        h = self.mid(h, emb)
        for upsample, blocks in zip(self.upsamples, self.up_blocks):
            if self.fast_upsample:
                h = upsample_conv(h, upsample)
            else:
                h = upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


def _fold_taps(kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Along kernel axis ``dim`` (3 taps w-, w0, w+), the 2 taps each upsampling phase sees: phase 0 takes input
    voxels (i - 1, i) with (w-, w0 + w+), phase 1 takes (i, i + 1) with (w- + w0, w+); phase first."""
    lo, mid, hi = kernel.unbind(dim)
    return torch.stack([torch.stack([lo, mid + hi], dim), torch.stack([lo + mid, hi], dim)])


def upsample_conv(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` for a 3x3x3 conv with padding 1, computed
    at the low resolution: (B, C, X, Y, Z) -> (B, C_out, 2X, 2Y, 2Z), channels-last 3D.

    Along each axis, output voxel 2i + a sees input voxels i - 1, i (a = 0) or i, i + 1 (a = 1), with the
    kernel's taps summed where two of them fall on the same input voxel. So each of the 8 output phases is a
    2x2x2 conv of the input: 8 / 27 of the multiply-adds, the same values up to float rounding (zero padding
    included), and about 2.4x faster for stage 2's full-resolution up-conv on a 2-core CPU. ``conv`` is used for
    its weights only (its forward hooks do not run); ValueError for any other conv than the UNet's up-convs.
    """
    if (conv.kernel_size, conv.padding, conv.stride, conv.dilation, conv.groups, conv.padding_mode) != \
            ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "zeros"):
        raise ValueError(f"upsample_conv needs a 3x3x3 conv with zero padding 1, stride 1, got {conv}")
    b, _, nx, ny, nz = x.shape
    weight = conv.weight
    cout = weight.shape[0]
    kernel = _fold_taps(_fold_taps(_fold_taps(weight, 2), 4), 6)  # (phase z, y, x, C_out, C_in, 2, 2, 2)
    kernel = kernel.permute(2, 1, 0, 3, 4, 5, 6, 7).reshape(8 * cout, -1, 2, 2, 2)  # phases (x, y, z) major
    bias = None if conv.bias is None else conv.bias.repeat(8)
    phases = F.conv3d(x, kernel, bias, padding=1)  # (B, 8 C_out, X + 1, Y + 1, Z + 1)
    out = torch.empty((b, cout, 2 * nx, 2 * ny, 2 * nz), dtype=phases.dtype, device=phases.device,
                      memory_format=torch.channels_last_3d)
    for p, (i, j, k) in enumerate((i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)):
        out[:, :, i::2, j::2, k::2] = phases[:, p * cout:(p + 1) * cout, i:i + nx, j:j + ny, k:k + nz]
    return out


def channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its conv weights in channels-last 3D memory (the convolutions' fast layout on CPUs),
    except 1x1x1 kernels: they keep the standard strides their gradients come in, so that every gradient has
    its parameter's strides (DistributedDataParallel's gradient buckets warn otherwise). Returns ``module``."""
    module.to(memory_format=torch.channels_last_3d)
    for conv in module.modules():
        if isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1):
            conv.weight.data = conv.weight.data.clone(memory_format=torch.contiguous_format)
    return module


def set_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Recompute every residual block's activations in the backward pass instead of storing them.

    Memory for large canvases (activations are most of a 3D UNet's training memory) at about one more
    forward pass of compute; gradients are unchanged. Applies in training mode only; returns ``module``.
    """
    for block in module.modules():
        if isinstance(block, ResBlock):
            block.checkpointing = enabled
    return module

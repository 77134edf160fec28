"""EDM preconditioning (Karras et al. 2022), the EDM training loss, and the Karras sigma schedule.

D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)), with
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
c_noise = ln(sigma) / 4, sd = sigma_data. Conditioning image channels (stage 2) are concatenated after
c_in scaling of the noisy image; they are not scaled.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .networks import UNet3D


def precond_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
    sd2 = sigma_data ** 2
    c_skip = sd2 / (sigma ** 2 + sd2)
    c_out = sigma * sigma_data / (sigma ** 2 + sd2).sqrt()
    c_in = 1 / (sigma ** 2 + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class Denoiser(nn.Module):
    """The EDM-preconditioned denoiser D(x, sigma, cond) around a UNet3D.

    cond is a dict with optional keys: "demographics" (B, 4) raw values, "keep" (B,) bool (False -> null
    embedding), "image" (B, C_cond, X, Y, Z) conditioning channels concatenated to the input.
    """

    def __init__(self, net: UNet3D, sigma_data: float):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        cond = cond or {}
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)
        b = (slice(None),) + (None,) * (x.ndim - 1)
        inp = c_in[b] * x
        if cond.get("image") is not None:
            inp = torch.cat([inp, cond["image"].to(x.dtype)], dim=1)
        out = self.net(inp, c_noise, cond.get("demographics"), cond.get("keep"))
        return c_skip[b] * x + c_out[b] * out.to(x.dtype)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``steps + 1`` noise levels: ``steps`` Karras levels from sigma_max down to sigma_min, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    if steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def sample_training_sigmas(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Training noise levels: ln(sigma) ~ N(p_mean, p_std^2), shape (n,)."""
    z = torch.randn(n, generator=generator, device="cpu").to(device)
    return (z * p_std + p_mean).exp()


def edm_loss(denoiser: Denoiser, x0: torch.Tensor, cond: dict, p_mean: float, p_std: float,
             generator: torch.Generator | None = None, pool: Sequence[int] = ()) -> torch.Tensor:
    """EDM loss: mean over the batch of lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2 averaged over voxels.

    lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 makes the network's effective target unit-variance.
    Noise and sigmas are drawn on the CPU from ``generator`` (device-independent), then moved.
    ``pool``: the multiscale terms of ``edm_loss_at``.
    """
    sigma = sample_training_sigmas(x0.shape[0], p_mean, p_std, generator, x0.device)
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
    return edm_loss_at(denoiser, x0, cond, sigma, noise, pool)


def edm_loss_at(denoiser: Denoiser, x0: torch.Tensor, cond: dict, sigma: torch.Tensor,
                noise: torch.Tensor, pool: Sequence[int] = ()) -> torch.Tensor:
    """The EDM loss of ``edm_loss`` for given noise levels ``sigma`` (B,) and unit noise (shape of x0).

    ``pool`` (factors f, each dividing every axis): a multiscale loss. For each f the same weighted squared
    error of the f x f x f block means of D and x0 is added, times the block's volume f^3. Uncorrelated
    voxel errors (the noise no network can predict) then weigh the same at every scale, while an error shared
    by a block (an organ drawn uniformly too hot or too cold) weighs f^3 times more: with pool (2, 4) an
    organ-wide error counts 1 + 8 + 64 = 73 times, where the plain loss lets it hide among the voxel errors.
    Hoogeboom et al. (2023, "simple diffusion") weight lower resolutions of the loss up for a like reason.
    """
    b = (slice(None),) + (None,) * (x0.ndim - 1)
    sd = denoiser.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    error = denoiser(x0 + sigma[b] * noise, sigma, cond).float() - x0
    per_case = error.square().flatten(1).mean(1)
    for f in pool:
        per_case = per_case + int(f) ** 3 * F.avg_pool3d(error, int(f)).square().flatten(1).mean(1)
    return (weight * per_case).mean()

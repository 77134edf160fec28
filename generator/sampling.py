"""Pure samplers of the probability-flow ODE, and denoiser wrappers (guidance, z-chunking).

A ``model`` is any callable D(x, sigma, cond) -> denoised x (sigma a scalar tensor). ``sigmas`` is a
decreasing 1-D tensor ending in 0 (``diffusion.karras_sigmas``). Samplers start from ``x`` (already scaled
to sigmas[0]) and return the sample at sigma = 0. They draw no random numbers: all randomness is in ``x``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Model = Callable[[torch.Tensor, torch.Tensor, "dict | None"], torch.Tensor]


@torch.no_grad()
def sample_euler(model: Model, x: torch.Tensor, sigmas: torch.Tensor, cond: dict | None = None,
                 callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """First-order Euler steps of dx/dsigma = (x - D(x, sigma)) / sigma (one model call per step)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, s, cond)) / s
        x = x + (s_next - s) * d
        if callback:
            callback(i)
    return x


@torch.no_grad()
def sample_heun(model: Model, x: torch.Tensor, sigmas: torch.Tensor, cond: dict | None = None,
                callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """EDM's deterministic 2nd-order Heun sampler (2 model calls per step, 1 on the last step to 0)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, s, cond)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - model(x_next, s_next, cond)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
        if callback:
            callback(i)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, cond: dict | None = None,
                    callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) in log-sigma time, one model call per step.

    With t = -ln sigma and h = t_next - t: x_next = (sigma_next / sigma) x - expm1(-h) D', where D' is the
    denoised estimate linearly extrapolated from the previous step (first step and the step to 0: D itself).
    """
    old_denoised, t_prev = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s, cond)
        t = -torch.log(s)
        if s_next == 0:
            x = denoised
        else:
            t_next = -torch.log(s_next)
            h = t_next - t
            if old_denoised is None:
                d_est = denoised
            else:
                r = (t - t_prev) / h
                d_est = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s) * x - torch.expm1(-h) * d_est
        old_denoised, t_prev = denoised, t
        if callback:
            callback(i)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """A sampler by name: euler, heun, dpmpp_2m (ValueError otherwise)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def guidance_text(scale: float, sigma_range: Sequence[float] | None = None) -> str:
    """Guidance as reports name it: "2.0", or "2.0 between sigma 0.5 and 5" with an interval (``guided``)."""
    return f"{scale}" + (f" between sigma {sigma_range[0]:g} and {sigma_range[1]:g}" if sigma_range else "")


def guided(model: Model, scale: float, sigma_range: tuple[float, float] | None = None) -> Model:
    """Classifier-free guidance: D_u + scale (D_c - D_u); ``scale == 1`` returns ``model`` unchanged.

    The conditional and unconditional calls run as one doubled batch (cond "keep" False for the second half).
    ``sigma_range`` (low, high): guidance only where low <= sigma <= high (the batch's first noise level), the
    conditional model alone at the other levels (None: guidance at every level).
    """
    if scale == 1.0:
        return model

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        level = float(torch.as_tensor(sigma).reshape(-1)[0])
        if sigma_range is not None and not sigma_range[0] <= level <= sigma_range[1]:
            return model(x, sigma, cond)
        cond = dict(cond or {})
        b = x.shape[0]
        doubled = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) else v) for k, v in cond.items()}
        doubled["keep"] = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(x.device)
        d_cond, d_uncond = model(torch.cat([x, x]), sigma, doubled).chunk(2)
        return d_uncond + scale * (d_cond - d_uncond)

    return denoise


def z_chunk_weights(length: int, chunk: int, overlap: int) -> list[tuple[int, torch.Tensor]]:
    """Start index and blending weight (chunk,) of each z-window covering ``length`` slices.

    Windows of ``chunk`` slices overlap by at least ``overlap``; weights ramp linearly over the overlap so
    that they sum to 1 at every slice.
    """
    if chunk >= length:
        return [(0, torch.ones(length))]
    stride = chunk - overlap
    starts = list(range(0, length - chunk, stride)) + [length - chunk]
    total = torch.zeros(length)
    raw = []
    for s in starts:
        w = torch.ones(chunk)
        if s > 0:
            w[:overlap] = torch.linspace(0, 1, overlap + 2)[1:-1]
        if s + chunk < length:
            w[-overlap:] = torch.linspace(1, 0, overlap + 2)[1:-1]
        raw.append((s, w))
        total[s:s + chunk] += w
    return [(s, w / total[s:s + chunk]) for s, w in raw]


def chunked(model: Model, chunk: int, overlap: int) -> Model:
    """Evaluate ``model`` on overlapping z-windows (last axis) and blend the denoised windows linearly.

    Conditioning images in cond["image"] are windowed alongside x. Use it when a whole volume does not fit
    in memory; ``chunk`` must suit the network (a multiple of its down-sampling factor).
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        cond = cond or {}
        out = torch.zeros_like(x)
        for start, w in z_chunk_weights(x.shape[-1], chunk, overlap):
            sl = (Ellipsis, slice(start, start + len(w)))
            sub = dict(cond)
            if cond.get("image") is not None:
                sub["image"] = cond["image"][sl]
            out[sl] += model(x[sl], sigma, sub) * w.to(x.device, x.dtype)
        return out

    return denoise

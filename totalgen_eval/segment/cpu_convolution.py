"""Faster CPU 3D convolutions for batch-1 inference (the ``model:`` backend's networks).

For a batch of one, 3 x 3 x 3 kernels and inputs of a few thousand (batch x channels x D x H) rows, PyTorch's
CPU 3D convolutions take their native im2col paths (``slow_conv3d``, ``slow_conv_transpose3d``), not oneDNN:
every layer of the bundled segmenter does (56 x 40 x 144 voxels, one thread). Its last layer, a transposed
convolution 32 -> 10 channels, took 36 ms of the network's 54 ms so; its four convolutions 8.5 ms.

- Transposed, :func:`conv_transpose3d_taps`: split by output phase (the output index modulo the stride), a
  transposed convolution is a sum of matrix products: output phase ``c`` at ``a`` is ``sum_j W[c + s j]^T
  x[a - j]``. On the input zero-padded and flattened, every ``x[a - j]`` is a contiguous slice, so each tap is
  one ``addmm`` and nothing is copied per tap (13 ms for that layer).
- Ordinary: oneDNN (``torch.backends.mkldnn``) on the input converted to its layout and back (the path
  PyTorch takes for batches of 2 or more): 8.5 -> 3.8 ms for the four.

The sums are the same, their order is not: results differ from PyTorch's by float32 rounding (~1e-6
relative; on 120 phantoms the bundled segmenter's labels are identical: ``benchmarks/bench_segmenter.py``).
:class:`FastCPUConvolutions` is a torch function mode (this thread, the ``with`` block only) that sends the
eligible calls here (CPU, float32, 5D input, no autograd; see :func:`taps_eligible`, :func:`onednn_eligible`)
and runs every other call unchanged.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_Triple = tuple[int, int, int]
# Input voxels per sample from which the taps win: at 28 x 20 x 72 (40,320) 13 ms against PyTorch's 33 ms;
# at 14 x 10 x 36 (5,040) 4.3 ms against 3.2 ms (27 small products cost more than they save).
MIN_TAPS_VOXELS = 2**14


def _triple(value: int | tuple[int, ...] | list[int]) -> _Triple:
    t = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * 3
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {value!r}")
    return t  # type: ignore[return-value]


def conv_transpose3d_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] = 0,
                          output_padding: int | tuple[int, ...] = 0) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride, padding, output_padding)`` (groups 1, dilation 1).

    ``x``: (N, C_in, D, H, W); ``weight``: (C_in, C_out, kD, kH, kW). Equal to PyTorch's up to float
    rounding; computed per sample, output phase and kernel tap as matrix products on the flattened input.
    """
    s, p, op = _triple(stride), _triple(padding), _triple(output_padding)
    n, c_in, *size_in = x.shape
    c_out, kernel = weight.shape[1], tuple(weight.shape[2:])
    size_out = [(li - 1) * sd - 2 * pd + kd + od for li, sd, pd, kd, od in zip(size_in, s, p, kernel, op)]
    pads = [math.ceil(k / sd) - 1 for k, sd in zip(kernel, s)]  # most taps of one output phase, less one
    padded = F.pad(x, [v for pd in reversed(pads) for v in (pd, pd)])  # (N, C_in, D + 2 pad, ...)
    flat = padded.reshape(n, c_in, -1)
    steps = (padded.shape[3] * padded.shape[4], padded.shape[4], 1)  # flat strides of the padded volume
    phase_shape = [li + pd for li, pd in zip(size_in, pads)]  # one phase's uncropped output (index a)
    length = sum((a - 1) * st for a, st in zip(phase_shape, steps)) + 1
    w = weight.permute(2, 3, 4, 1, 0).contiguous()  # (kD, kH, kW, C_out, C_in)
    out = x.new_empty((n, c_out, *size_out))
    buffer = x.new_empty((c_out, length))
    grid = buffer.as_strided((c_out, *phase_shape), (length, *steps))  # a phase's output at a (wraps unused)
    for phase in itertools.product(*(range(sd) for sd in s)):
        taps, src, dst, uncovered = _phase_plan(phase, kernel, s, p, size_out, phase_shape)
        if uncovered is not None:
            out[(slice(None), slice(None)) + uncovered].zero_()  # outputs no tap reaches: the bias only
        if not taps:
            continue
        for b in range(n):
            for i, js in enumerate(taps):
                t = tuple(c + sd * j for c, sd, j in zip(phase, s, js))
                off = sum((pd - j) * st for pd, j, st in zip(pads, js, steps))
                if i == 0:
                    torch.mm(w[t], flat[b, :, off:off + length], out=buffer)
                else:
                    buffer.addmm_(w[t], flat[b, :, off:off + length])
            out[b][(slice(None),) + dst] = grid[(slice(None),) + src]
    if bias is not None:
        out += bias.view(1, -1, 1, 1, 1)
    return out


def _phase_plan(phase: tuple[int, ...], kernel: tuple[int, ...], s: _Triple, p: _Triple, size_out: list[int],
                phase_shape: list[int]) -> tuple[list[tuple[int, ...]], tuple[slice, ...], tuple[slice, ...],
                                                 tuple[slice, ...] | None]:
    """One output phase, its outputs o = s a + phase - p holding ``sum_j W[phase + s j]^T x[a - j]``: (the tap
    offsets j, the phase grid's slices (a), the output's slices (o), the slices of all the phase's outputs
    when some of them no tap reaches, else None)."""
    first = [(c - pd) % sd for c, pd, sd in zip(phase, p, s)]  # the phase's first output index
    start = [(f + pd - c) // sd for f, pd, c, sd in zip(first, p, phase, s)]  # its a
    full = [len(range(f, lo, sd)) for f, lo, sd in zip(first, size_out, s)]  # outputs of this phase
    count = [max(0, min(m, a - st)) for m, a, st in zip(full, phase_shape, start)]  # those taps may reach
    per_axis = [range(math.ceil((k - c) / sd)) if k > c else range(0) for k, c, sd in zip(kernel, phase, s)]
    taps = list(itertools.product(*per_axis)) if min(count) > 0 else []
    src = tuple(slice(st, st + cn) for st, cn in zip(start, count))
    dst = tuple(slice(f, f + sd * cn, sd) for f, sd, cn in zip(first, s, count))
    uncovered = None if taps and count == full else tuple(slice(f, None, sd) for f, sd in zip(first, s))
    return taps, src, dst, uncovered


def _transposed_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: Any = 1, padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> dict[str, Any]:
    """``F.conv_transpose3d``'s arguments by name."""
    return dict(input=input, weight=weight, bias=bias, stride=stride, padding=padding,
                output_padding=output_padding, groups=groups, dilation=dilation)


def _conv_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
               padding: Any = 0, dilation: Any = 1, groups: int = 1) -> dict[str, Any]:
    """``F.conv3d``'s arguments by name."""
    return dict(input=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
                groups=groups)


def _dense_cpu_inference(args: dict[str, Any]) -> bool:
    """Input, weight (and bias) strided CPU float32 tensors, 5D input and weight, no autograd."""
    x, w, b = args["input"], args["weight"], args["bias"]
    tensors = [x, w] + ([b] if b is not None else [])
    return (all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == torch.float32
                and t.layout == torch.strided for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and x.dim() == 5 and w.dim() == 5)


def taps_eligible(args: dict[str, Any]) -> bool:
    """Whether a ``conv_transpose3d`` call (arguments by name) goes to :func:`conv_transpose3d_taps`: groups 1,
    dilation 1, at least ``MIN_TAPS_VOXELS`` input voxels per sample."""
    return (_dense_cpu_inference(args) and args["groups"] == 1 and _triple(args["dilation"]) == (1, 1, 1)
            and args["input"].shape[1] == args["weight"].shape[0]
            and math.prod(args["input"].shape[2:]) >= MIN_TAPS_VOXELS)


def onednn_eligible(args: dict[str, Any]) -> bool:
    """Whether a ``conv3d`` call (arguments by name) runs in oneDNN: available and enabled, numeric padding."""
    return (_dense_cpu_inference(args) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not isinstance(args["padding"], str))


class FastCPUConvolutions(TorchFunctionMode):
    """``with FastCPUConvolutions(): net(x)``: eligible ``conv_transpose3d`` calls run through
    :func:`conv_transpose3d_taps`, eligible ``conv3d`` calls in oneDNN; every other call runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv_transpose3d:
            bound = _transposed_args(*args, **kwargs)
            if taps_eligible(bound):
                return conv_transpose3d_taps(bound["input"], bound["weight"], bound["bias"], bound["stride"],
                                             bound["padding"], bound["output_padding"])
        elif func is F.conv3d:
            bound = _conv_args(*args, **kwargs)
            if onednn_eligible(bound):
                return func(bound.pop("input").to_mkldnn(), **bound).to_dense()
        return func(*args, **kwargs)

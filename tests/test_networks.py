"""The UNet's up-convolution computed at low resolution equals nearest-upsample then conv (values, gradients)."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from generator import tiny_sr
from generator.networks import UNet3D, upsample_conv

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(x: torch.Tensor, conv: torch.nn.Conv3d) -> torch.Tensor:
    """What the networks computed before upsample_conv: torch's nearest upsampling, then the conv."""
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("shape,cin,cout,bias,layout", [
    ((3, 5, 7), 4, 6, True, torch.contiguous_format), ((1, 2, 1), 3, 2, False, torch.contiguous_format),
    ((4, 4, 6), 8, 8, True, torch.channels_last_3d)])
def test_upsample_conv_equals_nearest_upsample_then_conv(shape, cin, cout, bias, layout):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(cin, cout, 3, padding=1, bias=bias).double().to(memory_format=layout)
    x = torch.randn(2, cin, *shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    want = reference(x, conv)
    got = upsample_conv(x, conv)
    assert got.shape == (2, cout, *(2 * s for s in shape))
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # zero padding at every border included
    # the same gradients with respect to the input and the weights (training uses it too)
    g = torch.randn_like(want)
    grads_want = torch.autograd.grad(want, [x, conv.weight], g)
    grads_got = torch.autograd.grad(got, [x, conv.weight], g)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_unet_output_is_the_same_with_either_up_convolution():
    cfg = tiny_sr().network
    net = UNet3D(cfg).double()
    for p in net.parameters():  # no zero-initialised layer, so the up path shows in the output
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, cfg.in_channels, 8, 8, 12, dtype=torch.float64)
    cond = torch.tensor([[30, 0, 1.6, 60.0], [70, 1, 1.8, 90.0]], dtype=torch.float64)
    fast = net(x, torch.zeros(2), cond)
    net.fast_upsample = False
    plain = net(x, torch.zeros(2), cond)
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)


def test_upsample_conv_refuses_a_conv_it_does_not_compute():
    x = torch.randn(1, 2, 3, 3, 3)
    for conv in (torch.nn.Conv3d(2, 2, 3, padding=1, padding_mode="reflect"), torch.nn.Conv3d(2, 2, 1),
                 torch.nn.Conv3d(2, 2, 3, padding=1, stride=2)):
        with pytest.raises(ValueError, match="3x3x3 conv with zero padding 1"):
            upsample_conv(x, conv)


def test_channels_last_gives_every_gradient_its_parameters_strides():
    """What DistributedDataParallel's gradient buckets need (a stride mismatch warns and copies each step)."""
    from generator.networks import channels_last

    cfg = tiny_sr().network
    net = channels_last(UNet3D(cfg))
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not net.stem.weight.is_contiguous()
    net(torch.randn(2, cfg.in_channels, 8, 8, 12), torch.zeros(2), torch.randn(2, 4)).sum().backward()
    mismatched = [name for name, p in net.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    assert mismatched == []

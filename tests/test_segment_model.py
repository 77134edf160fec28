"""The ``model:`` backend's fast CPU path: one network call when one ROI covers the volume (against MONAI's
sliding window), the argmax and mirror on labels, and the CPU convolutions (``segment/cpu_convolution.py``)
against PyTorch's own."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from totalgen_eval.segment import cpu_convolution
from totalgen_eval.segment import model as seg_model
from totalgen_eval.volumes import Grid

from conftest import toy_affine

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.usefixtures("one_thread")


def _random_unet(roi_size=(16, 16, 24), mirror_x=False, seed=5):
    """A small random UNet (two inputs, four classes; strided and transposed convolutions) and its config."""
    torch.manual_seed(seed)
    cfg = seg_model.ModelConfig(network="UNet", network_args=dict(spatial_dims=3, in_channels=2, out_channels=4,
                                channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch"),
                                class_ids=(0, 5, 90, 21), voxel_mm=(4.0, 4.0, 4.0), inputs=("ct", "pet"),
                                roi_size=roi_size, mirror_x=mirror_x)
    net = seg_model.build_network(cfg).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net, cfg


def _volumes(shape, seed=1):
    rng = np.random.default_rng(seed)
    ct = rng.normal(0, 300, size=shape).astype(np.float32)
    pet = rng.gamma(2.0, 1.5, size=shape).astype(np.float32)
    return ct, pet


def _sliding_window_labels(net, cfg, ct, pet):
    """Labels as MONAI's gaussian sliding window gives them with PyTorch's own convolutions (the earlier
    path): input flipped along i for a mirror_x model, logits flipped back, argmax over channels."""
    from monai.inferers import sliding_window_inference
    x = torch.from_numpy(seg_model.network_input(cfg, ct, pet))[None]
    mirror = (2,) if cfg.mirror_x else ()
    with torch.no_grad():
        logits = sliding_window_inference(x.flip(mirror) if mirror else x, cfg.roi_size, 1, net,
                                          overlap=cfg.overlap, mode="gaussian")
    logits = logits.flip(mirror) if mirror else logits
    return np.asarray(cfg.class_ids, np.uint8)[logits[0].argmax(0).numpy()]


@pytest.mark.parametrize("mirror_x", [False, True])
@pytest.mark.parametrize("shape", [(16, 16, 24), (13, 16, 19), (11, 9, 24)])  # the ROI, and padded in 2 / 3 axes
def test_one_window_labels_equal_the_sliding_window(monkeypatch, shape, mirror_x):
    monkeypatch.setattr(cpu_convolution, "MIN_TAPS_VOXELS", 1)  # the tap-wise transposed convolutions too
    net, cfg = _random_unet(mirror_x=mirror_x)
    ct, pet = _volumes(shape)
    grid = Grid(shape, toy_affine((4.0, 4.0, 4.0)))
    assert seg_model.one_window(cfg.roi_size, shape)
    labels = seg_model.predict_labels(net, cfg, ct, grid, pet=pet, pet_grid=grid)
    expected = _sliding_window_labels(net, cfg, ct, pet)
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert len(np.unique(expected)) == 4  # a network whose labels vary: every class present
    np.testing.assert_array_equal(labels, expected)


def test_one_window_logits_are_the_sliding_windows_and_larger_volumes_still_slide():
    from monai.inferers import sliding_window_inference
    net, cfg = _random_unet()
    x = torch.rand(1, 2, 12, 16, 20)
    with torch.inference_mode():
        direct = seg_model.network_logits(net, cfg, x)
        sliding = sliding_window_inference(x, cfg.roi_size, 1, net, overlap=cfg.overlap, mode="gaussian")
        assert direct.shape == sliding.shape == (1, 4, 12, 16, 20)
        torch.testing.assert_close(direct, sliding, rtol=1e-5, atol=1e-5)
        big = torch.rand(1, 2, 20, 16, 40)  # more than one ROI along i and k
        assert not seg_model.one_window(cfg.roi_size, (20, 16, 40))
        torch.testing.assert_close(seg_model.network_logits(net, cfg, big),
                                   sliding_window_inference(big, cfg.roi_size, 1, net, overlap=cfg.overlap,
                                                            mode="gaussian"), rtol=1e-5, atol=1e-5)


def test_one_window():
    assert seg_model.one_window((56, 40, 144), (56, 40, 144))
    assert seg_model.one_window((56, 40, 144), (1, 40, 100))
    assert not seg_model.one_window((56, 40, 144), (57, 40, 144))
    assert not seg_model.one_window((56, 40, 144), (56, 40, 145))


def test_argmax_labels_take_the_first_highest_channel():
    logits = np.zeros((3, 2, 1, 2), np.float32)
    logits[1, 0, 0, 0] = 2.0          # channel 1
    logits[2, 0, 0, 1] = 1.0          # channel 2
    logits[:, 1, 0, 0] = [1, 3, 3]    # tie of 1 and 2: the first, 1
    logits[:, 1, 0, 1] = [-1, -2, -3]  # channel 0
    labels = seg_model.argmax_labels(logits, (0, 5, 90))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[[5, 90]], [[5, 0]]])


def test_mirror_x_labels_are_the_unmirrored_network_on_the_flipped_volume():
    """A mirror_x model on a volume = the plain model on the volume flipped along i, its labels flipped back."""
    net, cfg = _random_unet(mirror_x=True)
    ct, pet = _volumes((16, 16, 24), seed=3)
    grid = Grid(ct.shape, toy_affine((4.0, 4.0, 4.0)))
    mirrored = seg_model.predict_labels(net, cfg, ct, grid, pet=pet, pet_grid=grid)
    plain = seg_model.predict_labels(net, dataclasses.replace(cfg, mirror_x=False), ct[::-1].copy(), grid,
                                     pet=pet[::-1].copy(), pet_grid=grid)
    np.testing.assert_array_equal(mirrored, plain[::-1])


CONFIGS = [  # (kernel, stride, padding, output_padding, input shape (N, C, D, H, W), C_out)
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 5, 6, 4, 7), 3),  # the UNet's up-convolution
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (2, 3, 5, 5, 3), 4),  # a batch of two
    ((2, 3, 4), (2, 1, 3), (0, 1, 2), (1, 0, 2), (1, 2, 4, 5, 6), 3),  # mixed kernels, strides, paddings
    ((1, 1, 1), (3, 3, 3), (0, 0, 0), (2, 0, 1), (1, 2, 3, 4, 2), 2),  # stride above the kernel: bias-only phases
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 3, 4, 5, 6), 2),  # stride 1
]


@pytest.mark.parametrize("kernel, stride, padding, output_padding, shape, c_out", CONFIGS)
def test_conv_transpose3d_taps_equal_pytorch(kernel, stride, padding, output_padding, shape, c_out):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(shape[1], c_out, *kernel, generator=gen)
    b = torch.randn(c_out, generator=gen)
    for bias in (b, None):
        expected = F.conv_transpose3d(x, w, bias, stride, padding, output_padding)
        got = cpu_convolution.conv_transpose3d_taps(x, w, bias, stride, padding, output_padding)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose3d_taps_by_hand():
    """Stride 2, kernel 2, one channel in and out, 1D along k: out[2 i + t] = w[t] x[i], plus the bias."""
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 1, 3)
    w = torch.tensor([10.0, 100.0]).view(1, 1, 1, 1, 2)
    got = cpu_convolution.conv_transpose3d_taps(x, w, torch.tensor([0.5]), stride=(1, 1, 2))
    assert got.flatten().tolist() == [10.5, 100.5, 20.5, 200.5, 30.5, 300.5]


def test_fast_cpu_convolutions_only_where_eligible(monkeypatch):
    calls = []
    real_taps = cpu_convolution.conv_transpose3d_taps
    monkeypatch.setattr(cpu_convolution, "conv_transpose3d_taps", lambda *a, **k: calls.append(1) or real_taps(*a, **k))
    up = torch.nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1)
    conv = torch.nn.Conv3d(4, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 32, 32, 16)  # 16,384 voxels: the taps' threshold
    with torch.inference_mode():
        expected_up, expected_conv = up(x), conv(x)
        with cpu_convolution.FastCPUConvolutions():
            got_up, got_conv = up(x), conv(x)
            small = up(x[:, :, :16])  # below the threshold: PyTorch's own
    assert len(calls) == 1
    torch.testing.assert_close(got_up, expected_up, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_conv, expected_conv, rtol=1e-5, atol=1e-5)
    assert got_conv.layout == torch.strided and small.shape == (1, 2, 32, 64, 32)
    with cpu_convolution.FastCPUConvolutions():  # with autograd: PyTorch's own, gradients flow
        out = up(x)
        out.sum().backward()
    assert len(calls) == 1 and up.weight.grad is not None


@pytest.mark.parametrize("shape", list(itertools.product((15, 16), (13,), (17, 24))))
def test_one_window_pads_as_monai(shape):
    """The one-window call pads the input as MONAI does ((roi - n) // 2 before): a network that returns its
    input (a channel per class) hands back exactly the input."""
    cfg = seg_model.ModelConfig(network="UNet", network_args={}, class_ids=(0, 1), roi_size=(16, 16, 24))
    seen = []

    def identity(x):
        seen.append(tuple(x.shape[2:]))
        return x.clone()

    x = torch.rand(1, 2, *shape)
    with torch.inference_mode():
        out = seg_model.network_logits(identity, cfg, x)
    assert seen == [(16, 16, 24)]
    assert torch.equal(out, x)

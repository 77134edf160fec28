"""The generator library: preconditioning, schedules, samplers on an analytic case, network, training,
checkpoints (safetensors only), cascade shapes/affines/seeding. The population model:
test_generator_population.py."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

from generator import (CheckpointError, karras_sigmas, load_cascade, load_stage,
                       precond_coefficients, random_cascade, sample_dpmpp_2m, sample_euler, sample_heun,
                       save_stage, tiny_lowres, tiny_sr)
from generator import checkpoints
from generator.config import ScheduleConfig, check_schedule, stage_from_dict, to_dict
from generator.checkpoints import build_denoiser, check_safetensors
from generator.intensity import ct_to_unit, pet_to_unit, unit_to_ct, unit_to_pet
from generator.networks import UNet3D
from generator.sampling import chunked, guided, z_chunk_weights
from generator.stages import canvas_affine, downsample, position_channels, sr_training_pair, upsample
from generator.training import read_loss_log, train_stage

from conftest import fitted_population


pytestmark = pytest.mark.usefixtures("one_thread")


# preconditioning and schedules ------------------------------------------------------------------------
def test_precond_coefficients_make_unit_variance_input_and_target():
    sd = 0.5
    sigma = torch.logspace(-3, 2, 30, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, sd)
    # network input c_in (x0 + sigma n) has unit variance when Var x0 = sd^2
    torch.testing.assert_close(c_in ** 2 * (sd ** 2 + sigma ** 2), torch.ones_like(sigma))
    # the effective target (x0 - c_skip x) / c_out has unit variance
    target_var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2
    torch.testing.assert_close(target_var, torch.ones_like(sigma))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    # c_skip minimises that target's variance: derivative of the variance in c_skip is zero
    eps = 1e-6
    var = lambda cs: (1 - cs) ** 2 * sd ** 2 + cs ** 2 * sigma ** 2  # noqa: E731
    assert torch.all((var(c_skip + eps) - var(c_skip - eps)).abs() < 1e-9)


def test_denoiser_with_zero_network_is_c_skip_times_x():
    cfg = tiny_lowres()
    den = build_denoiser(cfg)
    x = torch.randn(2, 2, *cfg.shape)
    out = den(x, torch.tensor(1.3), {"demographics": torch.tensor([[50, 1, 1.7, 70.0]] * 2),
                                     "image": position_channels(cfg.shape, 2)})
    torch.testing.assert_close(out, x * cfg.sigma_data ** 2 / (1.3 ** 2 + cfg.sigma_data ** 2))


def test_karras_sigmas_follow_the_formula():
    s = karras_sigmas(5, 0.002, 80.0, 7.0)
    assert len(s) == 6 and s[-1] == 0
    assert math.isclose(s[0], 80.0, rel_tol=1e-6) and math.isclose(s[4], 0.002, rel_tol=1e-5)
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # ramp 2/4
    assert math.isclose(s[2], mid, rel_tol=1e-6)
    assert torch.all(s[:-1][1:] < s[:-1][:-1])


# samplers on Gaussian data, where the exact denoiser and ODE solution are known --------------------------
MU, S = 0.7, 0.4


def gaussian_denoiser(x, sigma, cond=None):
    return (S ** 2 * x + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)


def exact_flow(x_t, sigma_t):
    """Probability-flow ODE solution at sigma = 0 for data N(MU, S^2): affine in x_T."""
    return MU + (x_t - MU) * S / math.sqrt(S ** 2 + sigma_t ** 2)


@pytest.mark.parametrize("sampler,order", [(sample_heun, 2), (sample_dpmpp_2m, 2), (sample_euler, 1)])
def test_samplers_converge_to_the_exact_gaussian_flow(sampler, order):
    gen = torch.Generator().manual_seed(0)
    x_t = MU + math.sqrt(S ** 2 + 80.0 ** 2) * torch.randn(20000, generator=gen, dtype=torch.float64)
    exact = exact_flow(x_t, 80.0)
    errors = {}
    for steps in (32, 64):
        x0 = sampler(gaussian_denoiser, x_t * 1, karras_sigmas(steps, 0.002, 80.0).double())
        errors[steps] = float((x0 - exact).abs().max())
    ratio = errors[32] / errors[64]  # halving the step multiplies the error by 2^-order
    assert 0.75 * 2 ** order < ratio < 1.3 * 2 ** order, errors
    assert errors[64] < (0.01 if order == 2 else 0.1)
    tol = 0.01 if order == 2 else 0.03  # sampling error of mean/std with 20000 draws: ~0.003
    assert abs(float(x0.mean()) - MU) < tol and abs(float(x0.std()) - S) < tol


def test_heun_and_dpmpp_agree_for_the_same_noise():
    sigmas = karras_sigmas(32, 0.002, 80.0).double()
    x_t = 80.0 * torch.randn(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = sample_heun(gaussian_denoiser, x_t, sigmas)
    b = sample_dpmpp_2m(gaussian_denoiser, x_t, sigmas)
    assert float((a - b).abs().max()) < 5e-3
    # the 4-step DPM++ from sigma_max 1 used for the SR residual (std ~0.1) is already close
    s_res = 0.1
    short = karras_sigmas(4, 0.002, 1.0).double()
    x1 = math.sqrt(s_res ** 2 + 1.0) * torch.randn(20000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = sample_dpmpp_2m(lambda x, sig, c=None: s_res ** 2 * x / (s_res ** 2 + sig ** 2), x1, short)
    assert float((out - x1 * s_res / math.sqrt(s_res ** 2 + 1.0)).abs().mean()) < 0.05 * s_res
    assert abs(float(out.std()) / s_res - 1) < 0.05


def test_guidance_combines_conditional_and_unconditional():
    def model(x, sigma, cond):
        return torch.where(cond["keep"][:, None], x + 1.0, x - 1.0)

    x = torch.zeros(3, 4)
    out = guided(model, 2.5)(x, torch.tensor(1.0), {"demographics": torch.zeros(3, 4)})
    torch.testing.assert_close(out, torch.full((3, 4), -1.0 + 2.5 * 2.0))
    assert guided(model, 1.0) is model


def test_guidance_interval_guides_only_inside_its_noise_levels():
    def model(x, sigma, cond):  # conditional: x + 1, unconditional: x - 1 ("keep" absent: all conditional)
        keep = cond.get("keep", torch.ones(x.shape[0], dtype=torch.bool))
        return torch.where(keep[:, None], x + 1.0, x - 1.0)

    x, cond = torch.zeros(2, 3), {"demographics": torch.zeros(2, 4)}
    interval = guided(model, 3.0, (0.5, 2.0))
    for sigma, expected in [(0.4, 1.0), (0.5, -1.0 + 3.0 * 2.0), (2.0, 5.0), (2.5, 1.0), (80.0, 1.0)]:
        torch.testing.assert_close(interval(x, torch.full((2,), sigma), cond), torch.full((2, 3), expected))
    with pytest.raises(ValueError, match="guidance_sigma"):
        check_schedule(ScheduleConfig(guidance=2.0, guidance_sigma=(3.0, 1.0)))
    config = dataclasses.replace(tiny_lowres(), schedule=ScheduleConfig(guidance=2.0, guidance_sigma=(0.3, 5.0)))
    assert stage_from_dict(to_dict(config)).schedule.guidance_sigma == (0.3, 5.0)
    assert random_cascade(config, tiny_sr(), seed=1).settings().guidance_sigma == (0.3, 5.0)  # what generate records


def test_z_chunks_blend_to_the_whole_volume():
    for length, chunk, overlap in [(144, 48, 8), (72, 40, 8), (30, 64, 8)]:
        total = torch.zeros(length)
        for start, w in z_chunk_weights(length, chunk, overlap):
            total[start:start + len(w)] += w
        torch.testing.assert_close(total, torch.ones(length))
    model = lambda x, s, cond: x * 2 + cond["image"][:, :1]  # noqa: E731 - voxel-wise: chunking is exact
    x, img = torch.randn(2, 2, 4, 4, 40), torch.randn(2, 5, 4, 4, 40)
    torch.testing.assert_close(chunked(model, 16, 4)(x, torch.tensor(1.0), {"image": img}), model(x, 1, {"image": img}))


# intensities and stage formulation ---------------------------------------------------------------------
def test_intensity_maps_are_invertible_and_anchor_points():
    hu = torch.tensor([-1000.0, -100.0, 0.0, 55.0, 1000.0, 3000.0], dtype=torch.float64)
    torch.testing.assert_close(unit_to_ct(ct_to_unit(hu)), hu)
    assert math.isclose(float(ct_to_unit(torch.tensor(-1000.0))), -1.0, abs_tol=1e-6)
    assert math.isclose(float(ct_to_unit(torch.tensor(1000.0))), 1.0, abs_tol=1e-6)
    assert float(ct_to_unit(torch.tensor(3000.0))) > 1.0  # not clipped
    assert float(unit_to_ct(torch.tensor(-1.5))) == -1024.0  # floored below air
    suv = torch.tensor([0.0, 0.5, 2.0, 25.0, 60.0], dtype=torch.float64)
    torch.testing.assert_close(unit_to_pet(pet_to_unit(suv)), suv)
    assert math.isclose(float(pet_to_unit(torch.tensor(25.0))), 1.0, abs_tol=1e-6)
    assert float(unit_to_pet(torch.tensor(-1.3))) == 0.0


def test_sr_pair_reconstructs_high_res_and_low_res_keeps_physical_means():
    gen = torch.Generator().manual_seed(0)
    hu = torch.empty(2, 8, 8, 16).uniform_(-1000, 1500, generator=gen)
    suv = torch.empty(2, 8, 8, 16).uniform_(0, 30, generator=gen)
    x = torch.stack([ct_to_unit(hu), pet_to_unit(suv)], 1)
    residual, image = sr_training_pair(x)
    torch.testing.assert_close(residual + image[:, :2], x)
    lo = downsample(x)
    assert lo.shape == (2, 2, 4, 4, 8)
    # a low-res voxel holds the mean HU and SUV of its 2x2x2 block (not the mean of normalised values)
    torch.testing.assert_close(unit_to_pet(lo[:, 1, 1, 2, 3]), suv[:, 2:4, 4:6, 6:8].mean((1, 2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unit_to_ct(lo[:, 0, 0, 0, 0]), hu[:, :2, :2, :2].mean((1, 2, 3)), rtol=1e-4, atol=1e-2)
    # trilinear upsampling of a constant is the constant
    const = torch.stack([ct_to_unit(torch.full((1, 4, 4, 8), 40.0)), pet_to_unit(torch.full((1, 4, 4, 8), 2.0))], 1)
    torch.testing.assert_close(upsample(const), torch.nn.functional.interpolate(const, scale_factor=2.0))


def test_positions_span_the_canvas():
    pos = position_channels((4, 6, 8))
    assert pos.shape == (1, 3, 4, 6, 8)
    assert math.isclose(float(pos[0, 2, 0, 0, 0]), -1 + 1 / 8) and math.isclose(float(pos[0, 0, -1, 0, 0]), 1 - 1 / 4)


def test_canvas_affine_matches_the_contract():
    a = canvas_affine(8.0, (448.0, 320.0, 1152.0))
    np.testing.assert_allclose(np.diag(a), [8, 8, 8, 1])
    np.testing.assert_allclose(a[:3, 3], [-220, -156, -1148])
    top = a @ np.array([0, 0, 143, 1])
    assert top[2] == -4.0  # last slice centre half a voxel below z = 0


# network -------------------------------------------------------------------------------------------------
def test_unet_shapes_and_null_embedding():
    cfg = tiny_sr().network
    net = UNet3D(cfg)
    for p in net.parameters():  # leave no zero-initialised layer, so the test sees the conditioning path
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, cfg.in_channels, 8, 8, 12)
    cond = torch.tensor([[30, 0, 1.6, 60.0], [70, 1, 1.8, 90.0]])
    out = net(x, torch.zeros(2), cond)
    assert out.shape == (2, cfg.out_channels, 8, 8, 12)
    dropped = net(x, torch.zeros(2), cond, keep=torch.tensor([False, False]))
    swapped = net(x, torch.zeros(2), cond.flip(0), keep=torch.tensor([False, False]))
    torch.testing.assert_close(dropped, swapped)  # null embedding ignores the demographics
    assert not torch.allclose(out, dropped)


# training ------------------------------------------------------------------------------------------------
def blob_volumes(n: int, shape=(16, 16, 32), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom-like normalised volumes: a body ellipsoid whose size follows weight, an organ whose PET
    uptake follows sex; demographics (n, 4)."""
    rng = np.random.default_rng(seed)
    demo = np.stack([rng.uniform(20, 80, n), rng.integers(0, 2, n), rng.normal(1.7, 0.08, n), rng.normal(75, 12, n)], 1)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vols = np.empty((n, 2, *shape), np.float32)
    for i, (age, sex, h, w) in enumerate(demo):
        r = 0.5 + 0.004 * (w - 75)
        body = (x / r) ** 2 + (y / r) ** 2 + (z / 0.9) ** 2 < 1
        organ = (x / 0.25) ** 2 + (y / 0.25) ** 2 + ((z - 0.2) / 0.3) ** 2 < 1
        vols[i, 0] = np.where(body, 0.05, -1.0) + rng.normal(0, 0.02, shape)
        vols[i, 1] = np.where(organ, -0.2 + 0.3 * sex, np.where(body, -0.6, -1.0)) + rng.normal(0, 0.02, shape)
    return torch.from_numpy(vols), torch.from_numpy(demo.astype(np.float32))


@pytest.mark.slow  # trains a tiny stage for real: ~15-40 s
def test_training_loss_falls_and_resumes(tmp_path):
    torch.manual_seed(0)
    vols, demo = blob_volumes(32)
    cfg = dataclasses.replace(tiny_lowres(), lr=3e-3)
    train_stage(cfg, vols, demo, tmp_path, steps=240, batch_size=8, seed=0, checkpoint_every=120, log_every=10)
    log = read_loss_log(tmp_path / "lowres-loss.csv")
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.6 * first, (first, last)
    meta = json.loads((tmp_path / "lowres-state.json").read_text())["meta"]
    assert meta["step"] == 240
    train_stage(cfg, vols, demo, tmp_path, steps=260, batch_size=8, seed=0, checkpoint_every=120, log_every=10)
    assert json.loads((tmp_path / "lowres-state.json").read_text())["meta"]["step"] == 260
    assert read_loss_log(tmp_path / "lowres-loss.csv")[-1]["step"] == 260
    other = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, channels=(8, 8)))
    with pytest.raises(CheckpointError, match="another architecture"):
        train_stage(other, vols, demo, tmp_path, steps=270)


def test_sr_training_uses_z_windows(tmp_path):
    vols, demo = blob_volumes(4)
    cfg = dataclasses.replace(tiny_sr(), patch_slices=16)
    path = train_stage(cfg, vols, demo, tmp_path, steps=3, batch_size=2)
    den, loaded, _ = load_stage(path)
    assert loaded.patch_slices == 16 and loaded.kind == "sr"


# checkpoints ---------------------------------------------------------------------------------------------
def test_stage_round_trip_without_pickle(tmp_path):
    cfg = tiny_lowres()
    den = build_denoiser(cfg)
    for p in den.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = save_stage(den, cfg, tmp_path, {"note": "test"})
    assert check_safetensors(path) == path
    assert path.read_bytes()[:2] != b"PK" and b"\x80" != path.read_bytes()[:1]  # no zip/pickle archive
    loaded, cfg2, meta = load_stage(path)
    assert cfg2 == cfg and meta["note"] == "test" and len(meta["sha256"]) == 12
    x = torch.randn(1, 2, *cfg.shape)
    cond = {"demographics": torch.tensor([[40, 1, 1.8, 80.0]]), "image": position_channels(cfg.shape)}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor(0.7), cond), den.eval()(x, torch.tensor(0.7), cond))


def test_pickles_and_other_architectures_are_refused(tmp_path):
    cfg = tiny_lowres()
    den = build_denoiser(cfg)
    torch.save(den.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_stage(tmp_path / "model.pt")
    torch.save(den.state_dict(), tmp_path / "lowres.safetensors")  # a pickle under a safetensors name
    (tmp_path / "lowres.json").write_text("{}")
    with pytest.raises(CheckpointError, match="zip/pickle|not a safetensors"):
        load_stage(tmp_path / "lowres.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_cascade(tmp_path / "model.pt")
    good = tmp_path / "good"
    save_stage(den, cfg, good)
    meta = json.loads((good / "lowres.json").read_text())
    meta["config"]["network"]["channels"] = [4, 8, 16]
    (good / "lowres.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_stage(good / "lowres.safetensors")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_stage(good / "lowres.safetensors", expect=dataclasses.replace(cfg, shape=(16, 8, 16)))


def test_cascade_folder_checks(tmp_path, monkeypatch):
    lo, sr = tiny_lowres(), tiny_sr()
    save_stage(build_denoiser(lo), lo, tmp_path)
    save_stage(build_denoiser(sr), sr, tmp_path)
    fitted_population().save(tmp_path / "population.json")
    cascade = load_cascade(tmp_path)
    assert cascade.shape == sr.shape and len(cascade.checkpoint_id) == 12
    bad_sr = tiny_sr((8, 8, 8))
    save_stage(build_denoiser(bad_sr), bad_sr, tmp_path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_cascade(tmp_path)
    monkeypatch.setitem(checkpoints.BUNDLED, "phantom-8mm", tmp_path / "nothing")
    monkeypatch.setattr(checkpoints, "BUNDLED", {"phantom-8mm": tmp_path / "nothing"})
    with pytest.raises(FileNotFoundError, match="totalgen-eval train"):
        load_cascade()


def test_schedule_can_be_changed_without_touching_weights(tmp_path):
    from generator.checkpoints import set_schedule
    from generator.config import ScheduleConfig

    cfg = tiny_lowres()
    path = save_stage(build_denoiser(cfg), cfg, tmp_path)
    digest = checkpoints.file_digest(path)
    set_schedule(tmp_path, "lowres", ScheduleConfig(sigma_max=20.0, steps=7, sampler="heun"))
    _, loaded, _ = load_stage(path)
    assert loaded.schedule.steps == 7 and loaded.schedule.sampler == "heun" and loaded.network == cfg.network
    assert checkpoints.file_digest(path) == digest


def test_precision_choices():
    from generator.precision import autocast, resolve_precision

    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", "cpu")
    with autocast("fp32", "cpu"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_sampling_stays_close_to_fp32(tiny_cascade):
    tiny_cascade.precision = "bf16"
    try:
        low = tiny_cascade.generate(DEMO, seed=2)
    finally:
        tiny_cascade.precision = "fp32"
    full = tiny_cascade.generate(DEMO, seed=2)
    for (ct_b, pet_b, _), (ct_f, pet_f, _) in zip(low, full):
        assert abs(pet_b.mean() - pet_f.mean()) < 0.02 * max(pet_f.mean(), 0.1)
        assert np.median(np.abs(ct_b - ct_f)) < 20


# cascade ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cascade():
    return random_cascade(tiny_lowres(), tiny_sr(), fitted_population(), seed=3)


DEMO = {"age": [30.0, 55.0, 70.0], "sex": ["F", "M", "F"], "height_m": [1.6, 1.8, 1.7], "weight_kg": [60.0, 85.0, 70.0]}


def test_cascade_shapes_ranges_affine_and_determinism(tiny_cascade):
    out = tiny_cascade.generate(DEMO, seed=5, batch_size=3)
    assert len(out) == 3
    for ct, pet, affine in out:
        assert ct.shape == pet.shape == tiny_cascade.shape and ct.dtype == pet.dtype == np.float32
        assert np.isfinite(ct).all() and (pet >= 0).all() and np.isfinite(pet).all()
        np.testing.assert_allclose(affine, canvas_affine(8.0, tiny_cascade.sr_config.fov_mm))
    again = tiny_cascade.generate(DEMO, seed=5, batch_size=2)
    for (a, b, _), (c, d, _) in zip(out, again):
        np.testing.assert_allclose(a, c, atol=1e-2)  # HU; batch size changes float rounding only
        np.testing.assert_allclose(b, d, atol=1e-4)
    other = tiny_cascade.generate(DEMO, seed=6)
    assert not np.allclose(out[0][0], other[0][0], atol=1)


def test_case_output_does_not_depend_on_its_batch(tiny_cascade):
    together = tiny_cascade.generate(DEMO, seed=9, batch_size=3)
    alone = tiny_cascade.generate({k: v[1:2] for k, v in DEMO.items()}, seed=9, indices=[1], batch_size=1)
    np.testing.assert_allclose(together[1][0], alone[0][0], atol=1e-2)  # HU
    np.testing.assert_allclose(together[1][1], alone[0][1], atol=1e-4)  # SUV
    assert not np.allclose(together[0][1], together[1][1], atol=1e-3)


def test_demographics_outside_training_are_clamped_with_a_warning(tiny_cascade):
    ranges = tiny_cascade.population.ranges()
    with pytest.warns(UserWarning, match="clamped"):
        used = tiny_cascade.prepare({"age": [120.0], "sex": ["M"], "height_m": [1.75], "weight_kg": [300.0]})
    assert used["age"][0] == ranges["age"][1] and used["weight_kg"][0] == ranges["weight_kg"][1]
    with pytest.raises(ValueError, match="unknown sex"):
        tiny_cascade.prepare({"age": [50.0], "sex": ["X"], "height_m": [1.7], "weight_kg": [70.0]})


def test_guidance_and_chunked_sr_run(tiny_cascade):
    plain = tiny_cascade.generate(DEMO, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunk = tiny_cascade.generate(DEMO, seed=1, sr_chunk=16)
    assert np.abs(plain[0][1] - chunk[0][1]).max() < 5  # same stage 1; SR differs only near chunk borders
    guided_out = tiny_cascade.generate(DEMO, seed=1, guidance=2.0)
    assert not np.allclose(plain[0][1], guided_out[0][1])

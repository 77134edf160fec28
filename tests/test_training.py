"""Generator training infrastructure (issue 14 item 1): any cohort layout, per-field missing demographics,
data streamed from an .npy cache, 3D patches for stage 2, the typed training config and its GPU recipes."""
from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.config import NetworkConfig, default_sr, tiny_sr
from generator.data import CanvasCases, TensorVolumes, sr_patch
from generator.networks import UNet3D
from generator.stages import sr_training_pair
from generator.train_config import (TrainConfig, annotate_estimate, estimate_cost, learning_rate, load_train_config,
                                    stage_config, train_config_dict)
from totalgen_eval.errors import InputError
from totalgen_eval.phantom import make_cohort
from totalgen_eval.training_data import train_stage

CONFIGS = Path(__file__).resolve().parents[1] / "generator" / "configs"


def tiny_recipe(tmp_path: Path, stage: str, **fields) -> Path:
    """A tiny training config file on the 8 mm phantom canvas (2-level UNet of 4 and 8 channels)."""
    data = dict(stage=stage, voxel_mm=8.0, channels=[4, 8], emb_dim=16, batch_size=2, warmup_steps=1, **fields)
    path = tmp_path / f"{stage}.json"
    path.write_text(json.dumps(data))
    return path


def test_tcia_phantoms_without_height_or_weight_train_and_resume(tmp_path):
    cohort = make_cohort(tmp_path / "tcia", n=3, seed=4, layout="tcia", progress=False)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="no population.json written"):  # no case has height and weight
        path = train_stage(cohort, "lowres", out, steps=2, progress=False, threads=1,
                           config_path=tiny_recipe(tmp_path, "lowres"))
    record = json.loads((out / "train-lowres.json").read_text())
    assert path.is_file() and record["final"]["step"] == 2 and record["settings"]["n_cases"] == 3
    assert record["settings"]["missing"] == {"age": 0, "sex": 0, "height_m": 3, "weight_kg": 3}
    assert len(list((out / "cache" / "8mm").glob("*.npy"))) == 6  # high-res and low-res per case
    assert json.loads((out / "lowres.json").read_text())["config"]["network"]["field_nulls"] is True
    with pytest.warns(UserWarning, match="no population.json written"):  # resumes with the saved recipe
        train_stage(cohort, "lowres", out, steps=4, progress=False, threads=1)
    assert json.loads((out / "lowres.json").read_text())["meta"]["step"] == 4
    steps = [int(line.split(",")[0]) for line in (out / "lowres-loss.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4]


def test_a_side_table_fills_demographics_per_field(tmp_path):
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.training_data import cohort_demographics, demographics_table, read_demographics_csv

    cohort = make_cohort(tmp_path / "tcia", n=2, seed=4, layout="tcia", progress=False)
    cases = list(load_cohort(cohort))
    side = tmp_path / "side.csv"
    side.write_text(f"case_id,weight_kg\n{cases[0].case_id},71.5\n{cases[1].case_id},\n")
    table = demographics_table(cohort_demographics(cases, read_demographics_csv(side)))
    assert table[0, 3] == 71.5 and math.isnan(float(table[1, 3]))
    assert torch.isnan(table[:, 2]).all() and torch.isfinite(table[:, :2]).all()
    (tmp_path / "bad.csv").write_text("id,height\nx,1\n")
    with pytest.raises(InputError, match="case_id"):
        read_demographics_csv(tmp_path / "bad.csv")


def test_a_missing_field_takes_its_null_value_and_nothing_changes_when_all_are_given():
    torch.manual_seed(0)
    old = UNet3D(NetworkConfig(channels=(4, 8), emb_dim=16))
    new = UNet3D(NetworkConfig(channels=(4, 8), emb_dim=16, field_nulls=True))
    assert "field_null" not in old.state_dict() and new.state_dict()["field_null"].shape == (4,)
    cond = torch.tensor([[60.0, 1.0, 1.80, 90.0], [40.0, 0.0, float("nan"), float("nan")]])
    c_noise = torch.tensor([0.1, -0.3])
    reference = (cond - old.cond_center) / old.cond_scale  # the formula before missing fields existed
    expected = torch.nn.functional.silu(old.noise_emb(c_noise) + old.cond_emb(torch.nan_to_num(reference, nan=0.0)))
    assert torch.equal(old.embedding(c_noise, cond, None), expected)  # missing -> the field's centre
    with torch.no_grad():
        new.field_null.copy_(torch.tensor([0.0, 0.0, 0.7, -1.2]))
    z = new.normalised_condition(cond).detach()
    assert torch.equal(z[0], reference[0]) and z[1, 2] == pytest.approx(0.7) and z[1, 3] == pytest.approx(-1.2)


@pytest.mark.slow  # about 10-20 s on 2 busy cores
def test_the_bundled_cascade_is_bit_identical_with_every_field_given(monkeypatch):
    from generator import load_cascade

    demographics = {"age": [45.0], "sex": ["F"], "height_m": [1.65], "weight_kg": [62.0]}
    cascade = load_cascade(precision="fp32")
    now = cascade.generate(demographics, seed=1, steps=2, sr_steps=1)[0]

    def before(self, cond):  # the embedding input as it was computed before per-field nulls
        return (cond.float() - self.cond_center) / self.cond_scale

    monkeypatch.setattr(UNet3D, "normalised_condition", before)
    then = cascade.generate(demographics, seed=1, steps=2, sr_steps=1)[0]
    assert np.array_equal(now[0], then[0]) and np.array_equal(now[1], then[1])


@pytest.mark.parametrize("factor", [2, 4])
def test_a_stage_2_patch_equals_the_whole_volume_pair_cut_to_the_patch(factor):
    config = dataclasses.replace(tiny_sr((8, 8, 16)), sr_factor=factor, shape=(16, 16, 32))
    volumes = torch.rand(1, 2, 16, 16, 32) * 0.5
    x0, image = sr_training_pair(volumes, factor)
    origin, patch = (4, 0, 12), (8, 16, 16)
    px0, pimage = sr_patch(TensorVolumes(volumes, factor), 0, config, origin, patch)
    cut = (slice(None), slice(4, 12), slice(0, 16), slice(12, 28))
    torch.testing.assert_close(px0, x0[0][cut], rtol=0, atol=1e-5)
    torch.testing.assert_close(pimage, image[0][cut], rtol=0, atol=1e-5)


@pytest.mark.slow  # about 10-20 s on 2 busy cores
def test_a_patch_trained_stage_2_runs_with_validation_and_previews(tmp_path):
    cohort = make_cohort(tmp_path / "ph", n=4, seed=6, progress=False)
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, "sr", patch_size=[16, 16, 32], val_fraction=0.25, val_every=1,
                         preview_every=2, grad_accum=2, lr_final=0.1)
    train_stage(cohort, "sr", out, steps=2, progress=False, threads=1, config_path=recipe)
    val = (out / "sr-val.csv").read_text().splitlines()
    assert val[0] == "step,val_loss" and len(val) == 3 and all(float(v.split(",")[1]) > 0 for v in val[1:])
    png = (out / "previews" / "sr-0000002.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (2 * 56, 144)  # CT | PET, coronal (x by z) of the 8 mm canvas
    start = png.index(b"IDAT") + 4
    size = int.from_bytes(png[start - 8:start - 4], "big")
    assert len(zlib.decompress(png[start:start + size])) == height * (width + 1)  # a filter byte a row
    record = json.loads((out / "train-sr.json").read_text())
    assert record["final"]["global_batch"] == 4 and record["final"]["validation_cases"] == 1
    dataset = CanvasCases(TensorVolumes(torch.rand(2, 2, 56, 40, 144)), torch.zeros(2, 4),
                          stage_config(load_train_config(recipe), 0.1))
    assert dataset[(0, 3, 1)]["x0"].shape == (2, 16, 16, 32)


def test_learning_rate_warms_up_then_follows_a_cosine():
    assert learning_rate(5, 1.0, 10, 110, 0.1) == pytest.approx(0.5)
    assert learning_rate(60, 1.0, 10, 110, 0.1) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert learning_rate(110, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
    assert learning_rate(500, 1.0, 10, 110, 1.0) == 1.0  # lr_final 1: constant after warm-up


@pytest.mark.parametrize("name", ["autopet-4mm-lowres", "autopet-4mm-sr", "autopet-2mm-sr"])
def test_the_4mm_gpu_recipe_loads_and_builds(name, tmp_path):
    recipe = load_train_config(CONFIGS / f"{name}.json")
    config = stage_config(recipe, sigma_data=0.5)
    grid = {"lowres": (56, 40, 144), "sr": tuple(int(f / recipe.voxel_mm) for f in (448, 320, 1152))}[recipe.stage]
    assert config.shape == grid and config.voxel_mm == recipe.stage_voxel_mm
    with torch.device("meta"):
        net = UNet3D(config.network)
    n = sum(p.numel() for p in net.parameters())
    saved = json.loads((CONFIGS / f"{name}.json").read_text())["_estimate"]
    assert saved["parameters"] == n and n > 10**7
    assert estimate_cost(config, recipe.batch_size)["forward_gflop"] == pytest.approx(
        saved["forward_gflop_per_micro_batch"], rel=1e-3)
    copy = tmp_path / "recipe.json"
    copy.write_text((CONFIGS / f"{name}.json").read_text())
    assert annotate_estimate(copy) == saved  # the shipped estimate is what the code computes
    if recipe.stage == "sr":
        assert config.patch_size == (56, 56, 96)  # the paper's patch
    assert json.loads(json.dumps(train_config_dict(recipe)))["stage"] == recipe.stage


def test_a_bad_training_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stage": "sr", "patch_size": [15, 16, 16], "channels": [4, 8]}))
    with pytest.raises(ValueError, match="patch_size"):
        load_train_config(bad)
    bad.write_text(json.dumps({"stage": "lowres", "learning_rate": 1}))
    with pytest.raises(ValueError, match="unknown training config key 'learning_rate'"):
        load_train_config(bad)
    assert TrainConfig().stage_voxel_mm == 16.0 and default_sr().sr_factor == 2


def test_dataloader_workers_do_not_change_what_is_trained(tmp_path):
    cohort = make_cohort(tmp_path / "ph", n=3, seed=8, progress=False)
    recipe = tiny_recipe(tmp_path, "sr", patch_size=[16, 16, 32], field_dropout=0.5)
    for workers in (0, 2):
        train_stage(cohort, "sr", tmp_path / f"w{workers}", steps=6, progress=False, threads=1, config_path=recipe,
                    workers=workers)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / f"w{w}" / "sr-state.safetensors")) for w in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["model.net.field_null"].abs().min()) > 0  # per-field dropout trained every null value


def test_the_cost_estimate_counts_every_convolution_and_linear_layer():
    """FLOPs by hand on a real CPU forward: 2 x weights x output positions for every Conv3d and Linear; an
    up-convolution (upsample_conv) is a 2x2x2 conv to 8 x C_out channels at (X + 1)(Y + 1)(Z + 1) positions of
    its low-resolution input."""
    config = dataclasses.replace(tiny_sr((8, 8, 16)), patch_size=(8, 8, 16), batch_size=2)
    net = UNet3D(config.network)
    counted = []

    def hook(module, inputs, output):
        positions = output.numel() // output.shape[1] if isinstance(module, torch.nn.Conv3d) else output.shape[0]
        counted.append(2 * module.weight.numel() * positions)

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    net(torch.randn(2, 7, 8, 8, 16), torch.randn(2), torch.randn(2, 4))
    levels = len(config.network.channels)
    for j, up in enumerate(net.upsamples):  # called through its weights, not as a module: no hook fired
        low = [s // 2 ** (levels - 1 - j) for s in (8, 8, 16)]
        counted.append(2 * (8 * up.out_channels) * up.in_channels * 8 * math.prod(s + 1 for s in low) * 2)
    cost = estimate_cost(config)
    assert cost["forward_gflop"] * 1e9 == pytest.approx(sum(counted), rel=1e-9)
    assert cost["parameters"] == sum(p.numel() for p in net.parameters())


def test_a_cascade_with_sr_factor_4_samples_on_the_fine_grid():
    from generator.cascade import check_stages_fit, random_cascade
    from generator.checkpoints import CheckpointError

    common = dict(voxel_mm=8.0, sr_factor=4, fov_mm=(256.0, 256.0, 512.0), channels=(4, 8), emb_dim=16)
    lowres = stage_config(TrainConfig(stage="lowres", **common), 0.5)
    sr = stage_config(TrainConfig(stage="sr", **common), 0.1)
    assert (lowres.shape, lowres.voxel_mm, sr.shape, sr.voxel_mm) == ((8, 8, 16), 32.0, (32, 32, 64), 8.0)
    cascade = random_cascade(dataclasses.replace(lowres, schedule=dataclasses.replace(lowres.schedule, steps=1)),
                             dataclasses.replace(sr, schedule=dataclasses.replace(sr.schedule, steps=1)))
    ct, pet, affine = cascade.generate({"age": [50.0], "sex": ["M"], "height_m": [1.8], "weight_kg": [80.0]})[0]
    assert ct.shape == pet.shape == (32, 32, 64) and affine[0, 0] == 8.0 and np.isfinite(pet).all()
    with pytest.raises(CheckpointError, match="4 times lowres"):
        check_stages_fit(dataclasses.replace(lowres, shape=(16, 16, 32)), sr, "test")


def test_noise_augmented_patches_equal_the_whole_volume_condition_cut_to_the_patch():
    config = dataclasses.replace(tiny_sr((8, 8, 16)), shape=(16, 16, 32), lowres_noise_max=0.3,
                                 network=dataclasses.replace(tiny_sr().network, in_channels=8))
    volumes = torch.rand(1, 2, 16, 16, 32) * 0.5
    level = torch.tensor([0.2])
    whole_noise = torch.randn(1, 2, 8, 8, 16)
    x0, image = sr_training_pair(volumes, 2, level, whole_noise)
    up_clean = sr_training_pair(volumes, 2)[1][:, :2]
    assert image.shape[1] == 6 and torch.all(image[:, 5] == 0.2)
    assert torch.allclose(x0 + up_clean, volumes, atol=1e-5)  # the residual is to the clean upsampling
    assert not torch.allclose(image[:, :2], up_clean)  # the network sees the augmented one
    # a patch sees the augmentation of its low-res region: with the region's noise equal to the whole
    # volume's noise there, it is the whole volume's condition cut to the patch
    origin, patch = (4, 0, 12), (8, 16, 16)
    gen = torch.Generator().manual_seed(5)
    px0, pimage = sr_patch(TensorVolumes(volumes, 2), 0, config, origin, patch, (level, gen))
    region_noise = torch.randn((1, 2, 6, 8, 10), generator=torch.Generator().manual_seed(5))
    noise = torch.zeros_like(whole_noise)
    noise[:, :, 1:7, 0:8, 5:15] = region_noise  # the low-res region around the patch, one voxel of margin
    _, image_cut = sr_training_pair(volumes, 2, level, noise)
    cut = (slice(None), slice(4, 12), slice(0, 16), slice(12, 28))
    torch.testing.assert_close(px0, x0[0][cut], rtol=0, atol=1e-5)
    torch.testing.assert_close(pimage, image_cut[0][cut], rtol=0, atol=1e-5)


def test_a_noise_augmented_stage_2_trains_and_samples_at_its_level(tmp_path):
    from generator.cascade import random_cascade
    from generator.stages import sr_condition

    recipe = tiny_recipe(tmp_path, "sr", lowres_noise_max=0.1, lowres_noise=0.05)
    sr = stage_config(load_train_config(recipe), 0.1)
    assert (sr.network.in_channels, sr.lowres_noise_max, sr.schedule.lowres_noise) == (8, 0.1, 0.05)
    items = CanvasCases(TensorVolumes(torch.rand(2, 2, 56, 40, 144) * 0.5), torch.zeros(2, 4), sr, seed=3)
    levels = {float(items[(0, step, 0)]["image"][5, 0, 0, 0]) for step in range(20)}
    assert len(levels) == 20 and 0 <= min(levels) and max(levels) <= 0.1  # uniform in [0, lowres_noise_max]
    item = items[(1, 7, 2)]
    torch.testing.assert_close(item["image"], items[(1, 7, 2)]["image"])  # keyed by (case, step, item)
    lowres = stage_config(TrainConfig(stage="lowres", channels=(4, 8), emb_dim=16), 0.5)
    one_step = [dataclasses.replace(c, schedule=dataclasses.replace(c.schedule, steps=1)) for c in (lowres, sr)]
    cascade = random_cascade(*one_step)
    plan = cascade.plan(cascade.settings())
    assert plan.lowres_noise == 0.05 and len(plan.noise_shapes) == 3
    seen = []
    cascade.sr = (lambda model: lambda x, sigma, cond: seen.append(cond["image"]) or model(x, sigma, cond))(cascade.sr)
    cascade.generate({"age": [50.0], "sex": ["F"], "height_m": [1.7], "weight_kg": [70.0]})
    image = seen[0]
    assert image.shape[1] == 6 and torch.all(image[:, 5] == 0.05)


@pytest.mark.parametrize("stage", ["lowres", "sr"])
def test_the_phantom_recipes_build_the_bundled_architecture(stage):
    """configs/phantom-<stage>.json (the recorded command of each bundled stage in TRAINING.md) builds exactly
    the bundled stage's grid, UNet, training patch and augmentation."""
    from generator.checkpoints import bundled_folder, read_stage_json

    bundled, _ = read_stage_json(bundled_folder() / f"{stage}.json")
    built = stage_config(load_train_config(CONFIGS / f"phantom-{stage}.json"), sigma_data=bundled.sigma_data)
    assert (built.shape, built.voxel_mm, built.network) == (bundled.shape, bundled.voxel_mm, bundled.network)
    assert (built.patch_size, built.patch_slices) == (bundled.patch_size, bundled.patch_slices)
    assert built.lowres_noise_max == (0.1 if stage == "sr" else 0.0) and built.network.field_nulls


def test_the_lean_stage2_recipe_keeps_the_grid_and_halves_the_cost():
    """configs/phantom-sr.json (the bundled lean stage 2) keeps the grid, patch and augmentation of the wide
    stage 2 it replaced (phantom-sr-wide.json) with a UNet (16, 32, 64): 0.45x its forward cost per patch."""
    wide, lean = (load_train_config(CONFIGS / f"{name}.json") for name in ("phantom-sr-wide", "phantom-sr"))
    built = {name: stage_config(r, sigma_data=0.122) for name, r in (("wide", wide), ("lean", lean))}
    for attr in ("shape", "voxel_mm", "patch_size", "lowres_noise_max", "sr_factor"):
        assert getattr(built["lean"], attr) == getattr(built["wide"], attr), attr
    assert built["lean"].network.channels == (16, 32, 64) and built["wide"].network.channels == (24, 48, 96)
    per_patch = {k: estimate_cost(built[k], r.batch_size)["forward_gflop"] / r.batch_size
                 for k, r in (("wide", wide), ("lean", lean))}
    # every inner convolution costs (2/3)^2 as much; only the stem and output convolutions (linear in the
    # width) cost more than that share
    assert (2 / 3) ** 2 < per_patch["lean"] / per_patch["wide"] < (2 / 3) ** 2 + 0.03

"""Stage-1 dispersion work (issue 14): the multiscale loss and fine-tuning from saved weights."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.checkpoints import file_digest, read_tensors
from generator.config import default_lowres, check_stage, stage_from_dict, to_dict
from generator.diffusion import edm_loss_at
from totalgen_eval.errors import InputError
from totalgen_eval.phantom import make_cohort
from totalgen_eval.training_data import train_stage


class FixedDenoiser:
    """A stand-in denoiser whose output is a given tensor, whatever its input (the loss rounds it to float32,
    so the expected values below hold to about 1e-7)."""

    def __init__(self, out: torch.Tensor, sigma_data: float = 0.5):
        self.out, self.sigma_data = out, sigma_data

    def __call__(self, x, sigma, cond):
        return self.out


def block_means(a: np.ndarray, f: int) -> np.ndarray:
    """Means over f x f x f blocks of (B, C, X, Y, Z), by reshaping."""
    b, c, x, y, z = a.shape
    return a.reshape(b, c, x // f, f, y // f, f, z // f, f).mean(axis=(3, 5, 7))


def test_the_multiscale_loss_counts_a_shared_error_by_block_volume_and_a_checkerboard_once():
    x0 = torch.zeros(2, 2, 8, 4, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 2.0], dtype=torch.float64)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2  # lambda(sigma) with sigma_data 0.5
    noise = torch.zeros_like(x0)
    shared = torch.full_like(x0, 0.3)
    for pool, terms in (((), 1), ((2,), 1 + 8), ((2, 4), 1 + 8 + 64)):
        expected = float((weight * 0.09 * terms).mean())
        assert float(edm_loss_at(FixedDenoiser(shared), x0, {}, sigma, noise, pool)) == pytest.approx(expected, rel=1e-6)
    i, j, k = np.indices(x0.shape[2:])
    checker = torch.from_numpy(0.3 * (-1.0) ** (i + j + k)).expand_as(x0).clone()  # every 2-block sums to 0
    assert float(edm_loss_at(FixedDenoiser(checker), x0, {}, sigma, noise, (2, 4))) == pytest.approx(
        float((weight * 0.09).mean()), rel=1e-6)


def test_the_multiscale_loss_equals_block_means_computed_by_reshaping():
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 2, 8, 4, 8, generator=gen, dtype=torch.float64)
    out = torch.randn(3, 2, 8, 4, 8, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.5, 5.0], dtype=torch.float64)
    err = (out - x0).numpy()
    per_case = sum(f ** 3 * (block_means(err, f) ** 2).reshape(3, -1).mean(1) for f in (2, 4)) + (err ** 2).reshape(3, -1).mean(1)
    weight = ((sigma ** 2 + 0.16) / (sigma * 0.4) ** 2).numpy()
    loss = edm_loss_at(FixedDenoiser(out, 0.4), x0, {}, sigma, torch.zeros_like(x0), (2, 4))
    assert float(loss) == pytest.approx(float((weight * per_case).mean()), rel=1e-6)
    # uncorrelated errors weigh about the same at every scale: 3 times the plain loss, give or take
    plain = float(edm_loss_at(FixedDenoiser(out, 0.4), x0, {}, sigma, torch.zeros_like(x0)))
    assert 2.0 < float(loss) / plain < 4.0


def test_a_loss_block_must_divide_the_training_input_and_survives_a_round_trip():
    base = default_lowres()  # (28, 20, 72)
    check_stage(dataclasses.replace(base, loss_pool=(2, 4)))
    for pool, message in (((8,), "does not divide"), ((3,), "does not divide"), ((1,), r"1 is outside \[2, 20\]"),
                          ((2.0,), "whole number")):
        with pytest.raises(ValueError, match=message):
            check_stage(dataclasses.replace(base, loss_pool=pool))
    config = dataclasses.replace(base, loss_pool=(2, 4))
    assert stage_from_dict(json.loads(json.dumps(to_dict(config)))).loss_pool == (2, 4)


def recipe(tmp_path: Path, name: str, **fields) -> Path:
    data = dict(stage="lowres", voxel_mm=8.0, channels=[4, 8], emb_dim=16, batch_size=2, warmup_steps=1, **fields)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_finetune_starts_from_the_saved_weights_and_keeps_their_noise_scale_and_schedule(tmp_path):
    cohort = make_cohort(tmp_path / "c", n=3, seed=4, progress=False)
    start = tmp_path / "start"
    train_stage(cohort, "lowres", start, steps=3, progress=False, threads=1, config_path=recipe(tmp_path, "a"))
    saved = json.loads((start / "lowres.json").read_text())
    saved["config"]["sigma_data"] = 0.377  # as a stage trained on other data would have
    saved["config"]["schedule"]["steps"] = 7
    (start / "lowres.json").write_text(json.dumps(saved))
    # a learning rate of 1e-12: one step leaves the weights where they started
    tuned = tmp_path / "tuned"
    train_stage(cohort, "lowres", tuned, steps=1, progress=False, threads=1,
                config_path=recipe(tmp_path, "b", lr=1e-12, loss_pool=[2, 4]), init=start)
    fresh = tmp_path / "fresh"
    train_stage(cohort, "lowres", fresh, steps=1, progress=False, threads=1, config_path=recipe(tmp_path, "c", lr=1e-12))
    a, b, c = (read_tensors(folder / "lowres.safetensors") for folder in (start, tuned, fresh))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    # without init the run starts from the seed's weights, which ``start``'s 3 AdamW steps at 2e-3 left behind
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-3
    stage = json.loads((tuned / "lowres.json").read_text())
    assert stage["config"]["sigma_data"] == 0.377 and stage["config"]["schedule"]["steps"] == 7
    assert stage["config"]["loss_pool"] == [2, 4]
    assert stage["meta"]["init"]["sha256"] == file_digest(start / "lowres.safetensors")


def test_a_finetune_from_another_architecture_is_refused_naming_the_folder(tmp_path):
    cohort = make_cohort(tmp_path / "c", n=2, seed=4, progress=False)
    start = tmp_path / "start"
    train_stage(cohort, "lowres", start, steps=1, progress=False, threads=1, config_path=recipe(tmp_path, "a"))
    wider = recipe(tmp_path, "b", init=str(start))
    data = json.loads(wider.read_text())
    wider.write_text(json.dumps(dict(data, channels=[8, 16])))
    with pytest.raises(InputError, match="cannot fine-tune from it.*another architecture") as info:
        train_stage(cohort, "lowres", tmp_path / "tuned", steps=1, progress=False, threads=1, config_path=wider)
    assert str(start) in str(info.value)
    with pytest.raises(InputError, match="cannot fine-tune from it.*not found"):
        train_stage(cohort, "lowres", tmp_path / "t2", steps=1, progress=False, threads=1,
                    config_path=recipe(tmp_path, "d"), init=tmp_path / "nowhere")


def test_a_resumed_finetune_keeps_its_state_and_the_record_of_its_start(tmp_path):
    """Resuming takes the weights from the saved state, not the init folder again, which may be gone."""
    cohort = make_cohort(tmp_path / "c", n=2, seed=4, progress=False)
    start = tmp_path / "start"
    train_stage(cohort, "lowres", start, steps=1, progress=False, threads=1, config_path=recipe(tmp_path, "a"))
    digest = file_digest(start / "lowres.safetensors")
    tuned = tmp_path / "tuned"
    train_stage(cohort, "lowres", tuned, steps=2, progress=False, threads=1,
                config_path=recipe(tmp_path, "b", steps=4, init=str(start)))
    (start / "lowres.safetensors").unlink()
    (start / "lowres.json").unlink()
    train_stage(cohort, "lowres", tuned, steps=4, progress=False, threads=1)  # the saved recipe, init included
    stage = json.loads((tuned / "lowres.json").read_text())
    assert stage["meta"]["step"] == 4
    assert stage["meta"]["init"] == {"folder": str(start.resolve()), "sha256": digest}


def test_bad_finetune_inputs_are_one_line_naming_the_file(tmp_path):
    cohort = make_cohort(tmp_path / "c", n=2, seed=4, progress=False)
    start = tmp_path / "start"
    train_stage(cohort, "lowres", start, steps=1, progress=False, threads=1, config_path=recipe(tmp_path, "a"))
    with pytest.raises(InputError, match=r"loss_pool = 4: a list of block sizes"):
        train_stage(cohort, "lowres", tmp_path / "t1", steps=1, progress=False, threads=1,
                    config_path=recipe(tmp_path, "b", loss_pool=4))
    (start / "lowres.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot fine-tune from it") as info:
        train_stage(cohort, "lowres", tmp_path / "t2", steps=1, progress=False, threads=1,
                    config_path=recipe(tmp_path, "c"), init=start)
    assert str(info.value).startswith(str(start.resolve())) and "\n" not in str(info.value)


def test_an_init_path_in_a_config_file_is_relative_to_the_file(tmp_path):
    from generator.train_config import load_train_config

    folder = tmp_path / "configs"
    folder.mkdir()
    path = recipe(folder, "rel", init="../weights")
    assert load_train_config(path).init == str((tmp_path / "weights").resolve())
    shipped = Path(__file__).resolve().parents[1] / "generator" / "configs" / "phantom-lowres-finetune.json"
    assert load_train_config(shipped).init == str(shipped.parents[1] / "weights")

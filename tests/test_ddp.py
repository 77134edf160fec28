"""Data-parallel training under torchrun on the CPU (gloo): two processes stay in sync and follow one process
with the doubled batch.

The command is run as users run it (``python -m torch.distributed.run --standalone --nproc_per_node 2 -m
totalgen_eval train ...``) on a tiny phantom cohort, for a few float32 steps. bf16/AMP on CUDA, nccl and
several GPUs cannot be tested here (no GPU on the test machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generator.checkpoints import build_denoiser, read_stage_json
from generator.distributed import World, parameter_spread, world_mean
from generator.training import draw_batch
from totalgen_eval.phantom import make_cohort

STEPS = 4


def train_command(cohort: Path, out: Path, batch_size: int, processes: int) -> list[str]:
    """The `train` command line, under torch.distributed.run when ``processes`` > 1."""
    args = ["-m", "totalgen_eval", "train", str(cohort), "--stage", "lowres", "--out", str(out), "--steps",
            str(STEPS), "--batch-size", str(batch_size), "--precision", "fp32", "--no-progress", "--seed", "3"]
    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weight_updates(folder: Path) -> dict[str, torch.Tensor]:
    """Trained minus initial weights of the network (the initial ones rebuilt from the run's seed)."""
    config, _ = read_stage_json(folder / "lowres-state.json")
    torch.manual_seed(3)
    initial = build_denoiser(config).state_dict()
    trained = load_file(str(folder / "lowres-state.safetensors"))
    return {k: trained[f"model.{k}"] - v for k, v in initial.items()}


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    diff = torch.cat([(a[k] - b[k]).reshape(-1) for k in a])
    ref = torch.cat([b[k].reshape(-1) for k in a])
    return float(diff.norm() / ref.norm())


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    cohort = make_cohort(tmp_path / "ph", n=4, seed=5, progress=False)
    ddp, single, half = tmp_path / "ddp", tmp_path / "single", tmp_path / "half"
    run(train_command(cohort, ddp, batch_size=1, processes=2))
    run(train_command(cohort, single, batch_size=2, processes=1))
    run(train_command(cohort, half, batch_size=1, processes=1))

    record = json.loads((ddp / "train-lowres.json").read_text())
    assert record["world_size"] == 2 and record["final"]["step"] == STEPS
    assert record["final"]["world_size"] == 2 and record["final"]["global_batch"] == 2
    assert (ddp / "population.json").is_file() and (ddp / "lowres.safetensors").is_file()
    # the ranks' parameters are compared inside the run (it fails if they differ): here, the effect on the
    # weights: two processes with batch 1 == one with batch 2, and != one with batch 1 (the test can fail)
    same = relative_difference(weight_updates(ddp), weight_updates(single))
    other = relative_difference(weight_updates(half), weight_updates(single))
    assert same < 1e-3, same
    assert other > 0.05, other
    loss = {name: (folder / "lowres-loss.csv").read_text().splitlines() for name, folder in
            (("ddp", ddp), ("single", single))}
    assert len(loss["ddp"]) == 2  # header and one line (rank 0 alone writes)
    ddp_loss, single_loss = (float(loss[k][1].split(",")[1]) for k in ("ddp", "single"))
    assert ddp_loss == pytest.approx(single_loss, rel=1e-4)  # the logged loss is averaged over the processes
    ema_ddp, ema_single = load_file(str(ddp / "lowres.safetensors")), load_file(str(single / "lowres.safetensors"))
    for key, value in ema_single.items():
        torch.testing.assert_close(ema_ddp[key], value, rtol=1e-4, atol=1e-6)


def test_the_global_batch_is_dealt_out_item_by_item():
    """Rank r of W draws items r, r + W, ... of the batch one process with W x B items draws."""
    from generator.config import default_sr
    import dataclasses

    config = dataclasses.replace(default_sr(), shape=(8, 8, 32), patch_slices=16, batch_size=2)
    volumes = torch.randn(5, 2, 8, 8, 32) * 0.1
    demographics = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    whole = draw_batch(dataclasses.replace(config, batch_size=4), volumes, demographics, step=7, seed=1,
                       world=World(0, 1, torch.device("cpu")))
    for rank in (0, 1):
        part = draw_batch(config, volumes, demographics, step=7, seed=1, world=World(rank, 2, torch.device("cpu")))
        torch.testing.assert_close(part.x0, whole.x0[rank::2], rtol=0, atol=0)
        torch.testing.assert_close(part.noise, whole.noise[rank::2], rtol=0, atol=0)
        torch.testing.assert_close(part.sigma, whole.sigma[rank::2], rtol=0, atol=0)
        torch.testing.assert_close(part.cond["image"], whole.cond["image"][rank::2], rtol=0, atol=0)
        assert torch.equal(part.cond["keep"], whole.cond["keep"][rank::2])
        assert torch.equal(part.cond["demographics"], whole.cond["demographics"][rank::2])
    assert whole.x0.shape[-1] == 16  # z-windows were cut
    again = draw_batch(config, volumes, demographics, step=8, seed=1, world=World(0, 1, torch.device("cpu")))
    assert not torch.equal(again.noise, whole.noise[:2])  # another step draws anew


def test_a_world_of_one_needs_no_process_group():
    world = World(0, 1, torch.device("cpu"))
    assert world_mean(torch.tensor(2.5), world) == 2.5
    assert parameter_spread(torch.nn.Linear(3, 2), world) == 0.0


def test_gradient_checkpointing_leaves_the_gradients_unchanged():
    from generator.config import default_lowres
    from generator.networks import UNet3D, set_gradient_checkpointing

    torch.manual_seed(0)
    net = UNet3D(default_lowres().network)
    for p in net.parameters():  # leave the zero initialisation so every layer gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    x, c_noise = torch.randn(2, 5, 8, 8, 8), torch.randn(2)

    def grads() -> list[torch.Tensor]:
        net.zero_grad()
        net(x, c_noise).square().mean().backward()
        return [p.grad.clone() for p in net.parameters() if p.grad is not None]

    calls = []
    net.mid.conv1.register_forward_hook(lambda *_: calls.append(1))
    plain = grads()
    assert len(calls) == 1
    set_gradient_checkpointing(net)
    assert all(b.checkpointing for b in net.modules() if hasattr(b, "checkpointing"))
    checked = grads()
    assert len(calls) == 3  # the block ran again in the backward pass: its activations were not kept
    assert len(checked) == len(plain) > 20
    for a, b in zip(checked, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in plain) > 0


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Keyed randomness: 3 steps, then 3 more from the checkpoint, give the weights of 6 steps in one go."""
    import dataclasses

    from generator.config import tiny_lowres
    from generator.training import train_stage

    config = dataclasses.replace(tiny_lowres(), lr=1e-2)
    volumes = torch.randn(6, 2, 16, 16, 32) * 0.3
    demographics = torch.tensor([[50.0, 1.0, 1.75, 80.0]]).repeat(6, 1)
    train_stage(config, volumes, demographics, tmp_path / "once", steps=6, batch_size=2, seed=1, precision="fp32")
    train_stage(config, volumes, demographics, tmp_path / "twice", steps=3, batch_size=2, seed=1, precision="fp32")
    train_stage(config, volumes, demographics, tmp_path / "twice", steps=6, batch_size=2, seed=1, precision="fp32")
    once, twice = (load_file(str(tmp_path / f / "lowres-state.safetensors")) for f in ("once", "twice"))
    assert set(once) == set(twice)
    for key in once:
        torch.testing.assert_close(twice[key], once[key], rtol=0, atol=0)
    moved = sum(float((once[f"model.{k}"] - v).abs().sum()) for k, v in build_denoiser(config).state_dict().items())
    assert moved > 0  # training changed the weights (against any fresh network: they start at zero or random)

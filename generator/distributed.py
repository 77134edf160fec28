"""Data-parallel training under ``torchrun``: this process's place in the world, barriers, averaged figures.

``torchrun`` sets WORLD_SIZE, RANK and LOCAL_RANK. With WORLD_SIZE > 1, ``join_world`` initialises the default
process group (nccl on CUDA, gloo on CPU) and gives a CUDA process the device ``cuda:LOCAL_RANK``. Without
``torchrun`` every function here is a no-op for a world of one process.

Example::

    world = join_world("cuda")          # under torchrun --nproc-per-node 4: cuda:0 .. cuda:3
    if world.is_main:
        ...                             # files are written by rank 0 alone
    barrier(world)                      # the others wait until they are there
    leave_world(world)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes and the device it computes on."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def join_world(device: str | torch.device = "cpu") -> World:
    """The world of this process; under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised once.

    A CUDA ``device`` becomes ``cuda:LOCAL_RANK`` (and the current device), whatever index it was given.
    """
    device = torch.device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


def barrier(world: World) -> None:
    """Wait until every process of the world reaches this point."""
    if world.size > 1:
        dist.barrier()


def world_mean(value: torch.Tensor, world: World) -> float:
    """The mean of a scalar over the processes of the world (the value itself in a world of one)."""
    value = value.detach().float().reshape(1)
    if world.size > 1:
        value = value.to(world.device)
        dist.all_reduce(value)
        value = value / world.size
    return float(value)


def parameter_spread(module: torch.nn.Module, world: World) -> float:
    """Largest absolute difference of any parameter between rank 0 and any other process (0.0 in sync)."""
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    if world.size == 1:
        return 0.0
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


def leave_world(world: World) -> None:
    """Wait for every process, then close the process group ``join_world`` opened."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

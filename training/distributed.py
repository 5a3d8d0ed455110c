"""Data-parallel training under ``torchrun``: the process group, the rank's shard of each batch,
and the DistributedDataParallel wrapper. Without torchrun (WORLD_SIZE unset or 1) every function
here is the identity of a single process.

Every rank draws the same global batch, binarization noise and ε from the same seeded generator,
then takes its contiguous slice of the rows. With the loss scaled so that DDP's gradient average
is the mean over the global batch, N ranks take the same steps as one process on that batch, up
to the order of floating-point sums.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); rank 0 alone logs INFO."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    world = current()
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
    root = logging.getLogger()
    if not world.is_main and root.level == logging.INFO:  # rank 0 speaks; --log-level debug hears them all
        root.setLevel(logging.WARNING)
    log.info("distributed: %d ranks, backend %s", world.size, dist.get_backend())
    return world


def current() -> World:
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, world: World) -> str:
    """One GPU per rank: ``cuda`` becomes ``cuda:<local rank>``."""
    return f"cuda:{world.local_rank}" if device == "cuda" and world.size > 1 else device


def shard(rows: int, world: World) -> slice:
    """This rank's contiguous slice of a global batch of ``rows`` (sizes differ by at most one)."""
    base, extra = divmod(rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def wrap(model: torch.nn.Module, world: World, device: str) -> torch.nn.Module:
    if world.size == 1:
        return model
    return DistributedDataParallel(
        model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
    )


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum over ranks (a copy; ``values`` itself in one process)."""
    if not dist.is_initialized():
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

"""``torch.distributed`` set-up for ``torchrun`` launches, and the epoch-sharded sampler.

With ``WORLD_SIZE`` > 1 in the environment (``torchrun --nproc_per_node N``) the trainer joins
the process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP and gives each rank its own
shard of every epoch's permutation. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedEpochSampler(torch.utils.data.Sampler):
    """Index order of epoch ``e``: a permutation seeded by ``(seed, e)``, padded by wrap-around to a
    multiple of the world size, rank ``r`` taking every ``world``-th index from ``r``. ``skip``
    drops the first indices of the shard, so a run resumed mid-epoch continues where it stopped."""

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch, self.skip = 0, 0

    def shard_size(self) -> int:
        return math.ceil(self.n / self.world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.shard_size() * self.world
        order = (order * math.ceil(total / self.n))[:total]
        return iter(order[self.rank :: self.world][self.skip :])

    def __len__(self) -> int:
        return self.shard_size() - self.skip

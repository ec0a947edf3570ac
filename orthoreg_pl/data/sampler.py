"""A distributed sampler that never pads: each sample is evaluated by exactly one process."""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import Sampler


class UnpaddedDistributedSampler(Sampler[int]):
    """Rank r takes indices r, r + W, r + 2W, ... (W processes). torch's DistributedSampler pads the
    last round with repeated samples so every rank has equal length; those repeats would be counted
    twice by the summed accuracy counts. Evaluation needs no equal lengths, so this one does not pad.

    Rank and world size are read when iterating, so a loader built before the processes start (as
    the merge pipeline does, once per task) works under every strategy.
    """

    def __init__(self, length: int) -> None:
        self.length = length

    def _shard(self) -> range:
        if dist.is_available() and dist.is_initialized():
            return range(dist.get_rank(), self.length, dist.get_world_size())
        return range(self.length)

    def __iter__(self):
        return iter(self._shard())

    def __len__(self) -> int:
        return len(self._shard())

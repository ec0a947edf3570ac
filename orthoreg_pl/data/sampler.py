"""Samplers: the training order that resumes exactly, and an evaluation sharding that never pads."""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


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


class ResumableSampler(DistributedSampler):
    """The training order: a permutation drawn from (seed, epoch), sharded over processes, that yields
    ``(index, epoch)`` so the dataset can seed each sample's augmentation by (seed, epoch, index).

    The data a run sees is thus a function of (seed, epoch, position) alone, independent of worker
    counts and of where a run was interrupted: ``skip`` drops the samples of this epoch that were
    trained before the checkpoint, and a resumed run sees exactly what an uninterrupted one would.
    Being a DistributedSampler, Lightning uses it as it is under DDP (no wrapper, no re-shuffle).
    """

    def __init__(self, length: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        super().__init__(range(length), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        skip, self.skip = self.skip, 0  # only the epoch the run resumes in starts part-way
        epoch = self.epoch
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield index, epoch

    # __len__ stays the whole epoch's (DistributedSampler's): Lightning counts the resumed epoch's batches
    # from its checkpoint and expects the loader to yield only the rest.

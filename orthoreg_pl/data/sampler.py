"""Samplers: the training order that resumes exactly, and an evaluation sharding that never pads."""

from __future__ import annotations

import hashlib

import torch.distributed as dist
from torch.utils.data import DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r of W processes takes the r-th of W contiguous slices of ``range(length)``, their sizes
    differing by at most one. torch's DistributedSampler pads the last round with repeated samples so
    every rank has equal length; those repeats would be counted twice by the summed accuracy counts.
    Evaluation needs no equal lengths, so this one does not pad, and contiguous slices give every rank
    a sample as soon as ``length >= W`` (a rank without a batch would skip the evaluation loop and
    leave the others waiting in the metric sync).

    ``batch_size``: the slice cut into batches of at most ``batch_size``, each yielded as one ``range``
    of indices (for a DataLoader with ``batch_size=None`` over a dataset that reads a whole batch per
    key, such as ``CachedBatches``); ``len`` is then the number of batches. Every rank gets the same
    number of batches, ceil(largest slice / batch_size) (a slice one sample short of filling that many
    ends in a smaller batch): FSDP gathers parameters in every forward, so its processes must run
    equally many (DDP does not mind).

    Rank and world size are read when iterating, so a loader built before the processes start (as
    the merge pipeline does, once per task) works under every strategy. Being a DistributedSampler,
    Lightning uses it as it is (no wrapper, no padding) whatever ``use_distributed_sampler`` says.
    """

    def __init__(self, length: int, batch_size: int | None = None) -> None:
        # DistributedSampler's own fields describe one process; the real rank and world come at iteration.
        super().__init__(range(length), num_replicas=1, rank=0, shuffle=False, drop_last=False)
        self.length = int(length)
        self.batch_size = None if batch_size is None else int(batch_size)
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def shard(self) -> range:
        """The indices of this process."""
        rank, world = _world()
        if world == 1:
            return range(self.length)
        if self.length < world:
            raise RuntimeError(
                f"an evaluation split of {self.length} samples cannot give each of {world} processes a "
                "sample; evaluate it on fewer processes"
            )
        size, extra = divmod(self.length, world)
        start = rank * size + min(rank, extra)
        return range(start, start + size + (rank < extra))

    def batches(self) -> list[range]:
        """This process's slice cut into the batches every process has equally many of."""
        rows = self.shard()
        _, world = _world()
        largest = -(-self.length // world)
        count = min(-(-largest // self.batch_size), len(rows))  # min: a slice smaller than the count
        batches, start = [], 0
        for left in range(count - 1, -1, -1):  # full batches while every later batch keeps a sample
            stop = start + min(self.batch_size, len(rows) - start - left)
            batches.append(rows[start:stop])
            start = stop
        return batches

    def __iter__(self):
        return iter(self.shard() if self.batch_size is None else self.batches())

    def __len__(self) -> int:
        return len(self.shard()) if self.batch_size is None else len(self.batches())


class ResumableSampler(DistributedSampler):
    """The training order: a permutation drawn from (seed, epoch), sharded over processes, that yields
    ``(index, epoch)`` so the dataset can seed each sample's augmentation by (seed, epoch, index).

    The data a run sees is thus a function of (seed, epoch, position) alone, independent of worker
    counts and of where a run was interrupted: ``skip`` drops the samples of this epoch that were
    trained before the checkpoint (counted over all processes), and a resumed run sees exactly what an
    uninterrupted one would. Sharding is interleaved (rank r takes positions r, r + W, ...), so with a
    per-process batch b the processes' k-th batches together are positions [kbW, (k+1)bW) of the
    permutation: the global batch of one process with batch bW, on any number of processes (the last
    batch of an epoch aside, where DistributedSampler pads W processes to equal length). Being a
    DistributedSampler, Lightning uses it as it is under DDP (no wrapper, no re-shuffle).
    """

    def __init__(self, length: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        rank, world = _world()
        super().__init__(range(length), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        skip, self.skip = (
            self.skip // self.num_replicas,
            0,
        )  # only the epoch the run resumes in starts part-way
        epoch = self.epoch
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield index, epoch

    # __len__ stays the whole epoch's (DistributedSampler's): Lightning counts the resumed epoch's batches
    # from its checkpoint and expects the loader to yield only the rest.

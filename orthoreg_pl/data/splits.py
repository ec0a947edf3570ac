"""The validation split rule of the task-arithmetic literature (docs/data.md), and its checksum."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

MAX_VAL = 5000


def carve_validation(pool_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split a train pool of ``pool_size`` into (train, val) indices.

    v = min(int(0.1·N), 5000); ``perm = randperm(N, Generator().manual_seed(seed))``; train = perm[:N−v],
    val = perm[N−v:]. Identical splits are what make numbers comparable with the published ones.
    """
    if pool_size <= 0:
        raise ValueError(f"cannot split an empty train pool (size {pool_size})")
    v = min(int(0.1 * pool_size), MAX_VAL)
    perm = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))
    return perm[: pool_size - v], perm[pool_size - v :]


def split_checksum(train_indices: Tensor, val_indices: Tensor | None, test_size: int) -> str:
    """sha256 of the split (train and val indices, test size): recorded in every run's meta.json."""
    digest = hashlib.sha256()
    for name, idx in (("train", train_indices), ("val", val_indices)):
        digest.update(name.encode())
        if idx is not None:
            digest.update(idx.to(torch.int64).contiguous().numpy().tobytes())
    digest.update(f"test:{test_size}".encode())
    return digest.hexdigest()

"""The validation split rule of docs/data.md: identical splits make numbers comparable with the papers."""

from __future__ import annotations

import hashlib

import pytest
import torch

from orthoreg_pl.data import carve_validation, split_checksum


def test_mnist_first_train_index():
    """docs/data.md: for MNIST's 60000-image pool, perm[0] == 36044."""
    train, _ = carve_validation(60000)
    assert int(train[0]) == 36044


@pytest.mark.parametrize("n", [5, 100, 1437, 1438, 60000, 73257])
def test_split_rule(n):
    """v = min(int(0.1·N), 5000); train = perm[:N−v], val = perm[N−v:]; disjoint and covering the pool."""
    train, val = carve_validation(n)
    v = min(int(0.1 * n), 5000)
    assert len(val) == v and len(train) == n - v
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(val, perm[n - v :])
    assert torch.equal(train, perm[: n - v])
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))


def test_seed_changes_the_split():
    assert not torch.equal(carve_validation(1000, seed=0)[1], carve_validation(1000, seed=1)[1])


def test_empty_pool_raises():
    with pytest.raises(ValueError):
        carve_validation(0)


def test_checksum_is_sha256_of_the_split():
    """The checksum recorded in meta.json is a documented, reproducible hash of the split."""
    train, val = carve_validation(100)
    digest = hashlib.sha256()
    digest.update(b"train" + train.numpy().astype("<i8").tobytes())
    digest.update(b"val" + val.numpy().astype("<i8").tobytes())
    digest.update(b"test:10")
    assert split_checksum(train, val, 10) == digest.hexdigest()
    # stable: same split again, other dtypes / non-contiguous copies give the same checksum
    train2, val2 = carve_validation(100)
    assert split_checksum(train2.to(torch.int32), val2, 10) == split_checksum(train, val, 10)
    assert split_checksum(torch.stack([train, train], dim=1)[:, 0], val, 10) == split_checksum(train, val, 10)


def test_checksum_changes_with_the_split():
    train, val = carve_validation(100)
    base = split_checksum(train, val, 10)
    swapped = train.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert split_checksum(swapped, val, 10) != base
    moved_train, moved_val = train[1:], torch.cat([train[:1], val])  # one index moved from train to val
    assert split_checksum(moved_train, moved_val, 10) != base
    assert split_checksum(train, val, 11) != base
    assert split_checksum(train, None, 10) != base

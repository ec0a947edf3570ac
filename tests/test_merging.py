"""Merge methods against hand-computed results on toy task vectors; their configs instantiate."""

from __future__ import annotations

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from conftest import CONFIG_DIR
from omegaconf import OmegaConf

from orthoreg_pl import OrthoRegError
from orthoreg_pl.merging import MERGE_METHODS, average, dare, get_merge_method, task_arithmetic, ties
from orthoreg_pl.task_vectors import TaskVector, TaskVectorInfo


def tv(values, task="Digits", mode="standard") -> TaskVector:
    """A 4-entry vector split over two keys, so "over the whole vector" is tested across tensors."""
    v = torch.tensor(values, dtype=torch.float32)
    info = TaskVectorInfo(arch="ViT-B-32", pretrained="openai", mode=mode, space="weight", task=task)
    return TaskVector({"a": v[:2], "b": v[2:]}, info)


def flat(vector: TaskVector) -> torch.Tensor:
    return torch.cat([vector["a"], vector["b"]])


X, Y, Z = [1.0, -2.0, 3.0, 0.5], [-1.0, -1.0, 4.0, 0.1], [2.0, 1.0, -5.0, 0.2]


def vectors():
    return [tv(X, "Digits"), tv(Y, "Shapes", mode="standard_ortho"), tv(Z, "Colors")]


def test_task_arithmetic():
    merged = task_arithmetic.merge(vectors())
    assert torch.allclose(flat(merged), torch.tensor([2.0, -2.0, 2.0, 0.8]))
    weighted = task_arithmetic.merge(vectors(), coefficients=[1.0, -0.5, 2.0])
    # 1·X − 0.5·Y + 2·Z
    assert torch.allclose(flat(weighted), torch.tensor([5.5, 0.5, -9.0, 0.85]))
    assert weighted.info.task == "Digits-0.5*Shapes+2*Colors"
    assert weighted.info.mode == "standard+standard_ortho"
    assert weighted.info.meta["merge"]["method"] == "task_arithmetic"
    x = tv(X)
    negated = task_arithmetic.merge([x], coefficients=[-1])
    assert torch.equal(flat(negated), flat(-x)) and negated.info.task == "-Digits"
    with pytest.raises(OrthoRegError, match="2 coefficient"):
        task_arithmetic.merge(vectors(), coefficients=[1, 2])


def test_ties_three_vectors_by_hand():
    # k=0.5 of 4 entries keeps m=2 per vector, by magnitude over both tensors:
    #   X=[1,-2,3,.5]  threshold 2        -> [ 0,-2, 3, 0]
    #   Y=[-1,-1,4,.1] threshold 1 (tie)  -> [-1,-1, 4, 0]   (ties at the threshold are kept)
    #   Z=[2,1,-5,.2]  threshold 2        -> [ 2, 0,-5, 0]
    # sum [1,-3,2,0] -> elected sign [+,-,+,0]
    # disjoint mean: entry0 {2} = 2; entry1 {-2,-1} = -1.5; entry2 {3,4} = 3.5; entry3 none = 0
    merged = ties.merge(vectors(), k=0.5)
    assert torch.equal(flat(merged), torch.tensor([2.0, -1.5, 3.5, 0.0]))
    # without trimming (k=1): entry0 averages the agreeing 1 and 2, entry1 -2 and -1, entry3 all three
    untrimmed = ties.merge(vectors(), k=1.0)
    assert torch.allclose(flat(untrimmed), torch.tensor([1.5, -1.5, 3.5, 0.8 / 3]))
    assert merged.info.meta["merge"]["hparams"] == {"k": 0.5}


def test_ties_trims_over_the_whole_vector():
    # per tensor, the top half of a=[10,9] and b=[1,.5] would keep 10 and 1; over the vector 10 and 9
    single = ties.merge([tv([10.0, 9.0, 1.0, 0.5])], k=0.5)
    assert torch.equal(flat(single), torch.tensor([10.0, 9.0, 0.0, 0.0]))
    negated = ties.merge([tv([10.0, 9.0, 1.0, 0.5])], k=0.5, coefficients=[-1])
    assert torch.equal(flat(negated), torch.tensor([-10.0, -9.0, 0.0, 0.0]))
    for k in (0, 1.5):
        with pytest.raises(OrthoRegError, match="k="):
            ties.merge(vectors(), k=k)


def test_dare_expectation_determinism_and_p0():
    x = tv([1.0, -2.0, 3.0, 0.5])
    runs = 4000
    mean = torch.stack([flat(dare.merge([x], p=0.5, seed=s)) for s in range(runs)]).mean(dim=0)
    # each entry is 0 or 2·x with probability 1/2: mean x, std |x|; the mean of `runs` draws has
    # std |x|/sqrt(runs) ≈ 0.016|x|, so 5 standard errors (0.08|x|) is a safe, still sharp bound
    assert torch.all((mean - flat(x)).abs() <= 5 * flat(x).abs() / math.sqrt(runs))
    a, b = dare.merge(vectors(), p=0.3, seed=7), dare.merge(vectors(), p=0.3, seed=7)
    assert torch.equal(flat(a), flat(b)) and list(a) == ["a", "b"]
    assert not torch.equal(flat(a), flat(dare.merge(vectors(), p=0.3, seed=8)))
    drawn = flat(dare.merge([x], p=0.5, seed=0))
    assert set(torch.where(drawn != 0, drawn / flat(x), 0).tolist()) <= {0.0, 2.0}  # dropped or ×1/(1−p)
    kept = flat(dare.merge([x], p=0.5, seed=0, rescale=False))
    assert set(torch.where(kept != 0, kept / flat(x), 0).tolist()) <= {0.0, 1.0}
    assert torch.equal(flat(dare.merge(vectors(), p=0.0)), flat(task_arithmetic.merge(vectors())))
    for p in (-0.1, 1.0):
        with pytest.raises(OrthoRegError, match="p="):
            dare.merge(vectors(), p=p)


def test_dare_masks_independent_of_key_order_and_per_vector():
    ones = torch.ones(64)
    forward = TaskVector({"a": ones, "b": 2 * ones})
    backward = TaskVector({"b": 2 * ones, "a": ones})
    one, other = dare.merge([forward], seed=3), dare.merge([backward], seed=3)
    assert list(other) == ["b", "a"] and all(torch.equal(one[k], other[k]) for k in ("a", "b"))
    # two copies of one vector get their own masks: some entries are kept in one copy only
    twice = dare.merge([forward, forward], p=0.5, rescale=False)["a"]
    assert set(twice.tolist()) == {0.0, 1.0, 2.0}


def test_average():
    merged = average.merge(vectors())
    assert torch.allclose(flat(merged), torch.tensor([2 / 3, -2 / 3, 2 / 3, 0.8 / 3]))
    assert torch.equal(
        flat(average.merge([tv([1.0, 2.0, 3.0, 4.0]), tv([3.0, 4.0, 5.0, 6.0])])),
        torch.tensor([2.0, 3.0, 4.0, 5.0]),
    )


def test_merging_refuses_vectors_that_do_not_fit():
    linear = TaskVector(
        tv(X).tensors, TaskVectorInfo("ViT-B-32", "openai", "linear", "tangent", "Shapes", source="runs/lin")
    )
    for method in MERGE_METHODS.values():
        with pytest.raises(OrthoRegError, match="mode family differs"):
            method([tv(X), linear])
        with pytest.raises(OrthoRegError, match="no task vectors"):
            method([])


def test_registry():
    assert set(MERGE_METHODS) == {"task_arithmetic", "ties", "dare", "average"}
    assert get_merge_method("ties") is ties.merge
    with pytest.raises(OrthoRegError, match="task_arithmetic, ties, dare, average"):
        get_merge_method("slerp")


def test_configs_instantiate_to_merge_functions():
    files = sorted((Path(CONFIG_DIR) / "merge_method").glob("*.yaml"))
    assert {f.stem for f in files} == set(MERGE_METHODS)
    for file in files:
        merge = hydra.utils.instantiate(OmegaConf.load(file))
        result = merge(vectors())
        assert isinstance(result, TaskVector) and list(result) == ["a", "b"]
        assert result.info.meta["merge"]["method"] == file.stem
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "merge_method" / "task_arithmetic.yaml")
    cfg.coefficients = [-1]
    assert torch.equal(flat(hydra.utils.instantiate(cfg)([tv(X)])), -flat(tv(X)))

"""The merge pipeline's evaluation: α selection rules, in-place merging, the linearized closed form, DDP."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from conftest import cpu_trainer, make_classifier
from torch.utils.data import TensorDataset

from orthoreg_pl import OrthoRegError
from orthoreg_pl.data import eval_dataloader
from orthoreg_pl.evaluation.alphas import (
    DEFAULT_ALPHAS,
    check_alphas,
    edge_warning,
    normalized_mean_curve,
    select_addition_alpha,
    select_negation_alpha,
)
from orthoreg_pl.evaluation.engine import MergeEvalModule, TangentDirectModule, evaluate_alphas
from orthoreg_pl.models.linearized import linearized_forward

# ---- α selection against brute force ------------------------------------------------------------------


def test_default_grid():
    assert DEFAULT_ALPHAS == tuple(round(0.05 * i, 2) for i in range(21)) and DEFAULT_ALPHAS[-1] == 1.0


def test_addition_selection_brute_force_with_ties():
    """Mean normalised Val accuracy, ties to the smallest α, on a fixed table."""
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    val = {"A": [0.2, 0.5, 0.8, 0.8, 0.4], "B": [0.5, 0.7, 0.6, 0.6, 0.9]}
    ft = {"A": 0.8, "B": 1.0}
    curve = normalized_mean_curve(val, ft)
    brute = [sum(val[t][i] / ft[t] for t in val) / 2 for i in range(len(alphas))]
    assert curve == pytest.approx(brute)
    # 0.5 and 0.75 tie at (1.0 + 0.6)/2 = 0.8; 1.0 gives (0.5 + 0.9)/2 = 0.7
    assert select_addition_alpha(alphas, curve) == 2
    assert select_addition_alpha(alphas, [0.3, 0.9, 0.9, 0.1, 0.9]) == 1


def test_negation_selection_brute_force_with_ties():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    target = [0.9, 0.4, 0.2, 0.2, 0.05]
    control = [0.70, 0.69, 0.67, 0.665, 0.5]
    zs = 0.70  # threshold 0.95 × 0.70 = 0.665: α = 1.0 is out, 0.5 and 0.75 tie on target
    feasible = [i for i in range(5) if control[i] >= 0.95 * zs]
    brute = min(feasible, key=lambda i: (target[i], alphas[i]))
    assert select_negation_alpha(alphas, target, control, zs) == brute == 2
    assert select_negation_alpha(alphas, target, control, zs, threshold=0.5) == 4
    with pytest.raises(OrthoRegError, match="keeps the control"):
        select_negation_alpha([0.5, 1.0], [0.1, 0.2], [0.1, 0.1], 0.7)


def test_alpha_grid_checks():
    assert check_alphas([1.0, 0.0, 0.5]) == [0.0, 0.5, 1.0]
    with pytest.raises(OrthoRegError, match="empty"):
        check_alphas([])


# ---- the engine -----------------------------------------------------------------------------------------

ALPHAS = [0.0, 0.3, 0.7, 1.0]


def eval_trainer(devices: int = 1, strategy: str = "auto") -> L.Trainer:
    return cpu_trainer(devices=devices, strategy=strategy, use_distributed_sampler=False)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(37, 3, 32, 32, generator=g), torch.randint(0, 5, (37,), generator=g)
    )  # odd size


@pytest.fixture(scope="module")
def direction():
    """A weight-space direction large enough to change predictions."""
    g = torch.Generator().manual_seed(1)
    model = make_classifier()
    return {n: 0.5 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if p.ndim == 2}


def accuracy_by_rebuilding(dataset, direction, alpha, linearized=False) -> float:
    """The reference's way: a fresh model with θ0 + α·τ for every α."""
    model = make_classifier()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, tau in direction.items():
            model.get_parameter(name).copy_(theta0[name]).add_(tau, alpha=alpha)
        images, labels = dataset.tensors
        if linearized:
            visual0 = {n.removeprefix("visual."): t for n, t in theta0.items() if n.startswith("visual.")}
            logits = model.head(linearized_forward(model.visual, visual0, images))
        else:
            logits = model(images)
    return (logits.argmax(-1) == labels).double().mean().item()


def test_in_place_merging_equals_rebuilding(data, direction):
    module = MergeEvalModule(make_classifier())
    head = module.model.head.weight.clone()
    got = evaluate_alphas(
        eval_trainer(), module, eval_dataloader(data, 8, shard=True), head, direction, ALPHAS
    )
    want = [accuracy_by_rebuilding(data, direction, a) for a in ALPHAS]
    assert got == want
    assert len(set(got)) > 1  # the direction really changes predictions
    # θ0 is back in place afterwards
    fresh = make_classifier()
    assert all(torch.equal(p, fresh.get_parameter(n)) for n, p in module.model.named_parameters())


def test_negative_alphas_and_no_direction(data, direction):
    module = MergeEvalModule(make_classifier())
    head = module.model.head.weight.clone()
    got = evaluate_alphas(
        eval_trainer(), module, eval_dataloader(data, 8, shard=True), head, direction, [-1.0, -0.5]
    )
    assert got == [accuracy_by_rebuilding(data, direction, a) for a in (-1.0, -0.5)]
    zero_shot = evaluate_alphas(
        eval_trainer(), module, eval_dataloader(data, 8, shard=True), head, None, [0.0, 0.5]
    )
    assert zero_shot == [accuracy_by_rebuilding(data, {}, 0.0)] * 2


def test_linear_closed_form_equals_direct_evaluation(data):
    """f(θ0) + α·Jτ from one JVP gives the logits of the linearized model at θ0 + α·τ (≤ 1e-5)."""
    g = torch.Generator().manual_seed(2)
    model = make_classifier()
    tau = {n: 0.05 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    head = model.head.weight.clone()
    closed, direct = MergeEvalModule(make_classifier()), TangentDirectModule(make_classifier())
    for m in (closed, direct):
        m.configure(head, tau, ALPHAS, closed_form=m is closed)
    images = data.tensors[0][:16]
    with torch.no_grad():
        fast = closed._tangent_logits(images)
        slow = []
        for a in ALPHAS:
            direct.write_weights(a)
            visual0 = {n.removeprefix("visual."): direct.theta0(n) for n in direct.param_names}
            slow.append(direct.model.head(linearized_forward(direct.model.visual, visual0, images)))
    assert (fast - torch.stack(slow)).abs().max() <= 1e-5
    loader = eval_dataloader(data, 8, shard=True)
    acc_closed = evaluate_alphas(eval_trainer(), closed, loader, head, tau, ALPHAS, closed_form=True)
    acc_direct = evaluate_alphas(eval_trainer(), direct, loader, head, tau, ALPHAS)
    assert acc_closed == acc_direct == [accuracy_by_rebuilding(data, tau, a, linearized=True) for a in ALPHAS]


def test_ddp_two_processes_equal_single_process(data, direction):
    """Two gloo processes on 37 samples: no sample counted twice, exactly the single-process accuracy."""
    head = make_classifier().head.weight.clone()
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        module = MergeEvalModule(make_classifier())
        results[devices] = evaluate_alphas(
            eval_trainer(devices, strategy),
            module,
            eval_dataloader(data, 8, shard=True),
            head,
            direction,
            ALPHAS,
        )
    assert results[2] == results[1]


def test_unpadded_sampler_shards_partition_the_data(monkeypatch):
    """Across 3 ranks every index appears exactly once (torch's DistributedSampler would pad to 39)."""
    import orthoreg_pl.data.sampler as sampler_module

    sampler = sampler_module.UnpaddedDistributedSampler(37)
    assert list(sampler) == list(range(37))
    shards = []
    for rank in range(3):
        monkeypatch.setattr(sampler_module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(sampler_module.dist, "get_world_size", lambda: 3)
        monkeypatch.setattr(sampler_module.dist, "get_rank", lambda r=rank: r)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert sorted(itertools.chain(*shards)) == list(range(37))
    assert [len(s) for s in shards] == [13, 12, 12]


def test_an_alpha_on_the_grids_edge_is_named():
    """α* at the grid's largest α (or its smallest above 0) may hide a better α beyond: said in words."""
    grid = [0.0, 0.5, 1.0]
    assert edge_warning(grid, 1, "addition") is None
    assert edge_warning(grid, 0, "addition") is None  # α = 0: no task vector is a real answer
    assert edge_warning(grid, 2, "negation of Digits") == (
        "negation of Digits: α* = 1 is the largest α of the grid; the best α may lie beyond it "
        "(widen protocol.alphas to be sure)"
    )
    assert "smallest α" in edge_warning([0.2, 0.4], 0, "addition")

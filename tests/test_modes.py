"""The linearized (TTA), attention-only and LoRA-ATT modes (docs/method.md §3)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from conftest import cpu_trainer, fixed_batches, make_classifier
from torch.utils.data import DataLoader

from orthoreg_pl.models.linearized import linearized_forward
from orthoreg_pl.modules import (
    MODES,
    AttentionOrthoFineTuning,
    LinearFineTuning,
    LoRAAttentionFineTuning,
    LoRAAttentionOrthoFineTuning,
)
from orthoreg_pl.penalties.ortho import penalty_at_zero

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def one_step(module, steps: int = 1) -> None:
    loader = DataLoader(fixed_batches(steps, batch_size=4), batch_size=4)
    cpu_trainer(max_steps=steps, limit_val_batches=0, gradient_clip_val=1.0).fit(module, loader)


# ---- linearized ---------------------------------------------------------------------------------------


def test_linearized_equals_forward_at_theta0():
    """At θ = θ0 the tangent term vanishes: f_lin(θ0) = f(θ0) (also in eval mode under no_grad)."""
    model = make_classifier()
    module = LinearFineTuning(model)
    with torch.no_grad():
        plain = model(X)
    assert (module(X) - plain).abs().max() <= 1e-5
    module.eval()
    with torch.inference_mode():  # how Lightning validates: the fused fast path must not be taken
        assert (module(X) - plain).abs().max() <= 1e-5


def test_linearized_matches_finite_difference():
    """f_lin(θ0 + δ) − f(θ0) = J·δ, checked against (f(θ0 + εδ) − f(θ0))/ε in float64."""
    visual = make_classifier().visual.double()
    x = X.double()
    theta0 = {n: p.detach().clone() for n, p in visual.named_parameters()}
    g = torch.Generator().manual_seed(0)
    delta = {n: 1e-3 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta0.items()}
    with torch.no_grad():
        f0 = visual(x)
        for n, p in visual.named_parameters():
            p.copy_(theta0[n] + delta[n])
        linear = linearized_forward(visual, theta0, x) - f0
        eps = 1e-6
        for n, p in visual.named_parameters():
            p.copy_(theta0[n] + eps * delta[n])
        finite = (visual(x) - f0) / eps
    rel = (linear - finite).norm() / finite.norm()
    assert rel <= 1e-3, rel.item()
    assert linear.norm() > 0


def test_linearized_gradients_reach_theta():
    module = LinearFineTuning(make_classifier())
    with torch.no_grad():  # move off θ0 so every tangent is non-zero
        for p in module.model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    module(X).logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in module.model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(bool(g.abs().sum() > 0) for g in grads.values()) >= len(grads) - 1


def test_attention_routing_leaves_other_modes_unchanged():
    """The math-attention switch is scoped to the JVP: ordinary forwards are bit-identical before and after;
    the lean model's own ordinary forward (fused attention kernel) differs only by rounding."""
    import copy

    model = make_classifier().eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.inference_mode():
        before = model(X)
    for lean_attention in (False, True):
        cls = type("Linear", (LinearFineTuning,), {"lean_attention": lean_attention})
        lean = cls(copy.deepcopy(model))
        lean(X)
        assert torch.backends.mha.get_fastpath_enabled() == fastpath
        with torch.inference_mode():
            assert torch.equal(model(X), before)
            assert (lean.model(X) - before).abs().max() <= 1e-5


def test_linear_modes_mark_tangent_space():
    assert LinearFineTuning.task_vector_space == "tangent"
    assert MODES["linear_ortho"].task_vector_space == "tangent"
    assert all(MODES[m].task_vector_space == "weight" for m in ("standard", "attn", "lora_attn_ortho"))


# ---- attention-only ------------------------------------------------------------------------------------


def test_attention_only_trains_two_matrices_per_block():
    module = AttentionOrthoFineTuning(make_classifier(), lr=1e-2, warmup_steps=1, lam=1.0)
    blocks = len(module.model.visual.transformer.resblocks)
    assert len(module.trainable_names) == 2 * blocks
    for i in range(blocks):
        prefix = f"visual.transformer.resblocks.{i}.attn."
        assert {n for n in module.trainable_names if n.startswith(prefix)} == {
            prefix + "in_proj_weight",
            prefix + "out_proj.weight",
        }
    assert module.penalized_names == module.trainable_names
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    one_step(module)
    for name, param in module.model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in module.trainable_names), name


# ---- LoRA ----------------------------------------------------------------------------------------------


def test_lora_starts_as_the_base_model():
    model = make_classifier()
    with torch.no_grad():
        base = model(X)
    module = LoRAAttentionFineTuning(model, rank=4, alpha=8.0)
    assert torch.allclose(module(X), base, atol=1e-6)
    assert all(n.endswith(("lora_A", "lora_B")) for n in module.trainable_names)
    assert all(
        a.lora_A.shape[0] == 4 and torch.equal(a.lora_B, torch.zeros_like(a.lora_B))
        for a in module.adapters.values()
    )


def test_lora_dense_delta_merges_into_a_plain_model():
    """The stored dense ΔW = (alpha/r)·B·A added to the base weights reproduces the LoRA model."""
    module = LoRAAttentionOrthoFineTuning(
        make_classifier(), rank=4, alpha=8.0, lr=1e-2, warmup_steps=1, lam=1.0
    )
    one_step(module, steps=2)
    tv = module.task_vector()
    assert set(tv) == {
        f"visual.transformer.resblocks.{i}.attn.{w}"
        for i in range(2)
        for w in ("in_proj_weight", "out_proj.weight")
    }
    for name, adapter in module.adapters.items():
        assert torch.allclose(tv[name], 2.0 * adapter.lora_B.detach() @ adapter.lora_A.detach())
        assert tv[name].abs().sum() > 0
    plain = make_classifier()  # same init seed: the same frozen base weights
    with torch.no_grad():
        for name, delta in tv.items():
            plain.get_parameter(name).add_(delta)
        module.eval()
        assert (plain(X) - module(X)).abs().max() <= 1e-5


# ---- penalty at initialisation from shapes (real architectures, no weights) ---------------------------


def _meta_visual(arch: str):
    with torch.device("meta"):
        return open_clip.create_model(arch, device="meta").visual


@pytest.mark.parametrize(
    ("arch", "attention_only", "expected"),
    [("ViT-B-32", False, 1359.914), ("ViT-B-32", True, 665.108), ("ViT-L-14", True, 1536.0)],
)
def test_reference_penalty_values_from_shapes(arch, attention_only, expected):
    """docs/method.md §2: ViT-B-32 image tower 1359.914, attention-only 665.108 (24·√768), ViT-L-14 1536.0."""
    visual = _meta_visual(arch)
    shapes = [
        tuple(p.shape)
        for n, p in visual.named_parameters()
        if p.ndim == 2 and (not attention_only or n.endswith(("attn.in_proj_weight", "attn.out_proj.weight")))
    ]
    assert penalty_at_zero(shapes) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    "cls", [AttentionOrthoFineTuning, LoRAAttentionOrthoFineTuning, MODES["linear_ortho"]]
)
def test_penalty_at_initialisation_is_shape_formula(cls):
    module = cls(make_classifier(), lam=1.0)
    shapes = [tuple(d.shape) for d in module.penalty_deltas()]
    assert module.penalty().item() == pytest.approx(penalty_at_zero(shapes), rel=1e-6)


def test_lean_jvp_rules_match_torch_and_keep_names():
    """The lean LayerNorm/GELU/attention forward-mode rules give torch's linearized outputs and gradients
    (float64), keep parameter names, and leave the ordinary forward bit-identical (LayerNorm, GELU) or
    equal to rounding (attention: the fused kernel instead of the MHA fast path)."""
    import copy

    from orthoreg_pl.models.lean_attention import LeanAttention
    from orthoreg_pl.models.lean_jvp import LeanActivation, LeanLayerNorm, make_jvp_lean

    base = make_classifier().double()
    lean = make_jvp_lean(copy.deepcopy(base))
    assert any(isinstance(m, LeanLayerNorm) for m in lean.modules())
    assert any(isinstance(m, LeanActivation) for m in lean.modules())
    assert sum(isinstance(m, LeanAttention) for m in lean.modules()) == len(base.visual.transformer.resblocks)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in lean.modules())
    assert [n for n, _ in lean.named_parameters()] == [n for n, _ in base.named_parameters()]
    x = X.double()
    with torch.no_grad():
        assert (base(x) - lean(x)).abs().max() <= 1e-12
        assert torch.equal(base(x), make_jvp_lean(copy.deepcopy(base), attention=False)(x))
    theta0 = {n: p.detach().clone() for n, p in base.visual.named_parameters()}
    g = torch.Generator().manual_seed(1)
    delta = {n: 1e-2 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta0.items()}
    outs, grads = [], []
    for model in (base, lean):
        with torch.no_grad():
            for n, p in model.visual.named_parameters():
                p.copy_(theta0[n] + delta[n])
        out = linearized_forward(model.visual, theta0, x)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.visual.named_parameters()})
    assert (outs[0] - outs[1]).abs().max() <= 1e-12
    assert all((grads[0][n] - grads[1][n]).abs().max() <= 1e-10 for n in grads[0])


def test_quick_gelu_slope():
    from orthoreg_pl.models.lean_jvp import quick_gelu_slope

    x = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad((x * torch.sigmoid(1.702 * x)).sum(), x)
    assert torch.allclose(quick_gelu_slope(x.detach()), want, atol=1e-12)


@pytest.mark.parametrize("early,world", [(True, 1), (False, 1), (True, 2)])
def test_penalty_backward_runs_after_the_forward_graph_when_computed_first(early, world):
    """In one process step_losses computes the penalty before the forward, so autograd runs its backward
    last, after the patch embedding's (the last node of the cross-entropy's backward): its gradients are
    not held through the backward pass. With several processes (DDP buckets) it stays after the forward.
    The gradients are the same bits either way."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    cls = type("Ortho", (MODES["standard_ortho"],), {"penalty_before_forward": early})
    module = cls(make_classifier(), lam=1.0)
    module._trainer = SimpleNamespace(world_size=world, strategy=SimpleNamespace(model=None))
    early = early and world == 1
    with torch.no_grad():  # off θ0, so the penalty has a gradient
        for p in module.model.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    order = []
    loss_ce, penalty = module.step_losses(X, torch.arange(len(X)) % 5, penalize=True)
    penalty.grad_fn.register_hook(lambda *_: order.append("penalty"))
    module.model.visual.conv1.weight.register_hook(lambda g: order.append("patch embedding"))
    (loss_ce + penalty).backward()
    assert order == (["patch embedding", "penalty"] if early else ["penalty", "patch embedding"])
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    with torch.no_grad():
        late_ce = torch.nn.functional.cross_entropy(module(X), torch.arange(len(X)) % 5)
    assert torch.equal(late_ce, loss_ce.detach())
    module.penalty_before_forward = not early
    loss_ce, penalty = module.step_losses(X, torch.arange(len(X)) % 5, penalize=True)
    (loss_ce + penalty).backward()
    assert all(torch.equal(grads[n], p.grad) for n, p in module.named_parameters() if p.grad is not None)


@pytest.mark.parametrize("mode", [m for m in MODES if m.endswith("_ortho")])
def test_each_modes_penalty_equals_the_per_matrix_path(mode):
    """Over each mode's own matrix set: the shape groups equal the per-matrix path in float64 (value and
    gradients), and module.penalty() (fp32 by design, ΔW formed inside) equals them to fp32 rounding."""
    from orthoreg_pl.penalties.ortho import ortho_penalty, ortho_penalty_per_matrix

    module = MODES[mode](make_classifier().double(), lam=1.0)
    with torch.no_grad():  # off θ0 (LoRA: B is zero at start)
        for p in module.parameters():
            if p.requires_grad:
                p.add_(
                    0.05
                    * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype)
                )
    params = [p for p in module.parameters() if p.requires_grad]

    def value_and_grads(penalty):
        value = penalty()
        return value, torch.autograd.grad(value, params, allow_unused=True)

    grouped, grouped_grads = value_and_grads(lambda: ortho_penalty(module.penalty_deltas()))
    single, single_grads = value_and_grads(lambda: ortho_penalty_per_matrix(module.penalty_deltas()))
    ours, ours_grads = value_and_grads(module.penalty)
    assert grouped.dtype == torch.float64 and ours.dtype == torch.float32
    torch.testing.assert_close(grouped, single, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(ours, grouped.float(), rtol=1e-5, atol=0.0)
    assert sum(g is not None for g in grouped_grads) > 0
    for a, b, c in zip(grouped_grads, single_grads, ours_grads):
        assert (a is None) == (b is None) == (c is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)

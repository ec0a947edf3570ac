"""The explicit attention JVP (models/lean_attention.py) against torch's own forward-mode and reverse-mode
AD of the math path, in float64; and the linearized encoder under bf16 autocast against float32."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_classifier
from torch.func import functional_call, jvp

from orthoreg_pl.models.lean_attention import LeanAttention, _AttentionTangent, attention
from orthoreg_pl.models.linearized import linearized_forward, math_attention
from orthoreg_pl.modules import LinearFineTuning

B, H, T, D = 2, 3, 6, 4
X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _qkv(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _reference(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    return torch.softmax(scores if mask is None else scores + mask, -1) @ v


MASKS = {
    "none": None,
    "additive": torch.randn(T, T, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
    "causal": torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1),
}


@pytest.mark.parametrize("mask", MASKS, ids=list(MASKS))
def test_attention_jvp_equals_torch_func_jvp(mask):
    q, k, v = _qkv()
    tangents = tuple(_qkv(1))
    m = MASKS[mask]
    out, tangent = jvp(lambda *a: attention(*a, m), (q, k, v), tangents)
    want_out, want_tangent = jvp(lambda *a: _reference(*a, m), (q, k, v), tangents)
    assert (out - want_out).abs().max() <= 1e-12
    assert (tangent - want_tangent).abs().max() <= 1e-12


@pytest.mark.parametrize("mask", MASKS, ids=list(MASKS))
def test_tangent_backward_equals_autograd(mask):
    """The hand-written backward of do(dq, dk, dv) (P recomputed) equals reverse mode through torch's JVP."""
    q, k, v = _qkv()
    m = MASKS[mask]
    grads = []
    for fn in (attention, _reference):
        tangents = [t.requires_grad_() for t in _qkv(1)]
        _, tangent = jvp(lambda *a, fn=fn: fn(*a, m), (q, k, v), tuple(tangents))
        upstream = torch.randn(tangent.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        grads.append(torch.autograd.grad(tangent, tangents, upstream))
    for ours, want in zip(*grads):
        assert (ours - want).abs().max() <= 1e-12


def test_tangent_map_passes_gradcheck():
    q, k, v = _qkv()
    o = _reference(q, k, v)
    tangents = tuple(t.requires_grad_() for t in _qkv(1))
    assert torch.autograd.gradcheck(
        lambda *t: _AttentionTangent.apply(*t, q, k, v, o, None, 1 / math.sqrt(D)), tangents
    )


def test_primal_gradient_by_recomputation():
    """Outside a JVP (the primal needs a gradient) the backward equals the math path's."""
    leaves = [t.requires_grad_() for t in _qkv()]
    ours = torch.autograd.grad(attention(*leaves).square().sum(), leaves)
    want = torch.autograd.grad(_reference(*leaves).square().sum(), leaves)
    assert all((a - b).abs().max() <= 1e-12 for a, b in zip(ours, want))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "float", "bool"])
def test_lean_module_equals_multihead_attention(batch_first, mask):
    """Output, linearized output and gradients of LeanAttention equal nn.MultiheadAttention's (float64),
    with MHA's mask conventions (bool: True = may not attend; float: added)."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first).double()
    lean = LeanAttention(mha)
    assert [n for n, _ in lean.named_parameters()] == [n for n, _ in mha.named_parameters()]
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    attn_mask = {
        "none": None,
        "float": torch.randn(5, 5, dtype=torch.float64),
        "bool": torch.ones(5, 5).triu(1).bool(),
    }[mask]
    theta0 = {n: p.detach().clone() for n, p in mha.named_parameters()}
    delta = {n: 0.1 * torch.randn_like(p) for n, p in theta0.items()}
    results = []
    for module in (mha, lean):

        def call(p, module=module):
            return functional_call(module, p, (x, x, x), {"need_weights": False, "attn_mask": attn_mask})[0]

        with torch.no_grad():
            primal = call(theta0)
        tangents = {n: d.clone().requires_grad_() for n, d in delta.items()}
        with math_attention():  # only the plain module needs it; the lean one ignores it
            _, tangent = jvp(call, (theta0,), (tangents,))
        grads = torch.autograd.grad(tangent.sin().sum(), list(tangents.values()))
        results.append((primal, tangent.detach(), grads))
    (p0, t0, g0), (p1, t1, g1) = results
    assert (p0 - p1).abs().max() <= 1e-12
    assert (t0 - t1).abs().max() <= 1e-12
    assert all((a - b).abs().max() <= 1e-12 for a, b in zip(g0, g1))


def test_lean_module_refuses_what_it_does_not_implement():
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    lean = LeanAttention(mha)
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="self-attention only"):
        lean(x, y, y)
    with pytest.raises(ValueError, match="self-attention only"):
        lean(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal=True needs the causal attn_mask"):
        lean(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="packed"):
        LeanAttention(torch.nn.MultiheadAttention(8, 2, dropout=0.1))


def test_linearized_encoder_under_bf16_autocast_stays_within_bf16_of_fp32():
    """bf16-mixed (autocast as Lightning does it) linearized logits stay within bf16 rounding of fp32's,
    off θ0 so the tangent term counts; the loss and every gradient stay finite."""
    module = LinearFineTuning(make_classifier())
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    errors = {}
    for name, forward in (("linearized", module), ("plain", module.model)):  # plain: f(θ; x), same θ
        fp32 = forward(X)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = forward(X)
        errors[name] = ((bf16.float() - fp32).abs().max() / fp32.abs().max()).item()
        assert (bf16.argmax(-1) == fp32.argmax(-1)).all()
    # measured here: 1.06e-2 linearized, 6.2e-3 plain (bf16 keeps 8 significant bits; the linearized
    # logits add two rounded terms, f(θ0) and J·Δθ)
    assert errors["linearized"] <= 2e-2
    assert errors["linearized"] <= 2 * errors["plain"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(module(X), torch.arange(len(X)) % fp32.shape[-1])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


def test_linearized_forward_uses_no_math_path_when_lean():
    """A lean module's JVP leaves attention to the fused kernel (no math-path switch around it)."""
    from orthoreg_pl.models.linearized import has_plain_attention

    module = LinearFineTuning(make_classifier())
    assert not has_plain_attention(module.model.visual)
    assert has_plain_attention(make_classifier().visual)
    theta0 = {n: p.detach().clone() for n, p in module.model.visual.named_parameters()}
    with torch.no_grad():
        assert (
            linearized_forward(module.model.visual, theta0, X) - module.model.visual(X)
        ).abs().max() <= 1e-5

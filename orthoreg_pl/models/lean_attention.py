"""Self-attention with an explicit forward-mode rule, for the linearized encoder.

torch has no forward-mode rule for its fused attention kernels (flash, memory-efficient, the CPU flash
kernel), so a JVP through ``nn.MultiheadAttention`` must take the math path, whose reverse pass then
keeps the [B, H, T, T] probabilities and their tangent. Here the primal keeps the fused kernel and
the tangent is written out: with S = q·kᵀ·s, P = softmax(S), o = P·v,

    dS = (dq·kᵀ + q·dkᵀ)·s,    do = (P ⊙ dS)·v − rowsum(P ⊙ dS) ⊙ o + P·dv.

do is linear in (dq, dk, dv) with coefficients that depend only on the primal, so its backward
(:class:`_AttentionTangent`) keeps q, k, v, o ([B, H, T, d] each) and recomputes P, much as the flash
kernel's own backward does: with g the incoming gradient,

    ∂dv = Pᵀ·g,    G = P ⊙ (g·vᵀ − rowsum(g ⊙ o)),    ∂dq = G·k·s,    ∂dk = Gᵀ·q·s.

The ordinary (non-JVP) forward is the same fused call ``nn.MultiheadAttention`` makes for CLIP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _probabilities(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    low = q.dtype in (torch.float16, torch.bfloat16)  # softmax in float32 at least, as the kernels do
    return torch.softmax(scores, dim=-1, dtype=torch.float32 if low else q.dtype).to(q.dtype)


class _AttentionTangent(torch.autograd.Function):
    """do(dq, dk, dv) at the primal (q, k, v, o): linear in the tangents, P recomputed in backward."""

    @staticmethod
    def forward(dq, dk, dv, q, k, v, o, mask, scale):
        p = _probabilities(q, k, mask, scale)
        p_ds = p * ((torch.matmul(dq, k.transpose(-2, -1)) + torch.matmul(q, dk.transpose(-2, -1))) * scale)
        return torch.matmul(p_ds, v) - p_ds.sum(-1, keepdim=True) * o + torch.matmul(p, dv)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        *_, q, k, v, o, mask, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, o, mask)

    @staticmethod
    def backward(ctx, g: Tensor):
        q, k, v, o, mask = ctx.saved_tensors
        p = _probabilities(q, k, mask, ctx.scale)
        grad_dv = torch.matmul(p.transpose(-2, -1), g)
        grad_s = p * (torch.matmul(g, v.transpose(-2, -1)) - (g * o).sum(-1, keepdim=True))
        grad_dq = torch.matmul(grad_s, k) * ctx.scale
        grad_dk = torch.matmul(grad_s.transpose(-2, -1), q) * ctx.scale
        return grad_dq, grad_dk, grad_dv, None, None, None, None, None, None


def _math_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    return torch.matmul(_probabilities(q, k, mask, scale), v)


class _Attention(torch.autograd.Function):
    """softmax(q·kᵀ·s + mask)·v by the fused kernel; its tangent by :class:`_AttentionTangent`."""

    @staticmethod
    def forward(q, k, v, mask, scale):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        q, k, v, mask, scale = inputs
        ctx.scale = scale
        ctx.save_for_forward(q, k, v, output, mask)
        ctx.save_for_backward(q, k, v, mask)

    @staticmethod
    def jvp(ctx, dq: Tensor | None, dk: Tensor | None, dv: Tensor | None, *_) -> Tensor:
        q, k, v, o, mask = ctx.saved_tensors
        dq, dk, dv = (t if t is not None else torch.zeros_like(p) for t, p in ((dq, q), (dk, k), (dv, v)))
        return _AttentionTangent.apply(dq, dk, dv, q, k, v, o, mask, ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        """Only when the primal itself needs a gradient (not in linearized training): by recomputation."""
        q, k, v, mask = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            grads = torch.autograd.grad(_math_attention(*leaves, mask, ctx.scale), leaves, grad)
        return (*grads, None, None)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention of [B, H, T, d] tensors with the explicit forward-mode rule."""
    return _Attention.apply(q, k, v, mask, 1.0 / math.sqrt(q.shape[-1]))


def additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``nn.MultiheadAttention``'s mask convention (bool: True = may not attend) as an additive mask."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class LeanAttention(nn.Module):
    """Replaces a self-attention ``nn.MultiheadAttention`` (packed in_proj, no dropout, no bias_k/v),
    keeping its parameters and their names (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``)."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not can_replace(mha):
            raise ValueError(
                "LeanAttention needs a packed, dropout-free nn.MultiheadAttention without bias_k/v"
            )
        self.in_proj_weight, self.in_proj_bias, self.out_proj = (
            mha.in_proj_weight,
            mha.in_proj_bias,
            mha.out_proj,
        )
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        average_attn_weights: bool = True,  # only with need_weights, which is refused
        is_causal: bool = False,  # MHA's hint that attn_mask is causal: the mask itself is applied
    ) -> tuple[Tensor, None]:
        if need_weights or key_padding_mask is not None or not (query is key is value):
            raise ValueError("LeanAttention is self-attention only, without weights or key_padding_mask")
        if is_causal and attn_mask is None:
            raise ValueError(
                "LeanAttention: is_causal=True needs the causal attn_mask, as nn.MultiheadAttention does"
            )
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = additive_mask(attn_mask, q.dtype)
        out = attention(q, k, v, mask).transpose(1, 2).reshape(batch, tokens, width)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


def can_replace(mha: nn.Module) -> bool:
    return (
        isinstance(mha, nn.MultiheadAttention)
        and mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and mha.dropout == 0.0
    )

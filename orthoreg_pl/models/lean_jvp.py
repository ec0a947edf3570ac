"""Lean forward-mode rules for LayerNorm, pointwise activations and attention, for the linearized encoder.

Training a linearized model runs reverse mode through a JVP. With torch's built-in rules, autograd
keeps three [B, T, D] tensors per LayerNorm and both the primal and the tangent per activation for
that backward pass. The tangent of these layers is linear in the incoming tangent with coefficients
that depend only on the primal (θ0 and the input, which need no gradient), so these rules compute
the coefficients without a graph and keep one tensor each: x̂ for LayerNorm, f'(x) for an activation.
The primal forward of LayerNorm and activations is the same call as before, bit for bit; attention's
is the fused kernel ``nn.MultiheadAttention`` reaches when it builds a graph (its no-grad fast path
differs only by rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthoreg_pl.models.lean_attention import LeanAttention
from orthoreg_pl.models.lean_attention import can_replace as can_replace_attention


def _grad_wrt(fn, inputs: list[Tensor | None], grad: Tensor) -> tuple[Tensor | None, ...]:
    """Reverse mode of ``fn(*inputs)`` by recomputation (used only if the primal itself needs grad)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
        wanted = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(fn(*leaves), wanted, grad, allow_unused=True))
    return tuple(next(grads) if t is not None else None for t in leaves)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        x: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple[int, ...], eps: float
    ) -> Tensor:
        return F.layer_norm(x, shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, shape, eps = inputs
        ctx.shape, ctx.eps = shape, eps
        ctx.save_for_forward(x, weight)
        ctx.save_for_backward(x, weight, bias)

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None, *_) -> Tensor:
        x, weight = ctx.saved_tensors
        dims = tuple(range(-len(ctx.shape), 0))
        with torch.no_grad():
            mean = x.mean(dim=dims, keepdim=True)
            rstd = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True) + ctx.eps)
            x_hat = (x - mean) * rstd
        terms = []
        if x_t is not None:
            centred = x_t - x_t.mean(dim=dims, keepdim=True)
            d_hat = rstd * (centred - x_hat * (x_hat * x_t).mean(dim=dims, keepdim=True))
            terms.append(d_hat * weight if weight is not None else d_hat)
        if weight_t is not None:
            terms.append(x_hat * weight_t)
        if bias_t is not None:
            terms.append(bias_t.expand_as(x))
        return sum(terms[1:], terms[0]) if terms else torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias = ctx.saved_tensors
        grads = _grad_wrt(lambda a, w, b: F.layer_norm(a, ctx.shape, w, b, ctx.eps), [x, weight, bias], grad)
        return (*grads, None, None)


def gelu_slope(x: Tensor, approximate: str = "none") -> Tensor:
    return torch.ops.aten.gelu_backward(torch.ones_like(x), x, approximate=approximate)


def quick_gelu_slope(x: Tensor) -> Tensor:
    """d/dx of x·σ(1.702x) (open_clip's QuickGELU, used by the OpenAI weights)."""
    s = torch.sigmoid(1.702 * x)
    return s + 1.702 * x * s * (1 - s)


class _Pointwise(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, fn, slope) -> Tensor:
        return fn(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, ctx.fn, ctx.slope = inputs
        ctx.save_for_forward(x)
        ctx.save_for_backward(x)

    @staticmethod
    def jvp(ctx, x_t: Tensor, *_) -> Tensor:
        (x,) = ctx.saved_tensors
        with torch.no_grad():  # f'(x) of the primal: a coefficient, no graph
            slope = ctx.slope(x)
        return slope * x_t

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.slope(x), None, None


class LeanLayerNorm(nn.Module):
    """Wraps a LayerNorm (its parameters keep their names) with the lean forward-mode rule."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.normalized_shape, self.eps = tuple(norm.normalized_shape), norm.eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        return _LayerNorm.apply(x, self.weight, self.bias, self.normalized_shape, self.eps).to(dtype)


class LeanActivation(nn.Module):
    """Wraps a parameter-free pointwise activation (GELU, QuickGELU) with the lean forward-mode rule."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        if isinstance(activation, nn.GELU):
            self.slope = lambda x: gelu_slope(x, activation.approximate)
        else:
            self.slope = quick_gelu_slope

    def forward(self, x: Tensor) -> Tensor:
        return _Pointwise.apply(x, self.activation, self.slope)


def make_jvp_lean(module: nn.Module, attention: bool = True) -> nn.Module:
    """Swap every LayerNorm, GELU-like activation and (``attention``) self-attention of ``module`` for
    its lean wrapper (attention: :mod:`orthoreg_pl.models.lean_attention`), in place."""
    for name, child in list(module.named_children()):
        if attention and can_replace_attention(child):
            setattr(module, name, LeanAttention(child))
        elif isinstance(child, nn.LayerNorm):
            setattr(module, name, LeanLayerNorm(child))
        elif isinstance(child, nn.GELU) or type(child).__name__ == "QuickGELU":
            setattr(module, name, LeanActivation(child))
        else:
            make_jvp_lean(child, attention)
    return module

"""The linearized image encoder of Tangent Task Arithmetic (Ortiz-Jimenez et al., 2023).

f_lin(θ; x) = f(θ0; x) + J_θ f(θ0; x)·(θ − θ0), computed with one forward-mode JVP. Forward-mode AD
has no rule for torch's fused multi-head-attention fast path nor for the flash / memory-efficient
SDPA kernels. A module made lean (:func:`orthoreg_pl.models.lean_jvp.make_jvp_lean`) carries its own
attention rule and keeps the fused kernels; otherwise attention goes through the math path inside
the JVP only (:func:`math_attention`), and every other forward keeps the kernels it had.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Route attention through differentiable-everywhere math kernels; restore the settings after."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def linearized_forward(module: nn.Module, theta0: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
    """f(θ0; x) + J f(θ0; x)·(θ − θ0), θ being ``module``'s current parameters (names as in
    ``module.named_parameters()``). Gradients flow to θ through the tangent."""
    params = dict(module.named_parameters())
    primals = {name: theta0[name] for name in params}
    tangents = {name: params[name] - primals[name] for name in params}

    def f(p: dict[str, Tensor]) -> Tensor:
        return functional_call(module, p, (inputs,))

    with jvp_attention(module):
        output, directional = jvp(f, (primals,), (tangents,))
    return output + directional


def has_plain_attention(module: nn.Module) -> bool:
    """Whether ``module`` holds attention without its own forward-mode rule (see lean_attention)."""
    return any(
        isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention" for m in module.modules()
    )


def jvp_attention(module: nn.Module) -> contextlib.AbstractContextManager:
    """The attention setting a JVP through ``module`` needs: the math path unless every attention is lean."""
    return math_attention() if has_plain_attention(module) else contextlib.nullcontext()

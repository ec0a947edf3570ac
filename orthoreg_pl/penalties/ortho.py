"""The OrthoReg penalty as a pure function of the weight updates ΔW = W − W0 (method.md §2).

For each matrix ΔW [rows, cols] the penalty adds ``‖G − I_k‖_F`` (``norm="fro"``, the reference
code) or ``‖G − I_k‖_F²`` (``norm="fro_squared"``, the paper), where G is a Gram matrix of ΔW:

* ``gram="min_side"`` (reference): the smaller one, ``ΔW ΔWᵀ`` if rows < cols else ``ΔWᵀ ΔW``;
* ``gram="columns"`` (paper): always ``ΔWᵀ ΔW``.

Why a custom autograd function: the exact gradient of ``‖G − I‖²`` is ``4·ΔW·(G − I)`` (or
``4·(G − I)·ΔW`` for the row Gram), so one Gram product forward and one product of the same size
backward is all the work an exact implementation needs. Autograd through ``ΔWᵀΔW − eye`` would
do two products backward and materialise an identity per matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError

Norm = Literal["fro", "fro_squared"]
Gram = Literal["min_side", "columns"]
NORMS: tuple[str, ...] = ("fro", "fro_squared")
GRAMS: tuple[str, ...] = ("min_side", "columns")


def uses_row_gram(shape: Sequence[int], gram: str) -> bool:
    """True when the Gram matrix is ``ΔW ΔWᵀ`` (rows × rows) rather than ``ΔWᵀ ΔW``."""
    rows, cols = shape
    return gram == "min_side" and rows < cols


def gram_size(shape: Sequence[int], gram: str) -> int:
    """k, the side of the Gram matrix the penalty compares with I_k."""
    rows, cols = shape
    return rows if uses_row_gram(shape, gram) else cols


def check_options(norm: str, gram: str) -> None:
    if norm not in NORMS:
        raise OrthoRegError(f"ortho.norm={norm!r} is not supported; expected one of {list(NORMS)}")
    if gram not in GRAMS:
        raise OrthoRegError(f"ortho.gram={gram!r} is not supported; expected one of {list(GRAMS)}")


def _gram_residual(delta: Tensor, rows: bool) -> Tensor:
    """G − I for one matrix, with the identity subtracted in place on the diagonal."""
    residual = delta @ delta.T if rows else delta.T @ delta
    residual.diagonal().sub_(1.0)
    return residual


class _OrthoPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, squared: bool, gram: str, *deltas: Tensor) -> Tensor:  # type: ignore[override]
        residuals = [_gram_residual(d, uses_row_gram(d.shape, gram)) for d in deltas]
        norms = torch.stack([torch.linalg.vector_norm(r) for r in residuals])
        ctx.squared, ctx.gram = squared, gram
        ctx.save_for_backward(norms, *deltas, *residuals)
        return (norms * norms).sum() if squared else norms.sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        norms, *saved = ctx.saved_tensors
        n = len(saved) // 2
        deltas, residuals = saved[:n], saved[n:]
        # d‖R‖²/dΔW = 4·ΔW·R; for the unsquared norm divide by 2‖R‖ (zero where ‖R‖ = 0).
        if ctx.squared:
            coeffs = (4.0 * grad_out).expand(n)
        else:
            coeffs = torch.where(norms > 0, 2.0 * grad_out / norms.clamp_min(1e-30), torch.zeros_like(norms))
        grads = []
        for i, (delta, residual) in enumerate(zip(deltas, residuals)):
            product = residual @ delta if uses_row_gram(delta.shape, ctx.gram) else delta @ residual
            grads.append(product.mul_(coeffs[i]))
        return (None, None, *grads)


def ortho_penalty(deltas: Sequence[Tensor], norm: Norm = "fro", gram: Gram = "min_side") -> Tensor:
    """Σ over matrices of ‖G − I‖_F (or its square): the OrthoReg penalty of method.md §2.

    ``deltas`` are 2-D weight updates ΔW = W − W0; gradients flow back to them exactly.
    """
    check_options(norm, gram)
    if len(deltas) == 0:
        raise OrthoRegError("ortho_penalty got no matrices: the selected parameters hold no 2-D weights")
    for d in deltas:
        if d.ndim != 2:
            raise OrthoRegError(f"ortho_penalty expects 2-D matrices, got a tensor of shape {tuple(d.shape)}")
    return _OrthoPenalty.apply(norm == "fro_squared", gram, *deltas)


def ortho_penalty_reference(deltas: Sequence[Tensor], norm: Norm = "fro", gram: Gram = "min_side") -> Tensor:
    """The direct formula, through autograd: the yardstick the fast path is tested against."""
    check_options(norm, gram)
    total = deltas[0].new_zeros(())
    for d in deltas:
        g = d @ d.T if uses_row_gram(d.shape, gram) else d.T @ d
        eye = torch.eye(g.shape[0], dtype=d.dtype, device=d.device)
        term = torch.linalg.matrix_norm(g - eye, ord="fro")
        total = total + (term**2 if norm == "fro_squared" else term)
    return total


def penalty_at_zero(shapes: Sequence[Sequence[int]], norm: Norm = "fro", gram: Gram = "min_side") -> float:
    """The penalty's value at ΔW = 0 from shapes alone: Σ√k (fro) or Σk (fro_squared)."""
    check_options(norm, gram)
    sizes = [gram_size(s, gram) for s in shapes]
    return float(sum(sizes) if norm == "fro_squared" else sum(k**0.5 for k in sizes))

"""The OrthoReg penalty as a pure function of the weight updates ΔW = W − W0 (docs/method.md §2).

For each matrix ΔW [rows, cols] the penalty adds ``‖G − I_k‖_F`` (``norm="fro"``, the reference
code) or ``‖G − I_k‖_F²`` (``norm="fro_squared"``, the paper), where G is a Gram matrix of ΔW:

* ``gram="min_side"`` (reference): the smaller one, ``ΔW ΔWᵀ`` if rows < cols else ``ΔWᵀ ΔW``;
* ``gram="columns"`` (paper): always ``ΔWᵀ ΔW``.

Why a custom autograd function: the exact gradient of ``‖G − I‖²`` is ``4·ΔW·(G − I)`` (or
``4·(G − I)·ΔW`` for the row Gram), so one Gram product forward and one product of the same size
backward is all the work an exact implementation needs. Autograd through ``ΔWᵀΔW − eye`` would
do two products backward and materialise an identity per matrix. Matrices of one shape are
stacked and multiplied as a batch (``bmm``): a ViT's blocks share four shapes, so a few large
products replace dozens of small launch-bound ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.penalties.options import GRAMS, NORMS  # noqa: F401  (re-exported: the penalty's options)

Norm = Literal["fro", "fro_squared"]
Gram = Literal["min_side", "columns"]


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


def shape_groups(shapes: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of the matrices that share a shape, in order of first appearance: a ViT's 12 (24) blocks
    have four weight shapes, so its penalty is four batched products instead of 48 (96) small ones."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


def _stack(tensors: Sequence[Tensor], index: list[int], bases: Sequence[Tensor] = ()) -> Tensor:
    """The matrices ``index`` of ``tensors`` (minus their ``bases``) as one [B, r, c] batch, each
    difference written straight into its slot: one pass over W and W0 instead of two stacks and a
    subtraction."""
    if not bases:
        return torch.stack([tensors[i] for i in index])
    first = tensors[index[0]]
    out = first.new_empty((len(index), *first.shape))
    for slot, i in zip(out, index):
        torch.sub(tensors[i], bases[i], out=slot)
    return out


def _residuals(stacked: Tensor, rows: bool) -> Tensor:
    """G − I for a batch [B, r, c] of ΔW, the identity subtracted in place on the diagonals."""
    gram = (
        torch.bmm(stacked, stacked.transpose(1, 2)) if rows else torch.bmm(stacked.transpose(1, 2), stacked)
    )
    gram.diagonal(dim1=1, dim2=2).sub_(1.0)
    return gram


class _OrthoPenalty(torch.autograd.Function):
    """Σ ‖G − I‖ over shape groups: one batched Gram product forward, one backward per group.

    With ``bases`` (W0 of each W), the inputs are the weights W and ΔW = W − W0 is formed inside and
    formed again in the backward rather than saved: the weights and W0 are kept anyway, so the penalty
    holds on to its Gram residuals only (ViT-B-32: 326 MiB of ΔW not kept)."""

    @staticmethod
    def forward(ctx, squared: bool, gram: str, n: int, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        weights, bases = tensors[:n], tensors[n:]
        groups = shape_groups([w.shape for w in weights])
        norms = weights[0].new_empty(n)
        residuals = []
        for index in groups:
            stacked = _stack(weights, index, bases)
            residual = _residuals(stacked, uses_row_gram(weights[index[0]].shape, gram))
            norms[index] = torch.linalg.vector_norm(residual, dim=(1, 2))
            residuals.append(residual)
        ctx.squared, ctx.gram, ctx.n, ctx.groups, ctx.with_bases = squared, gram, n, groups, bool(bases)
        ctx.save_for_backward(norms, *weights, *bases, *residuals)
        return (norms * norms).sum() if squared else norms.sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        norms, *saved = ctx.saved_tensors
        n = ctx.n
        weights = saved[:n]
        bases = saved[n : 2 * n] if ctx.with_bases else ()
        residuals = saved[len(weights) + len(bases) :]
        # d‖R‖²/dΔW = 4·ΔW·R (4·R·ΔW for the row Gram); the unsquared norm divides by 2‖R‖ (0 where ‖R‖ = 0).
        if ctx.squared:
            coeffs = (4.0 * grad_out).expand(n)
        else:
            coeffs = torch.where(norms > 0, 2.0 * grad_out / norms.clamp_min(1e-30), torch.zeros_like(norms))
        grads: list[Tensor | None] = [None] * n
        for index, residual in zip(ctx.groups, residuals):
            stacked = _stack(weights, index, bases)
            rows = uses_row_gram(weights[index[0]].shape, ctx.gram)
            product = torch.bmm(residual, stacked) if rows else torch.bmm(stacked, residual)
            product.mul_(coeffs[index].view(-1, 1, 1))
            for position, i in enumerate(index):
                grads[i] = product[position]
        return (None, None, None, *grads, *([None] * len(bases)))


def _check_matrices(tensors: Sequence[Tensor], norm: str, gram: str) -> None:
    check_options(norm, gram)
    if len(tensors) == 0:
        raise OrthoRegError("ortho_penalty got no matrices: the selected parameters hold no 2-D weights")
    for t in tensors:
        if t.ndim != 2:
            raise OrthoRegError(f"ortho_penalty expects 2-D matrices, got a tensor of shape {tuple(t.shape)}")


def ortho_penalty(deltas: Sequence[Tensor], norm: Norm = "fro", gram: Gram = "min_side") -> Tensor:
    """Σ over matrices of ‖G − I‖_F (or its square): the OrthoReg penalty of docs/method.md §2.

    ``deltas`` are 2-D weight updates ΔW = W − W0; gradients flow back to them exactly.
    """
    _check_matrices(deltas, norm, gram)
    return _OrthoPenalty.apply(norm == "fro_squared", gram, len(deltas), *deltas)


def ortho_penalty_of(
    weights: Sequence[Tensor], bases: Sequence[Tensor], norm: Norm = "fro", gram: Gram = "min_side"
) -> Tensor:
    """:func:`ortho_penalty` of ΔW = W − W0 for weights W and their frozen bases W0, without keeping ΔW
    for the backward (it is formed again there); gradients flow to ``weights``."""
    _check_matrices(weights, norm, gram)
    if len(bases) != len(weights) or any(b.shape != w.shape for w, b in zip(weights, bases)):
        raise OrthoRegError("ortho_penalty_of: each weight needs a base W0 of its shape")
    return _OrthoPenalty.apply(
        norm == "fro_squared", gram, len(weights), *weights, *(b.detach() for b in bases)
    )


def ortho_penalty_per_matrix(deltas: Sequence[Tensor], norm: Norm = "fro", gram: Gram = "min_side") -> Tensor:
    """One matrix at a time (what the shape groups batch): the per-matrix path, kept as a yardstick."""
    return torch.stack([ortho_penalty([d], norm=norm, gram=gram) for d in deltas]).sum()


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

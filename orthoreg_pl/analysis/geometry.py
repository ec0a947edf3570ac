"""Geometry of task vectors and weight matrices, as pure functions of tensors.

* Cosine similarity between task vectors, for the whole vector and per layer type: one float64 Gram
  matrix of the tasks per parameter, summed by type, so T task vectors are read once, not T² times.
* Angles between pairs of column vectors of a matrix and their deviation |angle − 90°|: the paper's
  measure of how orthogonal W0, W = θ0 + τ and ΔW = τ are. Big matrices are sampled (pairs among a
  seeded random subset of columns), so the cost stays small enough for a training-time monitor.
* Per-matrix OrthoReg terms ‖G − I‖_F (min-side Gram, unsquared, docs/method.md §2): their sum is the
  penalty, their split by layer type says where the penalty comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from orthoreg_pl.analysis.layers import group_by_type
from orthoreg_pl.analysis.options import VECTORS
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.penalties.ortho import uses_row_gram
from orthoreg_pl.task_vectors import TaskVector

# ---- cosines ----------------------------------------------------------------------------------------


def cosine_tables(vectors: Mapping[str, TaskVector]) -> dict[str, list[list[float | None]]]:
    """``{"all": T×T, <layer type>: T×T}`` cosine similarities between the tasks' vectors (order of
    ``vectors``). None where a vector is zero on that part (the cosine is undefined there)."""
    tasks = list(vectors)
    if not tasks:
        raise OrthoRegError("cosine_tables got no task vectors")
    first = vectors[tasks[0]]
    for task in tasks[1:]:
        first.check_same_keys(vectors[task])
    grams: dict[str, Tensor] = {}
    for kind, names in group_by_type(first.keys()).items():
        gram = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
        for name in names:
            stacked = torch.stack([vectors[t][name].detach().reshape(-1).double().cpu() for t in tasks])
            gram += stacked @ stacked.T
        grams[kind] = gram
    grams = {"all": sum(grams.values()), **grams}
    return {kind: _cosines(gram) for kind, gram in grams.items()}


def _cosines(gram: Tensor) -> list[list[float | None]]:
    norms = gram.diagonal().clamp_min(0).sqrt()
    n = len(norms)
    return [
        [
            float(gram[i, j] / (norms[i] * norms[j])) if norms[i] > 0 and norms[j] > 0 else None
            for j in range(n)
        ]
        for i in range(n)
    ]


# ---- column angles ----------------------------------------------------------------------------------


def columns_needed(max_pairs: int) -> int:
    """The smallest m with m·(m − 1)/2 >= max_pairs: columns sampled to get about ``max_pairs`` pairs."""
    if max_pairs < 1:
        raise OrthoRegError(f"max_pairs={max_pairs}; expected an integer >= 1")
    return math.ceil((1 + math.sqrt(1 + 8 * max_pairs)) / 2)


@lru_cache(maxsize=256)
def _sampled(n: int, keep: int, seed: int) -> Tensor | None:
    """The columns kept of n (None: all), fixed by ``seed``: the same pairs at every call."""
    if n <= keep:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


@lru_cache(maxsize=256)
def _pairs(k: int) -> tuple[Tensor, Tensor]:
    i, j = torch.triu_indices(k, k, offset=1)
    return i, j


@torch.no_grad()
def column_angles(
    matrix: Tensor | Sequence[Tensor], max_pairs: int = 4096, seed: int = 0, vectors: str = "columns"
) -> Tensor:
    """Angles in degrees (float32, on the matrix's device) between pairs of columns of ``matrix``.

    All pairs when there are at most about ``max_pairs`` of them; otherwise every pair among a random
    subset of m columns (m the smallest with m(m−1)/2 >= max_pairs), drawn from ``seed``. Pairs with
    a zero column have no angle and are left out. ``vectors="min_side"`` compares the vectors of the
    smaller side (rows when rows < cols), those the reference penalty's Gram matrix holds.

    ``matrix`` may be a list of equally shaped matrices (a layer type's blocks): the same columns are
    sampled in each, and one batched computation replaces one per matrix (the monitor's cost)."""
    if vectors not in VECTORS:
        raise OrthoRegError(f"vectors={vectors!r}; expected one of {', '.join(VECTORS)}")
    matrices = [matrix] if isinstance(matrix, Tensor) else list(matrix)
    if not matrices or any(m.ndim != 2 or m.shape != matrices[0].shape for m in matrices):
        shapes = [tuple(m.shape) for m in matrices]
        raise OrthoRegError(f"column_angles expects 2-D matrices of one shape, got shapes {shapes}")
    if vectors == "min_side" and uses_row_gram(matrices[0].shape, "min_side"):
        matrices = [m.T for m in matrices]
    picked = _sampled(matrices[0].shape[1], columns_needed(max_pairs), seed)
    if picked is not None:
        picked = picked.to(matrices[0].device)
        matrices = [m.index_select(1, picked) for m in matrices]  # only the sampled columns are copied
    exact = (
        torch.float32 if matrices[0].device.type == "mps" else torch.float64
    )  # acos: ill-conditioned at 0°, 180°
    m = torch.stack([x.detach() for x in matrices]).to(exact)  # [L, rows, k]
    norms = torch.linalg.vector_norm(m, dim=1)  # [L, k]
    unit = m / norms.clamp_min(torch.finfo(exact).tiny).unsqueeze(1)
    cos = unit.mT @ unit
    i, j = (x.to(m.device) for x in _pairs(m.shape[-1]))
    valid = (norms[:, i] > 0) & (norms[:, j] > 0)
    return torch.rad2deg(torch.arccos(cos[:, i, j][valid].clamp(-1.0, 1.0))).float()


def deviation_from_orthogonal(angles: Tensor) -> Tensor:
    """|angle − 90°|: 0 for orthogonal columns, 90 for parallel ones."""
    return (angles - 90.0).abs()


def summarize(deviations: Tensor) -> dict[str, float | int | None]:
    """Mean, spread (std), median, 95th percentile and count of deviations in degrees (None when empty)."""
    values = deviations.detach().float().reshape(-1).cpu()
    if values.numel() == 0:
        return {"pairs": 0, "mean": None, "std": None, "median": None, "p95": None}
    return {
        "pairs": int(values.numel()),
        "mean": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "median": float(values.median()),
        "p95": float(torch.quantile(values, 0.95)),
    }


def histogram(values: Tensor, edges: Sequence[float]) -> list[int]:
    """Counts of ``values`` per bin of ``edges`` (the last bin includes its right edge)."""
    counts, _ = np.histogram(values.detach().float().cpu().numpy(), bins=np.asarray(edges, dtype=float))
    return [int(c) for c in counts]


def shared_edges(series: Sequence[Tensor], bins: int) -> list[float]:
    """``bins`` equal bins from 0 to the largest value of all ``series`` (so they compare bin by bin)."""
    top = max((float(s.max()) for s in series if s.numel()), default=1.0)
    top = top if top > 0 else 1.0
    return [float(x) for x in np.linspace(0.0, top, bins + 1)]


# ---- penalty terms ----------------------------------------------------------------------------------


@torch.no_grad()
def penalty_terms(deltas: Sequence[Tensor]) -> Tensor:
    """[n] float32: ‖G − I_k‖_F of each ΔW (min-side Gram, unsquared); the sum is the reference penalty.
    Matrices of one shape (a layer type's blocks) share one batched Gram product."""
    if not deltas:
        raise OrthoRegError("penalty_terms got no matrices")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, delta in enumerate(deltas):
        groups.setdefault(tuple(delta.shape), []).append(i)
    terms = torch.empty(len(deltas), dtype=torch.float32, device=deltas[0].device)
    for shape, index in groups.items():
        stacked = torch.stack([deltas[i].detach().float() for i in index])
        rows = uses_row_gram(shape, "min_side")
        gram = stacked @ stacked.mT if rows else stacked.mT @ stacked
        gram.diagonal(dim1=1, dim2=2).sub_(1.0)
        terms[torch.tensor(index, device=terms.device)] = torch.linalg.vector_norm(gram, dim=(1, 2))
    return terms

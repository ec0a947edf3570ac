"""Task arithmetic (Ilharco et al., 2023): Σ c_i·τ_i. Negative coefficients negate (forgetting)."""

from __future__ import annotations

from collections.abc import Sequence

from orthoreg_pl.merging.common import merged, prepare, weighted_sum
from orthoreg_pl.task_vectors import TaskVector


def merge(task_vectors: Sequence[TaskVector], coefficients: Sequence[float] | None = None) -> TaskVector:
    """Σ c_i·τ_i (all c_i = 1 by default; ``coefficients=[-1]`` is the negation −τ)."""
    vectors, coeffs = prepare(task_vectors, coefficients)
    tensors = weighted_sum([v.tensors for v in vectors], coeffs)
    return merged(tensors, vectors, coeffs, "task_arithmetic", {})

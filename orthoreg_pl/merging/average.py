"""Simple averaging (model soup over task vectors): (1/n)·Σ τ_i."""

from __future__ import annotations

from collections.abc import Sequence

from orthoreg_pl.merging.common import merged, prepare, weighted_sum
from orthoreg_pl.task_vectors import TaskVector


def merge(task_vectors: Sequence[TaskVector]) -> TaskVector:
    """The mean of the vectors (summed first, then divided once: one rounding less than Σ τ_i/n)."""
    vectors, ones = prepare(task_vectors)
    n = len(vectors)
    tensors = {k: t.div_(n) for k, t in weighted_sum([v.tensors for v in vectors], ones).items()}
    return merged(tensors, vectors, [1 / n] * n, "average", {})

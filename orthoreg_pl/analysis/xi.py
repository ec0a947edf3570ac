"""The weight-disentanglement error ξ(α1, α2) (Ortiz-Jimenez et al. 2023; docs/method.md §5), counted from
predictions: pure functions, so the definition is tested on hand-made cases.

    ξ(α1, α2) = Σ_{t ∈ {1, 2}} P_{x ~ D_t}[ pred(θ0 + α1τ1 + α2τ2; x) ≠ pred(θ0 + αtτt; x) ]

a sum of two shares, one per task (so 0 ≤ ξ ≤ 2). Consequences: ξ(0, 0) = 0; on the axis α2 = 0 the
task-1 term is 0 (both models are θ0 + α1τ1) but the task-2 term is the share of task-2 inputs whose
prediction τ1 alone changes (θ0 + α1τ1 against θ0), so ξ is zero on the axes only if adding one task
leaves the other task's predictions alone: that is what disentanglement means.

One pass over task t's inputs needs the predictions at every grid point and at the reference points
of task t ((α1, 0) for task 1, (0, α2) for task 2); they are grid points whenever 0 is on the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError


def evaluation_points(
    alphas: Sequence[float], task_index: int
) -> tuple[list[tuple[float, float]], Tensor, Tensor]:
    """(points, grid_index, reference_index) for a pass over the inputs of task ``task_index`` (0 or 1).

    ``points``: the (α1, α2) to predict at: the grid (α1 major), then the references the grid lacks.
    ``grid_index[i, j]``: position of (alphas[i], alphas[j]) in ``points``; ``reference_index[i, j]``:
    position of task t's own model, (alphas[i], 0) for task 0 or (0, alphas[j]) for task 1."""
    if task_index not in (0, 1):
        raise OrthoRegError(f"task_index={task_index}; expected 0 (first task of the pair) or 1")
    grid = [float(a) for a in alphas]
    if not grid or len(set(grid)) != len(grid):
        raise OrthoRegError(f"ξ grid {list(alphas)}: expected a non-empty list of distinct α values")
    points = [(a1, a2) for a1 in grid for a2 in grid]
    position = {p: k for k, p in enumerate(points)}
    refs = [(a, 0.0) for a in grid] if task_index == 0 else [(0.0, a) for a in grid]
    for ref in refs:
        if ref not in position:
            position[ref] = len(points)
            points.append(ref)
    n = len(grid)
    grid_index = torch.tensor([[position[(a1, a2)] for a2 in grid] for a1 in grid], dtype=torch.long)
    reference_index = torch.tensor(
        [[position[refs[i] if task_index == 0 else refs[j]] for j in range(n)] for i in range(n)],
        dtype=torch.long,
    )
    return points, grid_index, reference_index


def disagreements(predictions: Tensor, grid_index: Tensor, reference_index: Tensor) -> Tensor:
    """[G, G] int64: per grid point, how many inputs are predicted differently from the reference.

    ``predictions`` [P, B]: class index of each of B inputs at each of the P points."""
    index = grid_index.to(predictions.device)
    reference = reference_index.to(predictions.device)
    return (predictions[index] != predictions[reference]).sum(dim=-1)


def xi_from_counts(counts: Sequence[Tensor], totals: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(ξ [G, G] float64, per-task terms [2, G, G]) from each task's disagreement counts and sizes."""
    if len(counts) != 2 or len(totals) != 2:
        raise OrthoRegError(f"ξ needs the counts of exactly 2 tasks, got {len(counts)}")
    for total in totals:
        if total <= 0:
            raise OrthoRegError(f"a task of the ξ pair has {total} inputs; expected at least one")
    terms = torch.stack([c.double().cpu() / float(n) for c, n in zip(counts, totals)])
    return terms.sum(dim=0), terms

"""The α-selection rules of the evaluation protocols (docs/method.md §5), as pure functions.

Addition: one α for all tasks, the one maximising the mean over tasks of acc(θ(α), XVal) / acc_ft(XVal).
Negation: per task, among the α whose control accuracy stays ≥ threshold × zero-shot control accuracy,
the one with the lowest target accuracy. Ties go to the smallest α in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orthoreg_pl.errors import OrthoRegError

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """The grid, sorted ascending (ties resolve to the smallest α by position)."""
    grid = sorted(float(a) for a in alphas)
    if not grid:
        raise OrthoRegError("protocol.alphas is empty; expected a grid of α values such as [0, 0.05, ..., 1]")
    if len(set(grid)) != len(grid):
        raise OrthoRegError(f"protocol.alphas={list(alphas)} has repeated values")
    return grid


def normalized_mean_curve(
    val_acc: Mapping[str, Sequence[float]], finetuned_val: Mapping[str, float]
) -> list[float]:
    """Per α, the mean over tasks of accuracy / the task's fine-tuned accuracy."""
    tasks = list(val_acc)
    for task in tasks:
        if not finetuned_val.get(task):
            raise OrthoRegError(
                f"task {task!r} has no positive fine-tuned validation accuracy to normalise by"
            )
    length = len(val_acc[tasks[0]])
    return [sum(val_acc[t][i] / finetuned_val[t] for t in tasks) / len(tasks) for i in range(length)]


def select_addition_alpha(alphas: Sequence[float], normalized_curve: Sequence[float]) -> int:
    """Index of the best α (ties: the smallest α). ``alphas`` ascending."""
    best = max(normalized_curve)
    return next(i for i, v in enumerate(normalized_curve) if v == best)


def select_negation_alpha(
    alphas: Sequence[float],
    target_val: Sequence[float],
    control_val: Sequence[float],
    control_zeroshot: float,
    threshold: float = 0.95,
) -> int:
    """Index of the α with the lowest target accuracy among those keeping control ≥ threshold × zero-shot."""
    feasible = [i for i in range(len(alphas)) if control_val[i] >= threshold * control_zeroshot]
    if not feasible:
        raise OrthoRegError(
            f"no α in {list(alphas)} keeps the control accuracy >= {threshold} x zero-shot ({control_zeroshot:.4f}); "
            "include 0 in the grid or lower protocol.threshold"
        )
    lowest = min(target_val[i] for i in feasible)
    return next(i for i in feasible if target_val[i] == lowest)


def edge_warning(alphas: Sequence[float], index: int, what: str) -> str | None:
    """A note when the chosen α is the grid's largest (the best may lie beyond it) or, above 0, its
    smallest: the grid should then be widened to be sure α* is the best."""
    if len(alphas) < 2 or (0 < index < len(alphas) - 1):
        return None
    if index == 0 and alphas[0] == 0:
        return None  # α = 0 (no task vector) is a real answer, not an edge of the search
    side = "largest" if index == len(alphas) - 1 else "smallest"
    return (
        f"{what}: α* = {alphas[index]:g} is the {side} α of the grid; the best α may lie beyond it "
        "(widen protocol.alphas to be sure)"
    )

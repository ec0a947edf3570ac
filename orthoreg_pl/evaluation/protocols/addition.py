"""Task addition (docs/method.md §5): θ0 + α·merge(τ_1..τ_T), one α for all tasks chosen on validation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

from orthoreg_pl.evaluation.alphas import edge_warning, normalized_mean_curve, select_addition_alpha
from orthoreg_pl.evaluation.protocols.common import Protocol, check_merged, mean_row, nonnegative_alphas

if TYPE_CHECKING:
    from orthoreg_pl.evaluation.evaluator import MergeEvaluator
    from orthoreg_pl.task_vectors import TaskVector


def run_addition(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    merged = instantiate(cfg.merge_method)(list(vectors.values()))
    check_merged(cfg, merged, len(vectors))
    refs = evaluator.task_references(vectors)  # at this merge's precision: the Norm.Acc denominators
    val = {task: evaluator.accuracy(task, "val", merged, alphas) for task in vectors}
    normalized = normalized_mean_curve(val, {t: refs[t]["finetuned"]["val"] for t in vectors})
    best = select_addition_alpha(alphas, normalized)
    alpha = alphas[best]
    per_task = {}
    for task in vectors:
        test = evaluator.accuracy(task, "test", merged, [alpha])[0]
        finetuned = refs[task]["finetuned"]["test"]
        zeroshot = refs[task]["zeroshot"]["test"]
        per_task[task] = {"zeroshot": zeroshot, "finetuned": finetuned, "abs": test, "norm": test / finetuned}
    columns = ["zeroshot", "finetuned", "abs", "norm"]
    return {
        "alphas": alphas,
        "val_curves": {**val, "normalized mean": normalized},
        "val_at_alpha": {"val_norm": normalized[best]},
        "chosen_alpha": alpha,
        "columns": columns,
        "per_task": per_task,
        "mean": mean_row(per_task, columns),
        "references": refs,
        "warnings": [w for w in [edge_warning(alphas, best, "addition")] if w],
    }


ADDITION = Protocol(
    "addition",
    run_addition,
    objectives=("val_norm",),
    rules=(nonnegative_alphas("addition applies θ0 + α·merge(τ); to subtract, use protocol=negation"),),
)

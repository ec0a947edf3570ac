"""Task negation (docs/method.md §5): per task θ0 − α·τ, α keeping the control task above threshold × zero-shot."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from orthoreg_pl.config.groups import task_names
from orthoreg_pl.config.validation import Rule, number
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.alphas import edge_warning, select_negation_alpha
from orthoreg_pl.evaluation.protocols.common import Protocol, mean_row, nonnegative_alphas

if TYPE_CHECKING:
    from orthoreg_pl.evaluation.evaluator import MergeEvaluator
    from orthoreg_pl.task_vectors import TaskVector


def run_negation(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    control = cfg.protocol.control
    control_zeroshot = evaluator.zeroshot_reference(control)
    if control_zeroshot["val"] <= 0:
        raise OrthoRegError(
            f"control task {control!r} has zero zero-shot validation accuracy: no reference to keep"
        )
    refs = evaluator.task_references(vectors)
    negative = [-a for a in alphas]
    per_task, curves, target_val_at, warnings = {}, {}, {}, []
    for task, vector in vectors.items():
        target_val = evaluator.accuracy(task, "val", vector, negative)
        control_val = evaluator.accuracy(control, "val", vector, negative)
        best = select_negation_alpha(
            alphas, target_val, control_val, control_zeroshot["val"], cfg.protocol.threshold
        )
        alpha = alphas[best]
        warnings += [w for w in [edge_warning(alphas, best, f"negation of {task}")] if w]
        curves[f"{task} target"], curves[f"{task} control"] = target_val, control_val
        target_val_at[task] = target_val[best]
        per_task[task] = {
            "alpha": alpha,
            "zeroshot": refs[task]["zeroshot"]["test"],
            "target": evaluator.accuracy(task, "test", vector, [-alpha])[0],
            "control": evaluator.accuracy(control, "test", vector, [-alpha])[0],
        }
    columns = ["alpha", "zeroshot", "target", "control"]
    return {
        "alphas": alphas,
        "val_curves": curves,
        "val_at_alpha": {"target_val": statistics.fmean(target_val_at.values())},
        "chosen_alpha": None,
        "control": control,
        "control_zeroshot": control_zeroshot,
        "threshold": float(cfg.protocol.threshold),
        "columns": columns,
        "per_task": per_task,
        "mean": mean_row(per_task, columns),
        "references": refs,
        "warnings": warnings,
    }


def _control_rule(_cfg: DictConfig) -> Rule:
    names = task_names()
    return Rule("protocol.control", lambda v: v in names, f"a task among {', '.join(names)}")


NEGATION = Protocol(
    "negation",
    run_negation,
    objectives=("target_val",),
    rules=(
        nonnegative_alphas("negation applies θ0 − α·τ"),
        Rule("protocol.threshold", number(0.0, 1.0, low_open=True), "a fraction in (0, 1]"),
        _control_rule,
    ),
)

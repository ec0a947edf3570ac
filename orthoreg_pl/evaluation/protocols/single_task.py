"""Single-task references (docs/method.md §5): zero-shot θ0 and fine-tuned θ0 + τ, evaluated from the task vectors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from orthoreg_pl.evaluation.protocols.common import Protocol, inputs, mean_row
from orthoreg_pl.utils.io import write_json

if TYPE_CHECKING:
    from orthoreg_pl.evaluation.evaluator import MergeEvaluator
    from orthoreg_pl.task_vectors import TaskVector


def run_single_task(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    """Zero-shot (θ0) and fine-tuned (θ0 + τ) top-1 on XVal and X-test of every task, evaluated from the
    task vectors; stored as JSON next to the runs. The runs' own numbers are kept beside for comparison."""
    per_task = {}
    refs = evaluator.task_references(vectors)
    for task, vector in vectors.items():
        zeroshot, finetuned = refs[task]["zeroshot"], refs[task]["finetuned"]
        recorded = vector.info.meta.get("accuracy", {}).get("finetuned") or {}
        per_task[task] = {
            "zeroshot_val": zeroshot["val"],
            "zeroshot_test": zeroshot["test"],
            "finetuned_val": finetuned["val"],
            "finetuned_test": finetuned["test"],
            "run_finetuned_test": recorded.get("test"),
        }
    columns = ["zeroshot_val", "zeroshot_test", "finetuned_val", "finetuned_test", "run_finetuned_test"]
    body = {
        "alphas": [1.0],
        "val_curves": {},
        "chosen_alpha": None,
        "columns": columns,
        "per_task": per_task,
        "references": refs,
    }
    body["mean"] = mean_row(per_task, columns)
    body["val_at_alpha"] = {"finetuned_val": body["mean"]["finetuned_val"]}
    if evaluator.trainer.is_global_zero:
        folder = Path(cfg.paths.runs_dir) / cfg.model.arch / cfg.mode.tag
        write_json(folder / f"single_task_seed{cfg.seed}.json", {"inputs": inputs(vectors), **body})
    return body


SINGLE_TASK = Protocol("single_task", run_single_task, objectives=("finetuned_val",))

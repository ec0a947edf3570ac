"""The evaluation protocols, one module each; every one is ``(cfg, evaluator, vectors, alphas) -> body``
of the report (alphas, val_curves, val_at_alpha, per_task, mean, ...). ``protocol.name`` picks one."""

from orthoreg_pl.evaluation.protocols.addition import run_addition
from orthoreg_pl.evaluation.protocols.analysis import run_analysis
from orthoreg_pl.evaluation.protocols.negation import run_negation
from orthoreg_pl.evaluation.protocols.single_task import run_single_task

PROTOCOLS = {
    "addition": run_addition,
    "negation": run_negation,
    "single_task": run_single_task,
    "analysis": run_analysis,
}
OBJECTIVES = {  # the values each protocol offers a sweeper (protocol.objective.metric)
    "addition": ("val_norm",),
    "negation": ("target_val",),
    "single_task": ("finetuned_val",),
    "analysis": ("xi_mean",),  # mean ξ(α1, α2) over the grid and the pairs, of merge.py's own mode
}

__all__ = ["OBJECTIVES", "PROTOCOLS", "run_addition", "run_analysis", "run_negation", "run_single_task"]

"""The analysis protocol: the paper's three figures for your own runs, side by side for several modes
(docs/analysis.md). Declared here with its options' check (analysis_options.py); computed by
analysis_run.py, which loads torch and the figures only when the protocol runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from orthoreg_pl.evaluation.protocols.analysis_options import validate_analysis
from orthoreg_pl.evaluation.protocols.common import Protocol

if TYPE_CHECKING:
    from orthoreg_pl.evaluation.evaluator import MergeEvaluator
    from orthoreg_pl.task_vectors import TaskVector


def run_analysis(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    """Cosines, column angles, ξ grids and α curves of every mode (analysis_run.py)."""
    from orthoreg_pl.evaluation.protocols import analysis_run  # torch, figures: loaded only to run it

    return analysis_run.run_analysis(cfg, evaluator, vectors, alphas)


def _same_modes(cfg: DictConfig, report: dict) -> bool:
    """A finished analysis is reused only if every compared mode's runs are unchanged."""
    from orthoreg_pl.evaluation.protocols import analysis_run  # reads run folders: loaded only to run it

    return (report.get("analysis") or {}).get("mode_checksums") == analysis_run.mode_checksums(cfg)


ANALYSIS = Protocol(
    "analysis", run_analysis, objectives=("xi_mean",), check=validate_analysis, still_fits=_same_modes
)

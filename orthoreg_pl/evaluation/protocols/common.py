"""What the protocols share: the declaration each protocol makes, the inputs a report names, mean rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from orthoreg_pl.config.validation import RuleLike

if TYPE_CHECKING:  # the declarations load without torch: the command line is checked with them
    from orthoreg_pl.evaluation.evaluator import MergeEvaluator
    from orthoreg_pl.task_vectors import TaskVector

Runner = Callable[[DictConfig, "MergeEvaluator", "dict[str, TaskVector]", list[float]], dict]


@dataclass(frozen=True)
class Protocol:
    """What merge.py needs of a protocol: how to run it, the values it offers a sweeper
    (``protocol.objective.metric``), the rules of its own options, a check for the options a rule
    table cannot express, and whether a finished report still fits inputs beyond merge.py's own runs.
    evaluation/validation.py and the pipeline read them from the registry (protocols/__init__.py),
    so nothing below the protocols needs to know them."""

    name: str
    run: Runner
    objectives: tuple[str, ...]
    rules: tuple[RuleLike, ...] = ()
    check: Callable[[DictConfig], None] | None = None
    still_fits: Callable[[DictConfig, dict], bool] | None = None


def inputs(vectors: dict[str, TaskVector]) -> dict[str, dict]:
    return {
        t: {
            "path": v.info.source,
            "checksum": v.info.checksum,
            "mode": v.info.mode,
            "lam": v.info.meta.get("ortho", {}).get("lam"),
            "identity": (v.info.meta.get("identity") or {}).get("hash"),
        }
        for t, v in vectors.items()
    }


def mean_row(per_task: dict[str, dict], columns: list[str]) -> dict:
    return {c: statistics.fmean(r[c] for r in per_task.values() if r.get(c) is not None) for c in columns}

"""What the protocols share: the declaration each protocol makes, the rules of their α grids, the
check of a merged vector, the inputs a report names, mean rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.config.validation import Rule, RuleLike, number, sequence
from orthoreg_pl.errors import OrthoRegError

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


def nonnegative_alphas(applied_as: str) -> Rule:
    """``protocol.alphas`` within the protocol's domain: α >= 0, ``applied_as`` saying what α scales
    (a negative α would turn an addition into a subtraction, a negation into an addition, and the
    report would still call it what the protocol is)."""

    def check(v: Any) -> bool:
        return sequence(number(0.0), min_length=1)(v)

    return Rule("protocol.alphas", check, f"a non-empty list of numbers >= 0 ({applied_as})")


def check_merged(cfg: DictConfig, merged: TaskVector, count: int) -> None:
    """Refuse a merge whose result keeps fewer non-zero entries than it has task vectors: every α
    would score θ0 and the report would show a flat curve as a result. Names the method and its
    parameters, the knobs that did it."""
    kept = sum(int(t.count_nonzero()) for t in merged.tensors.values())
    if kept >= count:
        return
    total = sum(t.numel() for t in merged.tensors.values())
    options = OmegaConf.to_container(cfg.merge_method, resolve=True)
    params = ", ".join(f"merge_method.{k}={v}" for k, v in options.items() if not k.startswith("_"))
    raise OrthoRegError(
        f"merge_method={cfg.merge_method_name} ({params or 'no parameters'}) keeps {kept} non-zero entries of "
        f"{total} for {count} task vector(s): its result is (almost) all zeros, so every α scores θ0; "
        "expected at least one entry per task (change those parameters)"
    )


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

"""The values ``merge.py`` uses, checked before anything is read, built or written: the groups it
shares with train.py, its own settings, and those its protocol declares (protocols/)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from orthoreg_pl.config.groups import task_names
from orthoreg_pl.config.rules import data_rules, mode_rules, model_rules, trainer_rules
from orthoreg_pl.config.validation import (
    Rule,
    RuleLike,
    boolean,
    check,
    choice,
    fraction_below_one,
    integer,
    number,
    optional,
    sequence,
)
from orthoreg_pl.evaluation.protocols import PROTOCOLS
from orthoreg_pl.utils.io import check_writable


def _distinct_numbers(v: Any) -> bool:
    return sequence(number(), min_length=1)(v) and len(set(v)) == len(v)


def merge_rules() -> list[RuleLike]:
    names = task_names()

    def tasks(v: Any) -> bool:
        return sequence(choice(names), min_length=1)(v) and len(set(v)) == len(v)

    def objective(cfg: DictConfig) -> Rule:
        offered = PROTOCOLS[str(cfg.protocol.name)].objectives
        return Rule("protocol.objective.metric", choice(offered), f"one of {', '.join(offered)}")

    def coefficients(cfg: DictConfig) -> Rule:
        return Rule("merge_method.coefficients", optional(sequence(number(), len(cfg.tasks))),
                    f"null or {len(cfg.tasks)} numbers (one per task of tasks)")  # fmt: skip

    return [
        Rule("tasks", tasks, f"a non-empty list of distinct tasks among {', '.join(names)}", True),
        Rule("protocol.name", choice(tuple(PROTOCOLS)), f"one of {', '.join(PROTOCOLS)}", True),
        Rule("protocol.alphas", _distinct_numbers, "a non-empty list of distinct numbers, e.g. [0, 0.5, 1]"),
        lambda cfg: PROTOCOLS[str(cfg.protocol.name)].rules,
        Rule("protocol.objective.direction", choice(("maximize", "minimize")), "maximize or minimize"),
        Rule("reference_tolerance", number(0.0, 1.0), "a fraction in [0, 1] (of accuracy)"),
        objective,
        Rule("merge_method.p", fraction_below_one, "a drop rate in [0, 1)"),
        Rule("merge_method.k", number(0.0, 1.0, low_open=True), "a fraction in (0, 1] of entries kept"),
        Rule("merge_method.seed", integer(), "an integer"),
        Rule("merge_method.rescale", boolean, "true or false"),
        coefficients,
    ]  # fmt: skip


def validate_merge(cfg: DictConfig) -> None:
    """The values merge.py uses, checked before anything is read, built or written; the reports
    folder must be writable (found now, not after the whole evaluation)."""
    check(cfg, [*model_rules(), *mode_rules(), *merge_rules(), *data_rules(), *trainer_rules()])
    check_writable(cfg.paths.reports_dir, "paths.reports_dir")
    protocol = PROTOCOLS[str(cfg.protocol.name)]
    if protocol.check is not None:  # options a rule table cannot express (e.g. the analysis' modes)
        protocol.check(cfg)

"""The values ``train.py`` uses, checked before anything is read, built or written."""

from __future__ import annotations

from omegaconf import DictConfig

from orthoreg_pl.config.groups import group_options
from orthoreg_pl.config.rules import data_rules, mode_rules, model_rules, trainer_rules
from orthoreg_pl.config.validation import (
    Rule,
    boolean,
    check,
    choice,
    fraction_below_one,
    integer,
    number,
    optional,
    sequence,
)
from orthoreg_pl.utils.io import check_writable

# What train.py can return to a sweeper: the accuracies meta.json records (runs/job.py: result_field).
OBJECTIVES = tuple(
    f"accuracy/{when}/{split}" for when in ("finetuned", "zeroshot") for split in ("val", "test")
)


def train_rules() -> list[Rule]:
    return [
        Rule("dataset", lambda v: v is not None, f"a task: dataset=<{'|'.join(group_options('dataset'))}>", True),
        Rule("optim.lr", number(0.0, low_open=True), "a number > 0"),
        Rule("optim.weight_decay", number(0.0), "a number >= 0"),
        Rule("optim.betas", sequence(fraction_below_one, 2), "[beta1, beta2], each in [0, 1)"),
        Rule("optim.eps", number(0.0, low_open=True), "a number > 0"),
        Rule("optim.warmup_steps", integer(0), "an integer >= 0"),
        Rule("optim.sum_accumulated_loss", boolean, "true or false"),
        Rule("eval_zeroshot", boolean, "true or false"),
        Rule("resume", boolean, "true or false"),
        Rule("wandb_task_vector_artifact", boolean, "true or false"),
        Rule("objective.metric", choice(OBJECTIVES), f"one of {', '.join(OBJECTIVES)}"),
        Rule("objective.direction", choice(("maximize", "minimize")), "maximize or minimize"),
        Rule("callbacks.checkpoint.every_n_train_steps", optional(integer(1)), "an integer >= 1 or null"),
        Rule("callbacks.orthogonality_monitor.every_n_steps", integer(1), "an integer >= 1"),
    ]  # fmt: skip


def validate_train(cfg: DictConfig) -> None:
    """The values train.py uses, checked before anything is read, built or written; the runs folder
    must be writable (found now, not after the run's first checkpoint)."""
    check(cfg, [*model_rules(), *mode_rules(), *train_rules(), *data_rules(), *trainer_rules()])
    check_writable(cfg.paths.runs_dir, "paths.runs_dir")

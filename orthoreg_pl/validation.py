"""Every value a user edits, checked right after Hydra composes the config: before a folder is made,
data read or a model built. A bad value stops the job with one line naming the key, the value and
what is accepted.

The rules are a table (key, check, what is accepted) per script, over the groups a user edits:
ortho, optim, data, mode options, protocol, merge_method and the trainer basics. Hydra checks which
group options exist; this checks the values inside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orthoreg_pl.errors import OrthoRegError

_ABSENT = object()
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def group_options(group: str) -> list[str]:
    """The options of a config group: the names of configs/<group>/*.yaml."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@dataclass(frozen=True)
class Rule:
    """``key`` must satisfy ``check``; ``expected`` says what is accepted. Absent keys pass
    unless ``required`` (a group may not have every option, e.g. only LoRA modes have a rank)."""

    key: str
    check: Callable[[Any], bool]
    expected: str
    required: bool = False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable:
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or v <= high

    return check


def integer(low: int | None = None) -> Callable:
    return lambda v: _is_int(v) and (low is None or v >= low)


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def choice(options: Sequence[Any]) -> Callable:
    return lambda v: v in options


def optional(check: Callable) -> Callable:
    return lambda v: v is None or check(v)


def sequence(item: Callable, length: int | None = None, min_length: int = 0) -> Callable:
    def check(v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < min_length:
            return False
        return (length is None or len(v) == length) and all(item(x) for x in v)

    return check


def _scale_range(v: Any) -> bool:
    return sequence(number(0.0, 1.0, low_open=True), 2)(v) and v[0] <= v[1]


def _fraction_below_one(v: Any) -> bool:
    return number(0.0, 1.0)(v) and v < 1


def _size(v: Any) -> bool:
    return v is None or integer(1)(v) or sequence(integer(1), 2)(v)


def _devices(v: Any) -> bool:
    return v == "auto" or v == -1 or integer(1)(v) or sequence(integer(0), min_length=1)(v)


def _limit(v: Any) -> bool:
    return v is None or integer(0)(v) or number(0.0, 1.0)(v)


def _precisions() -> tuple[str, ...]:
    """The precision names Lightning's Trainer accepts, from its own list."""
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return (*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS))  # 32 is taken as "32"


MATMUL_PRECISIONS = (
    "highest",
    "high",
    "medium",
)  # torch.set_float32_matmul_precision (orthoreg_pl/trainer.py)


def _trainer_rules() -> list[Rule]:
    precisions = _precisions()
    return [
        Rule("trainer.precision", lambda v: str(v) in precisions, f"one of {', '.join(precisions)}"),
        Rule("trainer.matmul_precision", choice(MATMUL_PRECISIONS), "highest, high or medium"),
        Rule("trainer.accelerator", choice(("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
             "auto, cpu, gpu, cuda, mps or tpu"),
        Rule("trainer.devices", _devices, "a number of devices >= 1, -1 (all), 'auto' or a list of device ids"),
        Rule("trainer.num_nodes", integer(1), "an integer >= 1"),
        Rule("trainer.max_epochs", optional(lambda v: _is_int(v) and (v >= 1 or v == -1)),
             "an integer >= 1 (or -1: no limit)"),
        Rule("trainer.max_steps", lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)"),
        Rule("trainer.accumulate_grad_batches", integer(1), "an integer >= 1"),
        Rule("trainer.gradient_clip_val", optional(number(0.0)), "a number >= 0 or null"),
        Rule("trainer.gradient_clip_algorithm", optional(choice(("norm", "value"))), "norm or value"),
        Rule("trainer.log_every_n_steps", integer(1), "an integer >= 1"),
        Rule("trainer.limit_train_batches", _limit, "null, an integer >= 0 or a fraction in [0, 1]"),
        Rule("trainer.limit_val_batches", _limit, "null, an integer >= 0 or a fraction in [0, 1]"),
        Rule("trainer.limit_test_batches", _limit, "null, an integer >= 0 or a fraction in [0, 1]"),
    ]  # fmt: skip


def _data_rules() -> list[Rule]:
    from orthoreg_pl.data.datamodule import PREPROCESS_KEYS

    triple = sequence(number(), 3)
    return [
        Rule("data.batch_size", integer(1), "an integer >= 1 (the global batch, split over the processes)"),
        Rule("data.eval_batch_size", integer(1), "an integer >= 1"),
        Rule("data.num_workers", integer(0), "an integer >= 0"),
        Rule("data.split_seed", integer(), "an integer"),
        Rule("data.train_scale", _scale_range, "[low, high] with 0 < low <= high <= 1 (RandomResizedCrop scale)"),
        Rule("data.eval_cache", boolean, "true or false"),
        Rule("data.train_cache", boolean, "true or false"),
        Rule("data.skip_corrupt_images", boolean, "true or false"),
        Rule("data.preprocess_overrides", lambda v: v is None or set(v) <= set(PREPROCESS_KEYS),
             f"keys among {', '.join(PREPROCESS_KEYS)}"),
        Rule("data.preprocess_overrides.size", _size, "null, a size >= 1 or [height, width]"),
        Rule("data.preprocess_overrides.mean", optional(triple), "null or three numbers (R, G, B)"),
        Rule("data.preprocess_overrides.std", optional(sequence(number(0.0, low_open=True), 3)),
             "null or three numbers > 0 (R, G, B)"),
        Rule("data.preprocess_overrides.interpolation", optional(choice(("bicubic", "bilinear", "nearest"))),
             "null, bicubic, bilinear or nearest"),
        Rule("data.preprocess_overrides.resize_mode", optional(choice(("shortest", "longest", "squash"))),
             "null, shortest, longest or squash"),
    ]  # fmt: skip


def _model_rules() -> list[Rule]:
    return [
        Rule("model.arch", lambda v: isinstance(v, str) and bool(v), "an open_clip architecture name", True),
        Rule("model.pretrained", optional(lambda v: isinstance(v, str) and bool(v)),
             "an open_clip tag, a path to a weights file, or null (random init)"),
        Rule("model.init_seed", integer(), "an integer"),
        Rule("model.quick_gelu", optional(boolean), "true, false or null"),
        Rule("seed", integer(), "an integer", True),
    ]  # fmt: skip


def _mode_rules() -> list[Rule]:
    from orthoreg_pl.penalties.ortho import GRAMS, NORMS

    return [
        Rule("mode.penalized", boolean, "true or false", True),
        Rule("ortho.lam", number(0.0), "a finite λ >= 0 (a number)"),
        Rule("ortho.norm", choice(NORMS), f"one of {', '.join(NORMS)}"),
        Rule("ortho.gram", choice(GRAMS), f"one of {', '.join(GRAMS)}"),
        Rule("mode.module.rank", integer(1), "an integer >= 1 (the LoRA rank)"),
        Rule(
            "mode.module.alpha", number(0.0, low_open=True), "a number > 0 (the LoRA scale is alpha / rank)"
        ),
    ]


def _train_rules() -> list[Rule]:
    return [
        Rule("dataset", lambda v: v is not None, f"a task: dataset=<{'|'.join(group_options('dataset'))}>", True),
        Rule("optim.lr", number(0.0, low_open=True), "a number > 0"),
        Rule("optim.weight_decay", number(0.0), "a number >= 0"),
        Rule("optim.betas", sequence(_fraction_below_one, 2), "[beta1, beta2], each in [0, 1)"),
        Rule("optim.eps", number(0.0, low_open=True), "a number > 0"),
        Rule("optim.warmup_steps", integer(0), "an integer >= 0"),
        Rule("optim.sum_accumulated_loss", boolean, "true or false"),
        Rule("eval_zeroshot", boolean, "true or false"),
        Rule("resume", boolean, "true or false"),
        Rule("wandb_task_vector_artifact", boolean, "true or false"),
        Rule("objective.direction", choice(("maximize", "minimize")), "maximize or minimize"),
        Rule("callbacks.checkpoint.every_n_train_steps", optional(integer(1)), "an integer >= 1 or null"),
        Rule("callbacks.orthogonality_monitor.every_n_steps", integer(1), "an integer >= 1"),
    ]  # fmt: skip


def _merge_rules() -> list[Rule]:
    from orthoreg_pl.data.registry import task_names
    from orthoreg_pl.evaluation.protocols import OBJECTIVES, PROTOCOLS

    names = task_names()
    task = choice(names)

    def tasks(v: Any) -> bool:
        return sequence(task, min_length=1)(v) and len(set(v)) == len(v)

    def objective(cfg: DictConfig) -> Rule:
        offered = OBJECTIVES.get(str(cfg.protocol.name), ())
        return Rule("protocol.objective.metric", choice(offered), f"one of {', '.join(offered)}")

    return [
        Rule("tasks", tasks, f"a non-empty list of distinct tasks among {', '.join(names)}", True),
        Rule("protocol.name", choice(tuple(PROTOCOLS)), f"one of {', '.join(PROTOCOLS)}", True),
        Rule("protocol.alphas", lambda v: sequence(number(), min_length=1)(v) and len(set(v)) == len(v),
             "a non-empty list of distinct numbers, e.g. [0, 0.5, 1]"),
        Rule("protocol.threshold", number(0.0, 1.0, low_open=True), "a fraction in (0, 1]"),
        Rule("protocol.control", task, f"a task among {', '.join(names)}"),
        Rule("protocol.objective.direction", choice(("maximize", "minimize")), "maximize or minimize"),
        Rule("reference_tolerance", number(0.0, 1.0), "a fraction in [0, 1] (of accuracy)"),
        objective,
        Rule("merge_method.p", _fraction_below_one, "a drop rate in [0, 1)"),
        Rule("merge_method.k", number(0.0, 1.0, low_open=True), "a fraction in (0, 1] of entries kept"),
        Rule("merge_method.seed", integer(), "an integer"),
        Rule("merge_method.rescale", boolean, "true or false"),
        lambda cfg: Rule("merge_method.coefficients", optional(sequence(number(), len(cfg.tasks))),
                         f"null or {len(cfg.tasks)} numbers (one per task of tasks)"),
    ]  # fmt: skip


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        raise OrthoRegError(f"{key} cannot be read ({message}); fix the value given for it") from None
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check(cfg: DictConfig, rules: Sequence[Rule | Callable[[DictConfig], Rule]]) -> None:
    """Raise OrthoRegError at the first value that breaks its rule."""
    for rule in rules:
        if not isinstance(rule, Rule):
            rule = rule(cfg)  # a rule that depends on another value (e.g. one coefficient per task)
        value = _value(cfg, rule.key)
        if value is _ABSENT:
            if rule.required:
                raise OrthoRegError(f"{rule.key} is not set; expected {rule.expected}")
            continue
        if not rule.check(value):
            raise OrthoRegError(f"{rule.key}={_show(value)}; expected {rule.expected}")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def validate_train(cfg: DictConfig) -> None:
    """The values train.py uses, checked before anything is read, built or written."""
    check(cfg, [*_model_rules(), *_mode_rules(), *_train_rules(), *_data_rules(), *_trainer_rules()])


def validate_merge(cfg: DictConfig) -> None:
    """The values merge.py uses, checked before anything is read, built or written."""
    check(cfg, [*_model_rules(), *_mode_rules(), *_merge_rules(), *_data_rules(), *_trainer_rules()])
    if cfg.protocol.name == "analysis":  # its options (modes to compare, ξ pairs, angle sampling)
        from orthoreg_pl.evaluation.protocols.analysis import validate_analysis

        validate_analysis(cfg)


VALIDATORS: dict[str, Callable[[DictConfig], None]] = {"train": validate_train, "merge": validate_merge}

"""The rules of the config groups both scripts compose: model, mode and ortho, data, trainer.

``train.py`` adds its own (training/validation.py), ``merge.py`` its own and its protocol's
(evaluation/validation.py).
"""

from __future__ import annotations

from typing import Any

from orthoreg_pl.config.groups import preprocess_keys
from orthoreg_pl.config.validation import (
    Rule,
    boolean,
    choice,
    integer,
    number,
    optional,
    sequence,
)
from orthoreg_pl.penalties.options import GRAMS, NORMS

MATMUL_PRECISIONS = (
    "highest",
    "high",
    "medium",
)  # torch.set_float32_matmul_precision (training/trainer.py)


def _scale_range(v: Any) -> bool:
    return sequence(number(0.0, 1.0, low_open=True), 2)(v) and v[0] <= v[1]


def _size(v: Any) -> bool:
    return v is None or integer(1)(v) or sequence(integer(1), 2)(v)


def _devices(v: Any) -> bool:
    return v == "auto" or v == -1 or integer(1)(v) or sequence(integer(0), min_length=1)(v)


def _limit(v: Any) -> bool:
    return v is None or integer(0)(v) or number(0.0, 1.0)(v)


def _max_epochs(v: Any) -> bool:
    return v is None or (integer()(v) and (v >= 1 or v == -1))


# The precision names Lightning's Trainer accepts (tests/test_configs.py checks them against Lightning's
# own list; written out so that a command line is checked before Lightning, and torch, load).
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
              "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")  # fmt: skip


def trainer_rules() -> list[Rule]:
    names = PRECISIONS
    return [
        Rule("trainer.precision", lambda v: str(v) in names, f"one of {', '.join(names)}"),
        Rule("trainer.matmul_precision", choice(MATMUL_PRECISIONS), "highest, high or medium"),
        Rule("trainer.accelerator", choice(("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
             "auto, cpu, gpu, cuda, mps or tpu"),
        Rule("trainer.devices", _devices, "a number of devices >= 1, -1 (all), 'auto' or a list of device ids"),
        Rule("trainer.num_nodes", integer(1), "an integer >= 1"),
        Rule("trainer.max_epochs", _max_epochs, "an integer >= 1 (or -1: no limit)"),
        Rule("trainer.max_steps", lambda v: integer()(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)"),
        Rule("trainer.accumulate_grad_batches", integer(1), "an integer >= 1"),
        Rule("trainer.gradient_clip_val", optional(number(0.0)), "a number >= 0 or null"),
        Rule("trainer.gradient_clip_algorithm", optional(choice(("norm", "value"))), "norm or value"),
        Rule("trainer.log_every_n_steps", integer(1), "an integer >= 1"),
        Rule("trainer.limit_train_batches", _limit, "null, an integer >= 0 or a fraction in [0, 1]"),
        Rule("trainer.limit_val_batches", _limit, "null, an integer >= 0 or a fraction in [0, 1]"),
        Rule("trainer.limit_test_batches", _limit, "null, an integer >= 0 or a fraction in [0, 1]"),
    ]  # fmt: skip


def data_rules() -> list[Rule]:
    triple = sequence(number(), 3)
    keys = preprocess_keys()
    return [
        Rule("data.batch_size", integer(1), "an integer >= 1 (the global batch, split over the processes)"),
        Rule("data.eval_batch_size", integer(1), "an integer >= 1"),
        Rule("data.num_workers", integer(0), "an integer >= 0"),
        Rule("data.split_seed", integer(), "an integer"),
        Rule("data.train_scale", _scale_range, "[low, high] with 0 < low <= high <= 1 (RandomResizedCrop scale)"),
        Rule("data.eval_cache", boolean, "true or false"),
        Rule("data.train_cache", boolean, "true or false"),
        Rule("data.skip_corrupt_images", boolean, "true or false"),
        Rule("data.preprocess_overrides", lambda v: v is None or set(v) <= set(keys),
             f"keys among {', '.join(keys)}"),
        Rule("data.preprocess_overrides.size", _size, "null, a size >= 1 or [height, width]"),
        Rule("data.preprocess_overrides.mean", optional(triple), "null or three numbers (R, G, B)"),
        Rule("data.preprocess_overrides.std", optional(sequence(number(0.0, low_open=True), 3)),
             "null or three numbers > 0 (R, G, B)"),
        Rule("data.preprocess_overrides.interpolation", optional(choice(("bicubic", "bilinear", "nearest"))),
             "null, bicubic, bilinear or nearest"),
        Rule("data.preprocess_overrides.resize_mode", optional(choice(("shortest", "longest", "squash"))),
             "null, shortest, longest or squash"),
    ]  # fmt: skip


def model_rules() -> list[Rule]:
    return [
        Rule("model.arch", lambda v: isinstance(v, str) and bool(v), "an open_clip architecture name", True),
        Rule("model.pretrained", optional(lambda v: isinstance(v, str) and bool(v)),
             "an open_clip tag, a path to a weights file, or null (random init)"),
        Rule("model.init_seed", integer(), "an integer"),
        Rule("model.quick_gelu", optional(boolean), "true, false or null"),
        Rule("seed", integer(), "an integer", True),
    ]  # fmt: skip


def mode_rules() -> list[Rule]:
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

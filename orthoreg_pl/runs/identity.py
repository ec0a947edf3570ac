"""A run's identity: the settings that change its result, and a short hash of them.

Two jobs with the same identity are the same run (a re-run skips or resumes it); two jobs that differ in
any of these settings get different run folders, even when their readable tag (arch, mode, λ, task,
seed) is the same. Paths, loggers, devices, strategy, worker counts and evaluation batch sizes never
change a result, so the same run on 1 or 8 GPUs has one identity.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.utils.io import weights_identity

HASH_LENGTH = 10  # hex digits: 40 bits, collisions negligible for campaigns of thousands of runs

# Config groups whose every key shapes the result, minus the keys below (derived or infrastructure).
_GROUPS = ("model", "dataset", "mode", "ortho", "optim", "data")
_IGNORED = {
    "dataset": {"epochs"},  # reaches the run as trainer.max_epochs
    "mode": {"tag", "penalized"},  # derived from mode.name and λ
    "data": {
        "task",
        "seed",
        "data_root",
        "cache_dir",
        "num_workers",
        "eval_batch_size",
        "eval_cache",
        "eval_cache_dir",
        "train_cache_dir",
    },
}
# Settings added after runs were made, left out at the value that reproduces those runs, so their
# identities (and folders) stay what they were: data.train_cache=false is the reference data path,
# trainer.matmul_precision=highest the exact float32 matmuls every earlier run used.
_LEFT_OUT_AT = {"data.train_cache": False, "trainer.matmul_precision": "highest"}
# The few trainer settings that change what is trained or measured; the rest is infrastructure.
TRAINER_KEYS = (
    "precision",
    "matmul_precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "max_epochs",
    "max_steps",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "fast_dev_run",
)
# Settings a merge config shares with the training config: named on merge.py's command line, they
# select the runs to merge (``merge.py ... optim.lr=3e-5``).
MERGE_SELECTABLE = (
    "model.",
    "mode.",
    "ortho.",
    "optim.",
    "data.split_seed",
    "data.train_scale",
    "data.preprocess_overrides",
    "data.train_cache",
)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not str(key).startswith("_"):  # _target_, _partial_: named by mode.name already
                _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = value


def _select(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _settings(
    cfg: DictConfig, lam: float, groups: tuple[str, ...], ignored: dict, trainer_keys: tuple
) -> dict:
    settings: dict[str, Any] = {}
    for group in groups:
        if group == "ortho" and not lam:
            continue
        node = cfg.get(group) or {}
        for key in node:
            if key in ignored.get(group, ()) or str(key).startswith("_"):
                continue
            _flatten(f"{group}.{key}", _select(cfg, f"{group}.{key}"), settings)
    if isinstance(settings.get("model.pretrained"), str):
        settings["model.pretrained"] = weights_identity(settings["model.pretrained"])
    if lam:
        settings["ortho.lam"] = float(lam)
    for key in trainer_keys:
        settings[f"trainer.{key}"] = _select(cfg, f"trainer.{key}")
    for key, value in _LEFT_OUT_AT.items():
        if key in settings and type(settings[key]) is type(value) and settings[key] == value:
            del settings[key]
    settings["seed"] = _select(cfg, "seed")
    return dict(sorted(settings.items()))


def identity_settings(cfg: DictConfig, lam: float) -> dict[str, Any]:
    """Flat ``{"optim.lr": 1e-05, ...}`` of every setting that changes a fine-tuning run's result.

    ``lam`` is the λ the run trains with (0 and no ortho options for modes without the penalty), so
    ``mode=standard ortho.lam=10`` and ``mode=standard`` are one run.
    """
    return _settings(cfg, lam, _GROUPS, _IGNORED, TRAINER_KEYS)


# A merge report is what it merges (the runs' model, mode, λ, optim, seed), how (merge method, protocol:
# grid, threshold, control), on which tasks, and at which evaluation precision.
_MERGE_GROUPS = ("model", "mode", "ortho", "optim", "data", "merge_method", "protocol")
_MERGE_IGNORED = {**_IGNORED, "data": _IGNORED["data"] | {"batch_size"}, "protocol": {"objective"}}
_MERGE_TRAINER_KEYS = ("precision", "matmul_precision", "limit_val_batches", "limit_test_batches")


def report_settings(cfg: DictConfig, lam: float) -> dict[str, Any]:
    """Flat settings that change a merge report's result (its inputs' checksums are recorded apart)."""
    settings = _settings(cfg, lam, _MERGE_GROUPS, _MERGE_IGNORED, _MERGE_TRAINER_KEYS)
    settings["tasks"] = _select(cfg, "tasks")
    if _select(cfg, "train_overrides"):  # runs trained with other settings: another report (none: as before)
        settings["train_overrides"] = _select(cfg, "train_overrides")
    return dict(sorted(settings.items()))


def canonical(value: Any) -> Any:
    """The value as hashed and compared: numbers as floats (``1`` equals ``1.0``), tuples as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return str(value)


def identity_hash(settings: Mapping[str, Any]) -> str:
    text = json.dumps(canonical(dict(settings)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def same_value(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def differing(settings: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """``key -> the values seen`` for every key whose value is not the same in all ``settings``."""
    keys = sorted({k for s in settings for k in s})
    out = {}
    for key in keys:
        values = [s.get(key) for s in settings]
        if any(not same_value(v, values[0]) for v in values[1:]):
            out[key] = values
    return out


def campaign_settings(cfg: DictConfig) -> dict:
    """What identifies a campaign (``${campaign_hash:}``, its W&B run id): the grid and the experiments."""
    keys = (
        "name",
        "datasets",
        "modes",
        "lambdas",
        "lam",
        "seeds",
        "lr",
        "experiments",
        "overrides",
        "objective",
    )
    values = {key: cfg.get(key) for key in keys}
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()
    }

"""The Lightning Trainer as ``configs/trainer`` builds it, plus the one torch setting a Trainer lacks.

``matmul_precision`` is torch's float32 matmul precision (``torch.set_float32_matmul_precision``):
``highest`` keeps float32 matmuls exact (the reference's numbers, the default); ``high`` lets an
Ampere-or-newer GPU use TF32 tensor cores for float32 matmuls and convolutions (about 10 significant
bits instead of 23); ``medium`` also allows bf16 internally. It only matters under ``precision=32-true``
(under bf16-mixed the autocast matmuls are bf16 already) and on GPUs: a CPU computes float32 either
way. Set per process, so every DDP rank and every merge gets it; it is part of a run's identity.

Every Trainer writes its checkpoints through :class:`~orthoreg_pl.training.checkpoint_io.AtomicCheckpointIO`
(whole or not at all; a full disk is one line), unless ``plugins`` already holds a CheckpointIO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO

from orthoreg_pl.config.rules import MATMUL_PRECISIONS
from orthoreg_pl.training.checkpoint_io import AtomicCheckpointIO


def make_trainer(matmul_precision: str = "highest", **trainer_kwargs: Any) -> L.Trainer:
    """Set torch's float32 matmul precision for this process, then build the Trainer (with atomic
    checkpoint writes)."""
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"trainer.matmul_precision={matmul_precision!r}; expected one of {MATMUL_PRECISIONS}"
        )
    torch.set_float32_matmul_precision(matmul_precision)
    return L.Trainer(**{**trainer_kwargs, "plugins": with_atomic_checkpoints(trainer_kwargs.get("plugins"))})


def with_atomic_checkpoints(plugins: Any) -> list:
    """``plugins`` (None, one plugin or a list) plus an AtomicCheckpointIO unless one CheckpointIO is there."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, Sequence) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins

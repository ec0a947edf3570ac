"""The Lightning Trainer as ``configs/trainer`` builds it, plus the one torch setting a Trainer lacks.

``matmul_precision`` is torch's float32 matmul precision (``torch.set_float32_matmul_precision``):
``highest`` keeps float32 matmuls exact (the reference's numbers, the default); ``high`` lets an
Ampere-or-newer GPU use TF32 tensor cores for float32 matmuls and convolutions (about 10 significant
bits instead of 23); ``medium`` also allows bf16 internally. It only matters under ``precision=32-true``
(under bf16-mixed the autocast matmuls are bf16 already) and on GPUs: a CPU computes float32 either
way. Set per process, so every DDP rank and every merge gets it; it is part of a run's identity.

Under SLURM the Trainer gets Lightning's own SLURM environment with its auto-requeue off: the run's
lifecycle (runs/lifecycle.py) saves ``last.ckpt`` at a step boundary and requeues on the pre-emption
signal, and Lightning's handler beside it would save a second, mid-step checkpoint and requeue again.

Every Trainer writes its checkpoints through :class:`~orthoreg_pl.training.checkpoint_io.AtomicCheckpointIO`
(whole or not at all; a full disk is one line), unless ``plugins`` already holds a CheckpointIO.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

from orthoreg_pl.config.rules import MATMUL_PRECISIONS
from orthoreg_pl.runs.job import in_multirun
from orthoreg_pl.training.checkpoint_io import AtomicCheckpointIO


def make_trainer(
    matmul_precision: str = "highest", enable_progress_bar: bool | None = None, **trainer_kwargs: Any
) -> L.Trainer:
    """Set torch's float32 matmul precision for this process, then build the Trainer (with atomic
    checkpoint writes). Lightning's progress bar shows by default only on a terminal and outside a
    multirun, whose jobs report to the sweep's one line instead (runs/progress.py): bars in a log file
    are noise."""
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"trainer.matmul_precision={matmul_precision!r}; expected one of {MATMUL_PRECISIONS}"
        )
    torch.set_float32_matmul_precision(matmul_precision)
    if enable_progress_bar is None:
        enable_progress_bar = sys.stderr.isatty() and not in_multirun()
    # Lightning's own use of a torch API torch now deprecates: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    if not os.environ.get("SLURM_JOB_ID"):
        # Lightning warns at every fit/validate/test that SLURM's `srun` is installed but not used; outside
        # a SLURM allocation there is nothing to prepend it to, so the warning is noise there
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
    plugins = with_slurm_environment(with_atomic_checkpoints(trainer_kwargs.pop("plugins", None)))
    return L.Trainer(enable_progress_bar=enable_progress_bar, plugins=plugins, **trainer_kwargs)


def _as_list(plugins: Any) -> list:
    """None, one plugin or a list of them (Hydra's ListConfig included) as a list."""
    many = isinstance(plugins, Sequence) and not isinstance(plugins, str)
    return [] if plugins is None else list(plugins) if many else [plugins]


def with_atomic_checkpoints(plugins: Any) -> list:
    """``plugins`` plus an AtomicCheckpointIO unless one CheckpointIO is there."""
    plugins = _as_list(plugins)
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def with_slurm_environment(plugins: Any) -> list:
    """``plugins`` plus SLURMEnvironment(auto_requeue=False) inside a SLURM job (unless a cluster
    environment is given); outside SLURM, ``plugins`` as they are."""
    given = _as_list(plugins)
    if not SLURMEnvironment.detect() or any(isinstance(p, ClusterEnvironment) for p in given):
        return given
    return [*given, SLURMEnvironment(auto_requeue=False)]

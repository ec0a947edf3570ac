"""Checks on loaded tensors, shared by task vectors and zero-shot heads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError


def check_finite(tensors: Mapping[str, Tensor], source: str | Path) -> None:
    """Refuse NaN or ±inf in a task vector or head: a merge would spread it to every prediction."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise OrthoRegError(
                f"{source}: tensor {key} holds {bad} non-finite value(s) (NaN or inf); expected finite numbers"
            )

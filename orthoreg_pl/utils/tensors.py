"""Checks on loaded tensors, shared by task vectors and zero-shot heads, and the content hash the
tensor caches record (zero-shot heads, quickstart data) and verify when they are read."""

from __future__ import annotations

import hashlib
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


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 of names, dtypes, shapes and bytes (names in sorted order): what a tensor cache records
    when it is built, so that a file changed afterwards is refused instead of used."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()

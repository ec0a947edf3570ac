"""Task vectors on disk: safetensors (loading never executes code), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import atomic_path

TASK_VECTOR_FILE = "task_vector.safetensors"


def save_task_vector(path: str | Path, tensors: dict[str, Tensor], metadata: dict | None = None) -> None:
    """Write name → tensor; ``metadata`` (JSON-able) travels in the safetensors header."""
    header = {"orthoreg": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)


def load_task_vector(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise OrthoRegError(f"task vector file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise OrthoRegError(f"task vector file {path} is not a readable safetensors file ({err})") from err

"""The task registry: a name maps to a loader that returns the task's pools, class names and prompts.

Quickstart tasks (generated offline) and the real datasets of the literature register the same way,
so the DataModule, the zero-shot heads and the merge pipeline never special-case a task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from orthoreg_pl.errors import OrthoRegError


@dataclass
class TaskData:
    """What a loader returns. Datasets yield ``(PIL.Image, int)``; transforms are applied later."""

    train_pool: Dataset
    test: Dataset
    classnames: list[str]
    templates: list[str]
    val: Dataset | None = None  # a task's own validation split (EuroSAT); else carved from train_pool


@dataclass(frozen=True)
class TaskSpec:
    name: str
    load: Callable[[Path, Path], TaskData]  # (data_root, cache_dir) -> TaskData
    description: str
    needs_data_root: bool = True  # False for tasks generated offline into the cache


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> TaskSpec:
    if name not in _REGISTRY:
        raise OrthoRegError(f"unknown task {name!r}; expected one of {task_names()}")
    return _REGISTRY[name]


def load_task(name: str, data_root: str | Path, cache_dir: str | Path) -> TaskData:
    """Look the task up and load it, checking the data root first for tasks that read one."""
    spec = get_task(name)
    root = Path(data_root)
    if spec.needs_data_root and not root.is_dir():
        raise OrthoRegError(
            f"data root {str(root)!r} does not exist; task {name!r} reads its files from paths.data_root "
            "(set paths.data_root=DIR or the ORTHOREG_DATA_ROOT environment variable)"
        )
    return spec.load(root, Path(cache_dir))

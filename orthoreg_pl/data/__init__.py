"""Data: the task registry, the split rule, quickstart tasks, real datasets, and the DataModule."""

from orthoreg_pl.data import mnist, quickstart  # noqa: F401  (registers the tasks)
from orthoreg_pl.data.datamodule import TaskDataModule, clip_transforms
from orthoreg_pl.data.quickstart import QUICKSTART_CONTROL, QUICKSTART_TASKS
from orthoreg_pl.data.registry import TaskData, TaskSpec, get_task, load_task, register_task, task_names
from orthoreg_pl.data.splits import carve_validation, split_checksum

__all__ = [
    "QUICKSTART_CONTROL",
    "QUICKSTART_TASKS",
    "TaskData",
    "TaskDataModule",
    "TaskSpec",
    "carve_validation",
    "clip_transforms",
    "get_task",
    "load_task",
    "register_task",
    "split_checksum",
    "task_names",
]

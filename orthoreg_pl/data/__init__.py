"""Data: the task registry, the split rule, quickstart tasks, real datasets, and the DataModule."""

from orthoreg_pl.data import (  # noqa: F401  (each module registers its task)
    cars,
    dtd,
    eurosat,
    gtsrb,
    imagenet,
    mnist,
    quickstart,
    resisc45,
    sun397,
    svhn,
)
from orthoreg_pl.data.datamodule import TaskDataModule, TransformedDataset, clip_transforms, eval_dataloader
from orthoreg_pl.data.eval_cache import CachedEvalDataset, eval_cache_dataset
from orthoreg_pl.data.files import CorruptImageError, ImageFiles
from orthoreg_pl.data.layouts import LAYOUTS, TASKS, Layout
from orthoreg_pl.data.quickstart import QUICKSTART_CONTROL, QUICKSTART_TASKS
from orthoreg_pl.data.registry import TaskData, TaskSpec, get_task, load_task, register_task, task_names
from orthoreg_pl.data.splits import carve_validation, split_checksum
from orthoreg_pl.data.train_cache import CachedTrainDataset, train_cache_dataset

__all__ = [
    "LAYOUTS",
    "QUICKSTART_CONTROL",
    "QUICKSTART_TASKS",
    "TASKS",
    "CachedEvalDataset",
    "CachedTrainDataset",
    "CorruptImageError",
    "ImageFiles",
    "Layout",
    "TaskData",
    "TaskDataModule",
    "TaskSpec",
    "TransformedDataset",
    "carve_validation",
    "clip_transforms",
    "eval_cache_dataset",
    "eval_dataloader",
    "get_task",
    "load_task",
    "register_task",
    "split_checksum",
    "task_names",
    "train_cache_dataset",
]

"""SUN397 as an ImageFolder pair (docs/data.md): ``sun397/train`` (the Training_01 list) is the train
pool, ``sun397/val`` (Testing_01) is used as the test set. Class folders look like ``a_abbey``; the
class name is the folder minus its first 2 characters, ``_`` → space."""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import folder_pair_task
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task

LAYOUT = LAYOUTS["SUN397"]


def load_sun397(data_root: Path, cache_dir: Path) -> TaskData:
    return folder_pair_task(LAYOUT, data_root, "train", "val", classname=lambda f: f[2:].replace("_", " "))


register_task(
    TaskSpec(name="SUN397", load=load_sun397, description="SUN397 scenes, split 1 (ImageFolder), 397 classes")
)

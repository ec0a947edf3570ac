"""DTD (Describable Textures), split 1, as an ImageFolder pair (docs/data.md): ``dtd/train`` is the
train pool (split-1 train+val), ``dtd/val`` is used as the test set. Class names: folder, ``_`` → space."""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import folder_pair_task
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task

LAYOUT = LAYOUTS["DTD"]


def load_dtd(data_root: Path, cache_dir: Path) -> TaskData:
    return folder_pair_task(LAYOUT, data_root, "train", "val", classname=lambda f: f.replace("_", " "))


register_task(
    TaskSpec(name="DTD", load=load_dtd, description="DTD textures, split 1 (ImageFolder), 47 classes")
)

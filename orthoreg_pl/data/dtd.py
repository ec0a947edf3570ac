"""DTD (Describable Textures), split 1, as an ImageFolder pair (datasets.md): ``dtd/train`` is the
train pool (split-1 train+val), ``dtd/val`` is used as the test set. Class names: folder, ``_`` → space."""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import image_folder, require_dir
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.models.heads import load_prompts

LAYOUT = LAYOUTS["DTD"]


def load_dtd(data_root: Path, cache_dir: Path) -> TaskData:
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    folders, train = image_folder(LAYOUT.task, base / "train", LAYOUT.num_classes, LAYOUT.expects)
    _, test = image_folder(LAYOUT.task, base / "val", LAYOUT.num_classes, LAYOUT.expects, classes=folders)
    return TaskData(
        train_pool=train,
        test=test,
        classnames=[f.replace("_", " ") for f in folders],
        templates=load_prompts()["DTD"]["templates"],
    )


register_task(
    TaskSpec(name="DTD", load=load_dtd, description="DTD textures, split 1 (ImageFolder), 47 classes")
)

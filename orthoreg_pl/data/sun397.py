"""SUN397 as an ImageFolder pair (datasets.md): ``sun397/train`` (the Training_01 list) is the train
pool, ``sun397/val`` (Testing_01) is used as the test set. Class folders look like ``a_abbey``; the
class name is the folder minus its first 2 characters, ``_`` → space."""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import image_folder, require_dir
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.models.heads import load_prompts

LAYOUT = LAYOUTS["SUN397"]


def load_sun397(data_root: Path, cache_dir: Path) -> TaskData:
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    folders, train = image_folder(LAYOUT.task, base / "train", LAYOUT.num_classes, LAYOUT.expects)
    _, test = image_folder(LAYOUT.task, base / "val", LAYOUT.num_classes, LAYOUT.expects, classes=folders)
    return TaskData(
        train_pool=train,
        test=test,
        classnames=[f[2:].replace("_", " ") for f in folders],
        templates=load_prompts()["SUN397"]["templates"],
    )


register_task(
    TaskSpec(name="SUN397", load=load_sun397, description="SUN397 scenes, split 1 (ImageFolder), 397 classes")
)

"""ImageNet (ILSVRC-2012), the control set of task negation (docs/data.md): ``imagenet/train/<wnid>``
is the pool ImageNetVal (5000 images) is carved from by the seed-0 rule; the 50000 validation images
(``imagenet/val_in_folder/<wnid>``, else ``imagenet/val/<wnid>``) are the test set. Never downloaded.
Class names: the 1000 of zeroshot_prompts.json, in sorted-wnid order."""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import image_folder, require_dir
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError

LAYOUT = LAYOUTS["ImageNet"]


def val_folder(base: Path) -> Path:
    """``val_in_folder`` (the literature's name), else ``val``."""
    for name in ("val_in_folder", "val"):
        if (base / name).is_dir():
            return base / name
    raise OrthoRegError(
        f"ImageNet: neither {base / 'val_in_folder'} nor {base / 'val'} exists (the 50000 validation images "
        f"sorted into wnid folders); layout: {LAYOUT.expects}"
    )


def load_imagenet(data_root: Path, cache_dir: Path) -> TaskData:
    prompts = load_prompts()["ImageNet"]
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    wnids, train = image_folder(LAYOUT.task, base / "train", LAYOUT.num_classes, LAYOUT.expects)
    _, test = image_folder(LAYOUT.task, val_folder(base), LAYOUT.num_classes, LAYOUT.expects, classes=wnids)
    return TaskData(
        train_pool=train, test=test, classnames=list(prompts["classnames"]), templates=prompts["templates"]
    )


register_task(
    TaskSpec(
        name="ImageNet",
        load=load_imagenet,
        description="ImageNet ILSVRC-2012, the control set of task negation (ImageNetVal carved from train)",
    )
)

"""EuroSAT in the re-split layout of the literature (docs/data.md): ``EuroSAT_splits/{train,val,test}``
ImageFolders. EuroSAT ships its own validation folder, so nothing is carved from the train pool.
Class names map the folders through ``folder_to_classname`` of zeroshot_prompts.json."""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import image_folder, require_dir
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task

LAYOUT = LAYOUTS["EuroSAT"]


def load_eurosat(data_root: Path, cache_dir: Path) -> TaskData:
    prompts = load_prompts()["EuroSAT"]
    names = prompts["folder_to_classname"]
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    splits = {}
    for split in ("train", "val", "test"):
        folders, splits[split] = image_folder(
            LAYOUT.task, base / split, LAYOUT.num_classes, LAYOUT.expects, classes=list(names)
        )
    return TaskData(
        train_pool=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classnames=[names[f] for f in folders],
        templates=prompts["templates"],
    )


register_task(
    TaskSpec(
        name="EuroSAT", load=load_eurosat, description="EuroSAT RGB, re-split with its own val, 10 classes"
    )
)

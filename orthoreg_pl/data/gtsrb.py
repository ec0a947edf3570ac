"""GTSRB in torchvision's layout (docs/data.md): the 43 training class folders ``00000..00042`` of
``*.ppm`` files are the train pool (in ImageFolder order); the test set is the images listed, with
their labels, in ``gtsrb/GT-final_test.csv``. Class names: the 43 of zeroshot_prompts.json."""

from __future__ import annotations

import csv
from pathlib import Path

from orthoreg_pl.data.files import ImageFiles, first_missing, image_folder, require_dir, require_file
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError

LAYOUT = LAYOUTS["GTSRB"]
CLASS_FOLDERS = [f"{i:05d}" for i in range(LAYOUT.num_classes)]


def read_test_csv(csv_path: Path, images: Path, num_classes: int) -> ImageFiles:
    """The test images in CSV order (as torchvision reads them), label = ClassId."""
    require_file(LAYOUT.task, csv_path, "test label file", LAYOUT.expects)
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
        files = [row["Filename"] for row in rows]
        labels = [int(row["ClassId"]) for row in rows]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise OrthoRegError(
            f"GTSRB: cannot read {csv_path} ({type(err).__name__}: {err}); expected a ';'-separated file "
            f"with columns Filename and ClassId; layout: {LAYOUT.expects}"
        ) from err
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise OrthoRegError(f"GTSRB: {csv_path} has ClassId {bad[0]}, outside 0..{num_classes - 1}")
    require_dir(LAYOUT.task, images, "test image folder", LAYOUT.expects)
    missing, count = first_missing(images, files)
    if missing is not None:
        raise OrthoRegError(
            f"GTSRB: {count} image(s) listed in {csv_path} are missing, first {images / missing}; "
            f"layout: {LAYOUT.expects}"
        )
    return ImageFiles(LAYOUT.task, images, files, labels)


def load_gtsrb(data_root: Path, cache_dir: Path) -> TaskData:
    prompts = load_prompts()["GTSRB"]
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    _, train = image_folder(
        LAYOUT.task,
        base / "GTSRB" / "Training",
        LAYOUT.num_classes,
        LAYOUT.expects,
        classes=CLASS_FOLDERS,
        extensions=(".ppm",),
    )
    test = read_test_csv(
        base / "GT-final_test.csv", base / "GTSRB" / "Final_Test" / "Images", LAYOUT.num_classes
    )
    return TaskData(
        train_pool=train, test=test, classnames=list(prompts["classnames"]), templates=prompts["templates"]
    )


register_task(TaskSpec(name="GTSRB", load=load_gtsrb, description="German traffic signs (GTSRB), 43 classes"))

"""The on-disk layouts of docs/data.md and their expected sizes: one table, read by loaders and the check.

Loaders quote ``expects`` in every error so a user sees what the folder should look like; the check
command compares the images it finds per split with ``counts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from orthoreg_pl.data.splits import MAX_VAL

SPLITS = ("train_pool", "val", "test")  # "val" only where a dataset ships its own (EuroSAT)


@dataclass(frozen=True)
class Layout:
    task: str
    folder: str  # the dataset's folder under the data root
    num_classes: int
    counts: Mapping[str, int]  # images per split (SPLITS) in the published data
    expects: str  # the layout of docs/data.md in one line, quoted in errors
    control: bool = False  # ImageNet: the control set of task negation, not one of the eight tasks


def carved_val_size(pool_size: int) -> int:
    """Size of the validation split the seed-0 rule carves from a train pool (splits.carve_validation)."""
    return min(int(0.1 * pool_size), MAX_VAL)


def _layout(task: str, folder: str, num_classes: int, counts: dict[str, int], expects: str, **kw) -> Layout:
    return Layout(task, folder, num_classes, MappingProxyType(counts), expects, **kw)


LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        layout.task: layout
        for layout in (
            _layout(
                "Cars",
                "stanford_cars",
                196,
                {"train_pool": 8144, "test": 8041},
                "stanford_cars/devkit/cars_train_annos.mat, stanford_cars/devkit/cars_meta.mat, "
                "stanford_cars/cars_train/*.jpg, stanford_cars/cars_test/*.jpg, "
                "stanford_cars/cars_test_annos_withlabels.mat (MATLAB files, label = class - 1)",
            ),
            _layout(
                "DTD",
                "dtd",
                47,
                {"train_pool": 3760, "test": 1880},
                "dtd/train/<class>/ (split-1 train+val) and dtd/val/<class>/ (split-1 test, used as test), "
                "47 class folders each",
            ),
            _layout(
                "EuroSAT",
                "EuroSAT_splits",
                10,
                {"train_pool": 21600, "val": 2700, "test": 2700},
                "EuroSAT_splits/{train,val,test}/<ClassFolder>/ with the 10 class folders of "
                "zeroshot_prompts.json (AnnualCrop ... SeaLake)",
            ),
            _layout(
                "GTSRB",
                "gtsrb",
                43,
                {"train_pool": 26640, "test": 12630},
                "gtsrb/GTSRB/Training/<00000..00042>/*.ppm, gtsrb/GTSRB/Final_Test/Images/*.ppm and "
                "gtsrb/GT-final_test.csv (';'-separated, columns Filename, ClassId)",
            ),
            _layout(
                "MNIST",
                "MNIST",
                10,
                {"train_pool": 60000, "test": 10000},
                "MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte} (torchvision's idx files)",
            ),
            _layout(
                "RESISC45",
                "resisc45",
                45,
                {"train_pool": 18900, "test": 6300},
                "resisc45/NWPU-RESISC45/<class>/<class>_<nnn>.jpg (the 45 class folders of "
                "zeroshot_prompts.json) and resisc45/resisc45-{train,test}.txt (image file names per split)",
            ),
            _layout(
                "SUN397",
                "sun397",
                397,
                {"train_pool": 19850, "test": 19850},
                "sun397/train/<cls>/ (Training_01 list) and sun397/val/<cls>/ (Testing_01 list, used as test), "
                "397 class folders each, named like a_abbey",
            ),
            _layout(
                "SVHN",
                "svhn",
                10,
                {"train_pool": 73257, "test": 26032},
                "svhn/train_32x32.mat and svhn/test_32x32.mat (torchvision's SVHN files)",
            ),
            _layout(
                "ImageNet",
                "imagenet",
                1000,
                {"train_pool": 1281167, "test": 50000},  # ILSVRC-2012
                "imagenet/train/<wnid>/ and imagenet/val_in_folder/<wnid>/ (fallback imagenet/val/<wnid>/), "
                "1000 wnid folders each",
                control=True,
            ),
        )
    }
)

TASKS = tuple(name for name, layout in LAYOUTS.items() if not layout.control)  # the eight tasks

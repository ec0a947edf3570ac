"""MNIST from torchvision's raw idx files under ``<data_root>/MNIST/raw`` (never downloaded).

The files are read with torchvision's own idx readers, one at a time, so an unreadable file is
named in the error; samples are served as torchvision's MNIST serves them (mode "L" images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets.mnist import read_image_file, read_label_file

from orthoreg_pl.data.files import ArrayImages
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError

LAYOUT = LAYOUTS["MNIST"]
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read(path: Path, reader) -> np.ndarray:
    try:
        return reader(str(path)).numpy()
    except (
        RuntimeError,
        AssertionError,
        ValueError,
        OSError,
        KeyError,
        IndexError,
    ) as err:  # truncated/foreign
        raise OrthoRegError(
            f"MNIST: cannot read {path} ({type(err).__name__}: {err}); expected torchvision's uncompressed "
            f"idx file; layout: {LAYOUT.expects}"
        ) from err


def read_split(raw: Path, prefix: str) -> ArrayImages:
    images = _read(raw / f"{prefix}-images-idx3-ubyte", read_image_file)
    labels = _read(raw / f"{prefix}-labels-idx1-ubyte", read_label_file)
    if len(images) != len(labels):
        raise OrthoRegError(
            f"MNIST: {raw / f'{prefix}-images-idx3-ubyte'} holds {len(images)} images but "
            f"{raw / f'{prefix}-labels-idx1-ubyte'} {len(labels)} labels"
        )
    return ArrayImages(images, labels)


def load_mnist(data_root: Path, cache_dir: Path) -> TaskData:
    raw = data_root / "MNIST" / "raw"
    missing = [name for name in FILES if not (raw / name).is_file()]
    if missing:
        raise OrthoRegError(
            f"MNIST: {raw / missing[0]} not found ({len(missing)} of 4 files missing under {raw}); expected "
            f"torchvision's idx files ({', '.join(FILES)}); layout: {LAYOUT.expects}"
        )
    prompts = load_prompts()["MNIST"]
    return TaskData(
        train_pool=read_split(raw, "train"),
        test=read_split(raw, "t10k"),
        classnames=prompts["classnames"],
        templates=prompts["templates"],
    )


register_task(
    TaskSpec(name="MNIST", load=load_mnist, description="MNIST handwritten digits (torchvision layout)")
)

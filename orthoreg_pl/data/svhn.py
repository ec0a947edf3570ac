"""SVHN from torchvision's files (docs/data.md): ``svhn/{train,test}_32x32.mat``, read with scipy as
torchvision reads them (label 10 means digit 0), without torchvision's md5 check, so a copy of the
files that is not byte-identical to the download still loads, and nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orthoreg_pl.data.files import ArrayImages, require_dir, require_file
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError

LAYOUT = LAYOUTS["SVHN"]


def read_svhn_mat(path: Path) -> ArrayImages:
    """X [32, 32, 3, N] uint8 and y [N, 1] in 1..10 -> images [N, 32, 32, 3], labels y mod 10."""
    import scipy.io

    require_file(LAYOUT.task, path, "file", LAYOUT.expects)
    try:
        contents = scipy.io.loadmat(str(path))
        images, labels = contents["X"], contents["y"]
    # scipy raises many types on bad files (ValueError, MatReadError, zlib.error, ...)
    except Exception as err:
        raise OrthoRegError(
            f"SVHN: cannot read {path} ({type(err).__name__}: {err}); expected torchvision's SVHN MATLAB file "
            f"with X [32, 32, 3, N] and y [N, 1]; layout: {LAYOUT.expects}"
        ) from err
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[2] != 3 or images.shape[3] != len(labels) or images.dtype != np.uint8:
        raise OrthoRegError(
            f"SVHN: {path} holds X {images.shape} {images.dtype} and {len(labels)} labels; expected X "
            f"[32, 32, 3, N] uint8 and N labels"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise OrthoRegError(f"SVHN: {path} has labels outside 1..10 (10 stands for digit 0)")
    return ArrayImages(np.ascontiguousarray(images.transpose(3, 0, 1, 2)), labels % 10)


def load_svhn(data_root: Path, cache_dir: Path) -> TaskData:
    prompts = load_prompts()["SVHN"]
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    return TaskData(
        train_pool=read_svhn_mat(base / "train_32x32.mat"),
        test=read_svhn_mat(base / "test_32x32.mat"),
        classnames=list(prompts["classnames"]),
        templates=prompts["templates"],
    )


register_task(
    TaskSpec(name="SVHN", load=load_svhn, description="SVHN house-number digits (torchvision files)")
)

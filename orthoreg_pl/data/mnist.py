"""MNIST from torchvision's raw idx files under ``<data_root>/MNIST/raw`` (never downloaded)."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import MNIST

from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.models.heads import load_prompts


def load_mnist(data_root: Path, cache_dir: Path) -> TaskData:
    raw = data_root / "MNIST" / "raw"
    try:
        train = MNIST(str(data_root), train=True, download=False)
        test = MNIST(str(data_root), train=False, download=False)
    except RuntimeError as err:
        raise OrthoRegError(
            f"MNIST not found under {raw}: expected torchvision's idx files "
            "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"
        ) from err
    prompts = load_prompts()["MNIST"]
    return TaskData(
        train_pool=train, test=test, classnames=prompts["classnames"], templates=prompts["templates"]
    )


register_task(
    TaskSpec(name="MNIST", load=load_mnist, description="MNIST handwritten digits (torchvision layout)")
)

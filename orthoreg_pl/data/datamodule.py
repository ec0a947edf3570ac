"""The Lightning DataModule: one task, the split rule, and open_clip's preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import open_clip
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from orthoreg_pl.data.registry import TaskData, load_task
from orthoreg_pl.data.splits import carve_validation, split_checksum


class TransformedDataset(Dataset):
    """Applies an image transform to a dataset of (PIL.Image, label)."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return self.transform(image.convert("RGB")), int(label)


def clip_transforms(
    preprocess: dict, train_scale: tuple[float, float] = (0.9, 1.0)
) -> tuple[Callable, Callable]:
    """(train, eval) transforms as open_clip builds them: RandomResizedCrop(scale 0.9–1.0, bicubic) for
    training, resize + center crop for evaluation, CLIP normalisation for both."""
    common = dict(
        image_size=preprocess["size"],
        mean=preprocess["mean"],
        std=preprocess["std"],
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
    )
    train = open_clip.image_transform(is_train=True, aug_cfg={"scale": tuple(train_scale)}, **common)
    return train, open_clip.image_transform(is_train=False, **common)


class TaskDataModule(L.LightningDataModule):
    """Train/val carved from the task's train pool by the seed-0 rule; the test split is untouched.

    ``preprocess`` (image size, mean, std, interpolation) comes from the model being trained, so it is
    set after the model is built; the class names are available before (``task_data``).
    """

    def __init__(
        self,
        task: str,
        data_root: str | Path,
        cache_dir: str | Path,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        split_seed: int = 0,
        train_scale: tuple[float, float] = (0.9, 1.0),
        preprocess: dict | None = None,
    ) -> None:
        super().__init__()
        self.task, self.data_root, self.cache_dir = task, Path(data_root), Path(cache_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.split_seed, self.train_scale = num_workers, split_seed, tuple(train_scale)
        self.preprocess = preprocess
        self._task_data: TaskData | None = None
        self.train_set = self.val_set = self.test_set = None
        self.checksum: str | None = None

    @property
    def task_data(self) -> TaskData:
        if self._task_data is None:
            self._task_data = load_task(self.task, self.data_root, self.cache_dir)
        return self._task_data

    @property
    def classnames(self) -> list[str]:
        return self.task_data.classnames

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.preprocess is None:
            raise RuntimeError("TaskDataModule.preprocess must be set (from the model) before setup")
        data = self.task_data
        train_tf, eval_tf = clip_transforms(self.preprocess, self.train_scale)
        if data.val is None:
            train_idx, val_idx = carve_validation(len(data.train_pool), self.split_seed)
            train, val = (
                Subset(data.train_pool, train_idx.tolist()),
                Subset(data.train_pool, val_idx.tolist()),
            )
        else:
            train_idx, val_idx = torch.arange(len(data.train_pool)), None
            train, val = data.train_pool, data.val
        self.checksum = split_checksum(train_idx, val_idx, len(data.test))
        self.train_set = TransformedDataset(train, train_tf)
        self.val_set = TransformedDataset(val, eval_tf)
        self.test_set = TransformedDataset(data.test, eval_tf)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,  # a RandomSampler draws a new permutation every epoch
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

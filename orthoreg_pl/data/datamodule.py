"""The Lightning DataModule: one task, the split rule, open_clip's preprocessing, the eval and train caches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import open_clip
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, Subset

from orthoreg_pl.data.eval_cache import CachedBatches, CachedEvalDataset, eval_cache_dataset
from orthoreg_pl.data.files import fetch
from orthoreg_pl.data.registry import TaskData, load_task
from orthoreg_pl.data.sampler import ResumableSampler, UnpaddedDistributedSampler, sample_seed
from orthoreg_pl.data.splits import carve_validation, split_checksum
from orthoreg_pl.data.train_cache import (
    CachedTrainDataset,
    CropBatch,
    augment,
    collate_crops,
    train_cache_dataset,
)
from orthoreg_pl.errors import OrthoRegError

PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode")


class TransformedDataset(Dataset):
    """Applies an image transform to a dataset of (PIL.Image, label).

    Indexed by ``(index, epoch)`` (what ``ResumableSampler`` yields) and given a ``seed``, the random
    augmentation of that sample is drawn from its own generator seeded by (seed, epoch, index): the
    same in any worker, on any number of processes, and after a resume.

    An unreadable image stops with its path (``CorruptImageError``), or, with ``skip_corrupt``, is
    logged as a warning and replaced by the next readable sample (see ``files.fetch``).
    """

    def __init__(
        self, dataset: Dataset, transform: Callable, skip_corrupt: bool = False, seed: int | None = None
    ) -> None:
        self.dataset, self.transform, self.skip_corrupt, self.seed = dataset, transform, skip_corrupt, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        image, label = fetch(self.dataset, index, self.skip_corrupt)
        image = image.convert("RGB")
        if epoch is None or self.seed is None:
            return self.transform(image), int(label)
        with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from torch's RNG
            # the CPU generator only: torch.manual_seed also queues a CUDA seeding and records the call
            # stack for it, which made this line 70 % of a quickstart run's time
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image), int(label)


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
    set after the model is built; the class names are available before (``task_data``). Entries of
    ``preprocess_overrides`` that are not None replace the model's (``data.preprocess_overrides.size=256``).

    ``eval_cache``: val and test images are decoded, resized and cropped once into a memory-mapped file
    under ``eval_cache_dir`` (default ``cache_dir/eval``) and read from it afterwards (eval_cache.py).
    ``train_cache`` (default off: the reference path): training images are decoded once into a
    memory-mapped file under ``train_cache_dir`` (default ``cache_dir/train``); the workers yield uint8
    images and the crop of each sample, and ``on_after_batch_transfer`` crops, resizes and normalises
    the batch on the device (train_cache.py). ``skip_corrupt_images``: an unreadable image is skipped
    with a logged warning instead of stopping the run with its path.
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
        preprocess_overrides: Mapping | None = None,
        eval_cache: bool = True,
        eval_cache_dir: str | Path | None = None,
        skip_corrupt_images: bool = False,
        seed: int = 0,
        train_cache: bool = False,
        train_cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.seed = int(seed)  # the training order and augmentation (ResumableSampler)
        self._resume = {"epoch": 0, "skip": 0}
        self._sampler: ResumableSampler | None = None  # the training loader's, once built
        self.task, self.data_root, self.cache_dir = task, Path(data_root), Path(cache_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.split_seed, self.train_scale = num_workers, split_seed, tuple(train_scale)
        self.preprocess = preprocess
        self.preprocess_overrides = _plain_overrides(preprocess_overrides or {})
        self.eval_cache = bool(eval_cache)
        self.eval_cache_dir = Path(eval_cache_dir) if eval_cache_dir else self.cache_dir / "eval"
        self.train_cache = bool(train_cache)
        self.train_cache_dir = Path(train_cache_dir) if train_cache_dir else self.cache_dir / "train"
        self.skip_corrupt_images = bool(skip_corrupt_images)
        self._task_data: TaskData | None = None
        self.train_set = self.val_set = self.test_set = None
        self._train_source: tuple[Dataset, Callable] | None = None  # (training split, train transform)
        self.checksum: str | None = None

    @property
    def task_data(self) -> TaskData:
        if self._task_data is None:
            self._task_data = load_task(self.task, self.data_root, self.cache_dir)
        return self._task_data

    @property
    def classnames(self) -> list[str]:
        return self.task_data.classnames

    def resolved_preprocess(self) -> dict:
        """The model's preprocessing with the user's overrides applied."""
        if self.preprocess is None:
            raise RuntimeError("TaskDataModule.preprocess must be set (from the model) before setup")
        return {**self.preprocess, **self.preprocess_overrides}

    def splits(self) -> tuple[Dataset, Dataset, Dataset, str]:
        """(train, val, test) of (PIL.Image, label) and the split checksum: val carved by the seed-0 rule
        unless the task ships its own (EuroSAT); the test split untouched."""
        data = self.task_data
        if data.val is None:
            train_idx, val_idx = carve_validation(len(data.train_pool), self.split_seed)
            train, val = (
                Subset(data.train_pool, train_idx.tolist()),
                Subset(data.train_pool, val_idx.tolist()),
            )
        else:
            train_idx, val_idx = torch.arange(len(data.train_pool)), None
            train, val = data.train_pool, data.val
        return train, val, data.test, split_checksum(train_idx, val_idx, len(data.test))

    def _eval_set(self, split: str, source: Dataset, transform: Callable, checksum: str) -> Dataset:
        if self.eval_cache:
            cached = eval_cache_dataset(
                task=self.task,
                split=split,
                dataset=source,
                transform=transform,
                image_size=self.resolved_preprocess()["size"],
                checksum=checksum,
                cache_dir=self.eval_cache_dir,
                num_workers=self.num_workers,
                skip_corrupt=self.skip_corrupt_images,
            )
            if cached is not None:
                return cached
        return TransformedDataset(source, transform, self.skip_corrupt_images)

    def _train_set(self, source: Dataset, transform: Callable, checksum: str) -> Dataset:
        if self.train_cache:
            return train_cache_dataset(
                task=self.task,
                dataset=source,
                transform=transform,
                checksum=checksum,
                cache_dir=self.train_cache_dir,
                seed=self.seed,
                num_workers=self.num_workers,
                skip_corrupt=self.skip_corrupt_images,
            )
        return TransformedDataset(source, transform, self.skip_corrupt_images, self.seed)

    def prepare_data(self) -> None:
        """Build the caches once per node (Lightning runs this on local rank 0 before setup)."""
        if not (self.eval_cache or self.train_cache) or self.preprocess is None or self.val_set is not None:
            return
        train_tf, eval_tf = clip_transforms(self.resolved_preprocess(), self.train_scale)
        train, val, test, checksum = self.splits()
        if self.train_cache:
            self._train_set(train, train_tf, checksum)
        if self.eval_cache:
            self._eval_set("val", val, eval_tf, checksum)
            self._eval_set("test", test, eval_tf, checksum)

    def setup(self, stage: str | None = None) -> None:
        """The three splits; with ``train_cache``, the training one only when fitting (an evaluation, such
        as a merge's, never decodes the training images)."""
        if self.val_set is None:
            train_tf, eval_tf = clip_transforms(self.resolved_preprocess(), self.train_scale)
            train, val, test, self.checksum = self.splits()
            self._train_source = (train, train_tf)
            self.val_set = self._eval_set("val", val, eval_tf, self.checksum)
            self.test_set = self._eval_set("test", test, eval_tf, self.checksum)
        if self.train_set is None and (not self.train_cache or stage in (None, "fit")):
            self.train_set = self._train_set(*self._train_source, self.checksum)

    def per_process_batch(self) -> int:
        """``batch_size`` is the global batch of one forward pass over all processes (the recipe's 128):
        the same run on 1 or 8 GPUs sees the same samples per optimizer step, and is one run."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise OrthoRegError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly over the "
                f"{world} processes; choose a multiple of {world}"
            )
        return self.batch_size // world

    def train_dataloader(self) -> DataLoader:
        self._sampler = ResumableSampler(len(self.train_set), self.seed, **self._resume)
        self._resume = {"epoch": 0, "skip": 0}
        return DataLoader(
            self.train_set,
            batch_size=self.per_process_batch(),
            sampler=self._sampler,  # a new permutation every epoch (Lightning calls set_epoch)
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_crops if isinstance(self.train_set, CachedTrainDataset) else None,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A cached training batch (uint8 images and crop tables, on the device now) becomes what the
        reference path yields: crops resized and normalised, batched on the device, then the precision
        plugin's input conversion the reference batch got before its transfer. Other batches (eval,
        already normalised by the eval cache or the workers) pass unchanged."""
        if not isinstance(batch, CropBatch):
            return batch
        images, labels = augment(batch, self.train_set.spec)
        if self.trainer is not None:
            return self.trainer.precision_plugin.convert_input([images, labels])
        return [images, labels]

    def state_dict(self) -> dict[str, int]:
        """Where training stands in its epoch, saved in every checkpoint: (epoch, samples of the epoch trained
        by all processes together), so a run may resume on another number of processes.

        A checkpoint taken after an epoch's last batch points at the start of the next epoch."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if batches >= trainer.num_training_batches:
            return {"epoch": trainer.current_epoch + 1, "skip": 0}
        return {"epoch": trainer.current_epoch, "skip": batches * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the training order where the checkpoint left it (Lightning calls this before fit)."""
        if not state:
            return
        resume = {"epoch": int(state["epoch"]), "skip": int(state["skip"])}
        if self._sampler is not None:
            # The loader exists already: strategies that restore after setting up the model (FSDP) do so
            # after the LR schedule has counted the batches, which builds it. Not iterated yet: reposition it.
            self._sampler.epoch, self._sampler.skip = resume["epoch"], resume["skip"]
        else:
            self._resume = resume

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_set, self.eval_batch_size, self.num_workers, shard=True)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_set, self.eval_batch_size, self.num_workers, shard=True)


def eval_dataloader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, shard: bool = False
) -> DataLoader:
    """Sequential batches of an eval split; a cached split is read a whole batch at a time
    (same batches, same order, same tensors as sample by sample, without the collate copy).

    ``shard=True`` gives each process a contiguous slice of the samples without padding
    (:class:`UnpaddedDistributedSampler`), for evaluations that sum exact counts across processes:
    the merge engine, and the zero-shot and fine-tuned evaluations of a training run. Lightning keeps
    the sampler as it is. In a single process it reads the whole split, as ``shard=False`` does."""
    if isinstance(dataset, CachedEvalDataset):
        if shard:
            sampler = UnpaddedDistributedSampler(len(dataset), batch_size=batch_size)
        else:
            sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
        dataset, batch_size = CachedBatches(dataset), None  # one item per batch of indices
    else:
        sampler = UnpaddedDistributedSampler(len(dataset)) if shard else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def _plain_overrides(overrides: Mapping) -> dict:
    """Non-null overrides as plain Python values (Hydra passes DictConfig/ListConfig)."""
    unknown = sorted(set(overrides) - set(PREPROCESS_KEYS))
    if unknown:
        raise OrthoRegError(
            f"data.preprocess_overrides has unknown keys {unknown}; expected some of {list(PREPROCESS_KEYS)}"
        )
    plain = {}
    for key, value in overrides.items():
        if value is None:
            continue
        is_list = isinstance(value, Sequence) and not isinstance(value, str)
        plain[key] = tuple(value) if is_list else value
    return plain

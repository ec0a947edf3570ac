"""Quickstart tasks, the task registry and the DataModule (docs/data.md split rule, CLIP preprocessing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import load_file

from orthoreg_pl import OrthoRegError
from orthoreg_pl.data import (
    QUICKSTART_CONTROL,
    QUICKSTART_TASKS,
    TaskDataModule,
    carve_validation,
    clip_transforms,
    load_task,
    split_checksum,
)
from orthoreg_pl.models import create_clip, preprocess_config

ALL_QUICKSTART = (*QUICKSTART_TASKS, QUICKSTART_CONTROL)


def cache_file(cache: Path, task: str) -> Path:
    files = sorted((cache / "quickstart").glob(f"{task}-v*.safetensors"))
    assert len(files) == 1, files
    return files[0]


def labels_of(dataset) -> list[int]:
    return [dataset[i][1] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def tiny_preprocess() -> dict:
    return preprocess_config(create_clip("orthoreg-tiny-vit", None))


def test_quickstart_task_list():
    assert set(QUICKSTART_TASKS) == {"Digits", "Shapes", "Colors", "Patterns"}
    assert QUICKSTART_CONTROL == "Quadrants"


@pytest.mark.parametrize("task", ALL_QUICKSTART)
def test_quickstart_task_loads_offline(task, cache_dir, missing_data_root):
    """Each quickstart task loads with no data root at all, with usable classes and prompts."""
    data = load_task(task, missing_data_root, cache_dir)
    assert cache_file(cache_dir, task).is_file()
    num_classes = len(data.classnames)
    assert num_classes >= 4
    assert len(set(data.classnames)) == num_classes
    assert data.templates and all("{c}" in t for t in data.templates)
    assert data.val is None  # validation is carved from the pool by the split rule
    for split in (data.train_pool, data.test):
        labels = labels_of(split)
        assert set(labels) == set(range(num_classes))  # every class present, labels in range
        image, _ = split[0]
        assert isinstance(image, Image.Image) and image.size == (32, 32)


@pytest.mark.parametrize("task", ALL_QUICKSTART)
def test_quickstart_generation_is_deterministic(task, cache_dir, missing_data_root, tmp_path):
    """Two machines (two caches) must generate identical tasks, or θ0 evaluations would not compare."""
    load_task(task, missing_data_root, cache_dir)
    load_task(task, missing_data_root, tmp_path)
    first, second = load_file(str(cache_file(cache_dir, task))), load_file(str(cache_file(tmp_path, task)))
    assert set(first) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_quickstart_tasks_differ(cache_dir, missing_data_root):
    """The synthetic tasks are distinct (not one generator under four names)."""
    images = []
    for task in ("Shapes", "Colors", "Patterns"):
        load_task(task, missing_data_root, cache_dir)
        images.append(load_file(str(cache_file(cache_dir, task)))["train_images"])
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])


def test_digits_are_sklearn_digits(cache_dir, missing_data_root):
    """Digits is scikit-learn's 1797 real 8×8 digits upsampled to 32 px, 20 % (seed 1) held out as test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = load_task("Digits", missing_data_root, cache_dir)
    assert data.classnames == [str(i) for i in range(10)]
    assert len(data.train_pool) + len(data.test) == len(digits.target) == 1797
    assert len(data.test) == 1797 // 5
    order = np.random.default_rng(1).permutation(1797)
    test_idx, pool_idx = order[: 1797 // 5], order[1797 // 5 :]
    for split, idx in ((data.train_pool, pool_idx), (data.test, test_idx)):
        assert labels_of(split) == digits.target[idx].tolist()
        for j in (0, 1, len(idx) - 1):
            small = (digits.images[idx[j]] * (255.0 / 16.0)).astype(np.uint8)
            expected = np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR))
            got = np.asarray(split[j][0])
            assert got.shape == (32, 32, 3)
            for c in range(3):
                np.testing.assert_array_equal(got[..., c], expected)


def make_datamodule(cache_dir, data_root, preprocess, batch_size=16) -> TaskDataModule:
    return TaskDataModule(
        task="Digits",
        data_root=data_root,
        cache_dir=cache_dir,
        batch_size=batch_size,
        eval_batch_size=32,
        num_workers=0,
        preprocess=preprocess,
    )


def test_datamodule_splits_and_batches(cache_dir, missing_data_root, tiny_preprocess):
    """Train/val follow the split rule on the pool; the test split is the task's own; batches are [B,3,32,32]."""
    dm = make_datamodule(cache_dir, missing_data_root, tiny_preprocess)
    dm.setup("fit")
    pool = len(dm.task_data.train_pool)
    train_idx, val_idx = carve_validation(pool)
    assert len(dm.train_set) == pool - min(int(0.1 * pool), 5000) == len(train_idx)
    assert len(dm.val_set) == len(val_idx) and len(dm.test_set) == len(dm.task_data.test)
    assert dm.train_set.dataset.indices == train_idx.tolist()
    assert dm.val_set.dataset.indices == val_idx.tolist()
    assert dm.checksum == split_checksum(train_idx, val_idx, len(dm.task_data.test))
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (32, 3, 32, 32)


def test_eval_transform_is_clip_normalisation(cache_dir, missing_data_root, tiny_preprocess):
    """Eval images (already 32 px) are only normalised with CLIP's mean/std: no crop, no augmentation."""
    dm = make_datamodule(cache_dir, missing_data_root, tiny_preprocess)
    dm.setup()
    pil, label = dm.val_set.dataset[3]
    x, y = dm.val_set[3]
    mean = torch.tensor(tiny_preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny_preprocess["std"]).view(3, 1, 1)
    torch.testing.assert_close(x, (TF.to_tensor(pil.convert("RGB")) - mean) / std)
    assert y == label
    assert torch.equal(dm.val_set[3][0], x)  # deterministic


def test_train_sampler_reshuffles_every_epoch(cache_dir, missing_data_root, tiny_preprocess):
    """A new permutation per epoch (the reference's sampler did not reshuffle; this project does)."""
    dm = make_datamodule(cache_dir, missing_data_root, tiny_preprocess, batch_size=128)
    dm.setup()
    # Only the order matters here: read labels through the sampler without decoding images.
    loader = dm.train_dataloader()
    subset = dm.train_set.dataset
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # as Lightning does at every epoch start
        keys = list(loader.sampler)
        assert {e for _, e in keys} == {epoch}  # (index, epoch): the epoch seeds each sample's augmentation
        epochs.append([subset[i][1] for i, _ in keys])
    assert sorted(epochs[0]) == sorted(epochs[1])
    assert epochs[0] != epochs[1]
    loader.sampler.set_epoch(0)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == epochs[0]  # the loader follows the sampler, whatever the global RNG
    assert labels.tolist() != [subset[i][1] for i in range(len(subset))]  # shuffled, not pool order


def test_transforms_follow_the_recipe():
    """docs/method.md §4: train = RandomResizedCrop(scale 0.9–1.0, bicubic) + CLIP normalisation, nothing else
    random; eval = Resize(bicubic) + CenterCrop."""
    from torchvision import transforms as T

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    train_tf, eval_tf = clip_transforms({"size": (224, 224), "mean": mean, "std": std})
    crops = [t for t in train_tf.transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(crops) == 1 and crops[0].size == (224, 224) and crops[0].scale == (0.9, 1.0)
    assert crops[0].interpolation == T.InterpolationMode.BICUBIC
    random_ops = (T.ColorJitter, T.RandomGrayscale, T.RandomHorizontalFlip, T.RandomErasing, T.RandomApply)
    assert not any(isinstance(t, random_ops) for t in train_tf.transforms)
    kinds = [type(t) for t in eval_tf.transforms]
    assert kinds.index(T.Resize) < kinds.index(T.CenterCrop)
    resize = next(t for t in eval_tf.transforms if isinstance(t, T.Resize))
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    for tf in (train_tf, eval_tf):
        (norm,) = [t for t in tf.transforms if isinstance(t, T.Normalize)]
        assert tuple(norm.mean) == mean and tuple(norm.std) == std
    image = Image.fromarray(np.full((300, 400, 3), 128, dtype=np.uint8))
    assert eval_tf(image).shape == train_tf(image).shape == (3, 224, 224)


def test_preprocess_required(cache_dir, missing_data_root):
    dm = make_datamodule(cache_dir, missing_data_root, None)
    with pytest.raises(RuntimeError, match="preprocess"):
        dm.setup()


def test_unknown_task_raises(cache_dir, missing_data_root):
    """A typo in dataset.name names the value and lists what exists."""
    with pytest.raises(OrthoRegError, match="NoSuchTask") as err:
        load_task("NoSuchTask", missing_data_root, cache_dir)
    for known in ("Digits", "Quadrants", "MNIST"):
        assert known in str(err.value)


def test_corrupt_quickstart_cache_raises(cache_dir, missing_data_root, tmp_path):
    """A truncated cache file gives a clear error naming it, not a cryptic safetensors failure."""
    load_task("Digits", missing_data_root, cache_dir)
    src = cache_file(cache_dir, "Digits")
    target = tmp_path / "quickstart" / src.name
    target.parent.mkdir()
    shutil.copy(src, target)
    with open(target, "r+b") as f:
        f.truncate(target.stat().st_size // 2)
    with pytest.raises(OrthoRegError) as err:
        load_task("Digits", missing_data_root, tmp_path)
    assert str(target) in str(err.value)


def test_mnist_missing_root_raises(cache_dir, tmp_path):
    """MNIST is never downloaded: a missing data root is reported by name."""
    root = tmp_path / "no_datasets_here"
    with pytest.raises(OrthoRegError) as err:
        load_task("MNIST", root, cache_dir)
    assert str(root) in str(err.value)


def test_mnist_missing_files_raises(cache_dir, tmp_path):
    """An existing root without MNIST/raw files names the folder that should hold them (and downloads nothing)."""
    with pytest.raises(OrthoRegError) as err:
        load_task("MNIST", tmp_path, cache_dir)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)
    assert list(tmp_path.iterdir()) == []

"""The eight task-arithmetic datasets and the ImageNet control, read from tiny trees in docs/data.md's layouts.

For each dataset: images per split, labels in the loader's order, class names, the seed-0 split rule,
and errors that name the dataset and the path for every kind of damaged tree.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fake_trees import BUILDERS, DEFECTS, copy_dataset, truncate_image
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import DataLoader, Subset

from orthoreg_pl import OrthoRegError
from orthoreg_pl.data import (
    LAYOUTS,
    TASKS,
    ImageFiles,
    TaskDataModule,
    TransformedDataset,
    get_task,
    load_task,
    split_checksum,
)
from orthoreg_pl.data.files import CorruptImageError

REAL = list(BUILDERS)
PREPROCESS = {"size": (32, 32), "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}


def datamodule(task: str, root, cache_dir, **kw) -> TaskDataModule:
    kw = {"num_workers": 0, "batch_size": 8, "eval_batch_size": 8, "preprocess": PREPROCESS, **kw}
    return TaskDataModule(task=task, data_root=root, cache_dir=cache_dir, **kw)


def test_every_dataset_is_registered_with_its_layout():
    assert set(REAL) == set(LAYOUTS) and "ImageNet" not in TASKS and len(TASKS) == 8
    for task in REAL:
        assert get_task(task).needs_data_root


@pytest.mark.parametrize("task", REAL)
def test_loader_counts_labels_and_classnames(task, fake_data, cache_dir):
    """Each split holds the tree's images, labelled as docs/data.md says, with docs/data.md's class names."""
    tree = fake_data[task]
    data = load_task(task, tree.root, cache_dir)
    assert data.classnames == tree.classnames
    assert len(data.classnames) == LAYOUTS[task].num_classes
    assert data.templates and all("{c}" in t for t in data.templates)
    splits = {"train_pool": data.train_pool, "val": data.val, "test": data.test}
    assert {split for split, ds in splits.items() if ds is not None} == set(tree.labels)
    for split, labels in tree.labels.items():
        dataset = splits[split]
        assert len(dataset) == len(labels) == tree.counts[split]
        if isinstance(dataset, ImageFiles):
            assert dataset.labels == labels
            assert [dataset.path(i) for i in range(len(dataset))] == tree.files[split]
        else:
            assert [dataset[i][1] for i in range(len(dataset))] == labels
        for i in (0, len(dataset) - 1):
            image, label = dataset[i]
            assert isinstance(image, Image.Image) and label == labels[i]
            if split in tree.arrays:  # MNIST, SVHN: the pixels of the files, in torchvision's layout
                np.testing.assert_array_equal(np.asarray(image), tree.arrays[split][i])


def test_cars_keeps_annotation_order(fake_data, cache_dir):
    """Cars samples follow the .mat annotation order (how torchvision reads it), not file-name order."""
    tree = fake_data["Cars"]
    data = load_task("Cars", tree.root, cache_dir)
    assert data.train_pool.files[:3] == ["00024.jpg", "00023.jpg", "00022.jpg"]
    assert data.train_pool.labels[:3] == [0, 37, 74]  # class (k·37 mod 196) + 1, minus 1


def test_resisc45_orders_like_an_image_folder(fake_data, cache_dir):
    """The split lists are shuffled; the pool follows class folder, then file name (the reference's order)."""
    data = load_task("RESISC45", fake_data["RESISC45"].root, cache_dir)
    assert data.train_pool.files[:3] == [
        "airplane/airplane_001.jpg",
        "airplane/airplane_002.jpg",
        "airport/airport_001.jpg",
    ]
    assert data.classnames[2] == "baseball diamond"


def test_gtsrb_and_class_name_rules(fake_data, cache_dir):
    gtsrb = load_task("GTSRB", fake_data["GTSRB"].root, cache_dir)
    assert gtsrb.train_pool.files[0] == "00000/00000_00000.ppm" and gtsrb.test.labels[:3] == [0, 5, 10]
    sun = load_task("SUN397", fake_data["SUN397"].root, cache_dir)
    assert sun.classnames[0] == "scene 000 place"  # folder a_scene_000_place minus 'a_', '_' -> ' '
    dtd = load_task("DTD", fake_data["DTD"].root, cache_dir)
    assert "zig zagged" in dtd.classnames
    eurosat = load_task("EuroSAT", fake_data["EuroSAT"].root, cache_dir)
    assert eurosat.classnames[0] == "annual crop land"


def test_imagenet_val_fallback(fake_data, cache_dir, tmp_path):
    """imagenet/val/<wnid> is read when val_in_folder is absent."""
    root = copy_dataset(fake_data["ImageNet"], tmp_path)
    (root / "imagenet" / "val_in_folder").rename(root / "imagenet" / "val")
    data = load_task("ImageNet", root, cache_dir)
    assert len(data.test) == fake_data["ImageNet"].counts["test"]
    assert data.test.root == root / "imagenet" / "val"


@pytest.mark.parametrize("task", REAL)
def test_split_rule(task, fake_data, cache_dir):
    """XVal = perm[N−v:] of randperm(N, seed 0), the rest trains; disjoint and complete; test untouched;
    EuroSAT uses its own val folder."""
    tree = fake_data[task]
    dm = datamodule(task, tree.root, cache_dir, eval_cache=False)
    train, val, test, checksum = dm.splits()
    data = dm.task_data
    n = len(data.train_pool)
    assert test is data.test
    if task == "EuroSAT":
        assert train is data.train_pool and val is data.val
        assert checksum == split_checksum(torch.arange(n), None, len(test))
    else:
        v = min(int(0.1 * n), 5000)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        assert isinstance(train, Subset) and isinstance(val, Subset)
        assert val.indices == perm[n - v :].tolist() and train.indices == perm[: n - v].tolist()
        assert set(train.indices).isdisjoint(val.indices)
        assert sorted(train.indices + val.indices) == list(range(n))
        assert checksum == split_checksum(perm[: n - v], perm[n - v :], len(test))
    dm.setup()
    assert dm.checksum == checksum


@pytest.mark.parametrize("task", ["DTD", "GTSRB", "MNIST", "SVHN"])
def test_datamodule_batches(task, fake_data, tmp_path):
    """Real datasets go through the DataModule: train augmented, val/test from the eval cache, [B,3,32,32]."""
    dm = datamodule(task, fake_data[task].root, tmp_path)
    dm.setup()
    assert isinstance(dm.train_set, TransformedDataset)  # training data is never cached
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and int(labels.max()) < len(dm.classnames)


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", REAL)
def test_missing_root_and_dataset_folder(task, cache_dir, tmp_path):
    with pytest.raises(OrthoRegError, match="does not exist") as err:
        load_task(task, tmp_path / "nowhere", cache_dir)
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(OrthoRegError) as err:
        load_task(task, tmp_path, cache_dir)
    message = str(err.value)
    assert message.startswith(f"{task}:") and str(tmp_path / LAYOUTS[task].folder) in message
    assert LAYOUTS[task].expects in message  # says what the layout should be
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


@pytest.mark.parametrize("defect", [d for d in DEFECTS if d.at_load], ids=str)
def test_damaged_tree_names_dataset_and_path(defect, fake_data, cache_dir, tmp_path):
    root = copy_dataset(fake_data[defect.task], tmp_path)
    path = defect.apply(root)
    with pytest.raises(OrthoRegError) as err:
        load_task(defect.task, root, cache_dir)
    message = str(err.value)
    assert message.startswith(f"{defect.task}:"), message
    assert str(path) in message and defect.expect in message, message


def _truncated_dtd(fake_data, tmp_path):
    """A DTD copy with one truncated train image; returns (root, its path)."""
    root = copy_dataset(fake_data["DTD"], tmp_path)
    path = root / "dtd" / "train" / "woven" / "woven_0001.jpg"
    truncate_image(path)
    return root, path


def _position(dm: TaskDataModule, path) -> int:
    subset = dm.train_set.dataset
    files = [subset.dataset.path(i) for i in subset.indices]
    return files.index(path)


def test_corrupt_image_stops_training_with_its_path(fake_data, tmp_path):
    root, path = _truncated_dtd(fake_data, tmp_path)
    dm = datamodule("DTD", root, tmp_path / "cache", eval_cache=False)
    dm.setup()
    i = _position(dm, path)
    with pytest.raises(CorruptImageError) as err:
        dm.train_set[i]
    assert isinstance(err.value, OrthoRegError) and str(path) in str(err.value)
    assert "DTD" in str(err.value) and err.value.path == path
    loader = DataLoader(dm.train_set, batch_size=len(dm.train_set), num_workers=1)  # raised in a worker too
    assert str(path) in _first_batch_error(loader)


def _first_batch_error(loader: DataLoader) -> str:
    """The OrthoRegError message of the first batch; the iterator (and its worker) dies on return."""
    batches = iter(loader)
    try:
        next(batches)
    except OrthoRegError as err:
        return str(err)
    raise AssertionError("no error raised")


def test_corrupt_image_skipped_with_warning_when_opted_in(fake_data, tmp_path, caplog):
    root, path = _truncated_dtd(fake_data, tmp_path)
    dm = datamodule("DTD", root, tmp_path / "cache", eval_cache=False, skip_corrupt_images=True)
    dm.setup()
    i = _position(dm, path)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        x, y = dm.train_set[i]
    assert any(str(path) in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    subset = dm.train_set.dataset
    assert y == subset[(i + 1) % len(subset)][1]  # replaced by the next readable sample, deterministically
    assert x.shape == (3, 32, 32)

"""The eval cache: identical tensors to the uncached path, built once, rebuilt when its key changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config, path_overrides
from fake_trees import copy_dataset, write_image
from hydra.utils import instantiate
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader

from orthoreg_pl.data import (
    CachedEvalDataset,
    TaskDataModule,
    TransformedDataset,
    clip_transforms,
    eval_dataloader,
)
from orthoreg_pl.data import eval_cache as ec

TINY = {"size": (32, 32), "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}
VIT_B32 = {**TINY, "size": (224, 224), "interpolation": "bicubic", "resize_mode": "shortest"}


def datamodule(task, root, cache, preprocess=TINY, **kw) -> TaskDataModule:
    kw = {"num_workers": 0, "batch_size": 8, "eval_batch_size": 8, **kw}
    return TaskDataModule(task=task, data_root=root, cache_dir=cache, preprocess=preprocess, **kw)


def assert_identical(cached, uncached) -> None:
    assert len(cached) == len(uncached)
    for i in range(len(cached)):
        (x, y), (x0, y0) = cached[i], uncached[i]
        assert y == y0 and x.dtype == x0.dtype and torch.equal(x, x0), i


def cache_files(folder, task=""):
    return sorted(p.name for p in folder.glob(f"{task}*.images.npy"))


@pytest.mark.parametrize(
    ("task", "preprocess"),
    [("DTD", VIT_B32), ("GTSRB", TINY), ("MNIST", TINY), ("SVHN", TINY), ("EuroSAT", TINY), ("Digits", TINY)],
)
def test_cached_tensors_equal_uncached(task, preprocess, fake_data, cache_dir, tmp_path):
    """val and test through the cache == through decode + open_clip's eval transform (torch.equal)."""
    root = fake_data["DTD"].root
    cache = tmp_path / "eval"
    plain = datamodule(task, root, cache_dir, preprocess, eval_cache=False)
    cached = datamodule(task, root, cache_dir, preprocess, eval_cache_dir=cache)
    plain.setup()
    cached.setup()
    assert isinstance(plain.val_set, TransformedDataset)
    assert isinstance(cached.val_set, CachedEvalDataset) and isinstance(cached.test_set, CachedEvalDataset)
    assert isinstance(cached.train_set, TransformedDataset)  # training data is never cached
    assert_identical(cached.val_set, plain.val_set)
    assert_identical(cached.test_set, plain.test_set)
    assert len(cache_files(cache)) == 2
    size = preprocess["size"]
    assert np.load(cached.test_set.images_path, mmap_mode="r").shape == (len(plain.test_set), *size, 3)


def test_cache_through_workers_and_sidecar(fake_data, tmp_path):
    """Batches from worker processes equal the uncached ones; the sidecar records the key."""
    root = fake_data["GTSRB"].root
    cached = datamodule("GTSRB", root, tmp_path, num_workers=1, eval_batch_size=4)
    plain = datamodule("GTSRB", root, tmp_path, eval_cache=False, eval_batch_size=4)
    cached.setup()
    plain.setup()
    for (x, y), (x0, y0) in zip(cached.test_dataloader(), plain.test_dataloader()):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    meta = json.loads(
        cached.test_set.images_path.with_name(
            cached.test_set.images_path.name.replace(".images.npy", ".json")
        ).read_text()
    )
    assert meta["task"] == "GTSRB" and meta["split"] == "test" and meta["split_checksum"] == cached.checksum
    assert meta["shape"] == [15, 32, 32, 3] and "CenterCrop" in meta["transform"]
    assert cached.eval_cache_dir == tmp_path / "eval"
    # the sha256 hashed while building is the one a later process verifies against the files
    images = np.load(cached.test_set.images_path, mmap_mode="r")
    assert meta["sha256"] == ec.contents_sha256(images, cached.test_set.labels)


def test_batched_reads_equal_sample_by_sample(fake_data, tmp_path):
    """eval_dataloader reads whole batches (last one partial); any DataLoader, shuffled or not, goes
    through __getitems__ (also in another order); all give the uncached tensors and labels."""
    root = fake_data["GTSRB"].root
    cached = datamodule("GTSRB", root, tmp_path, eval_batch_size=4)
    plain = datamodule("GTSRB", root, tmp_path, eval_cache=False, eval_batch_size=4)
    cached.setup()
    plain.setup()
    batches = list(eval_dataloader(cached.test_set, 4))
    assert [len(y) for _, y in batches] == [4, 4, 4, 3]
    reference = list(eval_dataloader(plain.test_set, 4))
    for (x, y), (x0, y0) in zip(batches, reference):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    order = [14, 3, 7, 0, 9, 2]  # a shuffled order: non-contiguous reads
    x, y = next(iter(DataLoader(cached.test_set, batch_size=6, sampler=order)))
    expected = [plain.test_set[i] for i in order]
    assert torch.equal(x, torch.stack([e[0] for e in expected])) and y.tolist() == [e[1] for e in expected]


def test_built_once_then_reused(fake_data, tmp_path, monkeypatch):
    root = fake_data["EuroSAT"].root
    datamodule("EuroSAT", root, tmp_path).setup()
    files = cache_files(tmp_path / "eval")
    assert len(files) == 2

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(ec, "_build", no_build)
    dm = datamodule("EuroSAT", root, tmp_path)
    dm.prepare_data()
    dm.setup()
    assert isinstance(dm.val_set, CachedEvalDataset) and cache_files(tmp_path / "eval") == files


def test_key_changes_build_a_new_cache(fake_data, tmp_path):
    """Another image size, another file list, another split checksum: a new entry, never a stale one."""
    root = copy_dataset(fake_data["DTD"], tmp_path / "data")
    folder = tmp_path / "eval"
    dm = datamodule("DTD", root, tmp_path)
    dm.setup()
    assert len(cache_files(folder)) == 2  # val, test
    bigger = datamodule("DTD", root, tmp_path, {**TINY, "size": (48, 48)})
    bigger.setup()
    assert bigger.test_set[0][0].shape == (3, 48, 48)
    assert_identical(bigger.test_set, _plain_test(root, tmp_path, {**TINY, "size": (48, 48)}))
    assert len(cache_files(folder)) == 4  # + val, test at 48 px
    write_image(root / "dtd" / "val" / "woven" / "woven_0009.jpg", 5)  # one more test image
    grown = datamodule("DTD", root, tmp_path)
    grown.setup()
    assert len(grown.test_set) == len(dm.test_set) + 1
    assert_identical(grown.test_set, _plain_test(root, tmp_path, TINY))
    assert len(cache_files(folder)) == 6  # + test, + val (the split checksum counts the test images)
    resplit = datamodule("DTD", root, tmp_path, split_seed=1)
    resplit.setup()
    assert resplit.checksum != grown.checksum
    assert len(cache_files(folder)) == 8  # + val and test: both are keyed by the split checksum


def _plain_test(root, cache, preprocess):
    dm = datamodule("DTD", root, cache, preprocess, eval_cache=False)
    dm.setup()
    return dm.test_set


def test_partial_entry_is_rebuilt(fake_data, tmp_path):
    """An entry without its JSON sidecar (a crash mid-build) is not trusted."""
    root = fake_data["SVHN"].root
    dm = datamodule("SVHN", root, tmp_path)
    dm.setup()
    sidecar = dm.test_set.images_path.with_name(dm.test_set.images_path.name.replace(".images.npy", ".json"))
    sidecar.unlink()
    images = np.load(dm.test_set.images_path, mmap_mode="r+")
    images[:] = 0  # garbage that must not be served
    images.flush()
    del images
    again = datamodule("SVHN", root, tmp_path)
    again.setup()
    assert sidecar.is_file()
    assert_identical(again.test_set, _plain(root, tmp_path).test_set)


def _plain(root, cache):
    dm = datamodule("SVHN", root, cache, eval_cache=False)
    dm.setup()
    return dm


def test_corrupt_image_stops_the_cache_build(fake_data, tmp_path):
    """An unreadable test image stops evaluation with its path and leaves no cache entry behind."""
    from fake_trees import truncate_image

    from orthoreg_pl import OrthoRegError

    root = copy_dataset(fake_data["EuroSAT"], tmp_path / "data")
    path = root / "EuroSAT_splits" / "test" / "Forest" / "Forest_2.jpg"
    truncate_image(path)
    dm = datamodule("EuroSAT", root, tmp_path)
    with pytest.raises(OrthoRegError) as err:
        dm.setup()
    assert str(path) in str(err.value) and "EuroSAT" in str(err.value)
    leftovers = [p.name for p in (tmp_path / "eval").iterdir() if "test" in p.name]
    assert leftovers == []  # no partial file under the final or a temporary name


def test_cache_key_parts():
    pil, _ = ec.split_eval_transform(clip_transforms(TINY)[1])
    base = dict(task="DTD", split="val", pil_part=pil, image_size=(32, 32), checksum="c", fingerprint="f")
    key = ec.cache_key(**base)
    for change in (
        {"task": "SUN397"},
        {"split": "test"},
        {"image_size": (48, 48)},
        {"checksum": "d"},
        {"fingerprint": "g"},
    ):
        assert ec.cache_key(**{**base, **change}) != key, change
    other_pil, _ = ec.split_eval_transform(clip_transforms({**TINY, "interpolation": "bilinear"})[1])
    assert ec.cache_key(**{**base, "pil_part": other_pil}) != key


def test_uncacheable_transform_falls_back(fake_data, tmp_path):
    """A transform without a ToTensor step to split at is evaluated without the cache."""
    from orthoreg_pl.data import load_task

    data = load_task("GTSRB", fake_data["GTSRB"].root, tmp_path)
    out = ec.eval_cache_dataset(
        task="GTSRB",
        split="test",
        dataset=data.test,
        transform=lambda im: torch.zeros(3),
        image_size=32,
        checksum=None,
        cache_dir=tmp_path / "eval",
    )
    assert out is None and not (tmp_path / "eval").exists()


def test_config_flags(tmp_path, cache_dir):
    cfg = compose_config(
        [
            "dataset=dtd",
            "data.eval_cache=false",
            "data.skip_corrupt_images=true",
            "data.preprocess_overrides.size=256",
            *path_overrides(tmp_path, cache_dir),
        ]
    )
    dm = instantiate(cfg.data)
    assert dm.eval_cache is False and dm.skip_corrupt_images is True
    assert dm.eval_cache_dir == cache_dir / "eval"
    dm.preprocess = dict(TINY)
    assert dm.resolved_preprocess()["size"] == 256
    cfg = compose_config(["dataset=dtd", *path_overrides(tmp_path, cache_dir)])
    dm = instantiate(cfg.data)
    assert dm.eval_cache is True and dm.skip_corrupt_images is False and dm.preprocess_overrides == {}
    assert cfg.dataset.name == "DTD" and cfg.dataset.epochs == 76

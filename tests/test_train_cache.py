"""The training cache (data.train_cache=true) against the reference path (decode + open_clip's train
transform in the workers, seeded per sample).

Measured here: PIL's resize reproduced bit for bit (every box, both pass orders); images stored as they
are give the reference tensors bit for bit (every random crop), and so does a whole-image crop of a
reduced image; reduced images under random crops differ by at most a few uint8 levels (bounds below);
the boxes are the reference's own boxes. CPU only, images made in memory.
"""

from __future__ import annotations

import json
import math
import runpy
import sys

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, compose_config, path_overrides
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from orthoreg_pl import OrthoRegError
from orthoreg_pl.data import TaskDataModule, TransformedDataset, clip_transforms
from orthoreg_pl.data import eval_cache as ec
from orthoreg_pl.data import train_cache as tc
from orthoreg_pl.data.files import CorruptImageError

STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


def preprocess(size: int) -> dict:
    return {"size": (size, size), "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour fields with sharp edges and noise: resampling differences show as they do on photos."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC
    )
    image = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    image[height // 3 : height // 2, :] = rng.integers(0, 256, 3)  # a sharp band
    return np.clip(image, 0, 255).astype(np.uint8)


class Images(Dataset):
    """(PIL.Image, label) of arrays of any sizes, with a fingerprint (what the cache key reads)."""

    def __init__(self, shapes: list[tuple[int, int]], seed: int = 0) -> None:
        self.arrays = [photo(h, w, seed + i) for i, (h, w) in enumerate(shapes)]

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        return Image.fromarray(self.arrays[i]), i % 3

    def fingerprint(self) -> str:
        return str([a.shape for a in self.arrays]) + str(sum(int(a.sum()) for a in self.arrays))


def both_paths(dataset: Dataset, size: int, cache_dir, scale=(0.9, 1.0), seed: int = 5):
    """(reference TransformedDataset, CachedTrainDataset) of one dataset and train transform."""
    train_tf, _ = clip_transforms(preprocess(size), scale)
    reference = TransformedDataset(dataset, train_tf, seed=seed)
    cached = tc.train_cache_dataset(
        task="Test", dataset=dataset, transform=train_tf, checksum="c", cache_dir=cache_dir, seed=seed
    )
    return reference, cached


def cached_tensors(cached: tc.CachedTrainDataset, keys: list) -> torch.Tensor:
    images, _ = tc.augment(tc.collate_crops([cached[k] for k in keys]), cached.spec)
    return images


def reference_tensors(reference: TransformedDataset, keys: list) -> torch.Tensor:
    return torch.stack([reference[k][0] for k in keys])


# ---- the resampler is PIL's -------------------------------------------------------------------------


def test_device_resize_is_pils_resize_bit_for_bit():
    """Random images, integer crop boxes (what a stored-as-is image gets) and fractional ones (a reduced
    image), up- and downscaling, both of Pillow's pass orders, mixed in one batch: every pixel equals
    ``img.crop(...).resize(..., BICUBIC, box=...)``."""
    rng = np.random.default_rng(0)
    out_h, out_w = 24, 30
    samples, expected = [], []
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(4, 90, 2))
        array = photo(h, w, trial) if trial % 2 else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(array)
        if trial % 3:
            top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
            height, width = int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))
            ref = image.crop((left, top, left + width, top + height)).resize((out_w, out_h), Image.BICUBIC)
        else:
            top, left = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
            height, width = rng.uniform(0.5, h - top), rng.uniform(0.5, w - left)
            y0, x0 = math.floor(top), math.floor(left)
            y1, x1 = min(math.ceil(top + height), h), min(math.ceil(left + width), w)
            box = [float(np.float32(v)) for v in (left - x0, top - y0, left + width - x0, top + height - y0)]
            ref = image.crop((x0, y0, x1, y1)).resize((out_w, out_h), Image.BICUBIC, box=tuple(box))
        rows, row_w, in_h = tc.axis_table(top, height, h, out_h)
        cols, col_w, in_w = tc.axis_table(left, width, w, out_w)
        order = tc.vertical_first(in_h, in_w, out_h, out_w)
        samples.append(tc.CropSample(array, rows, row_w, cols, col_w, order, 0))
        expected.append(np.asarray(ref))
    assert 0 < sum(s.vertical_first for s in samples) < len(samples)  # both orders met
    out = tc.crop_resize(tc.collate_crops(samples)).permute(0, 2, 3, 1).numpy()
    for j, ref in enumerate(expected):
        assert np.array_equal(out[j], ref), j


# ---- (a) tensors against the reference path ----------------------------------------------------------


def test_images_stored_as_they_are_give_the_reference_bit_for_bit(tmp_path):
    """Images no larger than their stored size (36 px for a 32 px crop at scale >= 0.9) are stored as
    they are: every random crop of every epoch is the reference tensor, torch.equal."""
    dataset = Images([(32, 32), (36, 20), (17, 29), (9, 9), (36, 36), (25, 33)])
    reference, cached = both_paths(dataset, 32, tmp_path)
    assert [tuple(r[1:3]) == tuple(r[3:5]) for r in cached.index] == [True] * len(dataset)
    keys = [(i, epoch) for epoch in range(6) for i in range(len(dataset))]
    assert torch.equal(cached_tensors(cached, keys), reference_tensors(reference, keys))


def test_whole_image_crop_of_a_reduced_image_is_bit_exact(tmp_path):
    """scale (1, 1) on square images: the crop is the whole image (ratio draws other than 1 fail, the
    fallback is the whole image), the stored size is the crop size, so the cached image is PIL's one
    resize of the reference: bit for bit, for images larger and smaller than the crop."""
    dataset = Images([(64, 64), (101, 101), (20, 20), (32, 32), (47, 47)])
    reference, cached = both_paths(dataset, 32, tmp_path, scale=(1.0, 1.0))
    keys = [(i, epoch) for epoch in range(3) for i in range(len(dataset))]
    assert torch.equal(cached_tensors(cached, keys), reference_tensors(reference, keys))


def test_reduced_images_under_random_crops_stay_within_a_few_levels(tmp_path):
    """Images larger than their stored size are resampled twice (stored size, then crop size) where the
    reference resamples once. Measured on these photo-like images (crop 64, stored 72 px): mean |error|
    1.07 uint8 levels, max 22 levels (0.31 after normalisation, at the sharp band), 38 % of values equal."""
    dataset = Images([(150, 200), (120, 90), (300, 300), (97, 130)])
    reference, cached = both_paths(dataset, 64, tmp_path)
    assert all(tuple(r[1:3]) != tuple(r[3:5]) for r in cached.index)  # all reduced
    keys = [(i, epoch) for epoch in range(8) for i in range(len(dataset))]
    diff = cached_tensors(cached, keys) - reference_tensors(reference, keys)
    levels = (diff * STD * 255).abs()
    assert diff.abs().max() < 0.45 and levels.max() <= 30.5
    assert levels.mean() < 1.5 and (levels < 0.5).float().mean() > 0.3


# ---- (b) the boxes ------------------------------------------------------------------------------------


def _reference_boxes(reference: TransformedDataset, keys: list, monkeypatch) -> list:
    """The boxes the reference path draws, recorded from inside its own transform."""
    drawn = []
    get_params = T.RandomResizedCrop.get_params

    def record(img, scale, ratio):
        drawn.append(get_params(img, scale, ratio))
        return drawn[-1]

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(record))
    for key in keys:
        reference[key]
    monkeypatch.undo()
    return drawn


def test_boxes_are_the_reference_boxes(tmp_path, monkeypatch):
    """Same seeds, same boxes: (index, epoch) -> the box the reference path crops, exactly; in stored
    coordinates the same box scaled. Area shares stay in the scale range and aspect ratios in
    [3/4, 4/3] (to the pixel rounding), except the 4:3 center crops of images more elongated than that."""
    shapes = [(375, 500), (500, 375), (300, 300), (120, 400), (64, 48), (72, 72), (12, 90)]
    dataset = Images(shapes)
    reference, cached = both_paths(dataset, 64, tmp_path)  # stored: 72 px, or as it is
    keys = [(i, epoch) for epoch in range(40) for i in range(len(shapes))]
    drawn = _reference_boxes(reference, keys, monkeypatch)
    assert [cached.box(*key) for key in keys] == drawn
    area, aspect = [], []
    for (i, epoch), (top, _, h, w) in zip(keys, drawn):
        height, width = shapes[i]
        s_top, s_left, s_h, s_w = cached.stored_box(i, epoch)
        stored_h, stored_w = cached.index[i, 1:3]
        assert s_top * height / stored_h == pytest.approx(top) and s_w * width / stored_w == pytest.approx(w)
        assert s_h >= min(64, h) - 1 and s_w >= min(64, w) - 1  # never fewer pixels than the crop
        elongated = not 3 / 4 <= width / height <= 4 / 3
        if not elongated:
            assert 0.9 - 2 / min(h, w) <= h * w / (height * width) <= 1.0
            assert 3 / 4 - 2 / min(h, w) <= w / h <= 4 / 3 + 2 / min(h, w)
            area.append(h * w / (height * width))
            aspect.append(w / h)
        else:
            assert 3 / 4 - 1 / h <= w / h <= 4 / 3 + 1 / h and (h == height or w == width)
    area, aspect = np.array(area), np.array(aspect)
    assert 0.9 < area.mean() < 1.0 and area.std() > 0.01 and 0.9 < aspect.mean() < 1.1 and aspect.std() > 0.01


def test_stored_size_rule():
    spec = tc.CropSpec((224, 224), (0.9, 1.0), (3 / 4, 4 / 3), (0.5,) * 3, (0.5,) * 3)
    assert spec.stored_size(375, 500) == (249, 249)  # ceil(224 / 0.9)
    assert spec.stored_size(28, 28) == (28, 28)  # never enlarged
    assert spec.stored_size(256, 256) == (249, 249)
    assert spec.stored_size(300, 1000) == (249, 560)  # the fallback crops 400 of 1000 px: ceil(224 / 0.4)
    assert spec.stored_size(1000, 300) == (560, 249)
    assert tc.CropSpec((224, 224), (0.9, 1.0), (3 / 4, 4 / 3), (0,) * 3, (1,) * 3, 2.0).stored_size(
        600, 600
    ) == (
        498,
        498,
    )


# ---- (c) the same sample, the same tensor ------------------------------------------------------------


def datamodule(cache_dir, **kw) -> TaskDataModule:
    kw = {"num_workers": 0, "batch_size": 8, "eval_cache": False, "seed": 11, "train_cache": True, **kw}
    dm = TaskDataModule(
        task="Digits", data_root=cache_dir / "none", cache_dir=cache_dir, preprocess=preprocess(24), **kw
    )
    dm.prepare_data()
    dm.setup()
    return dm


def augmented(dm: TaskDataModule, batches: int) -> list:
    out = []
    for _, batch in zip(range(batches), dm.train_dataloader()):
        assert isinstance(batch, tc.CropBatch) and batch.images.dtype == torch.uint8
        out.append(dm.on_after_batch_transfer(batch, 0))
    return out


def test_same_sample_same_tensor_across_loaders_workers_and_resume(cache_dir, tmp_path):
    """Digits (32 px images, reduced to a 27 px stored size for a 24 px crop): two loaders, one with a
    worker process, and a loader resumed 2 batches into the epoch give the same tensors."""
    train_dir = tmp_path / "train"
    one = augmented(datamodule(cache_dir, train_cache_dir=train_dir), 4)
    two = augmented(datamodule(cache_dir, train_cache_dir=train_dir, num_workers=1), 4)
    resumed = datamodule(cache_dir, train_cache_dir=train_dir)
    resumed.load_state_dict({"epoch": 0, "skip": 2 * 8})
    after = augmented(resumed, 2)
    for (x, y), (x2, y2) in zip(one, two):
        assert x.dtype == torch.float32 and torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(one[2:], after):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(one[0][0], one[1][0])


def test_eval_batches_pass_unchanged_and_reference_path_is_default(cache_dir, tmp_path):
    dm = datamodule(cache_dir, train_cache_dir=tmp_path / "train")
    batch = (torch.zeros(2, 3, 24, 24), torch.zeros(2, dtype=torch.int64))
    assert dm.on_after_batch_transfer(batch, 0) is batch
    plain = datamodule(cache_dir, train_cache=False, train_cache_dir=tmp_path / "off")
    assert isinstance(plain.train_set, TransformedDataset) and not (tmp_path / "off").exists()
    assert plain.train_dataloader().collate_fn is not tc.collate_crops


def test_evaluation_setup_never_builds_the_train_cache(cache_dir, tmp_path):
    """A merge sets a DataModule up for validation only: the training images are not decoded."""
    dm = TaskDataModule(
        task="Digits", data_root=cache_dir / "none", cache_dir=cache_dir, preprocess=preprocess(24),
        train_cache=True, train_cache_dir=tmp_path / "train", eval_cache=False,
    )  # fmt: skip
    dm.setup("validate")
    assert dm.train_set is None and dm.val_set is not None and not (tmp_path / "train").exists()
    dm.setup("fit")
    assert isinstance(dm.train_set, tc.CachedTrainDataset) and (tmp_path / "train").is_dir()


# ---- (d) the files ------------------------------------------------------------------------------------


def entry_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cache_reloads_bit_identically(tmp_path, monkeypatch):
    dataset = Images([(80, 60), (20, 30), (64, 64)])
    _, first = both_paths(dataset, 32, tmp_path)
    files = entry_files(tmp_path)
    assert [f.split(".", 1)[1] for f in files] == ["index.npy", "json", "labels.npy", "pixels.u8"]
    meta = json.loads(first.paths.meta.read_text())
    assert meta["images"] == 3 and meta["split"] == "train" and meta["split_checksum"] == "c"
    monkeypatch.setattr(tc, "_build", lambda *a, **k: pytest.fail("rebuilt"))
    monkeypatch.setattr(ec, "_VERIFIED", set())  # as a new process: the sha256 is checked
    _, again = both_paths(dataset, 32, tmp_path)
    assert entry_files(tmp_path) == files
    assert np.array_equal(first.index, again.index) and np.array_equal(first.labels, again.labels)
    for i in range(3):
        assert np.array_equal(first.pixels(i), again.pixels(i))
    keys = [(i, 4) for i in range(3)]
    assert torch.equal(cached_tensors(first, keys), cached_tensors(again, keys))


def test_changed_cache_file_is_refused_naming_it(tmp_path, monkeypatch):
    dataset = Images([(80, 60), (20, 30)])
    _, cached = both_paths(dataset, 32, tmp_path)
    pixels = cached.paths.pixels
    data = bytearray(pixels.read_bytes())
    data[100] ^= 0xFF
    pixels.write_bytes(bytes(data))
    monkeypatch.setattr(ec, "_VERIFIED", set())
    with pytest.raises(OrthoRegError, match="sha256") as caught:
        both_paths(dataset, 32, tmp_path)
    assert str(pixels) in str(caught.value) and "delete" in str(caught.value)
    pixels.write_bytes(bytes(data[:-10]))  # truncated: named by its size
    with pytest.raises(OrthoRegError, match="bytes") as caught:
        both_paths(dataset, 32, tmp_path)
    assert str(pixels) in str(caught.value)


def test_failed_build_leaves_nothing(tmp_path):
    """An unreadable image stops the build with its path, and no cache file (partial or temporary) stays."""

    class Broken(Images):
        def __getitem__(self, i):
            if i == 2:
                raise CorruptImageError("Test: cannot read image /x/broken.jpg", path="/x/broken.jpg")
            return super().__getitem__(i)

    with pytest.raises(CorruptImageError, match="broken.jpg"):
        both_paths(Broken([(40, 40)] * 4), 32, tmp_path)
    assert entry_files(tmp_path) == []


def test_other_transform_is_refused():
    jitter = T.Compose(
        [T.RandomResizedCrop(32), T.ColorJitter(0.4), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
    )
    with pytest.raises(OrthoRegError, match="data.train_cache=false"):
        tc.CropSpec.from_transform(jitter)


# ---- (e) configuration ----------------------------------------------------------------------------------


def test_not_a_boolean_is_refused_on_the_command_line(tmp_path, monkeypatch, capsys, restore_logging):
    """As tests/test_bad_input.py runs train.py: one error line, exit 2, nothing written."""
    monkeypatch.setenv("ORTHOREG_ROOT", str(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", "experiment=quickstart", "data.train_cache=notabool"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(PROJECT_ROOT / "train.py"), run_name="__main__")
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert done.value.code == 2
    assert errors == ["error: data.train_cache='notabool'; expected true or false"]
    assert list(tmp_path.iterdir()) == []


def test_identity_unchanged_when_off_new_when_on(tmp_path, cache_dir):
    from orthoreg_pl.runs.identity import identity_hash, identity_settings

    base = ["experiment=quickstart", "dataset=digits", *path_overrides(tmp_path, cache_dir)]
    off, on = compose_config(base), compose_config([*base, "data.train_cache=true"])
    assert off.data.train_cache is False and off.data.train_cache_dir == f"{cache_dir}/train"
    settings_off, settings_on = identity_settings(off, 0.0), identity_settings(on, 0.0)
    assert "data.train_cache" not in settings_off and "data.train_cache_dir" not in settings_off
    assert settings_on == {**settings_off, "data.train_cache": True}
    assert identity_hash(settings_off) != identity_hash(settings_on)


# ---- end to end ------------------------------------------------------------------------------------------


def test_training_with_the_cache_gives_the_reference_task_vector(tmp_path, cache_dir):
    """train.py's machinery on Digits with the tiny CLIP ViT (32 px crops of 32 px images: stored as
    they are): 3 steps with data.train_cache=true give the task vector of the reference path, bit for bit."""
    from orthoreg_pl.task_vectors import load_task_vector
    from orthoreg_pl.training.fit import train

    vectors = {}
    for flag in ("false", "true"):
        run = tmp_path / flag
        cfg = compose_config(
            [
                "experiment=quickstart",
                "dataset=digits",
                "mode=standard",
                "logger=none",
                "eval_zeroshot=false",
                "trainer.max_steps=3",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                f"data.train_cache={flag}",
                *path_overrides(tmp_path, cache_dir, output_dir=run),
            ]
        )
        meta = train(cfg)
        assert meta["steps"] == 3 and meta["identity"]["settings"].get("data.train_cache", False) is (
            flag == "true"
        )
        vectors[flag] = load_task_vector(run / "task_vector.safetensors")
    assert list((cache_dir / "train").glob("Digits-train-*.json"))
    assert all(torch.equal(vectors["false"][k], vectors["true"][k]) for k in vectors["false"])


def test_ddp_with_the_cache_equals_one_process(cache_dir, tmp_path):
    """trainer=ddp_sim (2 CPU processes, each augmenting its own half of the global batch on its device)
    against one process with the same global batch, both with data.train_cache=true: the same task
    vector (to all-reduce rounding, as tests/test_ddp.py)."""
    from test_ddp import train_py

    from orthoreg_pl.task_vectors import load_task_vector

    vectors = {}
    for name, trainer in (("single", "trainer=cpu"), ("ddp", "trainer=ddp_sim")):
        run = tmp_path / name
        args = [
            "experiment=quickstart", "dataset=digits", "mode=standard", "logger=none", "eval_zeroshot=false",
            "trainer.max_steps=3", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "data.batch_size=16", "data.train_cache=true", trainer,
            f"hydra.run.dir={run}",
        ]  # fmt: skip
        train_py(args, cache_dir, tmp_path)
        meta = json.loads((run / "meta.json").read_text())
        assert meta["identity"]["settings"]["data.train_cache"] is True
        vectors[name] = load_task_vector(run / "task_vector.safetensors")
    for key, value in vectors["single"].items():
        assert torch.allclose(value, vectors["ddp"][key], atol=1e-5, rtol=0), key

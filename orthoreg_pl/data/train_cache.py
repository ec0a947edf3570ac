"""The training cache (``data.train_cache=true``): training images decoded once, augmented on the device.

The reference path (``TransformedDataset`` with open_clip's train transform) decodes every JPEG,
RandomResizedCrops it (bicubic, PIL) and normalises it in the DataLoader workers, every epoch; on a
fast GPU the workers fall behind. Here:

* **Once, on disk.** Every training image is decoded once and stored as uint8 in a memory-mapped file,
  each axis kept at its original length or reduced (PIL bicubic, as the crop's own resize) to the
  length at which every crop box RandomResizedCrop can draw still spans at least the output's pixels
  along it (:meth:`CropSpec.stored_size`: 249 px for a 224 px crop at scale >= 0.9; longer for an
  axis that the 4:3 center-crop fallback of an elongated image cuts shorter). Images are never
  enlarged, so one whose axes fit is stored as it is.
* **Per sample, in the workers.** The crop box is drawn with torchvision's own
  ``RandomResizedCrop.get_params`` from the sample's seed (seed, epoch, index), on the original
  image's size: the same box as the reference path, for any worker count, process count or resume. It
  is mapped into the stored image and turned into PIL's resampling tables (:func:`axis_table`).
* **Per batch, on the device** (the DataModule's ``on_after_batch_transfer``): :func:`crop_resize`
  applies the tables with PIL's own fixed-point arithmetic (int32, rounded and clipped to uint8 after
  each pass, the passes in Pillow's order), and :func:`normalize` does ToTensor + Normalize's float ops.

So where an image is stored as it is, the cached path is the reference path bit for bit (every crop
box; checked on the CPU, and the integer part is exact on any device); a reduced image is resampled
twice (to its stored size, then the box to the crop size), which differs from one resize by about one
uint8 level on average, up to tens at sharp edges (benchmarks/RESULTS.md, #13).

Files per entry (``<task>-train-<key>``): ``.pixels.u8`` (the images' bytes, one after the other),
``.index.npy`` ([N, 5] int64: byte offset, stored height and width, original height and width),
``.labels.npy``, and the JSON sidecar written last, which marks completion and records the sha256 of
the three, verified the first time a process opens the entry (as the eval cache does).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from orthoreg_pl.data.eval_cache import _TO_TENSOR, mark_verified, verify_once
from orthoreg_pl.data.files import dataset_fingerprint, fetch
from orthoreg_pl.data.sampler import sample_seed
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import atomic_path, sha256_text, write_json

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
PRECISION_BITS = 22  # PIL's fixed-point resampling: weights scaled by 2**22, int32 sums (Resample.c)


@dataclass(frozen=True)
class CropSpec:
    """The part of open_clip's train transform the cached path reproduces:
    RandomResizedCrop(size, scale, ratio, bicubic) then ToTensor and Normalize(mean, std)."""

    size: tuple[int, int]  # (height, width) of the crop
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    oversample: float = 1.0  # stored axes this many times the least length (benchmarks/throughput.py)

    @classmethod
    def from_transform(cls, transform: Callable, oversample: float = 1.0) -> CropSpec:
        """Read the parameters off the transform itself, so the two paths cannot drift apart; a
        transform of another shape (colour jitter, another interpolation) is refused."""
        steps = list(getattr(transform, "transforms", []))
        names = [type(t).__name__ for t in steps]
        shaped = (
            len(steps) == 4
            and isinstance(steps[0], T.RandomResizedCrop)
            and type(steps[1]).__name__ == "MaybeConvertMode"
            and isinstance(steps[2], _TO_TENSOR)
            and isinstance(steps[3], T.Normalize)
        )
        if not shaped or steps[0].interpolation != InterpolationMode.BICUBIC:
            raise OrthoRegError(
                f"data.train_cache=true reproduces RandomResizedCrop(bicubic) + ToTensor + Normalize, but the "
                f"train transform is {names}; set data.train_cache=false"
            )
        crop, norm = steps[0], steps[3]
        return cls(
            size=(int(crop.size[0]), int(crop.size[1])),
            scale=(float(crop.scale[0]), float(crop.scale[1])),
            ratio=(float(crop.ratio[0]), float(crop.ratio[1])),
            mean=tuple(float(m) for m in norm.mean),
            std=tuple(float(s) for s in norm.std),
            oversample=float(oversample),
        )

    def stored_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image is stored at: each axis its own length, or reduced to ceil(crop / f),
        f the smallest share of that axis a crop box can take, so that no box has fewer stored pixels
        than the crop along it (to rounding). f is the scale's minimum, or less where RandomResizedCrop's
        fallback center-crops an image more elongated than the ratio range to that range."""
        in_ratio = width / height
        low, high = min(self.ratio), max(self.ratio)
        share_w = min(self.scale[0], high / in_ratio, 1.0)
        share_h = min(self.scale[0], in_ratio / low, 1.0)
        out_h, out_w = self.size
        least_h, least_w = math.ceil(out_h / share_h), math.ceil(out_w / share_w)
        if self.oversample != 1.0:
            least_h, least_w = math.ceil(least_h * self.oversample), math.ceil(least_w * self.oversample)
        return min(height, least_h), min(width, least_w)

    def key(self) -> str:
        return f"crop={self.size} scale={self.scale} ratio={self.ratio} bicubic oversample={self.oversample}"


# ---- PIL's resampling, as tables ------------------------------------------------------------------


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic filter (a = -0.5), with its operations in its order."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_coefficients(in_size: int, in0: float, in1: float, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first source pixel [out], fixed-point weights [out, taps] int32) of PIL's bicubic resize of the
    span [in0, in1) of an axis of ``in_size`` pixels to ``out_size``: Resample.c's precompute_coeffs and
    normalize_coeffs_8bpc in float64 (the box as C floats), so the weights are PIL's to the bit."""
    in0, in1 = np.float32(in0), np.float32(in1)
    scale = float(in1 - in0) / out_size  # (double)(in1 - in0) / outSize, the difference taken in float
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = float(in0) + (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    x = np.arange(taps)
    weights = _bicubic(((x[None, :] + first[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where(x[None, :] < count[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for t in range(taps):  # summed in C's order
        total = total + weights[:, t]
    weights = weights / np.where(total != 0.0, total, 1.0)[:, None]
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
    return first, fixed.astype(np.int32)


def axis_table(start: float, length: float, stored: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(source pixel [out, taps] int32, weight [out, taps] int32, crop length) that resample the span
    [start, start + length) of a stored axis to ``out_size`` pixels as PIL resizes a crop: the crop is
    the whole pixels the span touches, and the span's fraction of them is PIL's resize ``box``.
    Unused taps point at pixel 0 with weight 0."""
    lo = max(int(math.floor(start)), 0)
    hi = min(int(math.ceil(start + length)), stored)
    first, weights = pil_coefficients(hi - lo, start - lo, start + length - lo, out_size)
    index = lo + first[:, None] + np.arange(weights.shape[1])[None, :]
    return np.where(weights != 0, index, 0).astype(np.int32), weights, hi - lo


def _pillow_major() -> int:
    from PIL import __version__

    return int(__version__.split(".")[0])


_PILLOW_13 = _pillow_major() >= 13


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether PIL resizes an ``in_h`` x ``in_w`` image to ``out_h`` x ``out_w`` vertical pass first: since
    Pillow 13 when the height shrinks by more than twice what the width does (python-pillow/Pillow#9549),
    before always horizontal first. The order matters because each pass rounds to uint8."""
    return _PILLOW_13 and in_h >= out_h and (in_h - out_h) > 2 * (in_w - out_w)


# ---- the stored images --------------------------------------------------------------------------


class CropSample(NamedTuple):
    """One training sample as a worker yields it: the stored pixels and the tables of its crop."""

    pixels: np.ndarray  # uint8 [h, w, 3] as stored
    rows: np.ndarray  # int32 [crop height, taps]
    row_weights: np.ndarray
    cols: np.ndarray  # int32 [crop width, taps]
    col_weights: np.ndarray
    vertical_first: bool  # PIL's pass order for this crop
    label: int


class CropBatch(NamedTuple):
    """A training batch before augmentation: cheap to collate, pin and copy (uint8 pixels, int32 tables);
    :func:`augment` turns it into (images, labels) on the device."""

    images: Tensor  # uint8 [B, H, W, 3], each image at the top left, zero padding
    rows: Tensor  # int32 [B, crop height, taps]
    row_weights: Tensor
    cols: Tensor  # int32 [B, crop width, taps]
    col_weights: Tensor
    horizontal_first: Tensor  # int64 indices of the samples PIL resizes horizontal pass first
    vertical_first: Tensor  # int64 indices of the others (index lists: their sizes need no device sync)
    labels: Tensor  # int64 [B]


class CachedTrainDataset(Dataset):
    """The cached form of ``TransformedDataset(train, open_clip train transform, seed=seed)``, indexed
    by ``(index, epoch)`` as ``ResumableSampler`` yields; batch it with :func:`collate_crops`."""

    def __init__(
        self, paths: CachePaths, index: np.ndarray, labels: np.ndarray, spec: CropSpec, seed: int | None
    ) -> None:
        self.paths, self.index, self.labels = paths, np.asarray(index), np.asarray(labels, dtype=np.int64)
        self.spec, self.seed = spec, seed
        self._pixels: np.ndarray | None = None

    def _open(self) -> np.ndarray:
        # Opened lazily in each process, copy-on-write (torch wants writable arrays; the file is never
        # written); pickling for the workers drops the map.
        if self._pixels is None:
            self._pixels = np.memmap(self.paths.pixels, dtype=np.uint8, mode="c")
        return self._pixels

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, i: int) -> np.ndarray:
        """The stored uint8 [h, w, 3] of sample ``i``."""
        offset, h, w = (int(v) for v in self.index[i, :3])
        return self._open()[offset : offset + h * w * 3].reshape(h, w, 3)

    def box(self, i: int, epoch: int | None) -> tuple[int, int, int, int]:
        """(top, left, height, width) on the original image: RandomResizedCrop.get_params drawn from the
        sample's seed exactly as the reference path draws it (the global RNG where epoch is None)."""
        height, width = (int(v) for v in self.index[i, 3:5])
        shape = torch.empty(()).expand(1, height, width)  # what get_params reads: the size
        if epoch is None or self.seed is None:
            return T.RandomResizedCrop.get_params(shape, list(self.spec.scale), list(self.spec.ratio))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))
            return T.RandomResizedCrop.get_params(shape, list(self.spec.scale), list(self.spec.ratio))

    def stored_box(self, i: int, epoch: int | None) -> tuple[float, float, float, float]:
        """The box of :meth:`box` in the stored image's pixels (each axis scaled by stored / original)."""
        top, left, height, width = self.box(i, epoch)
        h, w, orig_h, orig_w = (int(v) for v in self.index[i, 1:5])
        return top * h / orig_h, left * w / orig_w, height * h / orig_h, width * w / orig_w

    def __getitem__(self, key: int | tuple[int, int]) -> CropSample:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        top, left, height, width = self.stored_box(i, epoch)
        h, w = (int(v) for v in self.index[i, 1:3])
        out_h, out_w = self.spec.size
        rows, row_weights, in_h = axis_table(top, height, h, out_h)
        cols, col_weights, in_w = axis_table(left, width, w, out_w)
        order = vertical_first(in_h, in_w, out_h, out_w)
        return CropSample(self.pixels(i), rows, row_weights, cols, col_weights, order, int(self.labels[i]))


def _stack_tables(tables: Sequence[np.ndarray]) -> Tensor:
    """[B, out, max taps] int32, the shorter tables padded with zeros (pixel 0, weight 0)."""
    taps = max(t.shape[1] for t in tables)
    out = torch.zeros((len(tables), tables[0].shape[0], taps), dtype=torch.int32)
    for b, table in enumerate(tables):
        out[b, :, : table.shape[1]] = torch.from_numpy(table)
    return out


def collate_crops(samples: Sequence[CropSample]) -> CropBatch:
    """The DataLoader's collate for :class:`CachedTrainDataset`: images padded to the batch's largest."""
    height = max(s.pixels.shape[0] for s in samples)
    width = max(s.pixels.shape[1] for s in samples)
    images = torch.zeros((len(samples), height, width, 3), dtype=torch.uint8)
    for b, s in enumerate(samples):
        images[b, : s.pixels.shape[0], : s.pixels.shape[1]].numpy()[...] = s.pixels
    order = torch.tensor([s.vertical_first for s in samples], dtype=torch.bool)
    return CropBatch(
        images,
        _stack_tables([s.rows for s in samples]),
        _stack_tables([s.row_weights for s in samples]),
        _stack_tables([s.cols for s in samples]),
        _stack_tables([s.col_weights for s in samples]),
        torch.nonzero(~order).flatten(),
        torch.nonzero(order).flatten(),
        torch.tensor([s.label for s in samples], dtype=torch.int64),
    )


# ---- on the device ------------------------------------------------------------------------------


def _resample(x: Tensor, index: Tensor, weights: Tensor, dim: int) -> Tensor:
    """One PIL pass along ``dim`` of int32 [B, C, H, W]: sum of taps in int32 from 2**21, then >> 22
    and clipped to [0, 255] (Resample.c's clip8)."""
    batch, out, taps = index.shape
    shape = list(x.shape)
    shape[dim] = out
    view = [batch, 1, 1, 1]
    view[dim] = out
    acc = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(taps):
        source = index[:, :, t].long().view(view).expand(shape)
        acc += torch.gather(x, dim, source) * weights[:, :, t].view(view)
    return acc.bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)


def _passes(x: Tensor, tables: tuple[Tensor, ...], vertical: bool) -> Tensor:
    rows, row_weights, cols, col_weights = tables
    if vertical:
        return _resample(_resample(x, rows, row_weights, dim=2), cols, col_weights, dim=3)
    return _resample(_resample(x, cols, col_weights, dim=3), rows, row_weights, dim=2)


def crop_resize(batch: CropBatch) -> Tensor:
    """The crops of a batch resized to the crop size, int32 [B, 3, h, w] of uint8 values: PIL's bicubic
    resize of each crop, its two passes in PIL's order, bit for bit (integer arithmetic on any device)."""
    x = batch.images.permute(0, 3, 1, 2).to(torch.int32)
    tables = (batch.rows, batch.row_weights, batch.cols, batch.col_weights)
    size = len(batch.labels)
    out = None
    for group, vertical in ((batch.horizontal_first, False), (batch.vertical_first, True)):
        if len(group) == size:  # the whole batch in one order: no gathering
            return _passes(x, tables, vertical)
        if len(group) == 0:
            continue
        part = _passes(x.index_select(0, group), tuple(t.index_select(0, group) for t in tables), vertical)
        if out is None:
            out = part.new_empty((size, *part.shape[1:]))
        out.index_copy_(0, group, part)
    return out


@functools.lru_cache(maxsize=16)
def _constants(
    device: torch.device, dtype: torch.dtype, mean: tuple, std: tuple
) -> tuple[Tensor, Tensor, Tensor]:
    """255, mean and std as tensors on ``device``, made once (no copy to the device per batch)."""
    return (
        torch.tensor(255, dtype=dtype, device=device),
        torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
        torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1),
    )


def normalize(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """ToTensor + Normalize with torchvision's float operations: ``x / 255``, then ``(x - mean) / std``.
    The divisors are tensors on the device, so CUDA divides rather than multiplying by a reciprocal
    (which it does for a Python number)."""
    dtype = torch.get_default_dtype()
    full, mean_t, std_t = _constants(pixels.device, dtype, tuple(mean), tuple(std))
    return pixels.to(dtype).div_(full).sub_(mean_t).div_(std_t)


def augment(batch: CropBatch, spec: CropSpec) -> tuple[Tensor, Tensor]:
    """(images [B, 3, h, w] float, labels): what the reference path's loader yields for this batch."""
    return normalize(crop_resize(batch), spec.mean, spec.std), batch.labels


# ---- building and reading the cache -------------------------------------------------------------


@dataclass(frozen=True)
class CachePaths:
    pixels: Path
    index: Path
    labels: Path
    meta: Path

    @classmethod
    def of(cls, cache_dir: Path, task: str, key: str) -> CachePaths:
        stem = Path(cache_dir) / f"{task}-train-{key[:16]}"
        return cls(
            *(stem.with_name(f"{stem.name}{s}") for s in (".pixels.u8", ".index.npy", ".labels.npy", ".json"))
        )


def cache_key(task: str, spec: CropSpec, checksum: str | None, fingerprint: str) -> str:
    return sha256_text(f"train-cache-v{CACHE_VERSION}", task, spec.key(), checksum or "", fingerprint)


class _StoredImages(Dataset):
    """Images decoded and brought to their stored size, for building (in DataLoader workers)."""

    def __init__(self, dataset: Dataset, spec: CropSpec, skip_corrupt: bool) -> None:
        self.dataset, self.spec, self.skip_corrupt = dataset, spec, skip_corrupt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[int, int], int]:
        image, label = fetch(self.dataset, i, self.skip_corrupt)
        image = image.convert("RGB")
        width, height = image.size
        h, w = self.spec.stored_size(height, width)
        if (h, w) != (height, width):
            image = image.resize((w, h), Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8), (height, width), int(label)


def _as_list(batch: list) -> list:
    return batch


def _contents_sha256(paths: CachePaths, chunk: int = 1 << 24) -> str:
    """sha256 of the pixel bytes (streamed), then the index and the labels."""
    digest = hashlib.sha256()
    with open(paths.pixels, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    digest.update(np.ascontiguousarray(np.load(paths.index), dtype=np.int64).data)
    digest.update(np.ascontiguousarray(np.load(paths.labels), dtype=np.int64).data)
    return digest.hexdigest()


def _build(
    paths: CachePaths, dataset: Dataset, spec: CropSpec, meta: dict, num_workers: int, skip_corrupt: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Write the entry: pixels, index, labels under temporary names, each renamed when complete, the
    sidecar last; the sha256 is taken of the bytes as they are written."""
    n = len(dataset)
    index, labels = np.zeros((n, 5), dtype=np.int64), np.zeros(n, dtype=np.int64)
    loader = DataLoader(
        _StoredImages(dataset, spec, skip_corrupt),
        batch_size=32,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    digest, offset, pos = hashlib.sha256(), 0, 0
    with atomic_path(paths.pixels) as tmp, open(tmp, "wb") as f:
        for batch in loader:
            for array, (height, width), label in batch:
                data = np.ascontiguousarray(array).data
                f.write(data)
                digest.update(data)
                index[pos] = (offset, array.shape[0], array.shape[1], height, width)
                labels[pos] = label
                offset, pos = offset + array.size, pos + 1
    for path, array in ((paths.index, index), (paths.labels, labels)):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
        digest.update(np.ascontiguousarray(array).data)
    checksum = digest.hexdigest()
    mark_verified(paths.pixels, checksum)
    write_json(
        paths.meta, {**meta, "images": n, "bytes": offset, "sha256": checksum}
    )  # last: marks completion
    return index, labels


def _read_complete(paths: CachePaths, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(index, labels) of a complete entry with this key, else None; its contents checked against the
    sidecar's sha256 the first time this process opens it (an error naming the file on a mismatch)."""
    try:
        meta = json.loads(paths.meta.read_text())
        index, labels = np.load(paths.index), np.load(paths.labels)
        size = paths.pixels.stat().st_size
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if meta.get("key") != key or meta.get("images") != len(labels) or len(index) != len(labels):
        return None
    if size != meta.get("bytes"):
        raise OrthoRegError(
            f"train cache {paths.pixels} holds {size} bytes but its sidecar {paths.meta.name} recorded "
            f"{meta.get('bytes')}; delete {paths.meta.stem}.* in {paths.meta.parent} and the cache is rebuilt"
        )
    verify_once("train cache", paths.pixels, paths.meta, meta.get("sha256"), lambda: _contents_sha256(paths))
    return index, labels


def train_cache_dataset(
    *,
    task: str,
    dataset: Dataset,
    transform: Callable,
    checksum: str | None,
    cache_dir: str | Path,
    seed: int | None,
    num_workers: int = 0,
    skip_corrupt: bool = False,
    oversample: float = 1.0,
) -> CachedTrainDataset:
    """The cached form of ``TransformedDataset(dataset, transform, seed=seed)``, built on first use.
    ``oversample`` > 1 stores reduced images larger (closer to the reference, more bytes; RESULTS.md)."""
    spec = CropSpec.from_transform(transform, oversample)
    if len(dataset) == 0:
        raise OrthoRegError(f"data.train_cache=true: the {task} training split is empty")
    key = cache_key(task, spec, checksum, dataset_fingerprint(dataset))
    paths = CachePaths.of(Path(cache_dir), task, key)
    found = _read_complete(paths, key)
    if found is None:
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "task": task,
            "split": "train",
            "crop": spec.key(),
            "split_checksum": checksum,
        }
        log.info("building the train cache of %s (%d images) in %s", task, len(dataset), paths.pixels)
        try:
            found = _build(paths, dataset, spec, meta, num_workers, skip_corrupt)
        except OSError as err:
            raise OrthoRegError(
                f"cannot write the train cache {paths.pixels} ({err}); free disk space or set data.train_cache=false"
            ) from err
    return CachedTrainDataset(paths, *found, spec, seed)

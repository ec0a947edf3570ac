"""The evaluation cache: a split's eval images decoded, resized and cropped once, kept on disk as uint8.

Evaluation repeats (zero-shot, fine-tuned, the 21 α of every merge); decoding JPEGs and resizing them
each time dominates its data time. The eval transform of open_clip is split into its PIL part
(resize, center crop, RGB) and its tensor part (ToTensor, Normalize): the PIL part's output is stored
once in a memory-mapped ``.npy`` file [N, H, W, 3]; the tensor part runs at read time, with the same
float32 operations, so a cached sample is identical (``torch.equal``) to an uncached one.

A cache is keyed by task, split, the PIL part's repr, the image size, the split checksum and the
split's contents (file list and labels, or array bytes), so any change builds a new one. Files are
written under temporary names and renamed; the JSON sidecar is written last and marks completion.
It records the sha256 of the pixels and labels, verified the first time a process opens the entry
(streamed, about a second per GB): a cache file changed after it was built is refused, not used.
The cache does not notice source image files edited in place under the same name: delete it then.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from orthoreg_pl.data.files import dataset_fingerprint, fetch
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import atomic_path, sha256_text, write_json

log = logging.getLogger(__name__)

CACHE_VERSION = "2"  # 2: the sidecar holds the pixels' sha256
_VERIFIED: set[tuple[str, str]] = set()  # (images file, sha256) checked by this process


def split_eval_transform(transform: Callable) -> tuple[T.Compose, Callable] | None:
    """(PIL part, tensor part) of a Compose: the transforms before its ToTensor, and the rest.

    None when the transform has no such split (no Compose, or no ToTensor): it is then not cacheable.
    """
    steps = getattr(transform, "transforms", None)
    if not isinstance(steps, Sequence):
        return None
    cut = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if cut is None:
        return None
    pil, rest = T.Compose(list(steps[:cut])), list(steps[cut:])
    if len(rest) == 2 and type(rest[0]) in _TO_TENSOR and isinstance(rest[1], T.Normalize):
        return pil, NormalizedTensor(rest[1].mean, rest[1].std)
    return pil, _ArrayToTensor(T.Compose(rest))


def _to_tensor_types() -> tuple[type, ...]:
    types: list[type] = [T.ToTensor]
    try:
        from open_clip.transform import MaybeToTensor

        types.append(MaybeToTensor)
    except ImportError:  # older open_clip: plain ToTensor
        pass
    return tuple(types)


_TO_TENSOR = _to_tensor_types()


class NormalizedTensor:
    """ToTensor + Normalize of uint8 [H, W, 3] arrays with torchvision's float32 operations, in place in
    one preallocated output: ``x.to(float32).div(255)`` then ``x.sub(mean).div(std)``, bit-identical."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.dtype = torch.get_default_dtype()
        self.mean = torch.as_tensor(mean, dtype=self.dtype).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=self.dtype).view(-1, 1, 1)

    def _fill(self, out: Tensor, image: Tensor) -> Tensor:
        out.copy_(image.permute(2, 0, 1))  # uint8 -> float32 is exact, as in .to(float32)
        return out.div_(255).sub_(self.mean).div_(self.std)

    def __call__(self, array: np.ndarray) -> Tensor:
        out = torch.empty((array.shape[2], *array.shape[:2]), dtype=self.dtype)
        return self._fill(out, torch.from_numpy(array))

    def batch(self, arrays: np.ndarray) -> Tensor:
        """[B, H, W, 3] -> [B, 3, H, W]; image by image, so each pass stays in the CPU cache."""
        images = torch.from_numpy(arrays)
        out = torch.empty((len(images), images.shape[3], *images.shape[1:3]), dtype=self.dtype)
        for j in range(len(images)):
            self._fill(out[j], images[j])
        return out

    def __repr__(self) -> str:
        return f"NormalizedTensor(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class _ArrayToTensor:
    """Any other tensor part, applied to a writable copy of the cached array."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, array: np.ndarray) -> Tensor:
        return self.transform(np.array(array))

    def batch(self, arrays: np.ndarray) -> Tensor:
        return torch.stack([self(a) for a in arrays])


class CachedEvalDataset(Dataset):
    """(tensor, label) from a cache file; ``dataset`` is the uncached source (kept for inspection).

    ``batch(indices)`` reads a whole batch at once (what :func:`orthoreg_pl.data.eval_dataloader`
    uses); ``__getitems__`` lets any DataLoader take the same batched path.
    """

    def __init__(
        self, images_path: Path, labels: np.ndarray, tensor_part: Callable, dataset: Dataset
    ) -> None:
        self.images_path, self.labels = Path(images_path), np.asarray(labels, dtype=np.int64)
        self.tensor_part, self.dataset = tensor_part, dataset
        self._images: np.ndarray | None = None

    def _open(self) -> np.ndarray:
        # Opened lazily in each process ('c': copy-on-write, so torch gets writable arrays; the file is
        # never modified). Pickling for DataLoader workers drops the map rather than copying the data.
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="c")
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.tensor_part(self._open()[i]), int(self.labels[i])

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(images [B, 3, H, W], labels [B]) of ``indices``: one read, one output tensor."""
        indices = [int(i) for i in indices]
        images = self._open()
        first, last = indices[0], indices[-1]
        if indices == list(range(first, last + 1)):
            arrays = images[first : last + 1]  # a view of the file: no copy before the conversion
        else:
            arrays = images[indices]
        return self.tensor_part.batch(arrays), torch.from_numpy(self.labels[indices])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        images, labels = self.batch(indices)
        return list(zip(images.unbind(0), labels.tolist()))


class CachedBatches(Dataset):
    """One batch of a cached split per item, keyed by its indices (a ``range`` or list, as
    :class:`~orthoreg_pl.data.sampler.UnpaddedDistributedSampler` with ``batch_size`` or a
    ``BatchSampler`` yields them), for a DataLoader with ``batch_size=None``: no per-sample tensors and
    no collate copy (the order and content equal batching sample by sample)."""

    def __init__(self, dataset: CachedEvalDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # samples; the loader's length is its sampler's (batches)

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        return self.dataset.batch(indices)


class _PilArrays(Dataset):
    """The PIL part of the eval transform as uint8 arrays, for building (parallel in DataLoader workers)."""

    def __init__(self, dataset: Dataset, pil_part: Callable, skip_corrupt: bool) -> None:
        self.dataset, self.pil_part, self.skip_corrupt = dataset, pil_part, skip_corrupt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        image, label = fetch(self.dataset, i, self.skip_corrupt)
        return np.asarray(self.pil_part(image.convert("RGB"))), int(label)


def _as_list(batch: list) -> list:
    return batch


class _NotCacheable(Exception):
    pass


def cache_key(
    task: str, split: str, pil_part: Callable, image_size: object, checksum: str | None, fingerprint: str
) -> str:
    return sha256_text(
        f"eval-cache-v{CACHE_VERSION}",
        task,
        split,
        repr(pil_part),
        str(image_size),
        checksum or "",
        fingerprint,
    )


def cache_paths(cache_dir: Path, task: str, split: str, key: str) -> tuple[Path, Path, Path]:
    """(images .npy, labels .npy, JSON sidecar) of one cache entry."""
    stem = f"{task}-{split}-{key[:16]}"
    folder = Path(cache_dir)
    return folder / f"{stem}.images.npy", folder / f"{stem}.labels.npy", folder / f"{stem}.json"


def _read_complete(paths: tuple[Path, Path, Path], key: str) -> np.ndarray | None:
    """The labels of a complete entry with this key, else None (absent, partial, or another key).

    The first time in a process, the pixels and labels are checked against the sha256 the sidecar
    recorded when the entry was built; a mismatch is an error naming the file."""
    images_path, labels_path, meta_path = paths
    try:
        meta = json.loads(meta_path.read_text())
        labels = np.load(labels_path)
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if meta.get("key") != key or images.shape[0] != len(labels) or list(images.shape) != meta.get("shape"):
        return None
    verify_once(
        "eval cache", images_path, meta_path, meta.get("sha256"), lambda: contents_sha256(images, labels)
    )
    return labels


def verify_once(what: str, path: Path, sidecar: Path, recorded: object, digest: Callable[[], str]) -> None:
    """Compare ``digest()`` (the contents' sha256) with what ``sidecar`` recorded when ``path`` was built,
    once per process and file version: a cache changed after it was built is refused, naming the file."""
    if (str(path), recorded) in _VERIFIED:
        return
    if recorded != digest():
        raise OrthoRegError(
            f"{what} {path} does not match the sha256 its sidecar {sidecar.name} recorded when it was built "
            f"(the file changed since); delete {path.name.split('.')[0]}.* in {path.parent} and the cache is rebuilt"
        )
    _VERIFIED.add((str(path), recorded))


def mark_verified(path: Path, checksum: str) -> None:
    """A file this process has just written and hashed needs no second read."""
    _VERIFIED.add((str(path), checksum))


def contents_sha256(images: np.ndarray, labels: np.ndarray, rows: int = 256) -> str:
    """sha256 of the cached pixels (row by row, streamed from the memory map) and the labels."""
    digest = hashlib.sha256()
    for start in range(0, len(images), rows):
        digest.update(np.ascontiguousarray(images[start : start + rows]).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return digest.hexdigest()


def _build(
    paths: tuple[Path, Path, Path],
    dataset: Dataset,
    pil_part: Callable,
    meta: dict,
    num_workers: int,
    skip_corrupt: bool,
) -> np.ndarray:
    images_path, labels_path, meta_path = paths
    arrays = _PilArrays(dataset, pil_part, skip_corrupt)
    first, _ = arrays[0]
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise _NotCacheable(f"its PIL part gives {first.dtype} {first.shape}, not uint8 [H, W, 3]")
    n = len(arrays)
    labels = np.empty(n, dtype=np.int64)
    loader = DataLoader(arrays, batch_size=32, num_workers=num_workers, collate_fn=_as_list)
    with atomic_path(images_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *first.shape))
        digest = hashlib.sha256()  # the bytes contents_sha256 reads back, hashed as they are written
        pos = 0
        for batch in loader:
            for array, label in batch:
                if array.shape != first.shape:
                    raise _NotCacheable(f"its PIL part gives images of sizes {first.shape} and {array.shape}")
                out[pos], labels[pos] = array, label
                digest.update(np.ascontiguousarray(array, dtype=np.uint8).data)
                pos += 1
        out.flush()
        del out
    with atomic_path(labels_path) as tmp, open(tmp, "wb") as f:
        np.save(f, labels)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    checksum = digest.hexdigest()
    mark_verified(images_path, checksum)
    write_json(meta_path, {**meta, "shape": [n, *first.shape], "sha256": checksum})  # last: marks completion
    return labels


def eval_cache_dataset(
    *,
    task: str,
    split: str,
    dataset: Dataset,
    transform: Callable,
    image_size: object,
    checksum: str | None,
    cache_dir: str | Path,
    num_workers: int = 0,
    skip_corrupt: bool = False,
) -> CachedEvalDataset | None:
    """The cached form of ``TransformedDataset(dataset, transform)``, built on first use.

    None (and a logged reason) when the transform cannot be cached; evaluation then decodes as usual.
    """
    parts = split_eval_transform(transform)
    if parts is None:
        log.warning(
            "eval cache off for %s/%s: the eval transform has no ToTensor step to split at", task, split
        )
        return None
    pil_part, tensor_part = parts
    if len(dataset) == 0:
        return None
    key = cache_key(task, split, pil_part, image_size, checksum, dataset_fingerprint(dataset))
    paths = cache_paths(Path(cache_dir), task, split, key)
    labels = _read_complete(paths, key)
    if labels is None:
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "task": task,
            "split": split,
            "transform": repr(pil_part),
            "image_size": str(image_size),
            "split_checksum": checksum,
        }
        log.info("building the eval cache of %s/%s (%d images) in %s", task, split, len(dataset), paths[0])
        try:
            labels = _build(paths, dataset, pil_part, meta, num_workers, skip_corrupt)
        except _NotCacheable as why:
            log.warning("eval cache off for %s/%s: %s", task, split, why)
            return None
        except OSError as err:
            raise OrthoRegError(
                f"cannot write the eval cache {paths[0]} ({err}); free disk space or set data.eval_cache=false"
            ) from err
    return CachedEvalDataset(paths[0], labels, tensor_part, dataset)

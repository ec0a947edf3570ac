"""Reading image files lazily, with errors that name the dataset, the path and the expected layout.

Loaders only index files (paths and labels); an image is opened when a sample is asked for, so
building a DataModule on a 100k-image tree costs a directory walk, not 100k decodes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from orthoreg_pl.data.layouts import Layout
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData
from orthoreg_pl.errors import OrthoRegError

log = logging.getLogger(__name__)

# What PIL raises on a missing, truncated or malformed file (SyntaxError: some broken headers).
READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class CorruptImageError(OrthoRegError):
    """An image file that cannot be read. Constructible from the message alone, so that a DataLoader
    worker re-raises it in the main process with the same type (and the path in its message)."""

    def __init__(self, message: str, *, dataset: str | None = None, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.dataset, self.path = dataset, None if path is None else Path(path)

    @classmethod
    def of(cls, dataset: str, path: str | Path, reason: object) -> CorruptImageError:
        return cls(
            f"{dataset}: cannot read image {path} ({reason}); the layout expects a readable image file there "
            "(set data.skip_corrupt_images=true to skip such files with a warning)",
            dataset=dataset,
            path=path,
        )


def read_image(dataset: str, path: str | Path) -> Image.Image:
    """Decode the whole image now (not lazily), so a truncated file fails here with its path."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except READ_ERRORS as err:
        raise CorruptImageError.of(dataset, path, err) from err


def require_dir(dataset: str, path: Path, what: str, expects: str) -> Path:
    if not path.is_dir():
        raise OrthoRegError(f"{dataset}: {what} {path} not found; docs/data.md layout: {expects}")
    return path


def require_file(dataset: str, path: Path, what: str, expects: str) -> Path:
    if not path.is_file():
        raise OrthoRegError(f"{dataset}: {what} {path} not found; docs/data.md layout: {expects}")
    return path


def first_missing(root: Path, files: Sequence[str]) -> tuple[str | None, int]:
    """(the first listed file that does not exist, how many are missing): one stat per file."""
    missing = [f for f in files if not os.path.isfile(os.path.join(root, f))]
    return (missing[0] if missing else None), len(missing)


class ImageFiles(Dataset):
    """Image files under ``root`` (paths relative to it) and their labels, served as (PIL.Image RGB, int).

    A file that cannot be read raises :class:`CorruptImageError` naming it; the DataModule decides
    whether to stop (the default) or to skip it with a warning (``data.skip_corrupt_images``).
    """

    def __init__(self, dataset: str, root: Path, files: Sequence[str], labels: Sequence[int]) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.dataset, self.root = dataset, Path(root)
        self.files, self.labels = list(files), [int(y) for y in labels]
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return read_image(self.dataset, self.path(i)), self.labels[i]

    def fingerprint(self) -> str:
        """sha256 of the (relative path, label) list: the same files in the same order, wherever the root."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.dataset.encode())
            digest.update("\n".join(self.files).encode())
            digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


class ArrayImages(Dataset):
    """uint8 images [N, H, W] or [N, H, W, C] held in memory (MNIST, SVHN), served as (PIL.Image, int)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(np.ascontiguousarray(self.images[i])), int(self.labels[i])

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256(str(self.images.shape).encode())
            digest.update(np.ascontiguousarray(self.images))  # no copy when already contiguous
            digest.update(self.labels)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def dataset_fingerprint(dataset: Dataset) -> str:
    """What a dataset holds, for cache keys: file lists or array contents; a Subset adds its indices."""
    if isinstance(dataset, Subset):
        indices = np.asarray(dataset.indices, dtype=np.int64).tobytes()
        return hashlib.sha256(dataset_fingerprint(dataset.dataset).encode() + indices).hexdigest()
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    digest = hashlib.sha256(f"{type(dataset).__qualname__}:{len(dataset)}".encode())
    for name in ("data", "images", "targets", "labels"):  # torchvision's MNIST and friends
        value = getattr(dataset, name, None)
        if isinstance(value, torch.Tensor):
            value = value.numpy()
        elif isinstance(value, list):
            value = np.asarray(value)
        if isinstance(value, np.ndarray) and value.dtype != object:
            digest.update(np.ascontiguousarray(value))
    return digest.hexdigest()


def image_files_of(dataset: Dataset) -> list[Path]:
    """The image files behind a dataset (through Subsets), in sample order; [] for in-memory arrays."""
    if isinstance(dataset, Subset):
        files = image_files_of(dataset.dataset)
        return [files[i] for i in dataset.indices] if files else []
    if isinstance(dataset, ImageFiles):
        return [dataset.path(i) for i in range(len(dataset))]
    return []


def fetch(dataset: Dataset, i: int, skip_corrupt: bool):
    """``dataset[i]``; if its image is unreadable, stop with the path, or (opt-in) log a warning and use
    the next readable sample, ``dataset[i+1]``, ``dataset[i+2]``, ... (wrapping): deterministic, never silent."""
    n = len(dataset)
    for step in range(n):
        try:
            return dataset[(i + step) % n]
        except CorruptImageError as err:
            if not skip_corrupt:
                raise
            log.warning("%s -- skipped: sample %d is replaced by the next readable one", err, i)
    raise OrthoRegError(f"no readable image in a dataset of {n} samples (every file failed to open)")


def image_folder(
    dataset: str,
    directory: Path,
    num_classes: int,
    expects: str,
    classes: Sequence[str] | None = None,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
) -> tuple[list[str], ImageFiles]:
    """An ImageFolder tree exactly as torchvision indexes it (sorted class folders, label = position,
    files in sorted walk order): that order is what the seed-0 split rule carves from.

    The class folders must number ``num_classes`` (and be exactly ``classes`` when given); a different
    count is an error, since labels would silently shift.
    """
    require_dir(dataset, directory, "folder", expects)
    found = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if classes is not None and set(found) != set(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise OrthoRegError(
            f"{dataset}: {directory} holds {len(found)} class folders, expected the {len(classes)} of "
            f"docs/data.md (missing: {_few(missing)}; unexpected: {_few(extra)}); layout: {expects}"
        )
    if len(found) != num_classes:
        raise OrthoRegError(
            f"{dataset}: {directory} holds {len(found)} class folders, expected {num_classes}; layout: {expects}"
        )
    try:
        samples = make_dataset(str(directory), {c: i for i, c in enumerate(found)}, extensions=extensions)
    except FileNotFoundError as err:  # a class folder without images
        raise OrthoRegError(f"{dataset}: {directory}: {err}; layout: {expects}") from err
    prefix = len(str(directory)) + 1
    files = [path[prefix:] for path, _ in samples]
    return found, ImageFiles(dataset, directory, files, [label for _, label in samples])


def _few(names: Sequence[str], k: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def folder_pair_task(
    layout: Layout, data_root: Path, train: str, test: str, classname: Callable[[str], str]
) -> TaskData:
    """A task stored as two ImageFolder trees with the same class folders (DTD, SUN397): the train
    pool under ``train``, the test set under ``test``; class names derived from the folder names."""
    base = require_dir(layout.task, data_root / layout.folder, "dataset folder", layout.expects)
    folders, train_pool = image_folder(layout.task, base / train, layout.num_classes, layout.expects)
    _, test_set = image_folder(layout.task, base / test, layout.num_classes, layout.expects, classes=folders)
    return TaskData(
        train_pool=train_pool,
        test=test_set,
        classnames=[classname(f) for f in folders],
        templates=load_prompts()[layout.task]["templates"],
    )

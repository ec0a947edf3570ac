"""Quickstart tasks: small, distinct image-classification tasks made offline and deterministically.

They stand in for the eight real datasets on machines without them (the quickstart, the tests): each
has class names and prompt templates, so zero-shot heads are built exactly as for real tasks. One is
made of real images that scikit-learn ships (its 8×8 handwritten digits); the others are drawn with
numpy from a fixed seed. Each is generated once and cached under ``cache_dir/quickstart``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import atomic_path
from orthoreg_pl.utils.tensors import tensors_sha256

SIZE = 32
POOL, TEST = 1600, 500
GENERATOR_VERSION = "1"


class ArrayImageDataset(Dataset):
    """uint8 images [N, H, W, 3] and int labels, served as (PIL.Image, int) like a folder dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.numpy(), labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), self.labels[i]


# ---- generators: rng -> (images uint8 [N, SIZE, SIZE, 3], labels int64 [N]) -------------------------

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(40, 200)
    return np.clip(level + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255)


def _contrasting_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    base = background.mean()
    return np.array([rng.uniform(0, 60) if base > 120 else rng.uniform(195, 255) for _ in range(3)])


def _shape_mask(kind: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy, r = rng.uniform(11, 21), rng.uniform(11, 21), rng.uniform(6, 10)
    dx, dy = _XX - cx, _YY - cy
    dist = np.sqrt(dx**2 + dy**2)
    if kind == 0:  # circle
        return dist <= r
    if kind == 1:  # square
        return np.maximum(abs(dx), abs(dy)) <= 0.8 * r
    if kind == 2:  # triangle, apex up
        h = 0.9 * r
        return (dy >= -h) & (dy <= h) & (abs(dx) <= (dy + h) / 2)
    if kind == 3:  # cross
        return ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r))
    return (dist <= r) & (dist >= 0.55 * r)  # ring


def _draw(
    n: int, num_classes: int, rng: np.random.Generator, paint: Callable
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = np.stack([paint(int(y), rng) for y in labels])
    return images.round().clip(0, 255).astype(np.uint8), labels.astype(np.int64)


def _paint_shape(label: int, rng: np.random.Generator) -> np.ndarray:
    img = _background(rng)
    img[_shape_mask(label, rng)] = _contrasting_color(rng, img)
    return img


_COLORS = np.array(
    [[220, 30, 30], [30, 170, 40], [30, 60, 220], [230, 215, 40], [140, 40, 180], [240, 130, 20]]
)


def _paint_color(label: int, rng: np.random.Generator) -> np.ndarray:
    img = np.clip(rng.uniform(90, 170) + rng.normal(0, 10, (SIZE, SIZE, 1)), 0, 255).repeat(3, axis=2)
    img[_shape_mask(int(rng.integers(0, 5)), rng)] = np.clip(_COLORS[label] + rng.normal(0, 20, 3), 0, 255)
    return img


def _paint_pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    freq, phase = rng.uniform(0.12, 0.3), rng.uniform(0, 2 * np.pi)
    arg = 2 * np.pi * freq
    if label == 0:  # horizontal stripes
        wave = np.sin(arg * _YY + phase)
    elif label == 1:  # vertical stripes
        wave = np.sin(arg * _XX + phase)
    elif label == 2:  # diagonal stripes
        wave = np.sin(arg * (_XX + _YY) / np.sqrt(2) + phase)
    else:  # checkerboard
        wave = np.sin(arg * _XX + phase) * np.sin(arg * _YY + phase)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    mix = (np.sign(wave) + 1)[..., None] / 2
    return mix * a + (1 - mix) * b + rng.normal(0, 10, (SIZE, SIZE, 3))


def _paint_quadrant(label: int, rng: np.random.Generator) -> np.ndarray:
    img = _background(rng)
    row, col = divmod(label, 2)
    cy, cx = rng.uniform(4, 12) + 16 * row, rng.uniform(4, 12) + 16 * col
    r = rng.uniform(3, 6)
    img[(_XX - cx) ** 2 + (_YY - cy) ** 2 <= r**2] = _contrasting_color(rng, img)
    return img


def _synthetic(num_classes: int, paint: Callable, seed: int) -> Callable[[], tuple[np.ndarray, ...]]:
    def make() -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(seed)
        pool_x, pool_y = _draw(POOL, num_classes, rng, paint)
        test_x, test_y = _draw(TEST, num_classes, rng, paint)
        return pool_x, pool_y, test_x, test_y

    return make


def _make_digits() -> tuple[np.ndarray, ...]:
    """scikit-learn's 1797 real 8×8 digits, upsampled to 32 px; a fixed 20 % (seed 1) is the test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR)) for im in small])
    images = np.repeat(big[..., None], 3, axis=3)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(1).permutation(len(labels))
    n_test = len(labels) // 5
    test, pool = order[:n_test], order[n_test:]
    return images[pool], labels[pool], images[test], labels[test]


# ---- caching and registration ---------------------------------------------------------------------


def cached_arrays(
    cache_dir: Path, name: str, make: Callable[[], tuple[np.ndarray, ...]]
) -> dict[str, torch.Tensor]:
    """Generate the task's arrays once; later calls read the safetensors cache, verified against the
    sha256 it recorded when it was generated (a corrupt or changed file is refused, naming it; one
    generated before the caches recorded it is generated again)."""
    path = Path(cache_dir) / "quickstart" / f"{name}-v{GENERATOR_VERSION}.safetensors"
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    arrays = _read_arrays(path, keys) if path.exists() else None
    if arrays is None:
        arrays = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in zip(keys, make())}
        metadata = {"task": name, "generator_version": GENERATOR_VERSION, "sha256": tensors_sha256(arrays)}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata=metadata)
    return arrays


def _read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("sha256")
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise OrthoRegError(
            f"quickstart data cache {path} is corrupt ({err}); delete it and it will be rebuilt"
        ) from err
    if set(arrays) != set(keys):
        raise OrthoRegError(
            f"quickstart data cache {path} holds {sorted(arrays)}, expected {list(keys)}; delete it"
        )
    if recorded is None:
        return None  # generated before the caches recorded their sha256: generated again
    if recorded != tensors_sha256(arrays):
        raise OrthoRegError(
            f"quickstart data cache {path} does not match the sha256 it recorded when it was generated (the "
            "file changed since); delete it and it will be rebuilt"
        )
    return arrays


def _quickstart_task(
    name: str, classnames: list[str], templates: list[str], make: Callable, description: str
) -> TaskSpec:
    def load(data_root: Path, cache_dir: Path) -> TaskData:
        arrays = cached_arrays(cache_dir, name, make)
        return TaskData(
            train_pool=ArrayImageDataset(arrays["train_images"], arrays["train_labels"]),
            test=ArrayImageDataset(arrays["test_images"], arrays["test_labels"]),
            classnames=classnames,
            templates=templates,
        )

    return register_task(TaskSpec(name=name, load=load, description=description, needs_data_root=False))


QUICKSTART_TASKS = ("Digits", "Shapes", "Colors", "Patterns")
QUICKSTART_CONTROL = "Quadrants"

_quickstart_task(
    "Digits",
    [str(i) for i in range(10)],
    ['a photo of the number: "{c}".'],
    _make_digits,
    "scikit-learn's 8x8 handwritten digits (real images), 10 classes",
)
_quickstart_task(
    "Shapes",
    ["circle", "square", "triangle", "cross", "ring"],
    ["a drawing of a {c}.", "a photo of a {c}.", "a {c} shape."],
    _synthetic(5, _paint_shape, seed=11),
    "a filled shape on a noisy background, 5 classes",
)
_quickstart_task(
    "Colors",
    ["red", "green", "blue", "yellow", "purple", "orange"],
    ["a photo of a {c} object.", "something {c}.", "the color {c}."],
    _synthetic(6, _paint_color, seed=12),
    "the color of a shape on a grey background, 6 classes",
)
_quickstart_task(
    "Patterns",
    ["horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard"],
    ["a photo of {c}.", "a texture of {c}.", "a pattern of {c}."],
    _synthetic(4, _paint_pattern, seed=13),
    "a two-colour periodic pattern, 4 classes",
)
_quickstart_task(
    "Quadrants",
    ["top left", "top right", "bottom left", "bottom right"],
    ["a photo of an object in the {c}.", "a dot in the {c} corner."],
    _synthetic(4, _paint_quadrant, seed=14),
    "where a dot lies in the image, 4 classes (the quickstart's control task)",
)

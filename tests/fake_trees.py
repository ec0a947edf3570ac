"""Tiny fake dataset trees in exactly the layouts of docs/data.md (a few images per class).

Each builder writes one dataset under a data root and returns what a correct loader must find:
images per split, labels in loader order, class names and image files. MATLAB files are written
with scipy, MNIST's idx files byte by byte; nothing is downloaded.
"""

from __future__ import annotations

import csv
import io
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from orthoreg_pl.data.prompts import load_prompts

SIZE = (20, 16)  # (width, height): not square, so resize + center crop both act


@dataclass
class FakeTree:
    task: str
    root: Path
    classnames: list[str]
    labels: dict[str, list[int]]  # split -> labels in the loader's order
    files: dict[str, list[Path]] = field(default_factory=dict)  # split -> image files, loader order
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # split -> pixels, for in-memory datasets

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(labels) for split, labels in self.labels.items()}


@cache
def image_bytes(variant: int, fmt: str, size: tuple[int, int] = SIZE) -> bytes:
    """A small structured image (gradient + noise), encoded once per (variant, format)."""
    rng = np.random.default_rng(variant)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3) * (xx / w)[..., None] + rng.uniform(0, 255, 3) * (yy / h)[..., None]
    pixels = np.clip(base / 2 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_image(path: Path, variant: int) -> Path:
    fmt = {".ppm": "PPM", ".png": "PNG"}.get(path.suffix.lower(), "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(variant % 16, fmt))
    return path


def truncate_image(path: Path) -> None:
    """Replace an image by the first 60 % of a larger one of the same format (header intact, data cut)."""
    fmt = {".ppm": "PPM", ".png": "PNG"}.get(path.suffix.lower(), "JPEG")
    data = image_bytes(99, fmt, (64, 64))
    path.write_bytes(data[: int(len(data) * 0.6)])


def _folder_split(root: Path, classes: list[str], per_class: Callable[[int], int], name: Callable) -> tuple:
    """Write an ImageFolder split; returns (labels, files) in ImageFolder order (sorted folders, names)."""
    labels, files = [], []
    for label, cls in enumerate(sorted(classes)):
        names = sorted(name(cls, k) for k in range(per_class(label)))
        for k, fname in enumerate(names):
            files.append(write_image(root / cls / fname, label + k))
            labels.append(label)
    return labels, files


# ---- one builder per dataset --------------------------------------------------------------------


def build_cars(root: Path) -> FakeTree:
    base = root / "stanford_cars"
    names = [f"Make{i:03d} Model Sedan 2012" for i in range(196)]
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)[None]})
    labels, files = {}, {}
    for split, n, mat, folder in (
        ("train_pool", 24, base / "devkit" / "cars_train_annos.mat", "cars_train"),
        ("test", 10, base / "cars_test_annos_withlabels.mat", "cars_test"),
    ):
        fnames = [f"{k:05d}.jpg" for k in range(n, 0, -1)]  # annotation order is not file-name order
        classes = [(k * 37) % 196 + 1 for k in range(n)]
        dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
        annotations = np.array([(1, 2, 18, 14, c, f) for c, f in zip(classes, fnames)], dtype=dtype)
        scipy.io.savemat(mat, {"annotations": annotations})
        files[split] = [write_image(base / folder / f, k) for k, f in enumerate(fnames)]
        labels[split] = [c - 1 for c in classes]
    return FakeTree("Cars", root, names, labels, files)


DTD_CLASSES = (
    "banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous "
    "flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted "
    "meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled "
    "stained stratified striped studded swirly veined waffled woven wrinkled zigzagged"
).split()


def build_dtd(root: Path) -> FakeTree:
    classes = [*DTD_CLASSES[:-1], "zig_zagged"]  # one underscore, to check '_' -> ' '
    labels, files = {}, {}
    for split, folder, per in (("train_pool", "train", 2), ("test", "val", 1)):
        labels[split], files[split] = _folder_split(
            root / "dtd" / folder, classes, lambda _, p=per: p, lambda c, k: f"{c}_{k:04d}.jpg"
        )
    return FakeTree("DTD", root, [c.replace("_", " ") for c in sorted(classes)], labels, files)


def build_eurosat(root: Path) -> FakeTree:
    mapping = load_prompts()["EuroSAT"]["folder_to_classname"]
    labels, files = {}, {}
    for split, folder, per in (("train_pool", "train", 3), ("val", "val", 1), ("test", "test", 2)):
        labels[split], files[split] = _folder_split(
            root / "EuroSAT_splits" / folder,
            list(mapping),
            lambda _, p=per: p,
            lambda c, k: f"{c}_{k + 1}.jpg",
        )
    return FakeTree("EuroSAT", root, [mapping[f] for f in sorted(mapping)], labels, files)


GTSRB_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def build_gtsrb(root: Path) -> FakeTree:
    base = root / "gtsrb"
    folders = [f"{i:05d}" for i in range(43)]
    train_root = base / "GTSRB" / "Training"
    labels, files = _folder_split(
        train_root, folders, lambda y: 2 if y < 3 else 1, lambda c, k: f"{k // 30:05d}_{k % 30:05d}.ppm"
    )
    for folder in folders:  # per-class annotation CSVs, as in the real tree
        (train_root / folder / f"GT-{folder}.csv").write_text(";".join(GTSRB_HEADER) + "\n")
    images = base / "GTSRB" / "Final_Test" / "Images"
    test_labels = [(k * 5) % 43 for k in range(15)]
    test_files = [write_image(images / f"{k:05d}.ppm", k) for k in range(15)]
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(GTSRB_HEADER)
        for path, y in zip(test_files, test_labels):
            writer.writerow([path.name, *SIZE, 1, 1, 18, 14, y])
    names = load_prompts()["GTSRB"]["classnames"]
    return FakeTree(
        "GTSRB",
        root,
        names,
        {"train_pool": labels, "test": test_labels},
        {"train_pool": files, "test": test_files},
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format torchvision reads: magic (0, 0, 0x08 = uint8, ndim), big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def build_mnist(root: Path) -> FakeTree:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    labels, arrays = {}, {}
    for split, prefix, n in (("train_pool", "train", 40), ("test", "t10k", 12)):
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        arrays[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[split])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        labels[split] = y.tolist()
    return FakeTree("MNIST", root, [str(i) for i in range(10)], labels, arrays=arrays)


def build_resisc45(root: Path) -> FakeTree:
    prompts = load_prompts()["RESISC45"]
    folders = prompts["class_folders"]
    base = root / "resisc45"
    images = base / "NWPU-RESISC45"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(folders):
        for k, split in enumerate(("train", "train", "test", "val")):
            name = f"{folder}_{k + 1:03d}.jpg"
            write_image(images / folder / name, label + k)
            lists[split].append(name)
    for split, names in lists.items():  # lists in a shuffled order: the loader orders like ImageFolder
        order = np.random.default_rng(len(split)).permutation(len(names))
        (base / f"resisc45-{split}.txt").write_text("".join(names[i] + "\n" for i in order))
    labels, files = {}, {}
    for split, key in (("train_pool", "train"), ("test", "test")):
        index = {f: i for i, f in enumerate(sorted(folders))}
        samples = sorted((index[n.rsplit("_", 1)[0]], n) for n in lists[key])
        labels[split] = [y for y, _ in samples]
        files[split] = [images / n.rsplit("_", 1)[0] / n for _, n in samples]
    names = dict(zip(folders, prompts["classnames"]))
    return FakeTree("RESISC45", root, [names[f] for f in sorted(folders)], labels, files)


SUN397_FOLDERS = [f"{chr(97 + i % 26)}_scene_{i:03d}_place" for i in range(397)]


def build_sun397(root: Path) -> FakeTree:
    labels, files = {}, {}
    for split, folder in (("train_pool", "train"), ("test", "val")):
        labels[split], files[split] = _folder_split(
            root / "sun397" / folder, SUN397_FOLDERS, lambda _: 1, lambda c, k: f"sun_{c}_{k}.jpg"
        )
    return FakeTree("SUN397", root, [f[2:].replace("_", " ") for f in sorted(SUN397_FOLDERS)], labels, files)


def build_svhn(root: Path) -> FakeTree:
    base = root / "svhn"
    base.mkdir(parents=True)
    rng = np.random.default_rng(4)
    labels, arrays = {}, {}
    for split, name, n in (("train_pool", "train", 30), ("test", "test", 12)):
        y = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1..10, 10 meaning digit 0
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # torchvision's [H, W, C, N]
        scipy.io.savemat(base / f"{name}_32x32.mat", {"X": x, "y": y[:, None]})
        labels[split] = (y % 10).tolist()
        arrays[split] = x.transpose(3, 0, 1, 2)
    return FakeTree("SVHN", root, [str(i) for i in range(10)], labels, arrays=arrays)


IMAGENET_WNIDS = [f"n{1440000 + 7 * i:08d}" for i in range(1000)]


def build_imagenet(root: Path) -> FakeTree:
    labels, files = {}, {}
    for split, folder, name in (
        ("train_pool", "train", lambda c, k: f"{c}_{k}.JPEG"),
        ("test", "val_in_folder", lambda c, k: f"ILSVRC2012_val_{int(c[1:]):08d}.JPEG"),
    ):
        labels[split], files[split] = _folder_split(
            root / "imagenet" / folder, IMAGENET_WNIDS, lambda _: 1, name
        )
    return FakeTree("ImageNet", root, list(load_prompts()["ImageNet"]["classnames"]), labels, files)


BUILDERS: dict[str, Callable[[Path], FakeTree]] = {
    "Cars": build_cars,
    "DTD": build_dtd,
    "EuroSAT": build_eurosat,
    "GTSRB": build_gtsrb,
    "MNIST": build_mnist,
    "RESISC45": build_resisc45,
    "SUN397": build_sun397,
    "SVHN": build_svhn,
    "ImageNet": build_imagenet,
}


def build_all(root: Path) -> dict[str, FakeTree]:
    root.mkdir(parents=True, exist_ok=True)
    return {task: build(root) for task, build in BUILDERS.items()}


# ---- defects: one each, applied to a copy of a healthy tree --------------------------------------


@dataclass(frozen=True)
class Defect:
    task: str
    name: str
    apply: Callable[[Path], Path]  # data root -> the path the error must name
    expect: str  # a phrase the error must contain
    at_load: bool = True  # the loader refuses the tree (else only reading the image finds it)

    def __str__(self) -> str:  # readable pytest ids
        return f"{self.task}-{self.name.replace(' ', '_')}"


def _unlink(rel: str) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        (root / rel).unlink()
        return root / rel

    return apply


def _rmtree(rel: str, named: str | None = None) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        shutil.rmtree(root / rel)
        return root / (named if named is not None else rel)

    return apply


def _overwrite(rel: str, data: bytes) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        (root / rel).write_bytes(data)
        return root / rel

    return apply


def _truncate(rel: str) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        truncate_image(root / rel)
        return root / rel

    return apply


def _truncate_file(rel: str) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
        return root / rel

    return apply


def _extra_class(rel: str) -> Callable[[Path], Path]:
    def apply(root: Path) -> Path:
        write_image(root / rel / "extra_1.jpg", 0)
        return (root / rel).parent

    return apply


def _csv_without_classid(root: Path) -> Path:
    path = root / "gtsrb" / "GT-final_test.csv"
    path.write_text(path.read_text().replace("ClassId", "Label"))
    return path


DEFECTS = [
    Defect(
        "Cars", "missing train annotations", _unlink("stanford_cars/devkit/cars_train_annos.mat"), "not found"
    ),
    Defect(
        "Cars",
        "missing test annotations",
        _unlink("stanford_cars/cars_test_annos_withlabels.mat"),
        "not found",
    ),
    Defect("Cars", "missing class names", _unlink("stanford_cars/devkit/cars_meta.mat"), "not found"),
    Defect(
        "Cars",
        "unreadable annotations",
        _overwrite("stanford_cars/devkit/cars_train_annos.mat", b"not a MATLAB file"),
        "cannot read",
    ),
    Defect("Cars", "missing listed image", _unlink("stanford_cars/cars_train/00005.jpg"), "missing"),
    Defect("Cars", "truncated image", _truncate("stanford_cars/cars_test/00003.jpg"), "unreadable", False),
    Defect(
        "DTD", "class folder count", _rmtree("dtd/train/banded", "dtd/train"), "46 class folders, expected 47"
    ),
    Defect("DTD", "missing test folder", _rmtree("dtd/val"), "not found"),
    Defect("DTD", "truncated image", _truncate("dtd/train/woven/woven_0001.jpg"), "unreadable", False),
    Defect("EuroSAT", "missing val folder", _rmtree("EuroSAT_splits/val"), "not found"),
    Defect(
        "EuroSAT", "unexpected class folder", _extra_class("EuroSAT_splits/test/Clouds"), "unexpected: Clouds"
    ),
    Defect(
        "EuroSAT", "truncated image", _truncate("EuroSAT_splits/val/River/River_1.jpg"), "unreadable", False
    ),
    Defect("GTSRB", "missing test csv", _unlink("gtsrb/GT-final_test.csv"), "not found"),
    Defect("GTSRB", "csv without ClassId", _csv_without_classid, "ClassId"),
    Defect(
        "GTSRB",
        "class folder count",
        _rmtree("gtsrb/GTSRB/Training/00042", "gtsrb/GTSRB/Training"),
        "missing: 00042",
    ),
    Defect(
        "GTSRB", "missing listed test image", _unlink("gtsrb/GTSRB/Final_Test/Images/00007.ppm"), "missing"
    ),
    Defect(
        "GTSRB",
        "truncated image",
        _truncate("gtsrb/GTSRB/Training/00001/00000_00001.ppm"),
        "unreadable",
        False,
    ),
    Defect("MNIST", "missing idx file", _unlink("MNIST/raw/t10k-labels-idx1-ubyte"), "not found"),
    Defect("MNIST", "truncated idx file", _truncate_file("MNIST/raw/train-images-idx3-ubyte"), "cannot read"),
    Defect("RESISC45", "missing split list", _unlink("resisc45/resisc45-train.txt"), "not found"),
    Defect(
        "RESISC45", "missing listed image", _unlink("resisc45/NWPU-RESISC45/island/island_002.jpg"), "missing"
    ),
    Defect(
        "RESISC45",
        "class folder count",
        _rmtree("resisc45/NWPU-RESISC45/wetland", "resisc45/NWPU-RESISC45"),
        "missing: wetland",
    ),
    Defect(
        "RESISC45",
        "truncated image",
        _truncate("resisc45/NWPU-RESISC45/beach/beach_003.jpg"),
        "unreadable",
        False,
    ),
    Defect(
        "SUN397",
        "class folder count",
        _rmtree(f"sun397/val/{SUN397_FOLDERS[5]}", "sun397/val"),
        "396 class folders",
    ),
    Defect(
        "SUN397",
        "truncated image",
        _truncate(f"sun397/train/{SUN397_FOLDERS[9]}/sun_{SUN397_FOLDERS[9]}_0.jpg"),
        "unreadable",
        False,
    ),
    Defect("SVHN", "missing test file", _unlink("svhn/test_32x32.mat"), "not found"),
    Defect("SVHN", "unreadable file", _truncate_file("svhn/train_32x32.mat"), "cannot read"),
    Defect("ImageNet", "missing val folder", _rmtree("imagenet/val_in_folder", "imagenet/val"), "neither"),
    Defect(
        "ImageNet",
        "class folder count",
        _rmtree(f"imagenet/train/{IMAGENET_WNIDS[3]}", "imagenet/train"),
        "999 class folders",
    ),
    Defect(
        "ImageNet",
        "truncated image",
        _truncate(
            f"imagenet/val_in_folder/{IMAGENET_WNIDS[7]}/ILSVRC2012_val_{int(IMAGENET_WNIDS[7][1:]):08d}.JPEG"
        ),
        "unreadable",
        False,
    ),
]


def copy_dataset(healthy: FakeTree, root: Path) -> Path:
    """Copy one dataset of a healthy tree under a new data root (to damage it there)."""
    from orthoreg_pl.data.layouts import LAYOUTS

    folder = LAYOUTS[healthy.task].folder
    shutil.copytree(healthy.root / folder, root / folder)
    return root

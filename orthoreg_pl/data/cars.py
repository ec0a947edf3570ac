"""Stanford Cars from its MATLAB devkit files (docs/data.md): the layout users already hold.

Sample order is the order of the annotation file (as torchvision's StanfordCars reads it), which is
the order the seed-0 rule carves the validation split from. Label = the annotation's class − 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orthoreg_pl.data.files import ImageFiles, first_missing, require_dir, require_file
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError

LAYOUT = LAYOUTS["Cars"]


def read_mat(path: Path, key: str, what: str) -> np.ndarray:
    """One variable of a MATLAB file, with an error naming the file when it is absent or unreadable."""
    import scipy.io

    require_file(LAYOUT.task, path, what, LAYOUT.expects)
    try:
        contents = scipy.io.loadmat(str(path), squeeze_me=True)
    # scipy raises many types on bad files (ValueError, MatReadError, zlib.error, ...)
    except Exception as err:
        raise OrthoRegError(
            f"Cars: cannot read {what} {path} ({type(err).__name__}: {err}); expected a MATLAB file "
            f"holding {key!r}; layout: {LAYOUT.expects}"
        ) from err
    if key not in contents:
        raise OrthoRegError(
            f"Cars: {what} {path} holds no {key!r} variable (found {sorted(k for k in contents if not k.startswith('__'))}); "
            f"layout: {LAYOUT.expects}"
        )
    return np.atleast_1d(contents[key])


def read_annotations(mat: Path, images: Path, num_classes: int) -> ImageFiles:
    """Image files and labels (class − 1) of one split, in annotation order; every file must exist."""
    what = "annotation file"
    annotations = read_mat(mat, "annotations", what)
    try:
        files = [str(a["fname"]) for a in annotations]
        labels = [int(a["class"]) - 1 for a in annotations]
    except (ValueError, TypeError, IndexError) as err:
        raise OrthoRegError(
            f"Cars: {what} {mat}: 'annotations' lacks the fields 'fname' and 'class' ({err}); layout: {LAYOUT.expects}"
        ) from err
    bad = [y + 1 for y in labels if not 0 <= y < num_classes]
    if bad:
        raise OrthoRegError(
            f"Cars: {what} {mat} has class {bad[0]}, outside 1..{num_classes} (the classes of cars_meta.mat)"
        )
    require_dir(LAYOUT.task, images, "image folder", LAYOUT.expects)
    missing, count = first_missing(images, files)
    if missing is not None:
        raise OrthoRegError(
            f"Cars: {count} image(s) listed in {mat} are missing, first {images / missing}; layout: {LAYOUT.expects}"
        )
    return ImageFiles(LAYOUT.task, images, files, labels)


def load_cars(data_root: Path, cache_dir: Path) -> TaskData:
    base = data_root / LAYOUT.folder
    require_dir(LAYOUT.task, base, "dataset folder", LAYOUT.expects)
    classnames = [
        str(c) for c in read_mat(base / "devkit" / "cars_meta.mat", "class_names", "class-name file")
    ]
    if len(classnames) != LAYOUT.num_classes:
        raise OrthoRegError(
            f"Cars: {base / 'devkit' / 'cars_meta.mat'} lists {len(classnames)} class names, expected {LAYOUT.num_classes}"
        )
    train = read_annotations(base / "devkit" / "cars_train_annos.mat", base / "cars_train", len(classnames))
    test = read_annotations(base / "cars_test_annos_withlabels.mat", base / "cars_test", len(classnames))
    return TaskData(
        train_pool=train, test=test, classnames=classnames, templates=load_prompts()["Cars"]["templates"]
    )


register_task(
    TaskSpec(name="Cars", load=load_cars, description="Stanford Cars (devkit .mat files), 196 classes")
)

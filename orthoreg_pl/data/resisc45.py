"""RESISC45 from the split lists of the literature (docs/data.md): ``resisc45/resisc45-{train,test}.txt``
name the images of each split (``airplane_001.jpg`` lies in ``NWPU-RESISC45/airplane/``); the val
list is unused (validation is carved from the train pool).

Order: the reference reads the tree as an ImageFolder filtered by the list, so a split is ordered by
class folder (the sorted ``class_folders`` of zeroshot_prompts.json), then file name, not by list
order; the seed-0 rule carves from that order.
"""

from __future__ import annotations

from pathlib import Path

from orthoreg_pl.data.files import ImageFiles, first_missing, require_dir, require_file
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.prompts import load_prompts
from orthoreg_pl.data.registry import TaskData, TaskSpec, register_task
from orthoreg_pl.errors import OrthoRegError

LAYOUT = LAYOUTS["RESISC45"]


def read_split(list_file: Path, images: Path, class_index: dict[str, int]) -> ImageFiles:
    """The images a split list names, as (class folder/file, label), in ImageFolder order."""
    require_file(LAYOUT.task, list_file, "split list", LAYOUT.expects)
    try:
        names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise OrthoRegError(
            f"RESISC45: cannot read split list {list_file} ({err}); layout: {LAYOUT.expects}"
        ) from err
    samples = set()
    for name in names:
        folder = Path(name).name.rsplit("_", 1)[0]
        if folder not in class_index:
            raise OrthoRegError(
                f"RESISC45: {list_file} names {name!r}, whose class {folder!r} is not one of the 45 class "
                f"folders; expected file names like airplane_001.jpg; layout: {LAYOUT.expects}"
            )
        samples.add((class_index[folder], f"{folder}/{Path(name).name}"))
    ordered = sorted(samples)
    files = [f for _, f in ordered]
    missing, count = first_missing(images, files)
    if missing is not None:
        raise OrthoRegError(
            f"RESISC45: {count} image(s) listed in {list_file} are missing, first {images / missing}; "
            f"layout: {LAYOUT.expects}"
        )
    return ImageFiles(LAYOUT.task, images, files, [y for y, _ in ordered])


def load_resisc45(data_root: Path, cache_dir: Path) -> TaskData:
    prompts = load_prompts()["RESISC45"]
    folders = list(prompts["class_folders"])
    base = require_dir(LAYOUT.task, data_root / LAYOUT.folder, "dataset folder", LAYOUT.expects)
    images = require_dir(LAYOUT.task, base / "NWPU-RESISC45", "image folder", LAYOUT.expects)
    found = sorted(p.name for p in images.iterdir() if p.is_dir())
    if found != sorted(folders):
        missing, extra = sorted(set(folders) - set(found)), sorted(set(found) - set(folders))
        raise OrthoRegError(
            f"RESISC45: {images} holds {len(found)} class folders, expected the {len(folders)} of "
            f"docs/data.md (missing: {', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(extra[:5]) or 'none'}); "
            f"layout: {LAYOUT.expects}"
        )
    class_index = {f: i for i, f in enumerate(sorted(folders))}
    train = read_split(base / "resisc45-train.txt", images, class_index)
    test = read_split(base / "resisc45-test.txt", images, class_index)
    names = dict(zip(folders, prompts["classnames"]))
    return TaskData(
        train_pool=train,
        test=test,
        classnames=[names[f] for f in sorted(folders)],
        templates=prompts["templates"],
    )


register_task(
    TaskSpec(
        name="RESISC45", load=load_resisc45, description="NWPU-RESISC45 remote sensing scenes, 45 classes"
    )
)

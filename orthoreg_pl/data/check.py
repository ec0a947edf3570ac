"""``python -m orthoreg_pl.data check --root DIR``: what is wrong with a data folder, before a long run.

For each dataset: found or missing, images per split against the counts of docs/data.md, and the
first concrete problem (a missing file, a wrong count, an unreadable image) with the path expected.
:func:`check_dataset` is a pure function returning a report; :func:`main` prints the reports.

Counts: by default a split whose size differs from docs/data.md is a problem (the published splits
are what make numbers comparable). ``--lenient-counts`` still shows the counts but accepts other
sizes, e.g. for a subset built to try the pipeline; ``expected=`` overrides the table in code.

Images: ``--images quick`` (default) opens every image file's header and checks that the file
ends where its format says (JPEG end marker, PNG IEND chunk, PPM data size), decoding the whole image
only when that check fails, so a truncated file is found without decoding every image. ``full``
decodes every image (slow), ``none`` skips the files and only checks the layout and counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from orthoreg_pl.data.files import READ_ERRORS, image_files_of
from orthoreg_pl.data.layouts import LAYOUTS, SPLITS, carved_val_size
from orthoreg_pl.data.registry import get_task, task_names
from orthoreg_pl.errors import OrthoRegError

IMAGE_MODES = ("none", "quick", "full")
_PARALLEL_FROM = 4096  # files; below this a process pool costs more than it saves
_CHUNK = 1024  # files per task of the process pool


@dataclass(frozen=True)
class SplitCount:
    split: str  # "train_pool", "val" or "test"
    found: int
    expected: int | None


@dataclass
class DatasetReport:
    task: str
    folder: Path
    status: str  # "ok", "missing" (no dataset folder) or "problem"
    counts: list[SplitCount] = field(default_factory=list)
    problem: str | None = None
    classes: int | None = None

    @property
    def healthy(self) -> bool:
        return self.status == "ok"

    def count(self, split: str) -> SplitCount | None:
        return next((c for c in self.counts if c.split == split), None)


# ---- image checks -----------------------------------------------------------------------------------

_PNG_END = b"IEND\xaeB`\x82"


def _ends_where_expected(path: Path, image: Image.Image) -> bool:
    """Cheap truncation test from the header and the file's tail; False means 'decode to be sure'."""
    size = path.stat().st_size
    if image.format == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, size - 64))
            return b"\xff\xd9" in f.read()
    if image.format == "PNG":
        with open(path, "rb") as f:
            f.seek(max(0, size - 12))
            return f.read().endswith(_PNG_END)
    if image.format == "PPM" and image.mode in ("RGB", "L") and image.tile and image.tile[0][0] == "raw":
        offset = image.tile[0][2]  # 8-bit binary PPM/PGM: header, then width x height x bands bytes
        return size >= offset + image.width * image.height * len(image.getbands())
    return False


def image_problem(path: str | Path, mode: str = "quick") -> str | None:
    """Why an image file cannot be used for training, or None when it can."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if mode == "quick" and _ends_where_expected(path, image):
                return None
            image.load()
    except FileNotFoundError:
        return f"missing image {path}"
    except READ_ERRORS as err:
        return f"unreadable image {path} ({err})"
    return None


def _first_problem_in(paths: Sequence[Path], mode: str) -> str | None:
    for path in paths:
        problem = image_problem(path, mode)
        if problem is not None:
            return problem
    return None


def first_image_problem(paths: Sequence[Path], mode: str, workers: int = 1) -> str | None:
    """The first unreadable image in ``paths`` order (parallel in chunks for big trees)."""
    if mode == "none" or not paths:
        return None
    if workers <= 1 or len(paths) < _PARALLEL_FROM:
        return _first_problem_in(paths, mode)
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for problem in pool.map(_first_problem_in, chunks, [mode] * len(chunks)):
            if problem is not None:
                pool.shutdown(cancel_futures=True)
                return problem
    return None


# ---- one dataset ------------------------------------------------------------------------------------


def check_dataset(
    task: str,
    root: str | Path,
    *,
    images: str = "quick",
    strict_counts: bool = True,
    expected: Mapping[str, int] | None = None,
    workers: int = 1,
) -> DatasetReport:
    """Check one dataset under ``root`` against docs/data.md; returns the report, never raises on bad data.

    ``expected`` (split -> images) replaces the counts of docs/data.md, e.g. for a tree built by tests.
    """
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, not {images!r}")
    if not get_task(task).needs_data_root:
        return check_generated(task)
    layout = LAYOUTS[task]
    root = Path(root)
    folder = root / layout.folder
    report = DatasetReport(task=task, folder=folder, status="problem")
    if not root.is_dir():
        report.problem = f"data root {root} does not exist"
        return report
    if not folder.exists():
        report.status = "missing"
        report.problem = f"{folder} not found; docs/data.md layout: {layout.expects}"
        return report
    try:
        with tempfile.TemporaryDirectory() as cache:  # real datasets write nothing there
            data = get_task(task).load(root, Path(cache))
    except OrthoRegError as err:
        report.problem = str(err)
        return report
    report.classes = len(data.classnames)
    want = dict(layout.counts if expected is None else expected)
    splits = {"train_pool": data.train_pool, "val": data.val, "test": data.test}
    for split in SPLITS:
        if splits[split] is not None:
            report.counts.append(SplitCount(split, len(splits[split]), want.get(split)))
    if strict_counts:
        wrong = next((c for c in report.counts if c.expected is not None and c.found != c.expected), None)
        if wrong is not None:
            report.problem = (
                f"wrong count: {wrong.split.replace('_', ' ')} has {wrong.found} images under {folder}, "
                f"docs/data.md expects {wrong.expected}"
            )
            return report
    for split in SPLITS:
        if splits[split] is not None:
            problem = first_image_problem(image_files_of(splits[split]), images, workers)
            if problem is not None:
                report.problem = f"{task} {split.replace('_', ' ')}: {problem}"
                return report
    report.status = "ok"
    return report


def check_generated(task: str) -> DatasetReport:
    """A quickstart task: made offline from a fixed seed into the cache, no data root needed; it is
    generated here (into a temporary folder) and its splits counted."""
    report = DatasetReport(task=task, folder=Path("(generated)"), status="problem")
    try:
        with tempfile.TemporaryDirectory() as cache:
            data = get_task(task).load(Path(cache), Path(cache))
    except OrthoRegError as err:
        report.problem = str(err)
        return report
    report.classes = len(data.classnames)
    splits = {"train_pool": data.train_pool, "val": data.val, "test": data.test}
    report.counts = [SplitCount(k, len(v), None) for k, v in splits.items() if v is not None]
    report.status = "ok"
    return report


def check_root(root: str | Path, tasks: Sequence[str] | None = None, **options) -> list[DatasetReport]:
    """Reports for ``tasks`` (default: the eight tasks and ImageNet) under ``root``."""
    return [check_dataset(task, root, **options) for task in (tasks or list(LAYOUTS))]


# ---- the command ------------------------------------------------------------------------------------


def resolve_tasks(names: Sequence[str] | None) -> list[str]:
    """Task names as given, matched case-insensitively (``cars`` is ``Cars``); default: the datasets read
    from a data root. The quickstart tasks are known too (generated, they need no data root)."""
    if not names:
        return list(LAYOUTS)
    known = [*LAYOUTS, *(t for t in task_names() if t not in LAYOUTS)]
    by_lower = {name.lower(): name for name in known}
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise OrthoRegError(f"unknown dataset(s) {unknown}; expected some of {known}")
    return [by_lower[n.lower()] for n in names]


def _count_cell(report: DatasetReport, split: str) -> str:
    """``found / expected`` (green when equal); for a carved val split, the size the rule carves."""
    count = report.count(split)
    if count is None:
        pool = report.count("train_pool")
        return f"[dim]{carved_val_size(pool.found)} carved[/]" if split == "val" and pool else "-"
    if count.expected is None:
        return str(count.found)
    colour = "green" if count.found == count.expected else "red"
    return f"[{colour}]{count.found}/{count.expected}[/]"


def print_reports(reports: Sequence[DatasetReport], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="data root vs docs/data.md (images found / expected)")
    table.add_column("dataset")
    table.add_column("status")
    for column in ("classes", "train pool", "val", "test"):
        table.add_column(column, justify="right", no_wrap=True)
    style = {"ok": "green", "missing": "yellow", "problem": "red"}
    for r in reports:
        table.add_row(
            r.task,
            f"[{style[r.status]}]{r.status}[/]",
            "-" if r.classes is None else str(r.classes),
            *(_count_cell(r, split) for split in SPLITS),
        )
    console.print(table)
    for r in reports:  # full messages, unwrapped: paths must stay copyable
        if r.problem is not None:
            line = r.problem if r.problem.startswith(r.task) else f"{r.task}: {r.problem}"
            console.print(line, soft_wrap=True, markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orthoreg_pl.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a data root against the layouts of docs/data.md")
    check.add_argument("--root", required=True, help="the data root (paths.data_root)")
    check.add_argument(
        "--tasks", nargs="+",
        help=f"datasets to check (default: all of {', '.join(LAYOUTS)}; the quickstart tasks are generated)",
    )  # fmt: skip
    check.add_argument(
        "--images", choices=IMAGE_MODES, default="quick", help="how to check image files (default: quick)"
    )
    check.add_argument(
        "--lenient-counts",
        action="store_true",
        help="show split sizes but accept sizes other than docs/data.md",
    )
    check.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes for the image check"
    )
    args = parser.parse_args(argv)
    try:
        tasks = resolve_tasks(args.tasks)
    except OrthoRegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reports = check_root(
        args.root, tasks, images=args.images, strict_counts=not args.lenient_counts, workers=args.workers
    )
    print_reports(reports)
    return 0 if all(r.healthy for r in reports) else 1

"""What ``train.py`` and ``merge.py`` share: bad input ends in one line on stderr, not a traceback wall."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from orthoreg_pl.errors import OrthoRegError

T = TypeVar("T")


def remove_empty_run_dir(run_dir: Path, stop_at: Path) -> None:
    """Hydra made the output folder (and its parents) before the job failed: leave nothing behind."""
    stop_at = stop_at.resolve()
    run_dir = run_dir.resolve()
    while run_dir.is_dir() and run_dir != stop_at and not any(run_dir.iterdir()):
        run_dir.rmdir()
        if stop_at not in run_dir.parents:
            break
        run_dir = run_dir.parent


def run_or_exit(job: Callable[[DictConfig], T], cfg: DictConfig, root: str | Path) -> T:
    """Run ``job(cfg)``; on bad input print ``error: ...``, remove the empty output folder, exit 2."""
    try:
        return job(cfg)
    except OrthoRegError as err:
        remove_empty_run_dir(Path(cfg.paths.output_dir), stop_at=Path(root))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

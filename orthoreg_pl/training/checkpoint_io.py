"""Checkpoints written whole or not at all, and read back with a clear line when they are not whole.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction that, on a local disk,
stages the file in the system's temporary folder and then copies it over the real name: a full disk
leaves a truncated ``last.ckpt`` under that name, and the next run fails inside torch's zip reader
without naming the file. :class:`AtomicCheckpointIO` (passed to every Trainer by
``training/trainer.py``, so every checkpoint Lightning writes goes through it) serialises the
checkpoint in memory, checks that the disk has room for it, writes it to a temporary file beside
the target, fsyncs it and renames it over the target: ``last.ckpt`` is the previous good one or the
new one, never a part. A full disk is one line naming the file and the bytes it needs.

Reading is checked the same way: the zip directory against the file (utils/safe_load.py) before
torch reads it, and torch's own errors become one line naming the file and what to do
(``resume=false`` starts the run over; docs/runs.md).
"""

from __future__ import annotations

import errno
import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from orthoreg_pl.errors import OrthoRegError, RunFailed
from orthoreg_pl.utils.io import atomic_path
from orthoreg_pl.utils.safe_load import inspect_archive

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def no_space(path: Path, needed: int, free: int) -> RunFailed:
    """The one line a full disk gives: the file, the bytes it needs, what is free, what to do."""
    return RunFailed(
        f"cannot write checkpoint {path}: no space left on its disk (it needs {megabytes(needed)} = {needed} bytes, "
        f"{megabytes(free)} free); the previous checkpoint, if any, is kept whole: free space and run the same "
        "command again to resume"
    )


def unreadable(path: Path, why: str) -> OrthoRegError:
    """The one line an unreadable checkpoint gives: the file and how to go on."""
    return OrthoRegError(
        f"checkpoint {path} is unreadable ({why}); run the same command with resume=false to start this run "
        "over (the file is replaced by the first new checkpoint), or put a good copy in its place to resume"
    )


def check_resumable(path: str | Path) -> None:
    """Refuse, before Lightning reads it, a checkpoint whose zip directory does not fit the file
    (truncated, another format, compressed records)."""
    path = Path(path)
    try:
        archive = inspect_archive(path, "checkpoint")
    except OrthoRegError as err:  # "checkpoint <path> is not a whole ...", "checkpoint <path>: record ..."
        why = str(err).removeprefix(f"checkpoint {path}").lstrip(": ").removeprefix("is ")
        raise unreadable(path, why) from None
    if archive.compressed:
        raise unreadable(path, "it holds compressed zip records, which torch.save never writes")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic and durable and whose reads are checked first
    (module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first, as Lightning does: the size is known before writing
        data = buffer.getbuffer()
        write_whole(path, data)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        check_resumable(path)
        location = {} if map_location is None else {"map_location": map_location}  # else Lightning's default
        try:
            return super().load_checkpoint(path, weights_only=weights_only, **location)
        except pickle.UnpicklingError:
            raise  # training/fit.py names what the pickle would have run
        except Exception as err:  # torch's reader raises RuntimeError (and others) for damaged records
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise unreadable(path, first[:200]) from None


def write_whole(path: Path, data: memoryview) -> None:
    """``data`` to ``path`` through a temporary file beside it (fsync, rename); a full disk is refused
    before writing when the room is known to be short, and cleaned up when it runs out midway."""
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = data.nbytes
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise no_space(path, needed, free)
    try:
        with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
            f.write(data)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise no_space(path, needed, shutil.disk_usage(path.parent).free) from None
        raise RunFailed(f"cannot write checkpoint {path}: {err.strerror or err}") from None


__all__ = ["AtomicCheckpointIO", "check_resumable", "write_whole"]

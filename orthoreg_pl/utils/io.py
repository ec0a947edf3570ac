"""Atomic file writes (a reader never sees a half-written file, a crash leaves no partial one), the
leftovers a killed writer leaves (cleaned by the next job that takes the folder), writable output
folders, and content hashes of files and texts."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orthoreg_pl.errors import OrthoRegError

TMP_SUFFIX = ".tmp"  # atomic_path's temporary files: .<name>.<random>.tmp beside their target
STAGING_PREFIX = ".staging-"  # folders whose files are moved into place together (reports)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    ``durable``: the file's bytes are on disk (fsync) before the rename, and the rename is before
    this returns (fsync of the folder), so a power loss leaves the old file or the new one, whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp (and some writers) make 0600; use what open() would
        if durable:
            fsync_path(tmp_path)
        os.replace(tmp_path, target)
        if durable:
            fsync_path(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove what a killed writer left in ``folder`` (not below it): atomic_path's temporary files
    and staging folders. Only the job that holds the folder may call it (another job's files would
    be removed under it); returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(".") and name.endswith(TMP_SUFFIX) and entry.is_file():
            entry.unlink(missing_ok=True)
        elif name.startswith(STAGING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        removed.append(name)
    return sorted(removed)


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, an output folder this process cannot write: ``folder`` or, when it
    does not exist yet, the nearest folder above it that does (where it would be made). ``what``
    names it for the user (``paths.reports_dir``, ``run folder``)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is not a folder"
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = f"{existing} is on a read-only filesystem"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is not writable by this user"
    if reason:
        raise OrthoRegError(f"{what} ({folder}) cannot be written: {reason}; expected a writable folder")


def write_json(target: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def weights_identity(pretrained: str) -> str:
    """A weights file as its name and content hash (where it lies does not make another θ0, what it
    holds does); anything that is not a file (an open_clip tag) as itself."""
    path = Path(pretrained)
    if not path.is_file():
        return pretrained
    stat = path.stat()
    return _file_identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    return f"{Path(path).name}-sha256:{sha256_file(path)[:16]}"  # hashed once per file version and process

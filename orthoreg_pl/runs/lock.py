"""The lock of a run folder: one live job works in a folder at a time."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.folder import LOCK_FILE, now


class RunLock:
    """An exclusive ``flock`` on ``<run folder>/.lock``, held while a job works in the folder.

    The kernel drops it when its process ends, however it ends (SIGKILL included), so a dead job never
    leaves a stale lock; a second job is refused with the holder's pid and host, read from the file.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OrthoRegError(
                f"run folder {self.path.parent} is in use by a live job ({holder}); "
                "wait for it to end, or stop it and re-run to resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {now()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        if [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
            self.path.unlink()  # the job wrote nothing (bad input): leave no folder behind
        os.close(self._fd)  # releases the lock; a used folder keeps its file (removing it would race)
        self._fd = None

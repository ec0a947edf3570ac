"""The run folder: everything needed to reproduce a fine-tuning run and to merge its task vector.

``meta.json`` is written when the run starts (status ``running``, its identity and settings) and
rewritten, atomically, when its status changes: ``interrupted`` (a signal; the checkpoint is kept),
``failed`` (with the reason) or ``finished`` (with the accuracies, after ``task_vector.safetensors``
and ``config.yaml``). Only a ``finished`` run counts anywhere. ``last.ckpt`` (Lightning) resumes an
unfinished run; ``.lock`` is held by the live job that owns the folder.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import importlib.metadata
import json
import os
import socket
import subprocess
from pathlib import Path

from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import sha256_file, write_json, write_text

META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "last.ckpt"
LOCK_FILE = ".lock"
META_SCHEMA_VERSION = 2

RUNNING, INTERRUPTED, FAILED, FINISHED = "running", "interrupted", "failed", "finished"
STATUSES = (RUNNING, INTERRUPTED, FAILED, FINISHED)

_PACKAGES = (
    "orthoreg-pl",
    "torch",
    "torchvision",
    "lightning",
    "open_clip_torch",
    "torchmetrics",
    "hydra-core",
    "safetensors",
)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_status(meta: dict) -> str:
    """The status a meta.json records; runs written before statuses existed were written finished."""
    return meta.get("status", FINISHED if meta.get("schema_version", 1) < 2 else RUNNING)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the code's repository, suffixed ``-dirty`` when it has uncommitted changes; None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def read_meta(run_dir: str | Path) -> dict:
    path = Path(run_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OrthoRegError(f"cannot read run metadata {path}: {err}") from err
    if not isinstance(meta, dict):
        raise OrthoRegError(f"run metadata {path} is not a JSON object")
    return meta


def write_meta(run_dir: str | Path, meta: dict) -> None:
    """meta.json, atomically; values must be JSON (a NaN is a bug here, not a number to write)."""
    write_json(Path(run_dir) / META_FILE, {"schema_version": META_SCHEMA_VERSION, **meta})


def start_meta(identity: dict, fields: dict) -> dict:
    """meta.json of a run that starts now: its identity, what it is, where it runs."""
    return {
        "status": RUNNING,
        "status_reason": None,
        **fields,
        "identity": identity,
        "started_at": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def set_status(run_dir: str | Path, meta: dict, status: str, reason: str | None = None, **fields) -> dict:
    """Record a new status (and any other fields) in meta.json; returns the new meta."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}; expected one of {STATUSES}")
    meta = {**meta, **fields, "status": status, "status_reason": reason, "updated_at": now()}
    write_meta(run_dir, meta)
    return meta


def publish_run(
    run_dir: str | Path, tensors: dict[str, Tensor], meta: dict, config_yaml: str, **fields
) -> dict:
    """Write config and task vector, then mark the run finished in meta.json (each atomically).

    meta.json records the vector file's sha256 (``task_vector_sha256``): merge.py refuses a vector
    changed after the run finished, even one whose safetensors header is intact."""
    from orthoreg_pl.task_vectors import TASK_VECTOR_FILE, save_task_vector  # task_vectors reads run folders

    run_dir = Path(run_dir)
    write_text(run_dir / CONFIG_FILE, config_yaml)
    save_task_vector(
        run_dir / TASK_VECTOR_FILE,
        tensors,
        metadata={k: meta[k] for k in ("arch", "pretrained", "mode", "task")},
    )
    checksum = sha256_file(run_dir / TASK_VECTOR_FILE)
    return set_status(run_dir, meta, FINISHED, finished_at=now(), task_vector_sha256=checksum, **fields)


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

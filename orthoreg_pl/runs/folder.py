"""The run folder: everything needed to reproduce a fine-tuning run and to merge its task vector.

``meta.json`` is written when the run starts (status ``running``, its identity and settings) and
rewritten, atomically, when its status changes: ``interrupted`` (a signal; the checkpoint is kept),
``failed`` (with the reason) or ``finished`` (with the accuracies, after ``task_vector.safetensors``
and ``config.yaml``). Only a ``finished`` run counts anywhere. ``last.ckpt`` (Lightning) resumes an
unfinished run; ``.lock`` is held by the live job that owns the folder (lock.py).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import socket
import subprocess
from pathlib import Path

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import write_json

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

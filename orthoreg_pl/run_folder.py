"""The run folder: everything needed to reproduce a fine-tuning run and to merge its task vector.

``task_vector.safetensors`` (θ − θ0 under image-tower names), ``config.yaml`` (the resolved config),
``last.ckpt`` (Lightning, for resuming) and ``meta.json``. meta.json is written last: its presence
marks a finished run, which a new run refuses to overwrite.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import subprocess
from pathlib import Path

from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.task_vectors import TASK_VECTOR_FILE, save_task_vector
from orthoreg_pl.utils.io import write_json, write_text

META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "last.ckpt"
META_SCHEMA_VERSION = 1
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


def check_not_finished(run_dir: str | Path) -> None:
    meta = Path(run_dir) / META_FILE
    if meta.exists():
        raise OrthoRegError(
            f"output folder {Path(run_dir)} already holds a finished run ({meta}); "
            "choose another folder (hydra.run.dir=DIR, another seed or λ) or delete it"
        )


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


def write_run_folder(
    run_dir: str | Path, task_vector: dict[str, Tensor], meta: dict, config_yaml: str
) -> None:
    """Write config, task vector, then meta.json (each atomically; meta last marks the run finished)."""
    run_dir = Path(run_dir)
    write_text(run_dir / CONFIG_FILE, config_yaml)
    save_task_vector(
        run_dir / TASK_VECTOR_FILE,
        task_vector,
        metadata={k: meta[k] for k in ("arch", "pretrained", "mode", "task")},
    )
    meta = {
        "schema_version": META_SCHEMA_VERSION,
        **meta,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run_dir / META_FILE, meta)


def read_meta(run_dir: str | Path) -> dict:
    path = Path(run_dir) / META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise OrthoRegError(f"cannot read run metadata {path}: {err}") from err

"""Publishing a finished run: its config, its task vector, then ``finished`` in meta.json.

Shared by training (training/fit.py) and the importer of the authors' checkpoints
(import_reference.py), so an imported run is published exactly as a trained one, after the same
checks: floating-point tensors only, every value finite.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.folder import CONFIG_FILE, FINISHED, now, set_status
from orthoreg_pl.task_vectors.io import TASK_VECTOR_FILE, save_task_vector
from orthoreg_pl.utils.io import sha256_file, write_text
from orthoreg_pl.utils.tensors import check_finite


def check_publishable(tensors: Mapping[str, Tensor], source: str | Path) -> None:
    """A task vector fit to publish: not empty, floating point, finite (a merge would spread a NaN to
    every prediction, and an integer tensor is no weight difference)."""
    if not tensors:
        raise OrthoRegError(f"{source}: the task vector is empty; nothing to publish")
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise OrthoRegError(
                f"{source}: tensor {key} of the task vector is {str(value.dtype).removeprefix('torch.')}; "
                "expected floating point"
            )
    check_finite(tensors, source)


def publish_run(
    run_dir: str | Path, tensors: dict[str, Tensor], meta: dict, config_yaml: str, **fields
) -> dict:
    """Write config and task vector, then mark the run finished in meta.json (each atomically).

    meta.json records the vector file's sha256 (``task_vector_sha256``): merge.py refuses a vector
    changed after the run finished, even one whose safetensors header is intact."""
    run_dir = Path(run_dir)
    check_publishable(tensors, run_dir / TASK_VECTOR_FILE)
    write_text(run_dir / CONFIG_FILE, config_yaml)
    save_task_vector(
        run_dir / TASK_VECTOR_FILE,
        tensors,
        metadata={k: meta[k] for k in ("arch", "pretrained", "mode", "task")},
    )
    checksum = sha256_file(run_dir / TASK_VECTOR_FILE)
    return set_status(run_dir, meta, FINISHED, finished_at=now(), task_vector_sha256=checksum, **fields)

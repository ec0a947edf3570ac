"""Task vectors: name → tensor maps θ − θ0 with provenance, their algebra, safetensors I/O, and the
publishing of a finished run."""

from orthoreg_pl.task_vectors.compat import check_compatible, mode_family
from orthoreg_pl.task_vectors.io import (
    TASK_VECTOR_FILE,
    find_runs,
    finished_runs,
    identity_settings_of,
    load_checkpoint_vector,
    load_run,
    load_task_vector,
    save_task_vector,
)
from orthoreg_pl.task_vectors.publish import publish_run
from orthoreg_pl.task_vectors.vector import (
    TaskVector,
    TaskVectorInfo,
    combine_info,
    cosine_matrix,
    sum_vectors,
)

__all__ = [
    "TASK_VECTOR_FILE",
    "TaskVector",
    "TaskVectorInfo",
    "check_compatible",
    "combine_info",
    "cosine_matrix",
    "find_runs",
    "finished_runs",
    "identity_settings_of",
    "load_checkpoint_vector",
    "load_run",
    "load_task_vector",
    "mode_family",
    "publish_run",
    "save_task_vector",
    "sum_vectors",
]

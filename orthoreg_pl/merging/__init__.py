"""Merge methods as pure functions ``merge(task_vectors, **hparams) -> TaskVector``.

Each checks that its inputs fit together first (:func:`orthoreg_pl.task_vectors.check_compatible`).
Config files mirror the modules: ``configs/merge_method/<name>.yaml`` ↔ ``merging/<name>.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.merging import average, dare, task_arithmetic, ties
from orthoreg_pl.task_vectors import TaskVector

MergeMethod = Callable[..., TaskVector]

MERGE_METHODS: dict[str, MergeMethod] = {
    "task_arithmetic": task_arithmetic.merge,
    "ties": ties.merge,
    "dare": dare.merge,
    "average": average.merge,
}


def get_merge_method(name: str) -> MergeMethod:
    try:
        return MERGE_METHODS[name]
    except KeyError:
        raise OrthoRegError(f"unknown merge method {name!r}; known: {', '.join(MERGE_METHODS)}") from None


__all__ = ["MERGE_METHODS", "MergeMethod", "get_merge_method"]

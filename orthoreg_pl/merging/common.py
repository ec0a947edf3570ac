"""What every merge method shares: checking the inputs, weighted sums, and the result's provenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.task_vectors import TaskVector, check_compatible, combine_info
from orthoreg_pl.task_vectors.vector import scaled_name


def prepare(
    task_vectors: Sequence[TaskVector], coefficients: Sequence[float] | None = None
) -> tuple[list[TaskVector], list[float]]:
    """The vectors (checked to fit together) and one float coefficient per vector (default 1)."""
    vectors = list(task_vectors)
    if not vectors:
        raise OrthoRegError("no task vectors to merge")
    if any(not isinstance(v, TaskVector) for v in vectors):
        raise OrthoRegError("merge methods take a sequence of TaskVector objects")
    check_compatible(vectors)
    if coefficients is None:
        return vectors, [1.0] * len(vectors)
    coeffs = [float(c) for c in coefficients]
    if len(coeffs) != len(vectors):
        raise OrthoRegError(f"{len(coeffs)} coefficient(s) {coeffs} for {len(vectors)} task vector(s)")
    return vectors, coeffs


def weighted_sum(maps: Sequence[Mapping[str, Tensor]], coefficients: Sequence[float]) -> dict[str, Tensor]:
    """Σ c_i·m_i per key, accumulated in place into one buffer of the promoted dtype."""
    out = {}
    for key, first in maps[0].items():
        dtype = first.dtype
        for m in maps[1:]:
            dtype = torch.promote_types(dtype, m[key].dtype)
        acc = coefficients[0] * first.to(dtype)
        for m, c in zip(maps[1:], coefficients[1:]):
            acc.add_(m[key].to(acc.device), alpha=c)
        out[key] = acc
    return out


def expression(vectors: Sequence[TaskVector], coefficients: Sequence[float]) -> str:
    """``Digits+Shapes``, ``Digits-0.5*Shapes``: the merged task as a readable sum."""
    if any(v.info is None for v in vectors):
        return ""
    text = ""
    for v, c in zip(vectors, coefficients):
        term = scaled_name(c, v.info.task)
        text += term if not text or term.startswith("-") else f"+{term}"
    return text


def merged(
    tensors: dict[str, Tensor],
    vectors: Sequence[TaskVector],
    coefficients: Sequence[float],
    method: str,
    hparams: dict,
) -> TaskVector:
    """The result with provenance: which method, its hyper-parameters, and which inputs (files, sha256)."""
    inputs = [
        {"task": v.info.task, "mode": v.info.mode, "source": v.info.source, "checksum": v.info.checksum}
        for v in vectors
        if v.info is not None
    ]
    meta = {
        "merge": {"method": method, "hparams": hparams, "coefficients": list(coefficients), "inputs": inputs}
    }
    info = combine_info([v.info for v in vectors], expression(vectors, coefficients), meta)
    return TaskVector(tensors, info)

"""DARE (Yu et al., 2024, "Language Models are Super Mario"): drop and rescale, then sum.

Each entry of each τ_i is dropped with probability p and the kept ones are multiplied by 1/(1−p),
so E[DARE(τ)] = τ; the results are then added with their coefficients. The masks come from CPU
``torch.Generator``s: one per vector (in the order given), seeded from a generator seeded with
``seed``, each drawing key by key in sorted-name order. The same seed gives the same merge on any
device and for any key order in the files, and only one key's masks exist at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.merging.common import merged, prepare, weighted_sum
from orthoreg_pl.task_vectors import TaskVector


def merge(
    task_vectors: Sequence[TaskVector],
    p: float = 0.5,
    seed: int = 0,
    rescale: bool = True,
    coefficients: Sequence[float] | None = None,
) -> TaskVector:
    """Σ c_i·DARE_p(τ_i); ``p=0`` is plain task arithmetic."""
    p = float(p)
    if not 0 <= p < 1:
        raise OrthoRegError(f"DARE drop rate p={p}; expected 0 <= p < 1")
    vectors, coeffs = prepare(task_vectors, coefficients)
    d = sum(t.numel() for t in vectors[0].tensors.values())
    if (1 - p) * d < 1:  # fewer than one entry kept per vector, on average: every α would score θ0
        raise OrthoRegError(
            f"DARE with merge_method.p={p:g} keeps (1 − p)·d = {(1 - p) * d:.3g} of the d = {d} entries of a task "
            f"vector on average: nothing would be merged; expected p < {1 - 1 / d:.6g} (e.g. the default 0.5)"
        )
    master = torch.Generator().manual_seed(int(seed))
    seeds = torch.randint(0, 2**62, (len(vectors),), generator=master).tolist()
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    scale = 1 / (1 - p) if rescale else 1.0
    tensors = {}
    for key in sorted(vectors[0].tensors):
        kept = []
        for v, generator in zip(vectors, generators):
            t = v.tensors[key]
            keep = torch.rand(t.shape, generator=generator) >= p
            kept.append({key: torch.where(keep.to(t.device), t, 0) * scale})
        tensors.update(weighted_sum(kept, coeffs))
    tensors = {k: tensors[k] for k in vectors[0].tensors}  # the inputs' key order
    hparams = {"p": p, "seed": int(seed), "rescale": bool(rescale)}
    return merged(tensors, vectors, coeffs, "dare", hparams)

"""TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean.

1. Trim: keep each vector's top-k fraction of entries by magnitude, over the whole vector (all
   tensors together, as the paper and FusionBench do), zeroing the rest. The threshold is the
   m-th largest |x| with m = round(k·d) of the d entries; entries tied with it are kept. A k so small
   that m = 0 keeps nothing (every α would score θ0): it is refused, naming ``merge_method.k``.
2. Elect: per entry, the sign of the sum of the trimmed vectors (0 where that sum is 0).
3. Disjoint mean: per entry, the mean over the vectors whose trimmed entry is non-zero and has the
   elected sign; 0 where there is none.

The result is the disjoint mean, unscaled: the protocol multiplies it by its α. Coefficients, if
given, scale the vectors before trimming (a negative one flips a vector's vote).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.merging.common import merged, prepare
from orthoreg_pl.task_vectors import TaskVector


def magnitude_threshold(tensors: Iterable[Tensor], k: float) -> Tensor:
    """The m-th largest |x| over all entries of ``tensors`` together (m = round(k·d)), as a float32
    scalar on the first tensor's device; m = 0 (k below 1/(2d)) is refused: TIES would keep nothing."""
    magnitudes = [t.detach().abs().flatten().float() for t in tensors]
    device = magnitudes[0].device
    magnitudes = torch.cat([m.to(device) for m in magnitudes])
    d = magnitudes.numel()
    m = min(d, round(k * d))
    if m < 1:
        raise OrthoRegError(
            f"TIES with merge_method.k={k:g} keeps round(k·d) = 0 of the d = {d} entries of a task vector: "
            f"nothing would be merged; expected k > {0.5 / d:.3g} (e.g. the default 0.2)"
        )
    return magnitudes.kthvalue(d - m + 1).values


def merge(
    task_vectors: Sequence[TaskVector], k: float = 0.2, coefficients: Sequence[float] | None = None
) -> TaskVector:
    """The TIES disjoint mean of ``task_vectors`` keeping the top ``k`` fraction of each (0 < k <= 1)."""
    k = float(k)
    if not 0 < k <= 1:
        raise OrthoRegError(f"TIES keep fraction k={k}; expected 0 < k <= 1 (k=0.2 keeps the top 20 %)")
    vectors, coeffs = prepare(task_vectors, coefficients)
    # Thresholds first (one pass per vector), then key by key: only one key's n trimmed copies live at once.
    thresholds = [
        magnitude_threshold((c * t for t in v.tensors.values()), k) for v, c in zip(vectors, coeffs)
    ]
    tensors = {}
    for key, first in vectors[0].tensors.items():
        trimmed = []
        for v, c, threshold in zip(vectors, coeffs, thresholds):
            x = (c * v.tensors[key]).to(first.device)
            trimmed.append(torch.where(x.abs().float() >= threshold.to(x.device), x, 0))
        stack = torch.stack(trimmed)  # [n, *shape]
        sign = torch.sign(stack.sum(dim=0))
        agree = (torch.sign(stack) == sign) & (stack != 0)
        count = agree.sum(dim=0)
        total = torch.where(agree, stack, 0).sum(dim=0)
        tensors[key] = torch.where(count > 0, total / count.clamp(min=1), 0).to(stack.dtype)
    return merged(tensors, vectors, coeffs, "ties", {"k": k})

"""Top-1 accuracy at every α of a grid in one metric: exact counts, summed across processes."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class AlphaAccuracy(Metric):
    """Correct predictions per α and the number of samples.

    Counts (not means) are summed over processes, so a distributed evaluation equals the
    single-process one as long as no sample is seen twice (see :class:`UnpaddedDistributedSampler`).
    """

    full_state_update = False

    def __init__(self, num_alphas: int) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros(num_alphas, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """``logits`` [A, B, C] (one slice per α) or [B, C] for a single α."""
        if logits.ndim == 2:
            logits = logits.unsqueeze(0)
        self.correct += (logits.argmax(dim=-1) == labels.unsqueeze(0)).sum(dim=1)
        self.total += labels.numel()

    def compute(self) -> Tensor:
        """[correct per α..., total]: exact integer counts (as float64), synced across processes."""
        return torch.cat([self.correct, self.total.view(1)]).double()


def accuracies(counts: Tensor | list[float]) -> list[float]:
    """Accuracy per α from ``AlphaAccuracy.compute()``'s counts."""
    counts = [float(c) for c in counts]
    total = max(counts[-1], 1.0)
    return [c / total for c in counts[:-1]]

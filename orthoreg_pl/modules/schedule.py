"""The learning-rate schedule of the reference recipe, as a pure function of the optimizer step."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr: linear warm-up from 1/warmup, then cosine to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))

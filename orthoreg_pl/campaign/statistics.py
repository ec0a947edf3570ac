"""Seeds as evidence: a metric's mean over seeds with its 95 % confidence interval, and the paired
difference of a penalised point against the λ = 0 reference of its family, seed by seed.

The interval is Student's t: mean ± t(0.975, n − 1) · s / √n, s the sample standard deviation. With
the few seeds a campaign affords (2 to 5), a bootstrap interval would be too narrow (it never looks
beyond the handful of values it resamples); the t interval widens honestly as n shrinks, and assumes
seed-to-seed variation roughly normal, which holds for accuracies away from 0 and 1. One value gives
no interval; equal values give an interval of width 0.

The paired difference compares the two at the same seeds (same data order and augmentation), so the
seed's own effect cancels: its interval is the t interval of the per-seed differences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` seeds and the half-width of its confidence interval (None when n = 1)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.half_width is not None and (self.low > 0 or self.high < 0)


def t_quantile(n: int, level: float = LEVEL) -> float:
    """t(1 − (1 − level)/2, n − 1): the factor of s/√n in the interval."""
    from scipy.stats import t

    return float(t.ppf(1 - (1 - level) / 2, n - 1))


def estimate(values: Sequence[float], level: float = LEVEL) -> Estimate | None:
    """Mean and t interval of ``values`` (None when there are none)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Estimate(mean, None, 1)
    spread = statistics.stdev(values) / math.sqrt(len(values))
    return Estimate(mean, t_quantile(len(values), level) * spread, len(values))


def paired_difference(
    values: Mapping[int, float | None], reference: Mapping[int, float | None], level: float = LEVEL
) -> Estimate | None:
    """``values − reference`` seed by seed, over the seeds both have, with its t interval."""
    seeds = [s for s in values if s in reference and values[s] is not None and reference[s] is not None]
    return estimate([values[s] - reference[s] for s in seeds], level)


def verdict(difference: Estimate | None, direction: str, scale: float = 100.0, unit: str = "points") -> str:
    """The difference in words: better / worse by X ± Y points (n seeds), or not distinguishable.

    ``direction`` says which way is better (``maximize``: a positive difference)."""
    if difference is None:
        return "no λ = 0 reference at the same seeds"
    x = scale * difference.mean
    if difference.half_width is None:
        return f"{x:+.2f} {unit} at one seed: no interval can be given"
    y = scale * difference.half_width
    seeds = f"{difference.n} seeds"
    if not difference.excludes_zero():
        return f"not distinguishable at {seeds} ({x:+.2f} ± {y:.2f} {unit})"
    better = (difference.mean > 0) == (direction == "maximize")
    return f"{'better' if better else 'worse'} by {abs(x):.2f} ± {y:.2f} {unit} ({seeds})"

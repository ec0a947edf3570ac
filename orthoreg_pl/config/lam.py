"""λ, the penalty weight, as runs and reports name it and as a job trains or merges with it.

Below both training and evaluation: a merge selects the runs of the λ they trained with.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from orthoreg_pl.errors import OrthoRegError


def format_lambda(value: float | int | str) -> str:
    """λ as it appears in folder names: ``10`` and ``10.0`` both give ``10``, ``1e-3`` gives ``0.001``.

    A value that is no number is returned as typed: the run then stops with a clear error about it,
    not inside Hydra's own error formatting."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def effective_lambda(cfg: DictConfig) -> float:
    """λ the job trains (or selects runs) with: ``ortho.lam`` for penalised modes, 0 for the others
    (whose ``ortho.lam`` a merge experiment sets for its penalised modes: nothing to say about it)."""
    raw = cfg.ortho.lam
    try:
        lam = float(raw)
    except (TypeError, ValueError):
        raise OrthoRegError(f"ortho.lam={raw!r} is not a number; expected a finite λ >= 0") from None
    if not math.isfinite(lam):
        raise OrthoRegError(
            f"ortho.lam={raw} is not finite; the penalty weight λ must be a finite number >= 0"
        )
    if lam < 0:
        raise OrthoRegError(f"ortho.lam={lam} is negative; the penalty weight λ must be >= 0")
    return lam if cfg.mode.penalized else 0.0

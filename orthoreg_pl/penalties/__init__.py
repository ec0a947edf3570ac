"""OrthoReg penalties: pure functions over lists of weight updates ΔW."""

from orthoreg_pl.penalties.ortho import (
    GRAMS,
    NORMS,
    gram_size,
    ortho_penalty,
    ortho_penalty_of,
    ortho_penalty_per_matrix,
    ortho_penalty_reference,
    penalty_at_zero,
    shape_groups,
)

__all__ = [
    "GRAMS",
    "NORMS",
    "gram_size",
    "ortho_penalty",
    "ortho_penalty_of",
    "ortho_penalty_per_matrix",
    "ortho_penalty_reference",
    "penalty_at_zero",
    "shape_groups",
]

"""Non-linear fine-tuning of the whole image tower, without and with OrthoReg (docs/method.md §3)."""

from orthoreg_pl.modules.base import FineTuneModule


class StandardFineTuning(FineTuneModule):
    """All image-tower parameters train; loss = CE."""

    mode = "standard"


class StandardOrthoFineTuning(StandardFineTuning):
    """Same trainable set; loss = CE + λ·Σ‖ΔWᵀΔW − I‖ over every trainable 2-D weight."""

    mode = "standard_ortho"
    uses_penalty = True

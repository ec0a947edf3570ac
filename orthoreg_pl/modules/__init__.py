"""One LightningModule per fine-tuning mode (docs/method.md §3), over a small shared base."""

from orthoreg_pl.modules.attention import AttentionFineTuning, AttentionOrthoFineTuning
from orthoreg_pl.modules.base import FineTuneModule
from orthoreg_pl.modules.linear import LinearFineTuning, LinearOrthoFineTuning
from orthoreg_pl.modules.lora import LoRAAttentionFineTuning, LoRAAttentionOrthoFineTuning
from orthoreg_pl.modules.standard import StandardFineTuning, StandardOrthoFineTuning

MODES: dict[str, type[FineTuneModule]] = {
    cls.mode: cls
    for cls in (
        StandardFineTuning,
        StandardOrthoFineTuning,
        LinearFineTuning,
        LinearOrthoFineTuning,
        AttentionFineTuning,
        AttentionOrthoFineTuning,
        LoRAAttentionFineTuning,
        LoRAAttentionOrthoFineTuning,
    )
}

__all__ = ["MODES", "FineTuneModule", *(cls.__name__ for cls in MODES.values())]

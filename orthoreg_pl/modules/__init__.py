"""One LightningModule per fine-tuning mode, over a small shared base."""

from orthoreg_pl.modules.base import FineTuneModule
from orthoreg_pl.modules.standard import StandardFineTuning, StandardOrthoFineTuning

MODES = {cls.mode: cls for cls in (StandardFineTuning, StandardOrthoFineTuning)}

__all__ = ["MODES", "FineTuneModule", "StandardFineTuning", "StandardOrthoFineTuning"]

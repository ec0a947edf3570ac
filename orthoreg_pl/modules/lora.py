"""LoRA on attention (LoRA-ATT), without and with OrthoReg.

The factors A, B train; the frozen base stays as it is. The penalty acts on each dense
ΔW = (alpha/r)·B·A, and the task vector stores that dense ΔW under the base weight's name, so it
merges into a plain model (adding the factors separately would be wrong: cross terms).
"""

from torch import Tensor

from orthoreg_pl.models.classifier import ImageClassifier
from orthoreg_pl.models.lora import add_lora
from orthoreg_pl.modules.base import FineTuneModule


class LoRAAttentionFineTuning(FineTuneModule):
    mode = "lora_attn"

    def __init__(self, model: ImageClassifier, rank: int = 8, alpha: float = 8.0, **kwargs) -> None:
        # Adapters join the model before the base class records the trainable set and its θ0.
        self.adapters = {f"visual.{name}": a for name, a in add_lora(model.visual, rank, alpha).items()}
        super().__init__(model, **kwargs)

    def select_trainable(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.endswith(("lora_A", "lora_B")))

    def select_penalized(self) -> list[str]:
        return list(self.adapters)

    def delta_tensors(self) -> dict[str, Tensor]:
        return {name: adapter.delta() for name, adapter in self.adapters.items()}

    def penalty_deltas(self) -> list[Tensor]:
        return list(self.delta_tensors().values())


class LoRAAttentionOrthoFineTuning(LoRAAttentionFineTuning):
    mode = "lora_attn_ortho"
    uses_penalty = True

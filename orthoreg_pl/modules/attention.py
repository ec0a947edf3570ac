"""Attention-only fine-tuning (ATT-FT, the reference's ``linear-2``), without and with OrthoReg.

Only the fused ``attn.in_proj_weight`` and ``attn.out_proj.weight`` of every image block train (no
biases); the penalty covers exactly those matrices.
"""

from orthoreg_pl.modules.base import FineTuneModule

ATTENTION_WEIGHTS = ("attn.in_proj_weight", "attn.out_proj.weight")


class AttentionFineTuning(FineTuneModule):
    mode = "attn"

    def select_trainable(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith("visual.transformer.") and name.endswith(ATTENTION_WEIGHTS))


class AttentionOrthoFineTuning(AttentionFineTuning):
    mode = "attn_ortho"
    uses_penalty = True

"""LoRA on the image tower's attention (LoRA-ATT), as torch parametrizations.

W_eff = W + (alpha/r)·B·A on the fused ``attn.in_proj_weight`` and on ``attn.out_proj.weight`` of
every block, so y = W x + b + (alpha/r)·B·A·x exactly as in the reference, with W frozen. A is
[r, in] (kaiming-uniform, a=√5), B is [out, r] (zeros): at initialisation the model is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

LORA_TARGETS = ("attn.in_proj_weight", "attn.out_proj.weight")


class LoRADelta(nn.Module):
    """The parametrization W ↦ W + scale·B·A; ``delta()`` is the dense ΔW a task vector stores."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank={rank}; expected >= 1")
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.delta()


def lora_target_names(visual: nn.Module) -> list[str]:
    """Names (relative to ``visual``) of the attention matrices LoRA adapts, in block order."""
    return [
        n for n, _ in visual.named_parameters() if n.startswith("transformer.") and n.endswith(LORA_TARGETS)
    ]


def add_lora(visual: nn.Module, rank: int = 8, alpha: float = 8.0) -> dict[str, LoRADelta]:
    """Attach LoRA to every target matrix of ``visual``; returns target name → its LoRADelta."""
    adapters = {}
    for name in lora_target_names(visual):
        owner_name, _, attr = name.rpartition(".")
        owner = visual.get_submodule(owner_name)
        out_features, in_features = getattr(owner, attr).shape
        adapter = LoRADelta(out_features, in_features, rank, alpha).to(getattr(owner, attr))
        parametrize.register_parametrization(owner, attr, adapter, unsafe=True)
        adapters[name] = adapter
    return adapters

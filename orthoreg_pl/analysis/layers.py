"""Layer types of an open_clip ViT block, by parameter name: the granularity the paper's figures use.

The fused attention input projection (q, k, v in one matrix, never split), the attention output
projection, the MLP's expansion (c_fc) and contraction (c_proj); everything else (positional
embedding, final projection, biases, norms, the patch convolution) is ``other``.
"""

from __future__ import annotations

from collections.abc import Iterable

LAYER_TYPES: tuple[str, ...] = ("attn_in_proj", "attn_out_proj", "mlp_c_fc", "mlp_c_proj", "other")
LAYER_LABELS = {  # for figure titles and tables
    "attn_in_proj": "attn in_proj (fused q,k,v)",
    "attn_out_proj": "attn out_proj",
    "mlp_c_fc": "mlp c_fc",
    "mlp_c_proj": "mlp c_proj",
    "other": "other",
    "all": "whole vector",
}
_SUFFIXES = (
    ("attn.in_proj_weight", "attn_in_proj"),
    ("attn.out_proj.weight", "attn_out_proj"),
    ("mlp.c_fc.weight", "mlp_c_fc"),
    ("mlp.c_proj.weight", "mlp_c_proj"),
)


def layer_type(name: str) -> str:
    """``attn_in_proj`` for ``visual.transformer.resblocks.3.attn.in_proj_weight``, ..., else ``other``."""
    for suffix, kind in _SUFFIXES:
        if name.endswith(suffix):
            return kind
    return "other"


def group_by_type(names: Iterable[str]) -> dict[str, list[str]]:
    """Layer type -> names, in LAYER_TYPES order; types without a name are left out."""
    groups: dict[str, list[str]] = {kind: [] for kind in LAYER_TYPES}
    for name in names:
        groups[layer_type(name)].append(name)
    return {kind: names for kind, names in groups.items() if names}

"""The model every mode trains: CLIP's image tower followed by a frozen zero-shot head.

Parameters keep open_clip's image-tower names (``visual.transformer.resblocks.0.attn.in_proj_weight``,
...), which is what task vectors are keyed by.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from orthoreg_pl.models.clip import create_clip, pretrained_identity
from orthoreg_pl.models.heads import ZeroShotHead, load_or_build_head


class ImageClassifier(nn.Module):
    def __init__(self, visual: nn.Module, head_weight: Tensor) -> None:
        super().__init__()
        self.visual = visual
        self.head = ZeroShotHead(head_weight)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.visual(images))


def build_classifier(
    arch: str,
    pretrained: str | None,
    task: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_dir: str | Path,
    init_seed: int = 0,
    quick_gelu: bool | None = None,
) -> ImageClassifier:
    """Build CLIP, take (or build and cache) the task's zero-shot head, and drop the text tower."""
    clip = create_clip(arch, pretrained, init_seed=init_seed, quick_gelu=quick_gelu)
    head = load_or_build_head(
        clip, arch, pretrained_identity(pretrained, init_seed), task, classnames, templates, cache_dir
    )
    return ImageClassifier(clip.visual, head)

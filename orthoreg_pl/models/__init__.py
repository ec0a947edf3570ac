"""Models: open_clip CLIP builders, zero-shot heads, and the image classifier every mode trains."""

from orthoreg_pl.models.classifier import ImageClassifier, build_classifier
from orthoreg_pl.models.clip import (
    TINY_ARCH,
    check_architecture,
    create_clip,
    preprocess_config,
    pretrained_identity,
)
from orthoreg_pl.models.heads import ZeroShotHead, load_or_build_head

__all__ = [
    "TINY_ARCH",
    "ImageClassifier",
    "ZeroShotHead",
    "build_classifier",
    "check_architecture",
    "create_clip",
    "load_or_build_head",
    "preprocess_config",
    "pretrained_identity",
]

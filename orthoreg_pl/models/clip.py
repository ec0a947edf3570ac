"""Building open_clip CLIP models: any open_clip architecture plus the project's tiny ViT.

``pretrained`` is an open_clip tag (``openai``, downloaded by open_clip on the user's machine), a
path to a local weights file (``.safetensors`` or a ``torch.load``-able state dict, read with
``weights_only=True``), or ``None`` for a random init drawn from ``init_seed`` (so every run of a
random-init experiment shares the same θ0 and its task vectors can be merged).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import open_clip
import torch
from torch import nn

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import weights_identity
from orthoreg_pl.utils.safe_load import unsafe_pickle_message

TINY_ARCH = "orthoreg-tiny-vit"
_MODEL_CONFIGS = Path(__file__).resolve().parent.parent / "resources" / "model_configs"


@functools.cache
def register_project_architectures() -> None:
    """Make the tiny ViT (quickstart and tests: seconds per epoch on a CPU) known to open_clip."""
    open_clip.add_model_config(_MODEL_CONFIGS)


def check_architecture(arch: str) -> None:
    register_project_architectures()
    known = open_clip.list_models()
    if arch not in known:
        examples = [a for a in ("ViT-B-32", "ViT-B-16", "ViT-L-14", TINY_ARCH) if a in known]
        raise OrthoRegError(
            f"model.arch={arch!r} is not an open_clip architecture; expected one of open_clip.list_models() "
            f"(e.g. {examples}; {len(known)} in all)"
        )


def pretrained_identity(pretrained: str | None, init_seed: int) -> str:
    """A string that names θ0: the open_clip tag, the weight file's name and content hash, or the init seed."""
    if pretrained is None:
        return f"random-init-seed{init_seed}"
    return weights_identity(
        pretrained
    )  # a file: name + sha256, so two files of one name never pass as one θ0


def _resolve_pretrained(arch: str, pretrained: str | None) -> tuple[str | None, bool]:
    """Check ``pretrained`` and return (what open_clip should load, whether to force QuickGELU)."""
    if pretrained is None:
        return None, False
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained in tags:
        cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        return pretrained, bool(cfg.get("quick_gelu", False))
    if Path(pretrained).is_file():
        return str(pretrained), False
    raise OrthoRegError(
        f"model.pretrained={pretrained!r} is neither an open_clip tag of {arch} ({tags or 'none'}) "
        "nor an existing weights file; use null for a random init"
    )


def create_clip(
    arch: str, pretrained: str | None = None, init_seed: int = 0, quick_gelu: bool | None = None
) -> nn.Module:
    """Build the whole CLIP model (both towers; the text tower is needed only for zero-shot heads)."""
    check_architecture(arch)
    source, tag_quick_gelu = _resolve_pretrained(arch, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            model = open_clip.create_model(
                arch,
                pretrained=source,
                force_quick_gelu=tag_quick_gelu if quick_gelu is None else quick_gelu,
                weights_only=True,
            )
        except pickle.UnpicklingError as err:  # weights_only refused a class or function named by the file
            raise OrthoRegError(unsafe_pickle_message(source, "model.pretrained file", err)) from None
        except RuntimeError as err:
            if source is not None and Path(source).is_file():
                first = (str(err).strip().splitlines() or [""])[0]
                raise OrthoRegError(f"could not load weights file {source} into {arch}: {first}") from None
            raise
    return model.float()


def preprocess_config(model: nn.Module) -> dict:
    """Image size, mean, std and interpolation of the model, from open_clip's preprocessing config."""
    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    cfg.setdefault("size", visual.image_size)
    cfg.setdefault("mean", open_clip.OPENAI_DATASET_MEAN)
    cfg.setdefault("std", open_clip.OPENAI_DATASET_STD)
    return cfg

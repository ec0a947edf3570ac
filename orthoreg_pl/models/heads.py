"""Zero-shot classification heads (docs/method.md §4), cached on disk as safetensors.

A head is built once per (architecture, pretrained weights, task, prompts) with the CLIP text
tower and reused by every run, mode and merge; the text tower is then no longer needed. The file
records the sha256 of its weights (safetensors metadata), verified when it is read: a head changed
after it was built is refused, naming the file; one built before heads recorded it is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.io import atomic_path, sha256_text
from orthoreg_pl.utils.tensors import check_finite, tensors_sha256


@torch.no_grad()
def build_zeroshot_weights(
    clip: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> Tensor:
    """[C, D] head: per class, mean of the L2-normalised prompt embeddings, normalised, × exp(logit_scale)."""
    device = next(clip.parameters()).device
    rows = []
    for name in classnames:
        texts = [t.replace("{c}", name) for t in templates]
        embeddings = torch.cat(
            [
                clip.encode_text(tokenizer(texts[i : i + batch_size]).to(device))
                for i in range(0, len(texts), batch_size)
            ]
        )
        embeddings = F.normalize(embeddings.float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(embeddings, dim=-1))
    return torch.stack(rows) * clip.logit_scale.exp().float()


def head_cache_path(
    cache_dir: str | Path,
    arch: str,
    pretrained_id: str,
    task: str,
    classnames: Sequence[str],
    templates: Sequence[str],
) -> Path:
    """Cache key: architecture, θ0, task and a hash of the exact prompts (a prompt edit rebuilds)."""
    prompts_hash = sha256_text(*classnames, "||", *templates)[:12]
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return (
        Path(cache_dir)
        / "heads"
        / f"{safe(arch)}__{safe(pretrained_id)}__{safe(task)}__{prompts_hash}.safetensors"
    )


def read_head(path: Path, num_classes: int) -> Tensor | None:
    """Load a cached head, with a clear error when the file is corrupt or changed since it was built;
    None for a head built before heads recorded their sha256 (it is rebuilt)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("sha256")
            weight = f.get_tensor("weight")
    except (SafetensorError, KeyError, OSError, ValueError, RuntimeError) as err:
        raise OrthoRegError(
            f"zero-shot head cache file {path} is corrupt ({err}); delete it and it will be rebuilt"
        ) from err
    if weight.ndim != 2 or weight.shape[0] != num_classes:
        raise OrthoRegError(
            f"zero-shot head cache file {path} holds a {tuple(weight.shape)} tensor, expected {num_classes} classes; "
            "delete it and it will be rebuilt"
        )
    if recorded is None:
        return None
    if recorded != tensors_sha256({"weight": weight}):
        raise OrthoRegError(
            f"zero-shot head cache file {path} does not match the sha256 it recorded when it was built (the file "
            "changed since); delete it and it will be rebuilt"
        )
    check_finite({"weight": weight}, path)
    return weight


def load_or_build_head(
    clip: nn.Module | None,
    arch: str,
    pretrained_id: str,
    task: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_dir: str | Path,
) -> Tensor:
    """Return the task's [C, D] head from the cache, building (with ``clip``'s text tower) when missing."""
    path = head_cache_path(cache_dir, arch, pretrained_id, task, classnames, templates)
    cached = read_head(path, len(classnames)) if path.exists() else None
    if cached is not None:
        return cached
    if clip is None:
        why = "is not there" if not path.exists() else "was built before heads recorded their checksum"
        raise OrthoRegError(
            f"the zero-shot head cache file {path} {why}, and no CLIP text tower is at hand to build it"
        )
    weight = (
        build_zeroshot_weights(clip, open_clip.get_tokenizer(arch), classnames, templates).cpu().contiguous()
    )
    metadata = {
        "arch": arch,
        "pretrained": pretrained_id,
        "task": task,
        "sha256": tensors_sha256({"weight": weight}),
    }
    with atomic_path(path) as tmp:
        save_file({"weight": weight}, str(tmp), metadata=metadata)
    return weight


class ZeroShotHead(nn.Module):
    """Frozen linear head on the L2-normalised image embedding; no bias (docs/method.md §4)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone(), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=-1) @ self.weight.to(features.dtype).T

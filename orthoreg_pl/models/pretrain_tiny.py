"""Pre-train the tiny CLIP (``orthoreg-tiny-clip``) contrastively on the CPU, deterministically.

The quickstart needs a θ0 that knows something, or task arithmetic has nothing to keep or remove.
This script trains both towers with the CLIP loss on the captioned pre-training world of
``orthoreg_pl.data.tiny_world`` and writes the weights as safetensors plus a manifest (seed, data
recipe, steps, hyper-parameters, versions, sha256). One thread, fixed seeds, fresh generators: the
same settings on the same torch build give the same bytes.

    python -m orthoreg_pl.models.pretrain_tiny              # the shipped weights (a few minutes)
    python -m orthoreg_pl.models.pretrain_tiny --steps 20 --num-images 512 --out /tmp/t.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from orthoreg_pl.data.tiny_world import WorldRecipe, make_world
from orthoreg_pl.models.clip import create_clip
from orthoreg_pl.utils.io import atomic_path, sha256_file

TINY_CLIP_ARCH = "orthoreg-tiny-clip"
RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "pretrained"
WEIGHTS_FILE = RESOURCES / f"{TINY_CLIP_ARCH}.safetensors"


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting that changes the weights: recorded in the manifest."""

    world: WorldRecipe = field(default_factory=WorldRecipe)
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 150
    init_seed: int = 0
    order_seed: int = 1


def _images_to_tensor(images: np.ndarray, mean: tuple, std: tuple) -> Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W], as open_clip's preprocessing of a 32 px image."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def clip_loss(model: nn.Module, images: Tensor, tokens: Tensor) -> Tensor:
    """Symmetric InfoNCE over the batch (Radford et al. 2021); duplicate captions count as negatives."""
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pretrain(cfg: PretrainConfig, log_every: int = 250) -> tuple[dict[str, Tensor], dict]:
    """Train from a seeded init; return (state dict, training summary). Runs on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.time()
        model = create_clip(TINY_CLIP_ARCH, None, init_seed=cfg.init_seed)
        images, captions = make_world(cfg.world)
        tokens = open_clip.get_tokenizer(TINY_CLIP_ARCH)(captions)
        pixels = _images_to_tensor(images, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        gen = torch.Generator().manual_seed(cfg.order_seed)
        order, cursor, losses = torch.randperm(len(pixels), generator=gen), 0, []
        model.train()
        for step in range(cfg.steps):
            if cursor + cfg.batch_size > len(order):
                order, cursor = torch.randperm(len(pixels), generator=gen), 0
            idx = order[cursor : cursor + cfg.batch_size]
            cursor += cfg.batch_size
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            loss = clip_loss(model, pixels[idx], tokens[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                recent = sum(losses[-log_every:]) / log_every
                print(
                    f"step {step + 1}/{cfg.steps}  loss {recent:.4f}  ({time.time() - start:.0f} s)",
                    flush=True,
                )
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        summary = {
            "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
            "seconds": round(time.time() - start, 1),
        }
        return state, summary
    finally:
        torch.set_num_threads(threads)


def write_weights(state: dict[str, Tensor], cfg: PretrainConfig, summary: dict, out: Path) -> dict:
    """Write ``out`` (safetensors, no time-dependent metadata) and ``out``.manifest.json beside it."""
    # One metadata key: safetensors writes its metadata map in no fixed order, so two keys could
    # give two byte streams (two checksums) for the same weights.
    header = json.dumps(
        {"arch": TINY_CLIP_ARCH, "world_version": cfg.world.as_dict()["world_version"]}, sort_keys=True
    )
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"orthoreg": header})
    manifest = {
        "arch": TINY_CLIP_ARCH,
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "config": {**asdict(cfg), "world": cfg.world.as_dict()},
        "training": summary,
        "built_with": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": 1,
        },
        "command": "python -m orthoreg_pl.models.pretrain_tiny",
    }
    manifest_path = out.with_suffix(".manifest.json")
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@torch.no_grad()
def zeroshot_accuracy(model: nn.Module, task: str, cache_dir: str | Path, split: str = "test") -> float:
    """Top-1 of θ0 on a quickstart task with a head built by the same code as for real CLIP."""
    from orthoreg_pl.data.registry import load_task
    from orthoreg_pl.models.heads import build_zeroshot_weights

    data = load_task(task, Path(cache_dir) / "no_data_root", cache_dir)
    dataset = data.test if split == "test" else data.train_pool
    head = build_zeroshot_weights(
        model, open_clip.get_tokenizer(TINY_CLIP_ARCH), data.classnames, data.templates
    )
    pixels = _images_to_tensor(dataset.images, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    labels = torch.tensor(dataset.labels)
    model.eval()
    feats = torch.cat([model.encode_image(pixels[i : i + 512]) for i in range(0, len(pixels), 512)])
    return (F.normalize(feats, dim=-1) @ head.T).argmax(1).eq(labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--num-images", type=int, default=WorldRecipe.num_images)
    parser.add_argument(
        "--seed", type=int, default=0, help="the world's seed (init and order seeds stay fixed)"
    )
    args = parser.parse_args(argv)
    cfg = PretrainConfig(world=WorldRecipe(seed=args.seed, num_images=args.num_images), steps=args.steps)
    state, summary = pretrain(cfg)
    manifest = write_weights(state, cfg, summary, args.out)
    print(f"wrote {args.out} ({manifest['bytes'] / 2**20:.1f} MiB) sha256 {manifest['sha256']}")
    return manifest


if __name__ == "__main__":
    main()

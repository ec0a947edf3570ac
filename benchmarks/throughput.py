"""Benchmark: does the accelerator wait for data? A real training loop's images/s against a data-free step.

In one run, on the same device, precision and model (random init, no download):
  data-free  the training step of benchmarks/modes.py (forward, CE, backward, clipping, AdamW) on one
             batch of random tensors kept on the device: the rate the model allows;
  loop       the same step fed by the project's TaskDataModule: real-size JPEGs made offline in the DTD
             layout, decoded, RandomResizedCrop'd and normalised by workers (open_clip's train
             transform, seeded per sample), pinned and copied to the device.
Prints both rates and loop / data-free (target on a GPU: >= 90 % for ViT-B-32 bf16-mixed at batch
128). On a CPU the step itself is slow and the workers share its cores, so the ratio says little.
``python benchmarks/throughput.py [--arch ViT-B-32] [--batch 128] [--workers 8] [--precision bf16-mixed]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from modes import AUTOCAST  # benchmarks/modes.py: precision name -> autocast dtype
from PIL import Image

from orthoreg_pl.data import TaskDataModule
from orthoreg_pl.models import ImageClassifier, create_clip, preprocess_config
from orthoreg_pl.modules import MODES

CLASSES = 47  # DTD's layout: 47 class folders


def make_jpegs(root: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> None:
    """``count`` photo-sized JPEGs (smooth colour fields plus noise, so they compress like photos) in
    the DTD layout: ``dtd/{train,val}/<class>/``."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(count):
        split = "val" if i % 10 == 9 else "train"
        folder = root / "dtd" / split / f"class_{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def build(arch: str, device: torch.device):
    torch.manual_seed(0)
    clip = create_clip(arch, None)
    preprocess = preprocess_config(clip)
    head = F.normalize(torch.randn(CLASSES, clip.visual.output_dim), dim=-1) * 100
    module = MODES["standard"](ImageClassifier(clip.visual, head)).to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    return module, params, torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1), preprocess


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on GPU)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--precision", default="32-true", choices=list(AUTOCAST))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (20 if device.type == "cuda" else 3)
    dtype = AUTOCAST[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    module, params, optimizer, preprocess = build(args.arch, device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(module(images), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    size = preprocess["size"] if isinstance(preprocess["size"], int) else preprocess["size"][0]
    fixed = (
        torch.randn(args.batch, 3, size, size, device=device),
        torch.randint(0, CLASSES, (args.batch,), device=device),
    )
    for _ in range(2):
        step(*fixed)  # warm-up: kernels, AdamW state
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(*fixed)
        sync()
        times.append(time.perf_counter() - start)
    free_rate = args.batch / statistics.median(times)

    with tempfile.TemporaryDirectory() as tmp:
        warmup = 3
        train_images = args.batch * (steps + warmup) * 10 // 9 + CLASSES * 10
        make_jpegs(Path(tmp), train_images)
        dm = TaskDataModule(
            "DTD", data_root=tmp, cache_dir=tmp, batch_size=args.batch, num_workers=args.workers,
            preprocess=preprocess, eval_cache=False,
        )  # fmt: skip
        dm.setup("fit")
        batches = iter(dm.train_dataloader())
        for _ in range(warmup):  # workers started, first batches in flight
            images, labels = next(batches)
            step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            images, labels = next(batches)
            step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        sync()
        loop_rate = args.batch * steps / (time.perf_counter() - start)

    print(
        f"{args.arch}, batch {args.batch}, {args.precision}, device {device}, {args.workers} workers, {steps} steps"
    )
    print(f"  data-free step: {free_rate:8.1f} images/s")
    print(f"  training loop:  {loop_rate:8.1f} images/s  (TaskDataModule, 500x375 JPEGs, RandomResizedCrop)")
    print(f"  loop / data-free = {loop_rate / free_rate:.1%}   (target on a GPU: >= 90%)")


if __name__ == "__main__":
    main()

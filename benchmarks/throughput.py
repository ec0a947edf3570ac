"""Benchmark: does the accelerator wait for data? Training-loop images/s, both input paths, against a
data-free step.

In one run, on the same device, precision and model (random init, no download):
  data-free    the training step of benchmarks/modes.py (forward, CE, backward, clipping, AdamW) on one
               batch of random tensors kept on the device: the rate the model allows;
  PIL path     the same step fed by the project's TaskDataModule as it is by default
               (data.train_cache=false): real-size JPEGs made offline in the DTD layout, decoded,
               RandomResizedCrop'd and normalised by workers (open_clip's train transform, seeded per
               sample), pinned and copied to the device;
  train cache  the same DataModule with data.train_cache=true: uint8 images read from the cache (built
               before timing; its build time is printed), crop boxes drawn by the workers, crop +
               resize + normalise batched on the device (``on_after_batch_transfer``).
Prints the rates and each path / data-free (target on a GPU: >= 90 % for ViT-B-32 bf16-mixed at batch
128), and each input path alone (loader, transfer and device-side hook, no step). On a CPU the step itself is slow and the workers share its cores, so the ratios say little; the
per-image costs of the two input paths are then printed apart (``--costs``, one process, 1 thread
for the per-sample parts as in a worker), with the cached path's pixel error against the PIL path and
what storing reduced images larger (``oversample``) buys, on these JPEGs and on the two photos
scikit-learn ships.
``python benchmarks/throughput.py [--arch ViT-B-32] [--batch 128] [--workers 8] [--precision bf16-mixed] [--costs]``
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
from lightning.fabric.utilities.apply_func import move_data_to_device
from modes import AUTOCAST  # benchmarks/modes.py: precision name -> autocast dtype
from PIL import Image
from torch.utils.data import Dataset

from orthoreg_pl.data import TaskDataModule, TransformedDataset
from orthoreg_pl.data import train_cache as tc
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


def loop_rate(dm: TaskDataModule, step, device: torch.device, sync, steps: int, warmup: int = 3) -> float:
    """images/s of the training loop fed by ``dm``: next batch, transfer, the DataModule's device-side
    hook (the train cache's augmentation; nothing on the PIL path), step (none: the input path alone)."""
    batches = iter(dm.train_dataloader())

    def one() -> int:
        batch = move_data_to_device(next(batches), device)
        images, labels = dm.on_after_batch_transfer(batch, 0)
        if step is not None:
            step(images, labels)
        return len(labels)

    for _ in range(warmup):  # workers started, first batches in flight
        one()
    sync()
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        seen += one()
    sync()
    return seen / (time.perf_counter() - start)


# ---- per-image costs and fidelity (--costs) ------------------------------------------------------


def _per_image(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / count * 1e3


def input_costs(reference: TransformedDataset, cached: tc.CachedTrainDataset, device, sync, n: int) -> dict:
    """ms per image: the PIL path's sample (decode + crop + resize + normalise), decode alone, the cached
    path's sample (uint8 read + box + tables) and collate, and the device-side batched crop + resize +
    normalise. Per-sample parts on one thread, as in a DataLoader worker."""
    keys = [(i, 1) for i in range(n)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs = {
        "pil_sample": _per_image(lambda: [reference[k] for k in keys], n),
        "decode": _per_image(lambda: [reference.dataset[i][0].convert("RGB") for i in range(n)], n),
        "cache_sample": _per_image(lambda: [cached[k] for k in keys], n),
    }
    samples = [cached[k] for k in keys]
    costs["collate"] = _per_image(lambda: tc.collate_crops(samples), n)
    torch.set_num_threads(threads)
    batch = move_data_to_device(tc.collate_crops(samples), device)
    tc.augment(batch, cached.spec)  # warm-up
    sync()
    costs["device_augment"] = _per_image(lambda: (tc.augment(batch, cached.spec), sync()), n)
    return costs


def pixel_error(reference: TransformedDataset, cached: tc.CachedTrainDataset, keys: list) -> dict:
    """The cached path's tensors against the PIL path's for the same (index, epoch): |error| in uint8
    levels (normalised error × std × 255) and after normalisation."""
    images, _ = tc.augment(tc.collate_crops([cached[k] for k in keys]), cached.spec)
    diff = images - torch.stack([reference[k][0] for k in keys])
    levels = (diff * torch.tensor(cached.spec.std).view(1, 3, 1, 1) * 255).abs()
    return {
        "mean": levels.mean().item(),
        "max": levels.max().item(),
        "equal": (levels < 0.5).float().mean().item(),
        "max_normalised": diff.abs().max().item(),
    }


def box_stats(cached: tc.CachedTrainDataset, keys: list) -> dict:
    """Area share and aspect ratio of the boxes drawn (the PIL path's own boxes: tests/test_train_cache.py)."""
    area, aspect = [], []
    for i, epoch in keys:
        _, _, h, w = cached.box(i, epoch)
        height, width = (int(v) for v in cached.index[i, 3:5])
        area.append(h * w / (height * width))
        aspect.append(w / h)
    return {"area": (np.mean(area), np.std(area)), "aspect": (np.mean(aspect), np.std(aspect))}


class _Photos(Dataset):
    """scikit-learn's two sample photos (427 x 640 JPEGs shipped with it), repeated."""

    def __init__(self, repeat: int) -> None:
        from sklearn.datasets import load_sample_image

        self.arrays = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")] * repeat

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        return Image.fromarray(self.arrays[i]), 0

    def fingerprint(self) -> str:
        return f"sklearn-photos-{len(self.arrays)}"


def oversample_table(sources: dict, transform, folder: Path, epochs: int) -> list[tuple]:
    """(images, oversample, KB per image, error) for stored sizes 1, 1.5 and 2 times the least."""
    rows = []
    for name, dataset in sources.items():
        reference = TransformedDataset(dataset, transform, seed=0)
        keys = [(i, e) for e in range(epochs) for i in range(len(dataset))]
        for factor in (1.0, 1.5, 2.0):
            cached = tc.train_cache_dataset(
                task=f"bench{factor}", dataset=dataset, transform=transform, checksum=name,
                cache_dir=folder / name, seed=0, oversample=factor,
            )  # fmt: skip
            kb = cached.paths.pixels.stat().st_size / len(dataset) / 1e3
            rows.append((name, factor, kb, pixel_error(reference, cached, keys)))
    return rows


def print_costs(dm_pil, dm_cache, device, sync, n: int, folder: Path) -> None:
    reference, cached = dm_pil.train_set, dm_cache.train_set
    n = min(n, len(cached))
    costs = input_costs(reference, cached, device, sync, n)
    keys = [(i, e) for e in range(2) for i in range(n)]
    error = pixel_error(reference, cached, keys)
    stats = box_stats(cached, [(i, e) for e in range(20) for i in range(len(cached))])
    stored = cached.index[0, 1:3].tolist()
    print(f"  per image (ms), {n} images, 500x375 JPEGs stored at {stored[0]}x{stored[1]}:")
    print(f"    PIL path sample (decode + crop/resize + normalise): {costs['pil_sample']:6.2f}  (decode alone {costs['decode']:.2f})")  # fmt: skip
    print(f"    cached sample (uint8 read + box + tables):          {costs['cache_sample']:6.2f}  + collate {costs['collate']:.2f}")  # fmt: skip
    print(f"    device-side crop + resize + normalise, batched:     {costs['device_augment']:6.2f}  (on {device})")  # fmt: skip
    print(
        f"  pixel error vs PIL path ({len(keys)} crops): mean {error['mean']:.2f} levels, max {error['max']:.0f} "
        f"(normalised {error['max_normalised']:.3f}), {error['equal']:.0%} of values equal"
    )
    print(
        f"  boxes ({20 * len(cached)} draws): area share {stats['area'][0]:.4f} ± {stats['area'][1]:.4f}, "
        f"aspect {stats['aspect'][0]:.4f} ± {stats['aspect'][1]:.4f} (the PIL path's own boxes)"
    )
    sources = {"jpegs": torch.utils.data.Subset(dm_pil.train_set.dataset, range(16))}
    try:
        sources["photos"] = _Photos(8)
    except ImportError:
        pass
    print("  stored size (× the least that never upsamples) against fidelity:")
    for name, factor, kb, err in oversample_table(sources, dm_pil.train_set.transform, folder, epochs=4):
        print(
            f"    {name:6s} oversample {factor:.1f}: {kb:6.0f} KB/image, mean {err['mean']:.2f} levels, "
            f"max {err['max']:.0f}, equal {err['equal']:.0%}"
        )


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
    parser.add_argument(
        "--costs", action="store_true", help="also per-image costs and pixel error of both paths"
    )
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
        train_images = args.batch * (2 * steps + warmup) * 10 // 9 + CLASSES * 10  # the longest loop
        make_jpegs(Path(tmp), train_images)
        rates, dms, alone = {}, {}, {}
        for cached in (False, True):
            dm = TaskDataModule(
                "DTD", data_root=tmp, cache_dir=tmp, batch_size=args.batch, num_workers=args.workers,
                preprocess=preprocess, eval_cache=False, train_cache=cached,
            )  # fmt: skip
            start = time.perf_counter()
            dm.prepare_data()  # builds the train cache (timed apart from the loop)
            dm.setup("fit")
            if cached:
                build_s = time.perf_counter() - start
            rates[cached], dms[cached] = loop_rate(dm, step, device, sync, steps, warmup), dm
            alone[cached] = loop_rate(dm, None, device, sync, 2 * steps, warmup)

        print(
            f"{args.arch}, batch {args.batch}, {args.precision}, device {device}, {args.workers} workers, {steps} steps"
        )
        print(f"  data-free step:        {free_rate:8.1f} images/s")
        for cached, name in ((False, "PIL path (default)"), (True, "train cache")):
            print(
                f"  {name + ':':22s} {rates[cached]:8.1f} images/s  loop / data-free = {rates[cached] / free_rate:.1%}"
                f"   (input path alone: {alone[cached]:.0f} images/s)"
            )
        pixels = dms[True].train_set.paths.pixels
        print(
            f"  train cache build: {build_s:.1f} s for {len(dms[True].train_set)} images "
            f"({pixels.stat().st_size / len(dms[True].train_set) / 1e3:.0f} KB per image); target on a GPU: >= 90%"
        )
        if args.costs:
            print_costs(dms[False], dms[True], device, sync, args.batch, Path(tmp) / "oversample")


if __name__ == "__main__":
    main()

"""Benchmark: one evaluation pass's data time, with and without the eval cache, in one run.

A temporary ImageFolder tree of 2000 JPEGs at 256 px (structured content: gradients, shapes and
noise, so decoding is realistic) is read with ViT-B-32's open_clip eval transform (resize 224 bicubic,
center crop, normalise) through the DataModule's eval loader (num_workers=0, batch 128, one torch
thread, as in a DataLoader worker). Passes are interleaved, uncached then cached, and the median is reported; the
cache build is timed on its own. Files are in the page cache for both (warm): a cold disk favours
the cache less for tiny JPEGs and more for large ones.

    python benchmarks/eval_cache.py [--images 2000] [--reps 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw

from orthoreg_pl.data import TransformedDataset, clip_transforms, eval_dataloader
from orthoreg_pl.data.eval_cache import eval_cache_dataset
from orthoreg_pl.data.files import image_folder

CLASSES = 10


def make_tree(root: Path, n: int, size: int = 256, seed: int = 0) -> None:
    """n JPEGs (quality 90) in CLASSES folders: a colour gradient, a few filled shapes, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        a, b, c = rng.uniform(0, 255, (3, 3))
        pixels = a * xx[..., None] + b * yy[..., None] + c * (1 - xx[..., None]) * (1 - yy[..., None])
        pixels = np.clip(pixels / 2 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, size - 40, 2)
            w, h = rng.integers(20, 120, 2)
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        folder = root / f"class_{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"img_{i:05d}.jpg", quality=90)


def one_pass(dataset, batch_size: int) -> float:
    """Seconds to iterate the whole split once through the DataModule's eval loader (num_workers=0)."""
    start = time.perf_counter()
    for images, _ in eval_dataloader(dataset, batch_size, num_workers=0):
        assert images.dtype == torch.float32
    return time.perf_counter() - start


def vit_b32_preprocess() -> dict:
    """ViT-B-32's preprocessing as open_clip configures it (no weights needed)."""
    model = open_clip.create_model("ViT-B-32")
    return {
        **dict(getattr(model.visual, "preprocess_cfg", {}) or {}),
        "size": model.visual.image_size,
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the tree and cache go (default: a tempdir)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp) / "tree"
        start = time.perf_counter()
        make_tree(root, args.images)
        jpeg_mb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / 1e6
        print(
            f"tree: {args.images} JPEGs at 256 px, {jpeg_mb:.1f} MB, made in {time.perf_counter() - start:.1f} s"
        )

        _, files = image_folder("Bench", root, CLASSES, "class_xx/*.jpg")
        _, eval_tf = clip_transforms(vit_b32_preprocess())
        uncached = TransformedDataset(files, eval_tf)
        start = time.perf_counter()
        cached = eval_cache_dataset(
            task="Bench",
            split="test",
            dataset=files,
            transform=eval_tf,
            image_size=224,
            checksum=None,
            cache_dir=Path(tmp) / "eval",
        )
        build = time.perf_counter() - start
        assert cached is not None
        cache_mb = cached.images_path.stat().st_size / 1e6
        for i in (0, len(files) // 2, len(files) - 1):
            assert torch.equal(cached[i][0], uncached[i][0]), i  # identical tensors, not just close

        times: dict[str, list[float]] = {"no cache": [], "cache": []}
        for _ in range(args.reps):
            times["no cache"].append(one_pass(uncached, args.batch_size))
            times["cache"].append(one_pass(cached, args.batch_size))
        plain, fast = (statistics.median(times[k]) for k in ("no cache", "cache"))
        print("eval transform:", " ".join(str(eval_tf).split()))
        print(f"cache build (once): {build:.2f} s, {cache_mb:.0f} MB on disk")
        for name, values in times.items():
            per_image = statistics.median(values) / len(files) * 1e3
            print(
                f"one pass, {name:>8}: {statistics.median(values):6.2f} s median of {args.reps} "
                f"({', '.join(f'{v:.2f}' for v in values)}), {per_image:.2f} ms/image"
            )
        print(f"speed-up with the cache: {plain / fast:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()

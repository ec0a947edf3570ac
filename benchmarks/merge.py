"""Benchmark: the merge pipeline's evaluation against the reference's way, on the quickstart (tiny model).

In one run, for a 21-point task-addition grid over all quickstart tasks' validation splits:
  pipeline  the encoder, heads and loaders built once; one Trainer.validate pass per task scores every
            α, writing θ0 + α·τ in place per batch (orthoreg_pl.evaluation.engine);
  rebuild   the reference's loop: for every α and task, build the model, load θ0 + α·τ, rebuild the
            head and the data loader, evaluate with a plain loop.
And for a linearized (tangent) vector: the closed form (one JVP per batch for the whole grid) against
direct evaluation (weights written per α, linearized forward per α). Task vectors are random
(timing does not depend on their values). ``python benchmarks/merge.py``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch

from orthoreg_pl.data import QUICKSTART_TASKS, TaskDataModule, eval_dataloader
from orthoreg_pl.evaluation.alphas import DEFAULT_ALPHAS
from orthoreg_pl.evaluation.engine import MergeEvalModule, TangentDirectModule, evaluate_alphas
from orthoreg_pl.models import TINY_ARCH, ImageClassifier, create_clip, load_or_build_head, preprocess_config

ID = "random-init-seed0"


def trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, use_distributed_sampler=False,
    )  # fmt: skip


def datamodule(task: str, cache: str, preprocess: dict, workers: int) -> TaskDataModule:
    dm = TaskDataModule(
        task,
        data_root=cache,
        cache_dir=cache,
        num_workers=workers,
        eval_batch_size=256,
        preprocess=preprocess,
    )
    dm.setup("validate")
    return dm


def build(cache: str, workers: int = 0) -> tuple:
    """What the pipeline builds once: the encoder, every task's head and val loader, a Trainer."""
    clip = create_clip(TINY_ARCH, None)
    preprocess = preprocess_config(clip)
    heads, loaders = {}, {}
    for task in QUICKSTART_TASKS:
        dm = datamodule(task, cache, preprocess, workers)
        heads[task] = load_or_build_head(
            clip, TINY_ARCH, ID, task, dm.classnames, dm.task_data.templates, cache
        )
        loaders[task] = eval_dataloader(dm.val_set, 256, workers, shard=True)
    return clip.visual, heads, loaders, trainer()


def score(
    parts: tuple, direction: dict, alphas: list[float], module_cls=MergeEvalModule, closed_form=False
) -> dict:
    """The whole α grid on every task: one validate pass per task."""
    visual, heads, loaders, tr = parts
    module = module_cls(ImageClassifier(visual, heads[QUICKSTART_TASKS[0]]))
    return {
        t: evaluate_alphas(tr, module, loaders[t], heads[t], direction, alphas, closed_form)
        for t in QUICKSTART_TASKS
    }


def pipeline(cache: str, direction: dict, alphas: list[float], workers: int = 0) -> dict:
    return score(build(cache, workers), direction, alphas)


@torch.no_grad()
def rebuild(cache: str, direction: dict, alphas: list[float], workers: int = 0) -> dict:
    out = {t: [] for t in QUICKSTART_TASKS}
    for alpha in alphas:
        for task in QUICKSTART_TASKS:
            clip = create_clip(TINY_ARCH, None)
            dm = datamodule(task, cache, preprocess_config(clip), workers)
            head = load_or_build_head(None, TINY_ARCH, ID, task, dm.classnames, dm.task_data.templates, cache)
            model = ImageClassifier(clip.visual, head).eval()
            for name, tau in direction.items():
                model.get_parameter(name).add_(tau, alpha=alpha)
            correct = total = 0
            for images, labels in dm.val_dataloader():
                correct += (model(images).argmax(-1) == labels).sum().item()
                total += labels.numel()
            out[task].append(correct / total)
    return out


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="data-loader workers, both ways (configs: 4)"
    )
    args = parser.parse_args()
    w = args.num_workers
    alphas = list(DEFAULT_ALPHAS)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        g = torch.Generator().manual_seed(0)
        names = [n for n, _ in create_clip(TINY_ARCH, None).visual.named_parameters()]
        shapes = {n: p.shape for n, p in create_clip(TINY_ARCH, None).visual.named_parameters()}
        direction = {f"visual.{n}": 0.02 * torch.randn(shapes[n], generator=g) for n in names}
        pipeline(cache, direction, [0.0])  # warm-up: generates the data and the heads once for both
        t_pipe, acc_pipe = timed(pipeline, cache, direction, alphas, workers=w)
        t_rebuild, acc_rebuild = timed(rebuild, cache, direction, alphas, workers=w)
        parts = build(cache, w)  # shared by both linearized variants: only the scoring is compared
        t_closed, acc_closed = timed(score, parts, direction, alphas, closed_form=True)
        t_direct, acc_direct = timed(score, parts, direction, alphas, module_cls=TangentDirectModule)
    n_val = "4 quickstart tasks' val splits"
    print(
        f"21-point task addition, tiny ViT on the CPU ({torch.get_num_threads()} threads), {n_val}, {w} loader workers"
    )
    print(f"  pipeline (build once, in place) {t_pipe:8.2f} s")
    print(
        f"  rebuild per α (reference way)   {t_rebuild:8.2f} s   ratio {t_rebuild / t_pipe:.1f}x  (target >= 5x)"
    )
    print(f"  same accuracies: {acc_pipe == acc_rebuild}")
    print(
        "linearized task vector, 21 points (scoring only; the encoder, heads and loaders are built once for both)"
    )
    print(f"  closed form (one JVP per batch) {t_closed:8.2f} s")
    print(
        f"  direct (per-α linearized pass)  {t_direct:8.2f} s   ratio {t_direct / t_closed:.1f}x  (target >= 10x)"
    )
    print(f"  same accuracies: {acc_closed == acc_direct}")


if __name__ == "__main__":
    main()

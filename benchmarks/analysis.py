"""Benchmark: the analysis' ξ grid on the engine against rebuilding per point, and the orthogonality
monitor's share of training time. ``python benchmarks/analysis.py``

ξ(α1, α2) on the quickstart (tiny ViT, Digits–Shapes, test splits, 11×11 grid; random task vectors:
timing does not depend on their values):
  engine    the encoder, heads and loaders built once; one Trainer.validate pass per task of the pair,
            θ0 + α1τ1 + α2τ2 written in place per batch (orthoreg_pl.evaluation.disentanglement);
  rebuild   a script's way: for every grid point and task, build the model (open_clip), the data
            module, the head and the loader, add α1τ1 + α2τ2, read the split. Timed on a few points
            and scaled to the grid (every point costs the same); a 3×3 grid is timed both ways in full
            and checked equal.
Linearized vectors: the closed form (two JVPs per batch for the whole grid) against the linearized
forward per point on the same built parts.

Monitor: seconds per call of callbacks.orthogonality_monitor (new: per-layer-type shares, norms and
sampled column angles; old: penalty and norm only) against the seconds of the training between two
calls: a real quickstart run (Digits, standard_ortho, 252 steps, timed inside the callback) and
ViT-B-32 shapes with random init (a handful of standard steps, the worst case: no penalty in the step).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from orthoreg_pl.data import TaskDataModule, eval_dataloader
from orthoreg_pl.evaluation.disentanglement import DisentanglementModule, xi_by_rebuilding, xi_grid
from orthoreg_pl.evaluation.engine import MergeEvalModule
from orthoreg_pl.models import TINY_ARCH, ImageClassifier, create_clip, load_or_build_head, preprocess_config
from orthoreg_pl.models.linearized import linearized_forward
from orthoreg_pl.modules import StandardFineTuning
from orthoreg_pl.penalties.ortho import ortho_penalty

ID = "random-init-seed0"
PAIR = ("Digits", "Shapes")
GRID = [round(0.1 * i, 1) for i in range(11)]


def trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, use_distributed_sampler=False,
    )  # fmt: skip


def datamodule(task: str, cache: str, preprocess: dict) -> TaskDataModule:
    dm = TaskDataModule(
        task, data_root=cache, cache_dir=cache, num_workers=0, eval_batch_size=256, preprocess=preprocess
    )
    dm.setup("validate")
    return dm


def build(cache: str) -> tuple:
    """What the analysis builds once: the encoder, both heads and test loaders, a Trainer."""
    clip = create_clip(TINY_ARCH, None)
    heads, loaders = [], []
    for task in PAIR:
        dm = datamodule(task, cache, preprocess_config(clip))
        heads.append(
            load_or_build_head(clip, TINY_ARCH, ID, task, dm.classnames, dm.task_data.templates, cache)
        )
        loaders.append(eval_dataloader(dm.test_set, 256, 0, shard=True))
    return MergeEvalModule(ImageClassifier(clip.visual, heads[0])), heads, loaders, trainer()


def engine(cache: str, taus: list, alphas: list[float], tangent: bool = False) -> torch.Tensor:
    base, heads, loaders, tr = build(cache)
    return xi_grid(tr, base, loaders, heads, taus, alphas, closed_form=tangent)[0]


@torch.no_grad()
def rebuild_point(cache: str, taus: list, point: tuple[float, float], index: int) -> torch.Tensor:
    """Predictions of one task at one point, everything built for it (the per-point cost)."""
    clip = create_clip(TINY_ARCH, None)
    dm = datamodule(PAIR[index], cache, preprocess_config(clip))
    head = load_or_build_head(None, TINY_ARCH, ID, PAIR[index], dm.classnames, dm.task_data.templates, cache)
    model = ImageClassifier(clip.visual, head).eval()
    for alpha, tau in zip(point, taus):
        for name, t in tau.items():
            model.get_parameter(name).add_(t, alpha=alpha)
    return torch.cat([model(images).argmax(-1) for images, _ in eval_dataloader(dm.test_set, 256, 0)])


def rebuild(cache: str, taus: list, alphas: list[float]) -> torch.Tensor:
    """ξ with the model, data module and loader rebuilt per (distinct point, task): the reference way, in full."""
    clip = create_clip(TINY_ARCH, None)
    preprocess = preprocess_config(clip)
    heads, loaders = [], []
    for task in PAIR:
        dm = datamodule(task, cache, preprocess)
        heads.append(
            load_or_build_head(None, TINY_ARCH, ID, task, dm.classnames, dm.task_data.templates, cache)
        )
        loaders.append(_RebuiltLoader(task, cache, preprocess))
    return xi_by_rebuilding(lambda: create_clip(TINY_ARCH, None).visual, loaders, heads, taus, alphas)[0]


class _RebuiltLoader:
    """A loader whose every read builds the data module and loader again (as a per-point script does)."""

    def __init__(self, task: str, cache: str, preprocess: dict) -> None:
        self.task, self.cache, self.preprocess = task, cache, preprocess

    def __iter__(self):
        return iter(eval_dataloader(datamodule(self.task, self.cache, self.preprocess).test_set, 256, 0))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


class _DirectTangent(DisentanglementModule):
    """Per point: weights written, then the linearized forward (what the closed form replaces)."""

    def validation_step(self, batch, batch_idx):
        images, _ = batch
        names = [n for n in self.base.param_names if n.startswith("visual.")]
        theta0 = {n[len("visual.") :]: self.base.theta0(n) for n in names}
        predictions = []
        for a1, a2 in self.points:
            self.write_weights(a1, a2)
            predictions.append(
                self.base.model.head(linearized_forward(self.base.model.visual, theta0, images))
            )
        from orthoreg_pl.analysis.xi import disagreements

        preds = torch.stack(predictions).argmax(-1)
        self.metric.update(disagreements(preds, self.grid_index, self.reference_index), images.shape[0])


def tangent_scoring(parts: tuple, taus: list, alphas: list[float], module_cls) -> float:
    from orthoreg_pl.evaluation.disentanglement import disagreement_counts

    base, heads, loaders, tr = parts
    module = module_cls(base)
    start = time.perf_counter()
    for index in (0, 1):
        disagreement_counts(
            tr, module, loaders[index], heads[index], taus, alphas, index, module_cls is DisentanglementModule
        )
    return time.perf_counter() - start


# ---- the monitor -----------------------------------------------------------------------------------


def old_monitor(module) -> None:
    """What the monitor computed before: the penalty and ‖θ − θ0‖."""
    deltas = [d.float() for d in module.delta_tensors().values()]
    torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in deltas])).item()
    ortho_penalty([d.float() for d in module.penalty_deltas()]).item()


def new_monitor(module, max_pairs: int) -> None:
    """What the monitor computes now (its own code), and the values logging reads."""
    from orthoreg_pl.callbacks.orthogonality_monitor import OrthogonalityMonitor

    metrics, _ = OrthogonalityMonitor(max_pairs=max_pairs).measure(module)
    [v.item() for v in metrics.values()]


def vitb32_shares(batch: int, steps: int, max_pairs: int) -> dict:
    """Seconds per standard training step and per monitor call, ViT-B-32 shapes, random init."""
    torch.manual_seed(0)
    model = ImageClassifier(create_clip("ViT-B-32", None).visual, torch.randn(10, 512))
    module = StandardFineTuning(model)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))
    step_times = []
    for _ in range(steps):
        start = time.perf_counter()
        F.cross_entropy(module(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        step_times.append(time.perf_counter() - start)
    with torch.no_grad():
        new = min(timed(new_monitor, module, max_pairs)[0] for _ in range(3))
        old = min(timed(old_monitor, module)[0] for _ in range(3))
    return {"step": sorted(step_times[1:])[len(step_times[1:]) // 2], "new": new, "old": old}


def quickstart_share(cache: str, root: str) -> dict:
    """A real quickstart run (Digits, standard_ortho, monitor every 10 steps as the quickstart sets it):
    the monitor's calls timed inside the callback, the steps by callbacks.step_timer (data loading
    excluded, so the share is an upper bound)."""
    import json

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from orthoreg_pl.callbacks.orthogonality_monitor import OrthogonalityMonitor
    from orthoreg_pl.training.fit import train

    calls: list[float] = []
    original = OrthogonalityMonitor.on_train_batch_end

    def timed_hook(self, trainer, *args):
        before = self._last_step
        start = time.perf_counter()
        original(self, trainer, *args)
        if self._last_step != before:  # it computed (else: not its step)
            calls.append(time.perf_counter() - start)

    timer = Path(root) / "steps.jsonl"
    overrides = [
        "experiment=quickstart", "dataset=digits", "mode=standard_ortho", "logger=none", "eval_zeroshot=false",
        f"paths.root_dir={root}", f"paths.runs_dir={root}/runs", f"paths.cache_dir={cache}",
        f"paths.output_dir={root}/run", "callbacks.orthogonality_monitor.every_n_steps=10",
        "+callbacks.step_timer._target_=orthoreg_pl.callbacks.step_timer.StepTimer", f"+callbacks.step_timer.path={timer}",
    ]  # fmt: skip
    config_dir = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="bench"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    OrthogonalityMonitor.on_train_batch_end = timed_hook
    try:
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
    finally:
        OrthogonalityMonitor.on_train_batch_end = original
    line = json.loads(timer.read_text().splitlines()[-1])
    monitor = sum(calls)
    return {"wall": wall, "steps": line["steps"], "step_seconds": line["step_seconds"] - monitor,
            "calls": calls, "per_call": monitor / max(len(calls), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    parser.add_argument(
        "--points", type=int, default=6, help="grid points timed per task for the rebuild way"
    )
    parser.add_argument("--vit-batch", type=int, default=32, help="ViT-B-32 batch (the recipe's is 128)")
    parser.add_argument("--vit-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        g = torch.Generator().manual_seed(0)
        shapes = {f"visual.{n}": p.shape for n, p in create_clip(TINY_ARCH, None).visual.named_parameters()}
        taus = [{n: 0.05 * torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(2)]
        engine(cache, taus, [0.0])  # warm-up: generates the data and the heads once for both ways

        t_engine, xi = timed(engine, cache, taus, GRID)
        points = [(GRID[i], GRID[j]) for i, j in zip(range(0, 11, 2), range(10, -1, -2))][: args.points]
        per_point = []
        for index in (0, 1):
            t, _ = timed(lambda i=index: [rebuild_point(cache, taus, p, i) for p in points])
            per_point.append(t / len(points))
        t_rebuild = len(GRID) ** 2 * sum(per_point)  # each distinct point, each task: built and read once
        small = [0.0, 0.5, 1.0]
        t_small_engine, xi_small = timed(engine, cache, taus, small)
        t_small_rebuild, xi_small_rebuild = timed(rebuild, cache, taus, small)

        parts = build(cache)
        t_closed = tangent_scoring(parts, taus, GRID, DisentanglementModule)
        t_direct = tangent_scoring(parts, taus, GRID, _DirectTangent)

        quick = quickstart_share(cache, tmp)
    vit = vitb32_shares(args.vit_batch, args.vit_steps, 1024)

    print(
        f"ξ(α1, α2), 11×11 grid, tiny ViT on the CPU ({torch.get_num_threads()} threads), Digits–Shapes test splits"
    )
    print(f"  engine (built once, weights in place)  {t_engine:8.2f} s   (mean ξ {xi.mean():.3f})")
    print(
        f"  rebuild per point (x {len(GRID) ** 2} points)    {t_rebuild:8.2f} s   ratio {t_rebuild / t_engine:.1f}x  "
        f"(target >= 5x; {per_point[0]:.3f} + {per_point[1]:.3f} s per point, timed on {len(points)} points per task)"
    )
    print(
        f"  3×3 grid in full: engine {t_small_engine:.2f} s, rebuild {t_small_rebuild:.2f} s, ratio "
        f"{t_small_rebuild / t_small_engine:.1f}x, same ξ: {torch.equal(xi_small, xi_small_rebuild)}"
    )
    print("linearized vectors, 11×11 grid (scoring only; parts built once for both)")
    print(f"  closed form (two JVPs per batch)       {t_closed:8.2f} s")
    print(f"  linearized forward per point           {t_direct:8.2f} s   ratio {t_direct / t_closed:.1f}x")
    per_step = quick["step_seconds"] / quick["steps"]
    print(
        f"orthogonality monitor, quickstart run (Digits, standard_ortho, {quick['steps']} steps, {quick['wall']:.1f} s wall)"
    )
    print(
        f"  {len(quick['calls'])} calls, {1000 * quick['per_call']:.2f} ms each; {1000 * per_step:.1f} ms inside each training step (data loading excluded)"
    )
    for period in (50, 10):
        print(
            f"  every {period:2d} steps: {100 * quick['per_call'] / (period * per_step):.2f} % of training time (target < 2 %)"
        )
    print(f"orthogonality monitor, ViT-B-32 shapes, random init, standard step at batch {args.vit_batch}")
    print(f"  step {vit['step']:.2f} s; monitor {vit['new']:.3f} s per call (old monitor {vit['old']:.3f} s, "
          f"ratio {vit['new'] / vit['old']:.2f}x)")  # fmt: skip
    print(f"  every 50 steps: {100 * vit['new'] / (50 * vit['step']):.2f} % of training time (target < 2 %)")


if __name__ == "__main__":
    main()

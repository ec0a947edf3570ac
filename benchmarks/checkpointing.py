"""Benchmark: the cost of step-level checkpoints (what makes a killed run resumable) on the quickstart.

One quickstart fine-tuning run (tiny ViT, Digits, standard_ortho, 12 epochs) with ``last.ckpt`` every
N optimizer steps, against the same run without a checkpoint callback, interleaved ``--reps`` times in
one process. Prints the median fit times, their ratio, and the share of the checkpointed run's fit
time spent inside ``Trainer.save_checkpoint`` (measured directly, less noisy than the difference).
``python benchmarks/checkpointing.py [--every 50] [--reps 3]``

``--io`` times one checkpoint write alone instead: the quickstart module's checkpoint (weights and
AdamW state, about 1.4 MB) saved by the project's AtomicCheckpointIO (in memory, room checked,
temporary file, fsync, rename) against Lightning's TorchCheckpointIO, interleaved ``--reps`` times
into a temporary folder, medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from orthoreg_pl.training.fit import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config(out: Path, cache: Path, every: int | None):
    overrides = [
        "experiment=quickstart",
        "dataset=digits",
        "mode=standard_ortho",
        "logger=none",
        "eval_zeroshot=false",
        "trainer.enable_progress_bar=false",
        f"paths.runs_dir={out}",
        f"paths.cache_dir={cache}",
        f"paths.output_dir={out}/run",
        f"callbacks.checkpoint.every_n_train_steps={every}" if every else "callbacks.checkpoint=null",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3", job_name="bench"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def io_only(reps: int) -> None:
    """One checkpoint write, AtomicCheckpointIO against TorchCheckpointIO (module docstring)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from orthoreg_pl.modules import StandardFineTuning
    from orthoreg_pl.training.checkpoint_io import AtomicCheckpointIO

    sys.path.insert(0, str(CONFIGS.parent / "tests"))
    from conftest import make_classifier

    module = StandardFineTuning(make_classifier())
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad])
    for p in module.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    optimizer.step()
    checkpoint = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    ios = {"AtomicCheckpointIO": AtomicCheckpointIO(), "TorchCheckpointIO (Lightning)": TorchCheckpointIO()}
    times: dict[str, list[float]] = {name: [] for name in ios}
    with tempfile.TemporaryDirectory(dir=CONFIGS.parent) as tmp:
        for _ in range(reps):
            for name, io in ios.items():
                start = time.perf_counter()
                io.save_checkpoint(checkpoint, Path(tmp) / "last.ckpt")
                times[name].append(time.perf_counter() - start)
        size = (Path(tmp) / "last.ckpt").stat().st_size
    print(f"one checkpoint write ({size / 1e6:.2f} MB, in {CONFIGS.parent}), median of {reps}:")
    for name, values in times.items():
        print(f"  {name:32s} {1000 * statistics.median(values):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=50, help="optimizer steps between checkpoints")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--io", action="store_true", help="time one checkpoint write alone (docstring)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.io:
        io_only(args.reps)
        return

    saving = [0.0]
    original = L.Trainer.save_checkpoint

    def timed_save(self, *a, **k):
        start = time.perf_counter()
        original(self, *a, **k)
        saving[0] += time.perf_counter() - start

    L.Trainer.save_checkpoint = timed_save
    original_fit = L.Trainer.fit
    fit_time = [0.0]

    def timed_fit(self, *a, **k):
        start = time.perf_counter()
        original_fit(self, *a, **k)
        fit_time[0] += time.perf_counter() - start

    L.Trainer.fit = timed_fit
    times: dict[str, list[float]] = {"checkpoints": [], "none": []}
    shares, steps = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        train(config(Path(tmp) / "warm", cache, None))  # data and head caches, imports
        for rep in range(args.reps):
            for name, every in (("checkpoints", args.every), ("none", None)):
                saving[0] = fit_time[0] = 0.0
                meta = train(config(Path(tmp) / f"{name}{rep}", cache, every))
                times[name].append(fit_time[0])
                steps = meta["steps"]
                if every:
                    shares.append(saving[0] / fit_time[0])
    with_ckpt, without = statistics.median(times["checkpoints"]), statistics.median(times["none"])
    print(f"quickstart Digits, standard_ortho, {steps} optimizer steps, last.ckpt every {args.every} steps")
    print(f"fit with checkpoints    {with_ckpt:7.2f} s (median of {args.reps})")
    print(f"fit without             {without:7.2f} s")
    print(f"ratio                   {with_ckpt / without:7.3f}x")
    print(f"time inside save_checkpoint: {100 * statistics.median(shares):.2f} % of fit time")


if __name__ == "__main__":
    main()

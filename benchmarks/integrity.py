"""Benchmark: what the integrity checks and the merge-measured references add to a quickstart merge.

In one run, on the quickstart runs of ``make quickstart`` (runs/quickstart: tiny CLIP, standard_ortho λ 1):
  merge        python merge.py experiment=quickstart_addition in this process, references cached;
  checks       each check on the same inputs, timed alone: the sha256 of every task vector against
               meta.json, the finite-value scan, the eval caches' pixel sha256 (first open in a
               process), the references cache's entry sha256 (every read), and composing +
               validating the command line before Hydra (precheck);
  references   the same merge with an empty references cache (every zero-shot and fine-tuned
               reference measured again) against the warm one.
Prints each check's share of the merge time (in process, and of a whole ``python merge.py``). ``python benchmarks/integrity.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from orthoreg_pl.cli.precheck import check_job
from orthoreg_pl.data import eval_cache
from orthoreg_pl.evaluation.pipeline import run_merge
from orthoreg_pl.evaluation.references import read_entry
from orthoreg_pl.runs.folder import read_meta
from orthoreg_pl.task_vectors import find_runs
from orthoreg_pl.task_vectors.io import _read_with_header, _verified_checksum
from orthoreg_pl.utils.tensors import check_finite

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "experiment=quickstart_clip_addition",
    "mode=standard_ortho",
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def merge_config(out: Path, cache: Path) -> object:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3", job_name="merge"):
        cfg = compose("merge", overrides=[*ARGS, f"paths.cache_dir={cache}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.merge_method_name = "task_arithmetic"
        cfg.paths.output_dir = str(out)
    return cfg


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    runs_dir = ROOT / "runs" / "quickstart"
    if not runs_dir.is_dir():
        sys.exit("run `make quickstart` first: this benchmark merges its runs")
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        shutil.copytree(ROOT / ".cache", cache, ignore=shutil.ignore_patterns("references"))
        cfg = merge_config(Path(tmp) / "report", cache)

        def merge(cold: bool) -> None:
            if cold:
                shutil.rmtree(cache / "references", ignore_errors=True)
            shutil.rmtree(Path(tmp) / "report", ignore_errors=True)
            run_merge(cfg)

        merge(cold=True)  # heads, eval caches and references in place before timing
        warm_times, cold_times = [], []
        for _ in range(args.repeats):  # interleaved, so that a busy moment hits both alike
            warm_times.append(timed(lambda: merge(cold=False), 1))
            cold_times.append(timed(lambda: merge(cold=True), 1))
        warm, cold = statistics.median(warm_times), statistics.median(cold_times)

        runs = find_runs(
            runs_dir, arch=cfg.model.arch, mode="standard_ortho", lam=1.0, tasks=list(cfg.tasks), seed=0
        )
        vectors = [d / "task_vector.safetensors" for d in runs.values()]
        metas = {d: read_meta(d) for d in runs.values()}
        sha = timed(
            lambda: [
                _verified_checksum(d / "task_vector.safetensors", m, d / "meta.json")
                for d, m in metas.items()
            ],
            args.repeats,
        )
        tensors = [_read_with_header(v)[0] for v in vectors]
        finite = timed(lambda: [check_finite(t, "bench") for t in tensors], args.repeats)
        caches = sorted((cache / "eval").glob("*.images.npy"))
        used = [c for c in caches if c.name.split("-")[0] in set(cfg.tasks)]

        def pixels() -> None:
            for path in used:
                images = np.load(path, mmap_mode="r")
                labels = np.load(str(path).replace(".images.npy", ".labels.npy"))
                eval_cache.contents_sha256(images, labels)

        cache_check = timed(pixels, args.repeats)
        entries = {p: json.loads(p.read_text())["key"] for p in sorted((cache / "references").glob("*.json"))}
        references = timed(lambda: [read_entry(p, key) for p, key in entries.items()], args.repeats)
        precheck = timed(lambda: check_job("merge", ARGS), args.repeats)
        command = [sys.executable, "merge.py", *ARGS, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp}/cli"]

        def process() -> None:
            shutil.rmtree(Path(tmp) / "cli", ignore_errors=True)
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)

        whole = timed(process, args.repeats)

    checks = {"task vector sha256": sha, "finite scan": finite, "eval cache sha256": cache_check,
              f"references sha256 ({len(entries)} entries)": references,
              "precheck (compose + validate)": precheck}  # fmt: skip
    print(f"quickstart addition merge (references cached): {warm:.2f} s, median of {args.repeats}")
    for name, seconds in checks.items():
        print(f"  {name:32s} {seconds * 1000:8.1f} ms  = {seconds / warm:6.2%} of the merge")
    total = sum(checks.values())
    print(f"  {'all checks':32s} {total * 1000:8.1f} ms  = {total / warm:6.2%} of the merge")
    print(f"merge with references measured afresh: {cold:.2f} s = {cold / warm:.2f}x the cached merge")
    print(
        f"python merge.py (whole process, references cached): {whole:.2f} s; precheck = {precheck / whole:.2%}, "
        f"all checks = {total / whole:.2%} of it"
    )


if __name__ == "__main__":
    main()

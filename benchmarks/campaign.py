"""The quickstart campaign, timed: wall time, the share spent outside optimizer steps, and the speed-up
of the joblib launcher (2 local workers) over the basic launcher (one job after another).

    .venv/bin/python benchmarks/campaign.py [--workers 2] [--datasets digits,shapes,colors,patterns]

Both campaigns run the same grid (configs/experiment/campaign_quickstart.yaml: 4 tasks × (standard +
standard_ortho at its λ), addition and negation)
from empty run folders, after a warm-up that builds the shared caches (generated data, zero-shot heads,
eval caches) so neither pays for them. Time inside optimizer steps (forward, backward, step) is summed
by the StepTimer callback in every training job; everything else (process start-up, data, heads,
evaluation, merging, summary) is overhead. Ratios are measured in the same run; absolute times vary.
Jobs side by side share the cores: the joblib run gives each job cores / workers torch threads
(OMP_NUM_THREADS), as configs/hydra/launcher/joblib.yaml advises.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_campaign(
    root: Path,
    cache: Path,
    launcher: list[str],
    extra: list[str],
    timer: Path | None,
    threads: int | None = None,
) -> float:
    train = ["trainer.enable_progress_bar=false"]
    if timer is not None:
        train += [
            "+callbacks.step_timer._target_=orthoreg_pl.callbacks.step_timer.StepTimer",
            f"+callbacks.step_timer.path={timer}",
        ]
    args = [
        sys.executable,
        "-m",
        "orthoreg_pl.campaign",
        "experiment=campaign_quickstart",
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache}",
        "logger=none",
        "overrides.train=[" + ",".join(f'"{o}"' for o in train) + "]",
        *launcher,
        *extra,
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    if threads is not None:  # torch threads per job: jobs running side by side share the cores
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"campaign failed ({' '.join(args)}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def step_seconds(timer: Path) -> tuple[float, int, int]:
    lines = [json.loads(line) for line in timer.read_text().splitlines() if line.strip()]
    return sum(x["step_seconds"] for x in lines), sum(x["steps"] for x in lines), len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="joblib workers")
    parser.add_argument("--datasets", default="digits,shapes,colors,patterns")
    parser.add_argument("--lambdas", default="0.01,0.1,1")
    parser.add_argument("--skip-joblib", action="store_true")
    args = parser.parse_args()
    extra = [f"datasets=[{args.datasets}]", f"lambdas=[{args.lambdas}]"]
    with tempfile.TemporaryDirectory(prefix="orthoreg_campaign_bench_") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        print("warm-up (builds the shared caches, not timed) ...", flush=True)
        warm = ['overrides.train=["trainer.max_steps=1","trainer.enable_progress_bar=false"]', "lambdas=[1]"]
        run_campaign(tmp / "warmup", cache, [], [f"datasets=[{args.datasets}]", *warm], None)

        timer = tmp / "steps_basic.jsonl"
        basic = run_campaign(tmp / "basic", cache, ["launcher=basic"], extra, timer)
        inside, steps, runs = step_seconds(timer)
        summary = json.loads((tmp / "basic" / "campaigns" / "quickstart" / "summary.json").read_text())
        stage = {s["label"]: s["seconds"] for s in summary["stages"]}
        print(
            f"basic launcher: {basic:.1f} s wall for {runs} training runs ({steps} optimizer steps) and the merges"
        )
        print(
            f"  inside optimizer steps: {inside:.1f} s; outside (start-up, data, heads, evaluation, merging): "
            f"{basic - inside:.1f} s = {100 * (basic - inside) / basic:.1f} % of wall time"
        )
        print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stage.items()))
        if not args.skip_joblib:
            threads = max(1, (os.cpu_count() or 1) // args.workers)
            launcher = ["launcher=joblib", f'overrides.all=["hydra.launcher.n_jobs={args.workers}"]']
            joblib = run_campaign(tmp / "joblib", cache, launcher, extra, None, threads)
            print(
                f"joblib launcher ({args.workers} workers, OMP_NUM_THREADS={threads} each): {joblib:.1f} s wall; "
                f"speed-up over basic: {basic / joblib:.2f}x"
            )


if __name__ == "__main__":
    main()

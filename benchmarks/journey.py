"""A newcomer's journey, timed: ``make quickstart`` from empty run, report and cache folders, then
``make campaign`` (which reuses the quickstart's runs), and the same with ``SIZE=small``.

The baseline, measured in the same run, is the quickstart with W&B disabled (``WANDB_MODE=disabled``):
the ratio is what the offline W&B runs of its 13 jobs cost. Counts the warning lines of each log.
Run it on a quiet machine (it took 17 minutes on 2 cores, 2026-12-06):

    .venv/bin/python benchmarks/journey.py [--skip-campaign] [--sizes full,small]
    .venv/bin/python benchmarks/journey.py --count LOG [LOG ...]   # only the warning lines of saved logs
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a warning line: Python's warnings (``path.py:123: message``, Lightning's included), a logger's WARNING
# record, pip's or wandb's warnings, and ``...Warning: ...`` categories
WARNING = re.compile(r"^\S+\.py:\d+: |\[WARNING\]|^WARNING\b|wandb: WARNING|\w+Warning: ")
LOGS = ROOT / "benchmarks" / "journey_logs"


def clean() -> None:
    """What `make clean` removes: the quickstart's runs, reports and campaign, and the caches."""
    for folder in ("runs/quickstart", "reports/quickstart", "campaigns/quickstart", ".cache"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)


def make(target: str, log: Path, **env: str) -> float:
    """Wall seconds of ``make <target>`` (its output to ``log``); fails loudly if make fails."""
    start = time.perf_counter()
    size = [f"SIZE={env.pop('SIZE')}"] if "SIZE" in env else []
    with open(log, "w") as out:
        done = subprocess.run(
            ["make", target, *size], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"make {target} failed ({done.returncode}); see {log}")
    return seconds


def warnings_in(log: Path) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if WARNING.search(line))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="full,small")
    parser.add_argument("--skip-campaign", action="store_true")
    parser.add_argument(
        "--count", nargs="+", type=Path, help="count the warning lines of these logs and stop"
    )
    args = parser.parse_args()
    if args.count:
        for log in args.count:
            print(f"{log}: {warnings_in(log)} warning lines")
        return
    LOGS.mkdir(exist_ok=True)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")
    print("| what | wall time | warning lines | / baseline |")
    print("|---|---|---|---|")
    clean()
    baseline = make("quickstart", LOGS / "quickstart-nowandb.log", WANDB_MODE="disabled")
    print(
        f"| baseline: make quickstart, W&B disabled | {baseline:.0f} s | {warnings_in(LOGS / 'quickstart-nowandb.log')} | 1.00 |"
    )
    for size in args.sizes.split(","):
        clean()
        log = LOGS / f"quickstart-{size}.log"
        seconds = make("quickstart", log, SIZE=size)
        print(
            f"| make quickstart SIZE={size} | {seconds:.0f} s | {warnings_in(log)} | {seconds / baseline:.2f} |"
        )
        again = make("quickstart", LOGS / f"quickstart-{size}-again.log", SIZE=size)
        print(
            f"| make quickstart SIZE={size}, again (all skipped) | {again:.0f} s | | {again / baseline:.2f} |"
        )
        if not args.skip_campaign:
            log = LOGS / f"campaign-{size}.log"
            seconds = make("campaign", log, SIZE=size)
            print(
                f"| make campaign SIZE={size}, after the quickstart | {seconds:.0f} s | {warnings_in(log)} | {seconds / baseline:.2f} |"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}; logs in {LOGS.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()

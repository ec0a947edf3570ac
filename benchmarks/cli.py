"""CPU time of a usage error and of ``--help``: answered before torch, Lightning and open_clip load.

Each command runs as its own process (median of ``--repeat``); the baseline, measured in the same run,
is the same usage error after importing torch, Lightning and open_clip, which is what the command line
cost while its checks imported them (before #21). Prints CPU seconds (user + system) and the ratio.

    .venv/bin/python benchmarks/cli.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
HEAVY = "import torch, lightning, open_clip; " + RUN
COMMANDS = {
    "python train.py (no dataset)": (RUN, ["train.py"]),
    "python train.py optim.lr=-1": (
        RUN,
        ["train.py", "experiment=quickstart_clip", "dataset=digits", "optim.lr=-1"],
    ),
    "python merge.py protocol.xi.split=nope": (
        RUN,
        ["merge.py", "experiment=quickstart_clip_analysis", "protocol.xi.split=nope"],
    ),
    "python train.py --help": (RUN, ["train.py", "--help"]),
    "python merge.py --help": (RUN, ["merge.py", "--help"]),
    "baseline: train.py (no dataset) after importing torch, lightning, open_clip": (HEAVY, ["train.py"]),
}


def cpu_seconds(code: str, argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {platform.node()}: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    results = {
        name: statistics.median(cpu_seconds(*cmd) for _ in range(args.repeat))
        for name, cmd in COMMANDS.items()
    }
    baseline = results[next(n for n in results if n.startswith("baseline"))]
    print(f"| command | CPU s (median of {args.repeat}) | / baseline |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()

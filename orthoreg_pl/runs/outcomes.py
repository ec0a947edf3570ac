"""The outcomes of a multirun's jobs: how many finished, were skipped, failed, were interrupted or not
run, and the summary lines that say so.

Each job appends one JSON line (its number in the multirun, overrides, outcome, message, output folder
and duration) to a file under the sweep folder (:func:`record_outcome`, called by the entry points),
which works whatever the launcher: in-process, local worker processes, or SLURM jobs on a shared file
system. A job that SLURM requeues (``scontrol requeue``, a pre-emption) writes a line per attempt;
:func:`read_outcomes` keeps the last one of each job, so it counts once, as what it ended as. The
sweep's Hydra callback (runs/sweep.py) names the file when the multirun starts and prints the summary
at its end.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

log = logging.getLogger(__name__)
LOG_ENV = "ORTHOREG_SWEEP_LOG"
GROUP_ENV = "ORTHOREG_SWEEP_GROUP"
OUTCOMES = ("finished", "skipped", "failed", "interrupted", "not run")
SHOWN_WHEN_ZERO = ("finished", "skipped", "failed")


def record_outcome(outcome: str, message: str = "", seconds: float | None = None) -> None:
    """Append this job's outcome and output folder to the multirun's log (nothing outside a multirun)."""
    path = os.environ.get(LOG_ENV)
    if not path or not _multirun_rank_zero():
        return
    overrides, output_dir, job = [], None, None
    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
        output_dir = HydraConfig.get().runtime.output_dir
        job = HydraConfig.get().job.get("num")
    entry = {
        "job": job,
        "overrides": overrides,
        "outcome": outcome,
        "message": message,
        "output_dir": output_dir,
    }
    if seconds is not None:
        entry["seconds"] = round(seconds, 2)
    line = json.dumps(entry) + "\n"
    with open(path, "a") as f:  # one short append per job: atomic on a local or NFS file system
        f.write(line)


def _multirun_rank_zero() -> bool:
    """A job of the multirun itself, and its first process: the other processes of a DDP job (started by
    Lightning as single runs, or as SLURM tasks) inherit the log's path but must not count as jobs."""
    from hydra.types import RunMode
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return multirun and rank_zero_only.rank == 0


def read_outcomes(path: str | Path) -> list[dict[str, Any]]:
    """One outcome per job, in the order the jobs first wrote: the last line of each (its number and
    overrides), so a requeued attempt's ``interrupted`` gives way to how the job ended."""
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    last: dict[Any, dict[str, Any]] = {}
    for i, line in enumerate(line for line in lines if line.strip()):
        entry = json.loads(line)
        job = entry.get("job")  # lines written before jobs were numbered count one each
        last[i if job is None else (job, tuple(entry["overrides"]))] = entry
    return list(last.values())


def summary_lines(outcomes: list[dict[str, Any]]) -> list[str]:
    counts = Counter(o["outcome"] for o in outcomes)
    head = ", ".join(f"{counts[k]} {k}" for k in OUTCOMES if counts[k] or k in SHOWN_WHEN_ZERO)
    lines = [f"multirun: {len(outcomes)} jobs: {head}"]
    for o in outcomes:
        if o["outcome"] in ("failed", "interrupted"):
            lines.append(f"  {o['outcome']}: {' '.join(o['overrides'])}: {o['message']}")
    return lines

"""One stage of a campaign: a ``train.py -m`` or ``merge.py -m`` multirun in a child process, and
what it did (:class:`StageResult`: its jobs' outcomes and output folders, read from the outcome log
the campaign names for it, runs/outcomes.py)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orthoreg_pl.campaign.plan import Multirun
from orthoreg_pl.errors import RunFailed
from orthoreg_pl.runs.outcomes import GROUP_ENV, LOG_ENV, read_outcomes

log = logging.getLogger(__name__)
SCRIPTS_DIR = Path(__file__).resolve().parents[2]  # where train.py and merge.py live
WANDB_AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")


@dataclass
class StageResult:
    """What one multirun did: its jobs' outcomes (overrides, outcome, message, output_dir)."""

    label: str
    command: list[str]
    returncode: int
    seconds: float
    outcomes: list[dict] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(o["outcome"] == outcome for o in self.outcomes)


def run_multirun(multirun: Multirun, jobs_dir: Path, group: str) -> StageResult:
    """Run one multirun in a child process and read back its jobs' outcomes."""
    started = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outcome_log = jobs_dir / f"{multirun.label}-{started}-{os.getpid()}.jsonl"
    outcome_log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPTS_DIR / multirun.script), "-m", *multirun.overrides]
    log.info("campaign: %s", shlex.join(command))
    # A W&B agent's run belongs to the campaign process; its jobs log runs of their own.
    env = {k: v for k, v in os.environ.items() if k not in WANDB_AGENT_ENV}
    env.update({LOG_ENV: str(outcome_log), GROUP_ENV: group})
    start = time.perf_counter()
    done = subprocess.run(command, env=env)  # in the campaign's working directory
    seconds = time.perf_counter() - start
    result = StageResult(multirun.label, command, done.returncode, seconds, read_outcomes(outcome_log))
    if done.returncode != 0 and not result.outcomes:  # the multirun itself did not start
        raise RunFailed(
            f"{multirun.script} -m exited with status {done.returncode} before any job ran: "
            f"{shlex.join(command)}"
        )
    return result

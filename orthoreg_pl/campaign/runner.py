"""Run a campaign: the training multiruns, then the merge multiruns, then the summary.

Each multirun is ``train.py -m`` / ``merge.py -m`` in a child process, through the Hydra launcher
the campaign names (basic: one job after another; joblib: local workers; slurm: an array job that
the call waits for). The child's jobs append their outcome and output folder to a log the campaign
names (``sweep_summary.py``), which is how the campaign finds the reports without guessing. Finished
runs and reports are skipped by the jobs themselves (run identity), so re-running a campaign only
does what is missing.
"""

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

from omegaconf import DictConfig

from orthoreg_pl.campaign.plan import CampaignPlan, Multirun, make_plan
from orthoreg_pl.campaign.summary import build_summary, log_summary, write_summary
from orthoreg_pl.errors import RunFailed
from orthoreg_pl.sweep_summary import GROUP_ENV, LOG_ENV, read_outcomes

log = logging.getLogger(__name__)
SCRIPTS_DIR = Path(__file__).resolve().parents[2]  # where train.py and merge.py live
JOBS_DIR = ".jobs"  # under the campaign folder: one outcome log per multirun
BAD = ("failed", "interrupted")
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


def run_campaign(cfg: DictConfig) -> dict:
    """Train every (task, mode, λ, seed), merge every (mode, λ, seed), write and log the summary."""
    plan: CampaignPlan = make_plan(cfg)
    out = Path(cfg.paths.output_dir)
    group = f"campaign-{plan.name}"
    for protocol, why in plan.skipped_protocols.items():
        log.info("campaign: %s is not run: %s", protocol, why)
    stages = [run_multirun(m, out / JOBS_DIR, group) for m in plan.train]
    stages += [run_multirun(m, out / JOBS_DIR, group) for m in plan.merge]
    summary = build_summary(plan, stages, cfg.objective)
    write_summary(out, summary)
    log_summary(cfg, plan, summary, out)
    print(summary["markdown"], flush=True)
    failed = {
        kind: [o for s in stages if s.label.startswith(kind) for o in s.outcomes if o["outcome"] in BAD]
        for kind in ("train", "merge")
    }
    if failed["train"] or failed["merge"]:
        first = (failed["train"] or failed["merge"])[0]
        raise RunFailed(
            f"campaign {plan.name}: {len(failed['train'])} training and {len(failed['merge'])} merge job(s) failed; "
            f"first: {' '.join(first['overrides'])}: {first['message']}; the summary (with what is missing) is in {out}"
        )
    return summary

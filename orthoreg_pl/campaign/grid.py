"""One grid of a campaign run to its summary: the training multiruns, then the merge multiruns, then the
summary from the reports they wrote. The campaign runs one grid; a λ search runs one per trial.

Each multirun is ``train.py -m`` / ``merge.py -m`` in a child process, through the Hydra launcher
the campaign names (basic: one job after another; joblib: local workers; slurm: an array job that
the call waits for). The child's jobs append their outcome and output folder to a log the campaign
names (runs/outcomes.py), which is how the campaign finds the reports without guessing. Finished
runs and reports are skipped by the jobs themselves (run identity), so re-running a campaign only
does what is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from orthoreg_pl.campaign.plan import CampaignPlan
from orthoreg_pl.campaign.stages import StageResult, run_multirun
from orthoreg_pl.campaign.summary import build_summary, write_summary
from orthoreg_pl.errors import RunFailed

log = logging.getLogger(__name__)
JOBS_DIR = ".jobs"  # under the grid's folder: one outcome log per multirun
BAD = ("failed", "interrupted")


def run_grid(
    plan: CampaignPlan, objective: DictConfig, out: Path, stage: str
) -> tuple[dict, list[StageResult]]:
    """Train and merge ``plan``'s grid, then write its summary to ``out``; the summary and the stages."""
    group = f"campaign-{plan.name}"
    for protocol, why in plan.skipped_protocols.items():
        log.info("campaign: %s is not run: %s", protocol, why)
    multiruns = [*plan.train, *plan.merge]
    stages = [
        run_multirun(m, out / JOBS_DIR, group, f"{stage} · stage {i}/{len(multiruns)}")
        for i, m in enumerate(multiruns, 1)
    ]
    summary = build_summary(plan, stages, objective)
    write_summary(out, summary)
    return summary, stages


def failures(plan: CampaignPlan, stages: list[StageResult], out: Path) -> RunFailed | None:
    """The error a grid with failed jobs ends with (None when every job went well)."""
    failed = {
        kind: [o for s in stages if s.label.startswith(kind) for o in s.outcomes if o["outcome"] in BAD]
        for kind in ("train", "merge")
    }
    if not failed["train"] and not failed["merge"]:
        return None
    first = (failed["train"] or failed["merge"])[0]
    return RunFailed(
        f"campaign {plan.name}: {len(failed['train'])} training and {len(failed['merge'])} merge job(s) failed; "
        f"first: {' '.join(first['overrides'])}: {first['message']}; the summary (with what is missing) is in {out}"
    )

"""Run a campaign: the training multiruns, then the merge multiruns, then the summary.

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

from orthoreg_pl.campaign.dashboard import log_summary
from orthoreg_pl.campaign.plan import CampaignPlan, make_plan
from orthoreg_pl.campaign.stages import run_multirun
from orthoreg_pl.campaign.summary import build_summary, write_summary
from orthoreg_pl.errors import RunFailed
from orthoreg_pl.report.summary import closing

log = logging.getLogger(__name__)
JOBS_DIR = ".jobs"  # under the campaign folder: one outcome log per multirun
BAD = ("failed", "interrupted")


def campaign_end(cfg: DictConfig, summary: dict, out: Path) -> str:
    """The campaign's closing block: its verdict, where the summary is, its W&B runs, what next."""
    objective, best = summary["objective"], summary["objective"]["best"]
    verdict = (
        f"best by {objective['protocol']} {objective['metric']}: {best['mode']} λ={best['lam']:g} "
        f"({100 * objective['value']:.2f} %)"
        if best
        else "no point was scored"
    )
    places = [f"Summary: {out / 'summary.md'} (table), {out / 'summary.png'} (each metric against λ)"]
    folders = [Path(cfg.paths.runs_dir), Path(cfg.paths.reports_dir), out]
    return closing([verdict], places, [f for f in folders if f.is_dir()], cfg.get("next_step"))


def run_campaign(cfg: DictConfig) -> dict:
    """Train every (task, mode, λ, seed), merge every (mode, λ, seed), write and log the summary."""
    plan: CampaignPlan = make_plan(cfg)
    out = Path(cfg.paths.output_dir)
    group = f"campaign-{plan.name}"
    for protocol, why in plan.skipped_protocols.items():
        log.info("campaign: %s is not run: %s", protocol, why)
    multiruns = [*plan.train, *plan.merge]
    stages = [
        run_multirun(m, out / JOBS_DIR, group, f"campaign {plan.name} · stage {i}/{len(multiruns)}")
        for i, m in enumerate(multiruns, 1)
    ]
    summary = build_summary(plan, stages, cfg.objective)
    write_summary(out, summary)
    log_summary(cfg, plan, summary, out)
    print(summary["markdown"], flush=True)
    print(campaign_end(cfg, summary, out), flush=True)
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

"""Run a campaign: its grid to the summary (grid.py), logged to W&B, and its closing lines; or, with
``search`` set, a λ search (search.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from orthoreg_pl.campaign.dashboard import log_summary
from orthoreg_pl.campaign.grid import failures, run_grid
from orthoreg_pl.campaign.plan import CampaignPlan, make_plan
from orthoreg_pl.campaign.search import run_search
from orthoreg_pl.campaign.summary import verdict_lines
from orthoreg_pl.report.summary import closing


def campaign_end(cfg: DictConfig, summary: dict, out: Path) -> str:
    """The campaign's closing block: its verdict, where the summary is, its W&B runs, what next."""
    objective, best = summary["objective"], summary["objective"]["best"]
    key_lines = [
        f"best by {objective['protocol']} {objective['metric']}: {best['mode']} λ={best['lam']:g} "
        f"({100 * objective['value']:.2f} %, mean of {len(best['seeds'])} seed(s))"
        if best
        else "no point was scored"
    ]
    key_lines += [line.strip() for line in verdict_lines(summary)]
    places = [
        f"Summary: {out / 'summary.md'} (verdicts, intervals, every run), {out / 'summary.png'} (each metric "
        f"against λ), {out / 'summary_intervals.csv'}"
    ]
    folders = [Path(cfg.paths.runs_dir), Path(cfg.paths.reports_dir), out]
    return closing(key_lines, places, [f for f in folders if f.is_dir()], cfg.get("next_step"))


def run_campaign(cfg: DictConfig) -> dict:
    """Train every (task, mode, λ, seed), merge every (mode, λ, seed), write and log the summary; with
    ``search`` set, search λ instead (search.py)."""
    if cfg.get("search"):
        return run_search(cfg)
    plan: CampaignPlan = make_plan(cfg)
    out = Path(cfg.paths.output_dir)
    summary, stages = run_grid(plan, cfg.objective, out, f"campaign {plan.name}")
    log_summary(cfg, plan, summary, out)
    print(summary["markdown"], flush=True)
    print(campaign_end(cfg, summary, out), flush=True)
    error = failures(plan, stages, out)
    if error is not None:
        raise error
    return summary

"""The campaign's summary as a W&B run of its own, in the group its jobs' runs share: the table, one
line plot per metric against λ, the PNG and summary.json (offline unless W&B is configured).

A plain ``wandb.init`` run (the campaign is no Lightning job: Lightning's logger would add a
``trainer/global_step`` axis that means nothing here). A re-run whose summary has not changed logs
nothing, so repeating a finished campaign leaves no second offline folder of the same run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.campaign.plan import CampaignPlan
from orthoreg_pl.campaign.summary import COLUMNS, PANELS, by_lambda, intervals_csv, objective_name
from orthoreg_pl.runs.loggers import quiet_settings, wandb_mode
from orthoreg_pl.utils.io import sha256_text, write_text

log = logging.getLogger(__name__)
LOGGED = ".wandb_logged"  # in the campaign folder: the digest of the summary last logged


def _digest(summary: dict) -> str:
    """What the dashboard shows: the grid, the rows and the objective (not the stages' timings)."""
    shown = {k: summary[k] for k in ("grid", "rows", "points", "objective", "tasks", "protocols")}
    return sha256_text(json.dumps(shown, sort_keys=True, default=str))


def log_summary(cfg: DictConfig, plan: CampaignPlan, summary: dict, folder: Path) -> None:
    """See the module docstring; nothing without a W&B logger in the campaign's config."""
    wandb_cfg = (cfg.logger or {}).get("wandb")
    if wandb_cfg is None:
        return
    digest = _digest(summary)
    marker = folder / LOGGED
    if marker.is_file() and marker.read_text().strip() == digest:
        log.info("campaign: the summary is the one already logged to W&B; not logged again")
        return
    import wandb

    settings = OmegaConf.to_container(wandb_cfg, resolve=True)
    mode = wandb_mode(settings.get("offline"))
    if mode == "disabled":  # WANDB_MODE=disabled: nothing logged, nothing marked as logged
        return
    under_agent = os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID")
    run = wandb.init(
        project=settings.get("project"),
        id=os.environ["WANDB_RUN_ID"] if under_agent else settings.get("id"),  # `wandb agent` made the run
        name=settings.get("name"),
        group=str(cfg.run_group),  # the campaign's, also inside a search (whose multirun names its own)
        tags=settings.get("tags"),
        job_type="campaign",
        dir=str(folder),
        resume="allow",
        mode=mode,
        config={"campaign": plan.settings, "objective": summary["objective"]},
        settings=quiet_settings(mode),
    )
    try:
        columns = list(COLUMNS)
        data = [[r.get(c) for c in columns] for r in summary["rows"]]
        run.log({"campaign/summary": wandb.Table(columns=columns, data=data)})
        intervals = list(csv.DictReader(io.StringIO(intervals_csv(summary))))
        if intervals:
            run.log(
                {
                    "campaign/intervals": wandb.Table(
                        columns=list(intervals[0]), data=[list(r.values()) for r in intervals]
                    )
                }
            )
        for column, title in PANELS:
            series = [(m, *by_lambda(summary["points"], m, column)[:2]) for m in plan.penalized]
            series = [s for s in series if s[1]]
            if not series:
                continue
            xs = sorted({lam for _, lams, _ in series for lam in lams})
            ys = [[dict(zip(lams, values)).get(x, math.nan) for x in xs] for _, lams, values in series]
            chart = wandb.plot.line_series(
                xs=xs, ys=ys, keys=[m for m, _, _ in series],
                title=title.format(metric=objective_name(summary)), xname="λ",
            )  # fmt: skip
            run.log({f"campaign/{column}_vs_lambda": chart})
        run.log({"campaign/summary_plot": wandb.Image(str(folder / "summary.png"))})
        if summary["objective"]["value"] is not None:
            run.summary["campaign/objective"] = summary["objective"]["value"]
        artifact = wandb.Artifact(f"campaign-{cfg.identity}", type="campaign_summary")
        artifact.add_file(str(folder / "summary.json"))
        run.log_artifact(artifact)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish(exit_code=0)
    write_text(marker, digest + "\n")

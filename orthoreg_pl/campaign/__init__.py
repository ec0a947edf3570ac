"""λ campaigns: from a grid of modes × λ × seeds to the merged verdict, in one command.

``python -m orthoreg_pl.campaign experiment=campaign_quickstart`` (configs/campaign.yaml):
:mod:`~orthoreg_pl.campaign.plan` checks the grid and turns it into multiruns,
:mod:`~orthoreg_pl.campaign.runner` runs them through the configured Hydra launcher, and
:mod:`~orthoreg_pl.campaign.summary` writes the verdict (summary.json/md/csv/png, W&B).
"""

from orthoreg_pl.campaign.plan import CampaignPlan, Multirun, make_plan
from orthoreg_pl.campaign.runner import run_campaign

__all__ = ["CampaignPlan", "Multirun", "make_plan", "run_campaign"]

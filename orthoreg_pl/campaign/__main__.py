"""``python -m orthoreg_pl.campaign experiment=campaign_<name> [hydra/launcher=joblib] [lambdas=[...]]``.

One campaign: fine-tune every task at every (mode, λ, seed), merge, summarise (configs/campaign.yaml).
With ``search=optuna`` Optuna chooses λ instead (search.py): each trial is a campaign of one λ,
scored by its merged objective.
"""

import hydra
from omegaconf import DictConfig

from orthoreg_pl.campaign.plan import precheck
from orthoreg_pl.campaign.runner import run_campaign
from orthoreg_pl.config.groups import check_experiment_kind
from orthoreg_pl.runs.job import objective, result_field, run_or_exit


@hydra.main(version_base="1.3", config_path="../../configs", config_name="campaign")
def main(cfg: DictConfig) -> float:
    summary = run_or_exit(run_campaign, cfg, root=cfg.paths.root_dir)
    value = None if summary is None else result_field(summary, "objective/value")
    return objective(value, cfg.objective.direction)


if __name__ == "__main__":
    check_experiment_kind("campaign")
    precheck()  # the name and campaigns_dir, before Hydra makes the folder
    main()

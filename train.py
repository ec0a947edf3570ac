"""Fine-tune a CLIP image encoder on one task: ``python train.py dataset=<task> mode=<mode> ortho.lam=<λ>``.

Hydra composes configs/train.yaml; ``-m`` sweeps (``python train.py -m ortho.lam=0,1,10``): finished
runs are skipped, unfinished ones resumed, and a failed job does not stop the sweep.
"""

import hydra
from omegaconf import DictConfig

from orthoreg_pl.cli.precheck import start
from orthoreg_pl.runs.job import objective, result_field, run_or_exit


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from orthoreg_pl.training.fit import train  # heavy: imported once the command line is valid

    meta = run_or_exit(train, cfg, root=cfg.paths.root_dir)  # a failure leaves no empty folder
    value = None if meta is None else result_field(meta, cfg.objective.metric)
    return objective(value, cfg.objective.direction)  # what a sweeper optimises, in the stated direction


if __name__ == "__main__":
    start("train", main)  # the command line is composed and validated first: a bad value costs nothing

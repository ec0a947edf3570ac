"""Merge fine-tuned task vectors and score a protocol: ``python merge.py experiment=addition_vitl14``.

Hydra composes configs/merge.yaml; the report folder gets report.json, report.md, report.csv and a plot.
"""

import hydra
from omegaconf import DictConfig

from orthoreg_pl.cli.precheck import start
from orthoreg_pl.runs.job import objective, result_field, run_or_exit


@hydra.main(version_base="1.3", config_path="configs", config_name="merge")
def main(cfg: DictConfig) -> float:
    from orthoreg_pl.evaluation.pipeline import run_merge  # heavy: imported once the command line is valid

    report = run_or_exit(run_merge, cfg, root=cfg.paths.root_dir)  # a failure leaves no empty folder
    value = None if report is None else result_field(report, "objective/value")
    return objective(value, cfg.protocol.objective.direction)  # e.g. negation: minimize


if __name__ == "__main__":
    start("merge", main)  # the command line is composed and validated first: a bad value costs nothing

"""Merge fine-tuned task vectors and score a protocol: ``python merge.py experiment=addition_vitl14``.

Hydra composes configs/merge.yaml; the report folder gets report.json, report.md, report.csv and a plot.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.pipeline import run_merge
from train import remove_empty_run_dir


@hydra.main(version_base="1.3", config_path="configs", config_name="merge")
def main(cfg: DictConfig) -> float:
    try:
        report = run_merge(cfg)
    except OrthoRegError as err:
        remove_empty_run_dir(Path(cfg.paths.output_dir), stop_at=Path(cfg.paths.reports_dir))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return report["mean"].get("abs", report["mean"].get("target"))


if __name__ == "__main__":
    main()

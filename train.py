"""Fine-tune a CLIP image encoder on one task: ``python train.py dataset=<task> mode=<mode> ortho.lam=<λ>``.

Hydra composes configs/train.yaml; ``-m`` sweeps (``python train.py -m ortho.lam=0,1,10``).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.training import train


def remove_empty_run_dir(run_dir: Path, stop_at: Path) -> None:
    """Hydra made the run folder (and its parents) before the run failed: leave nothing behind."""
    stop_at = stop_at.resolve()
    run_dir = run_dir.resolve()
    while run_dir.is_dir() and run_dir != stop_at and not any(run_dir.iterdir()):
        run_dir.rmdir()
        if stop_at not in run_dir.parents:
            break
        run_dir = run_dir.parent


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        meta = train(cfg)
    except OrthoRegError as err:
        remove_empty_run_dir(Path(cfg.paths.output_dir), stop_at=Path(cfg.paths.runs_dir))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return meta["accuracy"]["finetuned"]["val"]  # what a sweeper optimises


if __name__ == "__main__":
    main()

"""Fine-tune a CLIP image encoder on one task: ``python train.py dataset=<task> mode=<mode> ortho.lam=<λ>``.

Hydra composes configs/train.yaml; ``-m`` sweeps (``python train.py -m ortho.lam=0,1,10``).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.training import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        meta = train(cfg)
    except OrthoRegError as err:
        run_dir = Path(cfg.paths.output_dir)
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # Hydra made it; leave nothing behind for a run that never started
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return meta["accuracy"]["finetuned"]["val"]  # what a sweeper optimises


if __name__ == "__main__":
    main()

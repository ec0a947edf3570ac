"""The config tree on disk: where it is, the options of a group and what they declare (task names,
penalised modes), and which script an experiment is for. Read with OmegaConf alone: the command line
is checked with these before torch loads."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENT_DIR = CONFIG_DIR / "experiment"
COMMANDS = {
    "train": "python train.py",
    "merge": "python merge.py",
    "campaign": "python -m orthoreg_pl.campaign",
}


def group_options(group: str) -> list[str]:
    """The options of a config group: the names of configs/<group>/*.yaml."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _option(group: str, name: str) -> DictConfig:
    return OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")


def task_names() -> list[str]:
    """The task names the dataset configs declare (``name:`` of configs/dataset/*.yaml), sorted."""
    return sorted(str(_option("dataset", d).name) for d in group_options("dataset"))


def dataset_of_task() -> dict[str, str]:
    """task name -> the dataset config that trains it (``Digits`` -> ``digits``)."""
    return {str(_option("dataset", d).name): d for d in group_options("dataset")}


def mode_is_penalized(mode: str) -> bool:
    """Whether configs/mode/<mode>.yaml adds the OrthoReg penalty."""
    return bool(_option("mode", mode).mode.penalized)


def preprocess_keys() -> tuple[str, ...]:
    """The preprocessing settings configs/data/default.yaml lets a user override."""
    return tuple(_option("data", "default").preprocess_overrides)


def experiment_kind(name: str) -> str | None:
    """``experiment_kind`` of configs/experiment/<name>.yaml (None: no such file; Hydra says so)."""
    path = EXPERIMENT_DIR / f"{name}.yaml"
    return OmegaConf.load(path).get("experiment_kind") if path.is_file() else None


def experiments_of(kind: str) -> list[str]:
    """The experiments meant for one script (``train``, ``merge`` or ``campaign``)."""
    return [name for name in group_options("experiment") if experiment_kind(name) == kind]


def check_experiment_kind(kind: str, argv: list[str] | None = None) -> None:
    """Refuse, before Hydra composes anything, an experiment meant for another script: Hydra's own
    error would be "Could not override 'protocol'", which says nothing about the mix-up."""
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") != "experiment":
            continue
        for name in value.split(","):
            theirs = experiment_kind(name.strip())
            if theirs is not None and theirs != kind:
                print(
                    f"error: experiment={name} is a {theirs} experiment: run {COMMANDS[theirs]} experiment={name} "
                    f"({COMMANDS[kind]} takes the {kind} experiments: {', '.join(experiments_of(kind))})",
                    file=sys.stderr,
                )
                sys.exit(2)

"""Which fine-tuned runs a merge uses, and the checks that they may be merged and scored together.

A merge selects one finished run per task by model, mode, λ and seed, and by any training setting
named on its command line (``merge.py ... optim.lr=3e-5``); the vectors must fit together, come from
the θ0 the merge builds, and have been split as the merge evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.identity import MERGE_SELECTABLE
from orthoreg_pl.task_vectors import TaskVector, check_compatible, find_runs, load_run


def selected_settings(cfg: DictConfig) -> dict:
    """Training settings named on merge.py's command line (``optim.lr=3e-5``): they select the runs."""
    if not HydraConfig.initialized():
        return {}
    selected = {}
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "ortho.lam" or not key.startswith(MERGE_SELECTABLE):
            continue
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            for sub, item in _flat(OmegaConf.to_container(value, resolve=True)).items():
                selected[f"{key}.{sub}"] = item
        else:
            selected[key] = value
    return selected


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def find_mode_runs(cfg: DictConfig, mode: str, lam: float, tasks: Sequence[str], settings: dict) -> dict:
    """task -> run folder of ``mode`` at ``lam`` (same arch and seed as the merge)."""
    return find_runs(
        cfg.paths.runs_dir, arch=cfg.model.arch, mode=mode, lam=lam, tasks=list(tasks), seed=cfg.seed,
        settings=settings,
    )  # fmt: skip


def load_vectors(
    cfg: DictConfig, mode: str, lam: float, tasks: Sequence[str], settings: dict, pretrained: str
) -> dict[str, TaskVector]:
    """task -> TaskVector of the selected runs, checked to fit together and to come from ``pretrained``."""
    runs = find_mode_runs(cfg, mode, lam, tasks, settings)
    vectors = {task: load_run(runs[task]) for task in tasks}
    check_compatible(list(vectors.values()))
    for vector in vectors.values():
        if vector.info.pretrained != pretrained:
            raise OrthoRegError(
                f"task vector {vector.info.source} was fine-tuned from {vector.info.pretrained!r}, "
                f"but model.pretrained gives {pretrained!r}"
            )
    return vectors


def check_splits(vectors: dict[str, TaskVector], checksums: dict[str, str]) -> None:
    """Each run was trained and scored on the train/val split merge.py evaluates (same files, same
    rule): a run of another data version or split seed would be compared against the wrong split."""
    for task, vector in vectors.items():
        recorded = vector.info.meta.get("split_checksum")
        if recorded is not None and recorded != checksums[task]:
            raise OrthoRegError(
                f"run {Path(vector.info.source).parent} recorded split checksum {recorded}, but the {task} "
                f"split merge.py evaluates has {checksums[task]} (other data files or data.split_seed?)"
            )

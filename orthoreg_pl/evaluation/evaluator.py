"""The merge evaluator: one encoder, the heads and the loaders built once, any (task, split, τ, α grid)
scored with the engine; and the zero-shot reference of a task, computed once and cached beside the runs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from orthoreg_pl.data import TaskDataModule, eval_dataloader
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.engine import MergeEvalModule, evaluate_alphas
from orthoreg_pl.models import (
    ImageClassifier,
    create_clip,
    load_or_build_head,
    preprocess_config,
    pretrained_identity,
)
from orthoreg_pl.task_vectors import TaskVector
from orthoreg_pl.utils.io import write_json

ZEROSHOT_FILE = "zeroshot.json"


class MergeEvaluator:
    """Builds the encoder, the heads and the loaders once; scores θ0 + α·τ on any (task, split)."""

    def __init__(self, cfg: DictConfig, tasks: list[str]) -> None:
        self.identity = pretrained_identity(cfg.model.pretrained, cfg.model.init_seed)
        clip = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.model.init_seed, cfg.model.quick_gelu)
        preprocess = preprocess_config(clip)
        self.heads, self.loaders, self.checksums = {}, {}, {}
        for task in tasks:
            dm: TaskDataModule = instantiate(cfg.data, task=task)
            dm.preprocess = preprocess
            dm.setup("validate")
            self.heads[task] = load_or_build_head(
                clip,
                cfg.model.arch,
                self.identity,
                task,
                dm.classnames,
                dm.task_data.templates,
                cfg.paths.cache_dir,
            )
            batch, workers = cfg.data.eval_batch_size, cfg.data.num_workers
            self.loaders[task] = {
                "val": eval_dataloader(dm.val_set, batch, workers, shard=True),
                "test": eval_dataloader(dm.test_set, batch, workers, shard=True),
            }
            self.checksums[task] = dm.checksum
        self.module = MergeEvalModule(ImageClassifier(clip.visual, self.heads[tasks[0]]))
        del clip  # the text tower is no longer needed
        self.trainer: L.Trainer = instantiate(
            cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, use_distributed_sampler=False
        )

    def accuracy(self, task: str, split: str, vector: TaskVector | None, alphas: list[float]) -> list[float]:
        closed_form = vector is not None and vector.info is not None and vector.info.space == "tangent"
        direction = None if vector is None else vector.tensors
        return evaluate_alphas(
            self.trainer,
            self.module,
            self.loaders[task][split],
            self.heads[task],
            direction,
            alphas,
            closed_form,
        )


def zeroshot_reference(cfg: DictConfig, evaluator: MergeEvaluator, task: str) -> dict[str, float]:
    """Zero-shot val/test accuracy of θ0 on ``task``: computed once, stored next to the runs
    (``<runs_dir>/<arch>/zeroshot.json``, keyed by pretrained weights, task and split) and reused."""
    path = Path(cfg.paths.runs_dir) / cfg.model.arch / ZEROSHOT_FILE
    key = f"{evaluator.identity}|{task}|{evaluator.checksums[task]}"
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as err:
        raise OrthoRegError(
            f"zero-shot reference file {path} is corrupt ({err}); delete it to recompute"
        ) from err
    if key not in table:
        table[key] = {s: evaluator.accuracy(task, s, None, [0.0])[0] for s in ("val", "test")}
        if evaluator.trainer.is_global_zero:
            write_json(path, dict(sorted(table.items())))
    return table[key]

"""The merge evaluator: one encoder, the heads and the loaders built once, any (task, split, τ, α grid)
scored with the engine; its reference accuracies (references.py) are cached under the cache dir."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from orthoreg_pl.data import TaskDataModule, eval_dataloader
from orthoreg_pl.evaluation.engine import MergeEvalModule, evaluate_alphas
from orthoreg_pl.evaluation.references import ZEROSHOT, ReferenceCache, measure, reference_key
from orthoreg_pl.models import (
    ImageClassifier,
    create_clip,
    load_or_build_head,
    preprocess_config,
    pretrained_identity,
)
from orthoreg_pl.task_vectors import TaskVector


class MergeEvaluator:
    """Builds the encoder, the heads and the loaders once; scores θ0 + α·τ on any (task, split)."""

    def __init__(self, cfg: DictConfig, tasks: list[str]) -> None:
        self.arch = str(cfg.model.arch)
        self.identity = pretrained_identity(cfg.model.pretrained, cfg.model.init_seed)
        clip = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.model.init_seed, cfg.model.quick_gelu)
        preprocess = preprocess_config(clip)
        self.heads, self.loaders, self.checksums, self.preprocess = {}, {}, {}, {}
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
            self.preprocess[task] = {k: _plain(v) for k, v in sorted(dm.resolved_preprocess().items())}
        self.module = MergeEvalModule(ImageClassifier(clip.visual, self.heads[tasks[0]]))
        del clip  # the text tower is no longer needed
        self.trainer: L.Trainer = instantiate(
            cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, use_distributed_sampler=False
        )
        self.precision = str(self.trainer.precision)
        self.matmul_precision = torch.get_float32_matmul_precision()  # set by the Trainer's config
        self.device_type = self.trainer.strategy.root_device.type
        self.setting = {
            "arch": self.arch,
            "pretrained": self.identity,
            "precision": self.precision,
            "matmul_precision": self.matmul_precision,
            "device": self.device_type,
        }
        self.references = ReferenceCache(Path(cfg.paths.cache_dir) / "references", self.trainer)

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

    def reference_key(self, task: str, split: str, vector: TaskVector | None) -> dict:
        return reference_key(self.setting, task, split, self.checksums[task], self.preprocess[task], vector)

    def task_references(self, vectors: dict[str, TaskVector]) -> dict[str, dict[str, dict[str, float]]]:
        """task -> {"zeroshot": {val, test}, "finetuned": {val, test}}, at the merge's precision."""
        return {
            task: measure(self.references, self.reference_key, self.accuracy, task, vector)
            for task, vector in vectors.items()
        }

    def zeroshot_reference(self, task: str) -> dict[str, float]:
        """{val, test} of θ0 on ``task`` (e.g. the negation control), at the merge's precision."""
        return measure(self.references, self.reference_key, self.accuracy, task, None)[ZEROSHOT]


def _plain(value: object) -> object:
    """A preprocessing value as JSON (tuples as lists), for the references' cache key."""
    return list(value) if isinstance(value, tuple) else value

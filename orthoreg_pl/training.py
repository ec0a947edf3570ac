"""One fine-tuning run from a composed config: data -> model -> mode module -> Trainer -> run folder.

``train.py`` is the Hydra shell around :func:`train`; tests call :func:`train` with composed configs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.data import TaskDataModule
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.models import build_classifier, preprocess_config, pretrained_identity
from orthoreg_pl.modules import FineTuneModule
from orthoreg_pl.run_folder import CHECKPOINT_FILE, check_not_finished, write_run_folder
from orthoreg_pl.utils.io import write_json

log = logging.getLogger(__name__)
# The run folder holds zeroshot.json before the first checkpoint; Lightning's notice about it is noise.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
ZEROSHOT_FILE = "zeroshot.json"


def effective_lambda(cfg: DictConfig) -> float:
    """λ the run trains with: ``ortho.lam`` for penalised modes, 0 for the others."""
    lam = float(cfg.ortho.lam)
    if lam < 0:
        raise OrthoRegError(f"ortho.lam={lam} is negative; the penalty weight λ must be >= 0")
    if not cfg.mode.penalized:
        if lam > 0:
            log.info("mode=%s adds no penalty: ortho.lam=%s is ignored", cfg.mode.name, lam)
        return 0.0
    return lam


def _evaluate(trainer: L.Trainer, module: L.LightningModule, datamodule: TaskDataModule) -> dict[str, float]:
    val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/acc"]
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    return {"val": float(val), "test": float(test)}


def train(cfg: DictConfig) -> dict:
    """Fine-tune one task in one mode and write the run folder; returns the run's meta dict."""
    run_dir = Path(cfg.paths.output_dir)
    check_not_finished(run_dir)
    lam = effective_lambda(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: TaskDataModule = instantiate(cfg.data)
    model = build_classifier(
        arch=cfg.model.arch,
        pretrained=cfg.model.pretrained,
        task=cfg.dataset.name,
        classnames=datamodule.classnames,
        templates=datamodule.task_data.templates,
        cache_dir=cfg.paths.cache_dir,
        init_seed=cfg.model.init_seed,
        quick_gelu=cfg.model.quick_gelu,
    )
    datamodule.preprocess = preprocess_config(model)
    module: FineTuneModule = instantiate(cfg.mode.module)(
        model=model,
        lam=lam,
        norm=cfg.ortho.norm,
        gram=cfg.ortho.gram,
        **OmegaConf.to_container(cfg.optim, resolve=True),
    )
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]  # null disables one
    if not loggers:  # nothing to log learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)

    checkpoint = run_dir / CHECKPOINT_FILE
    resume = cfg.resume and checkpoint.exists()
    zeroshot_file = run_dir / ZEROSHOT_FILE
    if resume and zeroshot_file.exists():
        log.info("resuming from %s", checkpoint)
        zeroshot = OmegaConf.to_container(OmegaConf.load(zeroshot_file))
    elif cfg.eval_zeroshot:
        zeroshot = _evaluate(trainer, module, datamodule)
        if trainer.is_global_zero:
            write_json(zeroshot_file, zeroshot)
    else:
        zeroshot = None

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if resume else None)
    finetuned = _evaluate(trainer, module, datamodule)

    task_vector = module.task_vector()
    meta = {
        "task": cfg.dataset.name,
        "mode": module.mode,
        "task_vector_space": module.task_vector_space,
        "arch": cfg.model.arch,
        "pretrained": pretrained_identity(cfg.model.pretrained, cfg.model.init_seed),
        "ortho": {
            "lam": lam,
            "norm": cfg.ortho.norm,
            "gram": cfg.ortho.gram,
            "num_matrices": len(module.penalized_names),
        },
        "split_checksum": datamodule.checksum,
        "seed": int(cfg.seed),
        "precision": str(trainer.precision),
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "accuracy": {"zeroshot": zeroshot, "finetuned": finetuned},
        "task_vector": {
            "tensors": len(task_vector),
            "parameters": sum(t.numel() for t in task_vector.values()),
        },
    }
    if trainer.is_global_zero:
        write_run_folder(run_dir, task_vector, meta, OmegaConf.to_yaml(cfg, resolve=True))
        log.info("run folder written: %s", run_dir)
    return meta

"""One fine-tuning run from a composed config: data -> model -> mode module -> Trainer -> run folder.

``train.py`` is the Hydra shell around :func:`train`; tests call :func:`train` with composed configs.
The run's life (runs/): identity and lock first; a finished run with the same identity is
skipped, an unfinished one resumed from its checkpoint; meta.json says running, then interrupted,
failed or finished.
"""

from __future__ import annotations

import errno
import logging
import pickle
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.config.lam import effective_lambda
from orthoreg_pl.data import TaskDataModule
from orthoreg_pl.errors import OrthoRegError, RunFailed, RunInterrupted
from orthoreg_pl.models import build_classifier, preprocess_config, pretrained_identity
from orthoreg_pl.modules import FineTuneModule
from orthoreg_pl.runs.folder import (
    CHECKPOINT_FILE,
    FAILED,
    FINISHED,
    INTERRUPTED,
    META_FILE,
    read_meta,
    run_status,
    set_status,
    start_meta,
    write_meta,
)
from orthoreg_pl.runs.identity import differing, identity_hash, identity_settings
from orthoreg_pl.runs.lifecycle import RunLifecycle, RunRequeued
from orthoreg_pl.runs.lock import RunLock
from orthoreg_pl.runs.loggers import finish_wandb, log_run_config, log_task_vector_artifact
from orthoreg_pl.task_vectors import TASK_VECTOR_FILE, publish_run
from orthoreg_pl.training.checkpoint_io import check_resumable
from orthoreg_pl.training.validation import validate_train
from orthoreg_pl.utils.io import check_writable, clean_leftovers
from orthoreg_pl.utils.safe_load import unsafe_pickle_message

log = logging.getLogger(__name__)
# The run folder holds meta.json before the first checkpoint; Lightning's notice about it is noise.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# Our DataModule restores the position inside the epoch (its state_dict), which Lightning cannot see.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")


class Skipped(dict):
    """The meta.json of a run that was already finished: returned by :func:`train` without training."""

    skipped = True


def _named_on_command_line(key: str) -> bool:
    return HydraConfig.initialized() and any(
        o.split("=", 1)[0].lstrip("+~") == key for o in HydraConfig.get().overrides.task
    )


def run_identity(cfg: DictConfig, lam: float) -> dict:
    """The readable tag, the hash and the settings that make the run what it is (runs/identity.py)."""
    settings = identity_settings(cfg, lam)
    tag = f"{cfg.model.arch}/{cfg.mode.tag}/{cfg.dataset.name}/seed{cfg.seed}"
    return {"tag": tag, "hash": identity_hash(settings), "settings": settings}


def _evaluate(trainer: L.Trainer, module: FineTuneModule, datamodule: TaskDataModule, prefix: str) -> dict:
    """Val and test accuracy, logged as ``<prefix>/val_acc`` and ``<prefix>/test_acc``."""
    module.eval_prefix = prefix
    try:
        val = trainer.validate(module, datamodule=datamodule, verbose=False)[0][f"{prefix}/val_acc"]
        test = trainer.test(module, datamodule=datamodule, verbose=False)[0][f"{prefix}/test_acc"]
    finally:
        module.eval_prefix = None
    return {"val": float(val), "test": float(test)}


def _existing_run(run_dir: Path, identity: dict) -> dict | None:
    """meta.json of the run already in ``run_dir`` (None when the folder is new); refuses a folder that
    holds another identity's run, or a checkpoint whose run is unknown."""
    if (run_dir / META_FILE).is_file():
        meta = read_meta(run_dir)
        theirs = (meta.get("identity") or {}).get("hash")
        if theirs != identity["hash"]:
            what = differing([(meta.get("identity") or {}).get("settings") or {}, identity["settings"]])
            diff = "; ".join(f"{k}: {a} there, {b} here" for k, (a, b) in what.items()) or "unknown settings"
            raise OrthoRegError(
                f"run folder {run_dir} holds another run ({theirs or 'written before run identities'}; "
                f"{diff}); choose another folder (hydra.run.dir=DIR) or delete it"
            )
        return meta
    if (run_dir / CHECKPOINT_FILE).exists():
        raise OrthoRegError(
            f"run folder {run_dir} holds a checkpoint {CHECKPOINT_FILE} but no {META_FILE}: its run is unknown, "
            "so it is not resumed; delete it or choose another folder"
        )
    return None


def train(cfg: DictConfig) -> dict:
    """Fine-tune one task in one mode and write the run folder; returns the run's meta dict.

    A finished run with the same identity is not trained again: its meta comes back as :class:`Skipped`.
    """
    validate_train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    check_writable(run_dir, "run folder")
    lam = effective_lambda(cfg)
    if not cfg.mode.penalized and _named_on_command_line("ortho.lam"):
        log.warning("mode=%s adds no penalty: ortho.lam=%s is ignored", cfg.mode.name, cfg.ortho.lam)
    identity = run_identity(cfg, lam)
    if rank_zero_only.rank != 0:
        # Other processes of a DDP/FSDP run never write the folder (rank 0 holds its lock), but must take
        # rank 0's decisions, or the processes call the Trainer differently and wait on each other for
        # ever: skip a finished run, keep the recorded zero-shot scores of an unfinished one. They read
        # meta.json before rank 0 can change it: rank 0 needs them for its first evaluation or fit.
        previous = _existing_run(run_dir, identity)
        if previous is not None and run_status(previous) == FINISHED:
            return Skipped(previous)
        return _train(cfg, run_dir, lam, identity, previous)
    with RunLock(run_dir):
        left = clean_leftovers(run_dir)  # a killed job's temporary files: this job owns the folder now
        if left:
            log.info("removed what a killed job left in %s: %s", run_dir, ", ".join(left))
        previous = _existing_run(run_dir, identity)
        if previous is not None and run_status(previous) == FINISHED:
            log.info("skipped: %s is finished (%s)", identity["tag"], run_dir)
            return Skipped(previous)
        if previous is not None:
            log.info("resuming %s (status %s)", run_dir, run_status(previous))
        return _train(cfg, run_dir, lam, identity, previous)


def build(cfg: DictConfig, lam: float) -> tuple[TaskDataModule, FineTuneModule]:
    """The run's DataModule and its mode's LightningModule (θ0 = the model as built), before any Trainer."""
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
    return datamodule, module


def _train(cfg: DictConfig, run_dir: Path, lam: float, identity: dict, previous: dict | None) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg, lam)
    checkpoint = run_dir / CHECKPOINT_FILE
    lifecycle = RunLifecycle(identity["hash"], checkpoint)
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]  # null disables one
    if not loggers:  # nothing to log learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[lifecycle, *callbacks])
    log_run_config(loggers, cfg, identity)

    meta = previous or start_meta(
        identity,
        {
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
            "seed": int(cfg.seed),
            "precision": str(trainer.precision),
            "matmul_precision": torch.get_float32_matmul_precision(),  # set by the Trainer's config
            "accuracy": {"zeroshot": None, "finetuned": None},
        },
    )
    publish = trainer.is_global_zero
    if publish:
        write_meta(run_dir, meta)
    status, exit_code = FAILED, 1
    try:
        with lifecycle.signal_handlers():
            meta = _fit_and_publish(cfg, trainer, module, datamodule, run_dir, meta, publish)
        status, exit_code = FINISHED, 0
        return meta
    except (
        RunInterrupted,
        RunRequeued,
        SIGTERMException,
        KeyboardInterrupt,
    ) as err:  # RunRequeued: by submitit
        status, exit_code = (
            INTERRUPTED,
            128 + getattr(err, "signum", 2 if isinstance(err, KeyboardInterrupt) else 15),
        )
        if publish:
            record_status(run_dir, meta, INTERRUPTED, str(err) or "SIGTERM", int(trainer.global_step))
        if isinstance(err, SIGTERMException):  # Lightning's own SIGTERM stop (during evaluation)
            raise RunInterrupted(
                f"stopped by SIGTERM; re-run the same command to resume from {checkpoint}", 15
            ) from None
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C where no handler of ours was installed
            raise RunInterrupted("stopped by SIGINT (Ctrl-C); re-run the same command to resume", 2) from None
        raise
    except OSError as err:  # a full or read-only disk under a logger or meta.json: one line naming the file
        error = RunFailed(disk_error(err, run_dir)) if err.errno in DISK_ERRORS else err
        if publish:
            record_status(run_dir, meta, FAILED, f"{type(error).__name__}: {error}", int(trainer.global_step))
        if error is err:
            raise
        raise error from None
    except BaseException as err:
        if publish:
            record_status(run_dir, meta, FAILED, f"{type(err).__name__}: {err}", int(trainer.global_step))
        raise
    finally:
        finish_wandb(exit_code)
        log.debug("run %s ended: %s", run_dir, status)


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a write the disk refused, whoever wrote


def disk_error(err: OSError, run_dir: Path) -> str:
    """An OSError of a write as one line naming the file (torch's zip writer names none)."""
    where = err.filename or f"a file in {run_dir}"
    return (
        f"cannot write {where}: {err.strerror or err}; the run stopped (free space, then run the same "
        "command again to resume from the last whole checkpoint)"
    )


def record_status(run_dir: Path, meta: dict, status: str, reason: str, steps: int) -> None:
    """Record how the run ended; if even meta.json cannot be written (a disk still full), say so in
    the log and leave the error itself to be reported (the run stays unfinished, so it resumes)."""
    try:
        set_status(run_dir, meta, status, reason, steps=steps)
    except OSError as write_error:
        log.error("could not record status %s in %s: %s", status, run_dir / META_FILE, write_error)


def _fit_and_publish(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: FineTuneModule,
    datamodule: TaskDataModule,
    run_dir: Path,
    meta: dict,
    publish: bool,
) -> dict:
    checkpoint = run_dir / CHECKPOINT_FILE
    zeroshot = meta["accuracy"].get("zeroshot")
    if zeroshot is None and cfg.eval_zeroshot:
        zeroshot = _evaluate(trainer, module, datamodule, "zeroshot")
        meta["accuracy"] = {**meta["accuracy"], "zeroshot": zeroshot}  # in place: kept if the run stops later
        if publish:
            write_meta(run_dir, meta)
    resume = cfg.resume and checkpoint.exists()
    if resume:
        check_resumable(checkpoint)  # a truncated file: one line naming it, before Lightning reads it
        log.info("resuming from %s", checkpoint)
    try:  # weights_only explicitly: Lightning passes None, which torch < 2.6 takes as False
        trainer.fit(
            module, datamodule=datamodule, ckpt_path=str(checkpoint) if resume else None, weights_only=True
        )
    except pickle.UnpicklingError as err:
        message = unsafe_pickle_message(checkpoint, "checkpoint", err)
        raise OrthoRegError(f"{message}; or delete it to train this run afresh") from None
    finetuned = _evaluate(trainer, module, datamodule, "finetuned")
    task_vector = module.task_vector()
    bad = [name for name, t in task_vector.items() if not torch.isfinite(t).all()]
    if bad:
        raise RunFailed(f"the task vector has non-finite entries ({', '.join(bad[:3])}, ...); not published")
    fields = {
        "split_checksum": datamodule.checksum,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "accuracy": {"zeroshot": zeroshot, "finetuned": finetuned},
        "task_vector": {
            "tensors": len(task_vector),
            "parameters": sum(t.numel() for t in task_vector.values()),
        },
    }
    if not publish:
        return {**meta, **fields, "status": FINISHED}
    meta = publish_run(run_dir, task_vector, meta, OmegaConf.to_yaml(cfg, resolve=True), **fields)
    log.info("run folder written: %s", run_dir)
    if cfg.get("wandb_task_vector_artifact"):
        log_task_vector_artifact(trainer.loggers, run_dir / TASK_VECTOR_FILE, meta["identity"]["hash"])
    return meta

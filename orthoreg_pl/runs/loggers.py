"""Experiment loggers. W&B is the default and stays offline unless the user has configured it.

One W&B run per job: its id comes from the run's identity (``resume="allow"``, so a resumed job
continues its own run), and :func:`finish_wandb` ends it whatever way the job ends, so the next job
of a multirun starts a run of its own. The CSV logger appends to the history of the run it resumes.
"""

from __future__ import annotations

import csv
import netrc
import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf


def wandb_configured() -> bool:
    """True when this machine can log to W&B online: an API key in the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(offline: bool | None = None) -> str:
    """wandb.init's ``mode``: ``disabled`` when ``WANDB_MODE=disabled`` (W&B's own off switch, which an
    explicit mode would otherwise override), else offline unless W&B is configured (``offline`` forces it)."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return "disabled"
    return "offline" if (not wandb_configured() if offline is None else offline) else "online"


def quiet_settings(mode: str) -> object:
    """wandb's settings for a job's run: no banner of its own in every job's output (an offline run's
    three lines on where it is saved and how to sync it: the end of a quickstart or campaign says that
    once for all runs); an online run keeps its one link."""
    import wandb

    return wandb.Settings(silent=True) if mode != "online" else wandb.Settings(quiet=True)


def wandb_logger(offline: bool | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger, offline unless W&B is configured (offline runs sync later with ``wandb sync``);
    ``WANDB_MODE=disabled``, W&B's own switch, turns it off (Lightning's ``offline`` would overwrite it)."""
    mode = wandb_mode(offline)
    kwargs.setdefault("settings", quiet_settings(mode))
    if mode == "disabled":
        kwargs["mode"] = "disabled"  # to wandb.init: Lightning's offline=True would set WANDB_MODE=dryrun
    logger = WandbLogger(offline=mode == "offline", **kwargs)
    # Lightning always hands wandb.init ``anonymous`` (None unless asked), which wandb warns has no
    # effect; we never ask for it, so it is not passed at all
    logger._wandb_init.pop("anonymous", None)
    return logger


def log_run_config(loggers: list[Logger], cfg: DictConfig, identity: dict) -> None:
    """The whole resolved config and the run's identity, as the experiment's hyper-parameters."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"config": config, "identity": identity})


def log_task_vector_artifact(loggers: list[Logger], path: Path, identity_hash: str) -> None:
    """The finished run's task_vector.safetensors as a W&B artifact (``wandb_task_vector_artifact=true``)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            artifact = wandb.Artifact(f"task_vector-{identity_hash}", type="task_vector")
            artifact.add_file(str(path))
            logger.experiment.log_artifact(artifact)


def finish_wandb(exit_code: int = 0) -> None:
    """End this process's W&B run (Lightning's logger never does), marking how the job ended."""
    wandb = sys.modules.get("wandb")  # never imported here when no W&B logger ran
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run keeps its history instead."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose metrics.csv grows across the interruptions and resumptions of one run."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

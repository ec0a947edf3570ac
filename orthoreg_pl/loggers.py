"""Experiment loggers. W&B is the default and stays offline unless the user has configured it."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger


def wandb_configured() -> bool:
    """True when this machine can log to W&B online: an API key in the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger, offline unless W&B is configured (offline runs sync later with ``wandb sync``)."""
    return WandbLogger(offline=not wandb_configured() if offline is None else offline, **kwargs)

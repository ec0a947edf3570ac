"""The OmegaConf resolvers the configs use.

The ones the configs of jobs need (``lam``, ``resource``, ``run_hash``, ``report_hash``,
``campaign_hash``, and ``slurm``, the SLURM launcher's job shape) are registered when ``orthoreg_pl`` is imported; ``script_groups``, which only
``--help`` resolves, is registered by the command line (cli/help.py) through :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.config.lam import format_lambda
from orthoreg_pl.runs.identity import campaign_settings, identity_hash, identity_settings, report_settings
from orthoreg_pl.runs.slurm import slurm_resource

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def register(name: str, resolver: Callable) -> None:
    """Register ``${name:...}`` once per process (a re-import keeps the first)."""
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolver)


def _hash_of(root: DictConfig, settings_of: Callable[[DictConfig, float], dict]) -> str:
    try:
        lam = float(root.ortho.lam) if root.mode.get("penalized") else 0.0
        return identity_hash(settings_of(root, lam))
    except Exception:  # noqa: BLE001 - a bad value (λ, an α, ...): the job's validation names it
        return "invalid"


def run_hash(*, _root_: DictConfig) -> str:
    """``${run_hash:}``: the short hash of a fine-tuning run's identity (runs/identity.py), for names."""
    return _hash_of(_root_, identity_settings)


def report_hash(*, _root_: DictConfig) -> str:
    """``${report_hash:}``: the short hash of a merge report's settings, for names."""
    return _hash_of(_root_, report_settings)


def campaign_hash(*, _root_: DictConfig) -> str:
    """``${campaign_hash:}``: the short hash of a campaign's grid and experiments, for its W&B run id."""
    return identity_hash(campaign_settings(_root_))


def resource(relative: str) -> str:
    """``${resource:pretrained/x.safetensors}``: a file shipped in the package's resources folder, wherever
    the package is installed (``paths.root_dir`` may point elsewhere)."""
    return str(RESOURCES / relative)


def register_resolvers() -> None:
    for name, resolver in (
        ("lam", format_lambda),
        ("run_hash", run_hash),
        ("report_hash", report_hash),
        ("campaign_hash", campaign_hash),
        ("resource", resource),
        ("slurm", slurm_resource),
    ):
        register(name, resolver)

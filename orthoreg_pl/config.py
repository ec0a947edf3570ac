"""OmegaConf resolvers the configs use; registered on import of ``orthoreg_pl``."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def format_lambda(value: float | int | str) -> str:
    """λ as it appears in folder names: ``10`` and ``10.0`` both give ``10``, ``1e-3`` gives ``0.001``.

    A value that is no number is returned as typed: the run then stops with a clear error about it,
    not inside Hydra's own error formatting."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _hash_of(root: DictConfig, settings_of) -> str:
    from orthoreg_pl.run_identity import identity_hash

    try:
        lam = float(root.ortho.lam) if root.mode.get("penalized") else 0.0
        return identity_hash(settings_of(root, lam))
    except Exception:  # noqa: BLE001 - a bad value (λ, an α, ...): the job's validation names it
        return "invalid"


def run_hash(*, _root_: DictConfig) -> str:
    """``${run_hash:}``: the short hash of a fine-tuning run's identity (run_identity.py), for names."""
    from orthoreg_pl.run_identity import identity_settings

    return _hash_of(_root_, identity_settings)


def report_hash(*, _root_: DictConfig) -> str:
    """``${report_hash:}``: the short hash of a merge report's settings, for names."""
    from orthoreg_pl.run_identity import report_settings

    return _hash_of(_root_, report_settings)


def campaign_hash(*, _root_: DictConfig) -> str:
    """``${campaign_hash:}``: the short hash of a campaign's grid and experiments, for its W&B run id."""
    from orthoreg_pl.campaign.plan import campaign_settings
    from orthoreg_pl.run_identity import identity_hash

    return identity_hash(campaign_settings(_root_))


def resource(relative: str) -> str:
    """``${resource:pretrained/x.safetensors}``: a file shipped in the package's resources folder, wherever
    the package is installed (``paths.root_dir`` may point elsewhere)."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent / "resources" / relative)


def script_groups(kind: str) -> str:
    from orthoreg_pl.cli import script_groups as groups

    return groups(kind)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lam"):
        OmegaConf.register_new_resolver("lam", format_lambda)
    for name, resolver in (
        ("run_hash", run_hash),
        ("report_hash", report_hash),
        ("campaign_hash", campaign_hash),
        ("script_groups", script_groups),
        ("resource", resource),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)

"""OmegaConf resolvers the configs use; registered on import of ``orthoreg_pl``."""

from __future__ import annotations

from omegaconf import OmegaConf


def format_lambda(value: float | int | str) -> str:
    """λ as it appears in folder names: ``10`` and ``10.0`` both give ``10``, ``1e-3`` gives ``0.001``."""
    return f"{float(value):g}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lam"):
        OmegaConf.register_new_resolver("lam", format_lambda)

"""What ``python train.py --help`` and ``python merge.py --help`` list: each config group of the
script with its options (configs/hydra/help/*.yaml call ``${script_groups:<script>}``)."""

from __future__ import annotations

from omegaconf import OmegaConf

from orthoreg_pl.config.groups import CONFIG_DIR, experiments_of, group_options
from orthoreg_pl.config.resolvers import register


def script_groups(kind: str) -> str:
    """The groups of configs/<kind>.yaml's defaults with their options, one per line (experiments:
    only those of that script)."""
    defaults = OmegaConf.load(CONFIG_DIR / f"{kind}.yaml").get("defaults", [])
    groups = [next(iter(d)) for d in defaults if OmegaConf.is_dict(d)]
    lines = []
    for group in [g for g in groups if g not in ("hydra", "experiment")] + ["experiment"]:
        options = experiments_of(kind) if group == "experiment" else group_options(group)
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


register("script_groups", script_groups)

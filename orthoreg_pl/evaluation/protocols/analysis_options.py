"""The analysis protocol's options (``protocol.modes``, ``angles``, ``xi``, ``curves``), checked from the
config alone, before anything heavy loads: the command line's check and the protocol's start use
the same functions (analysis.py declares the protocol, analysis_run.py computes it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.analysis.options import VECTORS
from orthoreg_pl.config.groups import group_options, mode_is_penalized
from orthoreg_pl.config.lam import effective_lambda, format_lambda
from orthoreg_pl.errors import OrthoRegError

SPLITS = ("val", "test")


# ---- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeSpec:
    """One set of task vectors to compare: a mode, its λ and optional run-selecting settings."""

    mode: str
    lam: float
    settings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.mode if not self.lam else f"{self.mode} λ={format_lambda(self.lam)}"

    @property
    def tag(self) -> str:
        """File-name form, as ``mode.tag``: ``standard``, ``standard_ortho_lam0.1``."""
        return self.mode if not self.lam else f"{self.mode}_lam{format_lambda(self.lam)}"


def _container(cfg: DictConfig, key: str, default: object = None) -> object:
    node = OmegaConf.select(cfg, key, default=default)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def mode_specs(cfg: DictConfig, own: ModeSpec) -> list[ModeSpec]:
    """``protocol.modes`` checked; the pipeline's own (mode, λ) first, added when the list lacks it."""
    modes = group_options("mode")
    raw = _container(cfg, "protocol.modes") or []
    if not isinstance(raw, list):
        raise OrthoRegError(
            f"protocol.modes={raw!r}; expected a list such as [{{mode: standard, lam: 0}}, ...]"
        )
    specs = []
    for entry in raw:
        if not isinstance(entry, dict) or "mode" not in entry or set(entry) - {"mode", "lam", "settings"}:
            raise OrthoRegError(
                f"protocol.modes entry {entry!r}; expected {{mode: <name>, lam: <λ>[, settings: {{key: value}}]}}"
            )
        mode, lam, settings = entry["mode"], entry.get("lam", 0.0), entry.get("settings") or {}
        if mode not in modes:
            raise OrthoRegError(f"protocol.modes: mode={mode!r}; expected one of {', '.join(modes)}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise OrthoRegError(f"protocol.modes: {mode} has lam={lam!r}; expected a number >= 0")
        if lam and not mode_is_penalized(mode):
            raise OrthoRegError(f"protocol.modes: {mode} adds no penalty but lam={lam}; use lam: 0")
        if not isinstance(settings, dict):
            raise OrthoRegError(f"protocol.modes: {mode} has settings={settings!r}; expected a mapping")
        specs.append(ModeSpec(mode, float(lam), settings))
    keys = [(s.mode, s.lam) for s in specs]
    if len(set(keys)) != len(keys):
        raise OrthoRegError(f"protocol.modes names a (mode, lam) twice: {keys}")
    rest = [s for s in specs if (s.mode, s.lam) != (own.mode, own.lam)]
    return [own, *rest]


def xi_pairs(cfg: DictConfig, tasks: Sequence[str]) -> list[tuple[str, str]]:
    """``protocol.xi.pairs`` checked against ``tasks`` (null: the first two tasks)."""
    raw = _container(cfg, "protocol.xi.pairs")
    if raw is None:
        return [(tasks[0], tasks[1])]
    if not isinstance(raw, list) or not raw:
        raise OrthoRegError(f"protocol.xi.pairs={raw!r}; expected null or a list of task pairs [[A, B], ...]")
    pairs = []
    for pair in raw:
        if not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]:
            raise OrthoRegError(f"protocol.xi.pairs entry {pair!r}; expected two different tasks [A, B]")
        missing = [t for t in pair if t not in tasks]
        if missing:
            raise OrthoRegError(
                f"protocol.xi.pairs entry {pair}: {', '.join(missing)} not among tasks ({', '.join(tasks)})"
            )
        pairs.append((pair[0], pair[1]))
    return pairs


def _integer(cfg: DictConfig, key: str, default: int | None, low: int, optional: bool = False) -> int | None:
    value = _container(cfg, key, default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"an integer >= {low}" + (" or null" if optional else "")
        raise OrthoRegError(f"{key}={value!r}; expected {allowed}")
    return value


def check_settings(cfg: DictConfig) -> dict:
    """The analysis options with defaults, each checked (errors name the key, value and what is expected)."""
    tasks = list(cfg.tasks)
    if len(tasks) < 2:
        raise OrthoRegError(f"tasks={tasks}: the analysis compares tasks; expected at least two")
    vectors = _container(cfg, "protocol.angles.vectors", "columns")
    if vectors not in VECTORS:
        raise OrthoRegError(f"protocol.angles.vectors={vectors!r}; expected one of {', '.join(VECTORS)}")
    split = _container(cfg, "protocol.xi.split", "test")
    if split not in SPLITS:
        raise OrthoRegError(f"protocol.xi.split={split!r}; expected one of {', '.join(SPLITS)}")
    return {
        "max_pairs": _integer(cfg, "protocol.angles.max_pairs", 4096, 1),
        "angle_seed": _integer(cfg, "protocol.angles.seed", 0, 0),
        "bins": _integer(cfg, "protocol.angles.bins", 60, 2),
        "vectors": vectors,
        "pairs": xi_pairs(cfg, tasks),
        "split": split,
        "max_samples": _integer(cfg, "protocol.xi.max_samples", None, 1, optional=True),
        "curves": _boolean(cfg, "protocol.curves", True),
    }


def _boolean(cfg: DictConfig, key: str, default: bool) -> bool:
    value = _container(cfg, key, default)
    if not isinstance(value, bool):
        raise OrthoRegError(f"{key}={value!r}; expected true or false")
    return value


def validate_analysis(cfg: DictConfig) -> None:
    """Every analysis option checked from the config alone, before anything is built (for
    evaluation/validation.py): the same checks the protocol makes when it starts."""
    check_settings(cfg)
    mode_specs(cfg, ModeSpec(str(cfg.mode.name), effective_lambda(cfg)))

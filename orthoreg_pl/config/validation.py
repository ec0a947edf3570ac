"""The validation mechanism: every value a user edits is checked right after Hydra composes the
config, before a folder is made, data read or a model built. A bad value stops the job with one line
naming the key, the value and what is accepted.

Rules are tables of (key, check, what is accepted). The groups both scripts compose have theirs in
config/rules.py; training/validation.py and evaluation/validation.py add each script's own, and each
evaluation protocol declares its rules and objectives with the protocol. Hydra checks which group
options exist; the rules check the values inside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orthoreg_pl.errors import OrthoRegError

_ABSENT = object()
# A rule, or a function of the config giving rules: one that depends on other values (one coefficient
# per task), or those a chosen option declares (a protocol's own).
RuleLike = Union["Rule", Callable[[DictConfig], Union["Rule", Sequence["RuleLike"]]]]


@dataclass(frozen=True)
class Rule:
    """``key`` must satisfy ``check``; ``expected`` says what is accepted. Absent keys pass
    unless ``required`` (a group may not have every option, e.g. only LoRA modes have a rank)."""

    key: str
    check: Callable[[Any], bool]
    expected: str
    required: bool = False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable:
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or v <= high

    return check


def integer(low: int | None = None) -> Callable:
    return lambda v: _is_int(v) and (low is None or v >= low)


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def choice(options: Sequence[Any]) -> Callable:
    return lambda v: v in options


def optional(check: Callable) -> Callable:
    return lambda v: v is None or check(v)


def sequence(item: Callable, length: int | None = None, min_length: int = 0) -> Callable:
    def check(v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < min_length:
            return False
        return (length is None or len(v) == length) and all(item(x) for x in v)

    return check


def fraction_below_one(v: Any) -> bool:
    """A number in [0, 1): a drop rate, an Adam beta."""
    return number(0.0, 1.0)(v) and v < 1


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        raise OrthoRegError(f"{key} cannot be read ({message}); fix the value given for it") from None
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _expand(cfg: DictConfig, rules: Sequence[RuleLike]) -> Iterator[Rule]:
    for rule in rules:
        if isinstance(rule, Rule):
            yield rule
            continue
        built = rule(cfg)  # built once the values it reads have passed their own rules
        yield from _expand(cfg, [built] if isinstance(built, Rule) else built)


def check(cfg: DictConfig, rules: Sequence[RuleLike]) -> None:
    """Raise OrthoRegError at the first value that breaks its rule."""
    for rule in _expand(cfg, rules):
        value = _value(cfg, rule.key)
        if value is _ABSENT:
            if rule.required:
                raise OrthoRegError(f"{rule.key} is not set; expected {rule.expected}")
            continue
        if not rule.check(value):
            raise OrthoRegError(f"{rule.key}={_show(value)}; expected {rule.expected}")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)

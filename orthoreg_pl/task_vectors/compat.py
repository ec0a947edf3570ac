"""Whether task vectors may be added together, with an error that names what differs.

Adding vectors of different architectures or pretrained weights is meaningless, and a linearized
(tangent-space) vector is a direction for the linearized model only (docs/method.md §3): it never mixes
with a non-linear one. Modes of one family mix (``standard`` with ``standard_ortho``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.task_vectors.vector import TaskVector

FAMILIES = ("standard", "linear", "attn", "lora_attn")
REFERENCE_NAMES = {"linear-2": "attn", "loraatt": "lora_attn"}  # the reference code's mode names
_SUFFIX = "_ortho"
_SHOWN_SOURCES = 3


def mode_family(mode: str) -> str:
    """``standard``, ``linear``, ``attn`` or ``lora_attn``: the mode without ``_ortho``. Accepts the
    reference names (``linear-2``, ``loraatt``) and "+"-joined modes of one family (merged vectors)."""
    families = set()
    for part in str(mode).split("+"):
        base = part.removesuffix(_SUFFIX)
        base = REFERENCE_NAMES.get(base, base)
        if base not in FAMILIES:
            known = ", ".join([*FAMILIES, *REFERENCE_NAMES])
            raise OrthoRegError(
                f"unknown mode {part!r}; known mode families: {known} (each also with {_SUFFIX})"
            )
        families.add(base)
    if len(families) > 1:
        raise OrthoRegError(f"mode {mode!r} mixes mode families {', '.join(sorted(families))}")
    return families.pop()


def _source(vector: TaskVector, index: int) -> str:
    info = vector.info
    if info is None:
        return f"vector #{index}"
    return info.source or f"vector #{index} ({info.task}, in memory)"


def _check_field(
    vectors: Sequence[TaskVector],
    name: str,
    value: Callable[[TaskVector], str],
    detail: Callable[[TaskVector], str] | None = None,
) -> None:
    """All vectors share ``value``, else an error listing each value with the sources that have it."""
    groups: dict[str, list[str]] = {}
    for i, v in enumerate(vectors):
        source = _source(v, i) + (f": {detail(v)}" if detail else "")
        groups.setdefault(value(v), []).append(source)
    if len(groups) > 1:
        parts = []
        for val, sources in groups.items():
            shown = ", ".join(sources[:_SHOWN_SOURCES])
            more = f", … ({len(sources)} vectors)" if len(sources) > _SHOWN_SOURCES else ""
            parts.append(f"{val} ({shown}{more})")
        raise OrthoRegError(f"task vectors do not fit together: {name} differs: {', '.join(parts)}")


def check_compatible(vectors: Sequence[TaskVector]) -> None:
    """Raise OrthoRegError unless all ``vectors`` share arch, pretrained weights, mode family, space
    and the same keys with the same shapes. Vectors without provenance pass only with each other."""
    if not vectors:
        raise OrthoRegError("no task vectors given")
    _check_field(vectors, "provenance", lambda v: "unknown" if v.info is None else "known")
    if vectors[0].info is not None:
        _check_field(vectors, "arch", lambda v: v.info.arch)
        _check_field(vectors, "pretrained weights", lambda v: v.info.pretrained)
        _check_field(
            vectors, "mode family", lambda v: mode_family(v.info.mode), lambda v: f"mode {v.info.mode}"
        )
        _check_field(vectors, "space", lambda v: v.info.space)
    first = vectors[0]
    for i, other in enumerate(vectors[1:], start=1):
        try:
            first.check_same_keys(other)
        except OrthoRegError as err:
            raise OrthoRegError(
                f"task vectors do not fit together: {_source(first, 0)} and {_source(other, i)}: {err}"
            ) from None


__all__ = ["FAMILIES", "REFERENCE_NAMES", "check_compatible", "mode_family"]

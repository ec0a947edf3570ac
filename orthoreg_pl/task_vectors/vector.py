"""The task vector τ = θ − θ0 as a value: a name → tensor map with provenance and a small algebra.

Arithmetic never modifies its operands and returns new TaskVectors; tensors are shared, not copied,
where an operation leaves them unchanged (``restrict``, ``to`` without a change), so treat them as
read-only. Norms and dot products accumulate in float64: a ViT-L-14 vector has ~300M entries.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError

_SHOWN = 5  # differing keys named in an error message
SPACES = ("weight", "tangent")  # θ − θ0 of the model itself, or of its linearization (never mixed)


@dataclass(frozen=True)
class TaskVectorInfo:
    """Where a task vector comes from: what merging checks before it adds vectors together."""

    arch: str
    pretrained: str
    mode: str  # e.g. "standard_ortho"; "+"-joined when vectors of several modes were combined
    space: str  # "weight" or "tangent" (linearized modes)
    task: str  # e.g. "Digits"; an expression such as "Digits+Shapes" after arithmetic
    source: str = ""  # file or folder it came from
    checksum: str = ""  # sha256 of the task-vector file ("" when built in memory)
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # the run's meta.json, if any

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise OrthoRegError(
                f"task vector space {self.space!r} ({self.source or self.task}); "
                f"expected one of {', '.join(SPACES)}"
            )


def describe_keys(keys: Iterable[str]) -> str:
    """The first few of ``keys`` (sorted) and how many there are, for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def _label(info: TaskVectorInfo | None) -> str:
    if info is None:
        return "a task vector without provenance"
    return info.source or f"task vector {info.task!r}"


def _term(task: str) -> str:
    """``task`` as an operand: compound expressions get parentheses."""
    return f"({task})" if any(op in task for op in "+-*/") else task


def joined_modes(modes: Iterable[str]) -> str:
    return "+".join(sorted(set(modes)))


def combine_info(
    infos: Sequence[TaskVectorInfo | None], task: str, meta: dict | None = None
) -> TaskVectorInfo | None:
    """Provenance of a vector built from others: kept only when all have it and agree on
    arch, pretrained weights and space (it is then about no file: source and checksum empty)."""
    if not infos or any(i is None for i in infos):
        return None
    first = infos[0]
    if any((i.arch, i.pretrained, i.space) != (first.arch, first.pretrained, first.space) for i in infos):
        return None
    return TaskVectorInfo(
        arch=first.arch,
        pretrained=first.pretrained,
        mode=joined_modes(i.mode for i in infos),
        space=first.space,
        task=task,
        meta=meta or {},
    )


def scaled_name(scalar: float, task: str) -> str:
    """The task expression of ``scalar``·τ_task: ``Digits``, ``-Digits``, ``0.5*(Digits+Shapes)``."""
    if scalar == 1:
        return task
    if scalar == -1:
        return f"-{_term(task)}"
    return f"{scalar:g}*{_term(task)}"


class TaskVector:
    """name -> tensor map θ − θ0 with optional provenance (:class:`TaskVectorInfo`)."""

    def __init__(self, tensors: Mapping[str, Tensor], info: TaskVectorInfo | None = None) -> None:
        for name, tensor in tensors.items():
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                kind = f"a {tensor.dtype} tensor" if isinstance(tensor, Tensor) else type(tensor).__name__
                raise OrthoRegError(
                    f"task vector entry {name!r} of {_label(info)} is {kind}; expected a floating-point tensor"
                )
        self.tensors: dict[str, Tensor] = dict(tensors)
        self.info = info

    # ---- mapping protocol ---------------------------------------------------------------------------

    def keys(self) -> KeysView[str]:
        return self.tensors.keys()

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def __repr__(self) -> str:
        what = f"task={self.info.task!r}, mode={self.info.mode!r}, " if self.info else ""
        return f"TaskVector({what}{len(self)} tensors, {self.numel()} entries)"

    # ---- algebra ------------------------------------------------------------------------------------

    def check_same_keys(self, other: TaskVector) -> None:
        """Both vectors hold the same names with the same shapes, else an error naming the difference."""
        only_self, only_other = self.keys() - other.keys(), other.keys() - self.keys()
        if only_self or only_other:
            parts = []
            if only_self:
                parts.append(f"only in {_label(self.info)}: {describe_keys(only_self)}")
            if only_other:
                parts.append(f"only in {_label(other.info)}: {describe_keys(only_other)}")
            raise OrthoRegError("task vectors hold different keys; " + "; ".join(parts))
        shapes = [k for k in self.tensors if self.tensors[k].shape != other.tensors[k].shape]
        if shapes:
            k = sorted(shapes)[0]
            raise OrthoRegError(
                f"task vectors differ in shape at {len(shapes)} key(s), e.g. {k}: "
                f"{tuple(self.tensors[k].shape)} in {_label(self.info)}, "
                f"{tuple(other.tensors[k].shape)} in {_label(other.info)}"
            )

    def _binary(self, other: TaskVector, op: str) -> TaskVector:
        self.check_same_keys(other)
        combine = torch.add if op == "+" else torch.sub
        tensors = {k: combine(v, other.tensors[k]) for k, v in self.tensors.items()}
        task = ""
        if self.info is not None and other.info is not None:
            task = f"{self.info.task}{op}{_term(other.info.task) if op == '-' else other.info.task}"
        return TaskVector(tensors, combine_info([self.info, other.info], task))

    def __add__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self._binary(other, "+")

    def __radd__(self, other: object) -> TaskVector:
        if isinstance(other, numbers.Number) and other == 0:  # lets the builtin sum() start from 0
            return self
        return NotImplemented

    def __sub__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self._binary(other, "-")

    def _scaled(self, tensors: dict[str, Tensor], scalar: float) -> TaskVector:
        info = self.info and dataclasses.replace(
            self.info, task=scaled_name(scalar, self.info.task), source="", checksum="", meta={}
        )
        return TaskVector(tensors, info)

    def __neg__(self) -> TaskVector:
        return self._scaled({k: -v for k, v in self.tensors.items()}, -1)

    def __mul__(self, scalar: float) -> TaskVector:
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        scalar = float(scalar)
        return self._scaled({k: v * scalar for k, v in self.tensors.items()}, scalar)

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> TaskVector:
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        if scalar == 0:
            raise OrthoRegError(f"cannot divide {_label(self.info)} by zero")
        scalar = float(scalar)
        return self._scaled({k: v / scalar for k, v in self.tensors.items()}, 1 / scalar)

    def restrict(self, keys: Iterable[str]) -> TaskVector:
        """The sub-vector on ``keys`` (e.g. the attention matrices only); provenance kept."""
        keys = list(keys)
        unknown = [k for k in keys if k not in self.tensors]
        if unknown:
            raise OrthoRegError(f"{_label(self.info)} holds no key(s) {describe_keys(unknown)}")
        return TaskVector({k: self.tensors[k] for k in keys}, self.info)

    # ---- geometry -----------------------------------------------------------------------------------

    def dot(self, other: TaskVector) -> float:
        self.check_same_keys(other)
        total = torch.zeros((), dtype=torch.float64)
        for k, v in self.tensors.items():
            total += torch.sum(v.double() * other.tensors[k].to(v.device).double()).cpu()
        return float(total)

    def norm(self) -> float:
        """Global L2 norm over all tensors together."""
        total = torch.zeros((), dtype=torch.float64)
        for v in self.tensors.values():
            total += torch.sum(v.double().square()).cpu()
        return float(total.sqrt())

    def cosine(self, other: TaskVector) -> float:
        """Global cosine similarity (the paper's task-vector heat-map)."""
        norms = self.norm(), other.norm()
        for vector, n in zip((self, other), norms):
            if n == 0:
                raise OrthoRegError(f"cosine similarity is undefined: {_label(vector.info)} is zero")
        return self.dot(other) / (norms[0] * norms[1])

    # ---- use ----------------------------------------------------------------------------------------

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TaskVector:
        return TaskVector({k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}, self.info)

    def apply_to(self, state: Mapping[str, Tensor], alpha: float = 1.0) -> dict[str, Tensor]:
        """A new state dict: ``state`` with θ0 + α·τ at the keys of τ (other entries shared as they are),
        in θ0's dtype and on θ0's device, ready for ``load_state_dict``."""
        missing = self.keys() - state.keys()
        if missing:
            raise OrthoRegError(
                f"{_label(self.info)} does not fit the model: "
                f"its key(s) {describe_keys(missing)} are not in the state dict"
            )
        out = dict(state)
        for k, tau in self.tensors.items():
            theta0 = state[k]
            if theta0.shape != tau.shape:
                raise OrthoRegError(
                    f"{_label(self.info)} does not fit the model at {k}: "
                    f"shape {tuple(tau.shape)}, the model's is {tuple(theta0.shape)}"
                )
            out[k] = torch.add(theta0, tau.to(device=theta0.device, dtype=theta0.dtype), alpha=alpha)
        return out


def sum_vectors(vectors: Sequence[TaskVector]) -> TaskVector:
    """Σ τ_i, accumulated into one buffer per key (no temporaries per addition)."""
    if not vectors:
        raise OrthoRegError("sum_vectors needs at least one task vector")
    first = vectors[0]
    for other in vectors[1:]:
        first.check_same_keys(other)
    tensors = {}
    for k, v in first.tensors.items():
        dtype = v.dtype
        for other in vectors[1:]:
            dtype = torch.promote_types(dtype, other.tensors[k].dtype)
        acc = v.to(dtype=dtype, copy=True)
        for other in vectors[1:]:
            acc.add_(other.tensors[k].to(acc.device))
        tensors[k] = acc
    infos = [v.info for v in vectors]
    task = "+".join(i.task for i in infos) if all(i is not None for i in infos) else ""
    return TaskVector(tensors, combine_info(infos, task))


def cosine_matrix(vectors: Sequence[TaskVector]) -> Tensor:
    """[n, n] float64 matrix of pairwise cosine similarities (1 on the diagonal)."""
    n = len(vectors)
    norms = [v.norm() for v in vectors]
    for v, norm in zip(vectors, norms):
        if norm == 0:
            raise OrthoRegError(f"cosine similarity is undefined: {_label(v.info)} is zero")
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = vectors[i].dot(vectors[j]) / (norms[i] * norms[j])
    return out

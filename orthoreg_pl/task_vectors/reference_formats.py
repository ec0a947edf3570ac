"""Task vectors from the reference implementation's checkpoint formats (docs/import.md), in the key space
and dtype of this project's native runs: image-tower names (``visual.*``), float32.

* standard: two pickled ``ImageEncoder`` modules (read by :mod:`safe_unpickle`); τ = θ_ft − θ_zs for
  every image-tower parameter.
* linear (TTA): one state dict with ``…params.{i}`` and ``…params0.{i}``, ``i`` the position in the
  open_clip model's ``named_parameters()``; τ = params − params0 (tangent space).
* attention-only (``linear-2``): two state dicts ``model.<open_clip name>``; τ on the attention matrices.
* LoRA-ATT: one state dict with A [r, in], B [out, r] per attention matrix; τ = (alpha/r)·B·A, dense,
  under the base weight's name.

Names and shapes are checked against the architecture as open_clip builds it (on the meta device: no
weights are made or downloaded). Every tensor a vector is made of must be floating point (an integer
checkpoint would import as floats of another scale); the precision they came in is returned with the
vector (``source_dtypes``), so a half-precision source is noted in meta.json.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.task_vectors.safe_unpickle import PickledObject, module_state_dict, safe_load
from orthoreg_pl.task_vectors.vector import describe_keys
from orthoreg_pl.utils.safe_load import inspect_archive

DTYPE = torch.float32  # what native runs publish (models are built in fp32)
HALF_PRECISION = ("float16", "bfloat16")  # source dtypes accepted with a note in meta.json
_NOT_LOADED = object()
DEFAULT_LORA_ALPHA = 8.0  # the LoRA repository's README (its argparse default, 1.0, was not used)
_VISUAL = "visual."
_ATTENTION = ("attn.in_proj_weight", "attn.out_proj.weight")
_POSITIONAL = re.compile(r"^(?P<prefix>.*?)(?P<kind>params0?)\.(?P<index>[0-9]+)$")
_LORA = re.compile(r"^(?P<owner>.+)\.(?P<part>lora_A|lora_B)(?:\.default)?(?:\.weight)?$")


@dataclass(frozen=True)
class ArchLayout:
    """An open_clip architecture's parameters: names and shapes, in ``named_parameters()`` order."""

    arch: str
    full: tuple[tuple[str, tuple[int, ...]], ...]  # the whole CLIP model
    image_encoder: tuple[tuple[str, tuple[int, ...]], ...]  # without the text transformer (reference)

    @property
    def visual(self) -> dict[str, tuple[int, ...]]:
        return {n: s for n, s in self.full if n.startswith(_VISUAL)}

    @property
    def attention(self) -> list[str]:
        return [n for n in self.visual if n.startswith("visual.transformer.") and n.endswith(_ATTENTION)]


@functools.cache
def arch_layout(arch: str) -> ArchLayout:
    """Built on the meta device: shapes only, no weights, nothing downloaded."""
    import open_clip

    from orthoreg_pl.models.clip import check_architecture

    check_architecture(arch)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta")
    finally:
        logging.disable(previous)
    full = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    if hasattr(model, "transformer"):
        del model.transformer  # the reference's ImageEncoder drops the text transformer
    image_encoder = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return ArchLayout(arch, full, image_encoder)


# ---- reading files -------------------------------------------------------------------------------


def read_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], set[str] | None]:
    """(tensors, other plain entries, parameter names or None) of a reference checkpoint: a state dict
    read with ``weights_only=True``, else (a pickled module, or compressed records torch.load would
    inflate whole) with the restricted unpickler, which reads no more than the file declares. The
    zip directory is checked against the file first (utils/safe_load.py)."""
    if not path.is_file():
        raise OrthoRegError(f"checkpoint {path} does not exist")
    archive = inspect_archive(path, "checkpoint")
    obj: Any = _NOT_LOADED
    if not archive.compressed:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # weights_only refuses modules (and anything unusual): read it the restricted way
            obj = _NOT_LOADED
    if obj is _NOT_LOADED:
        obj = safe_load(path)
    if isinstance(obj, PickledObject):
        tensors, parameters = module_state_dict(obj, source=str(path))
        if not tensors:
            raise OrthoRegError(
                f"{path} holds a pickled {obj.qualname} without parameters; expected a module"
            )
        return tensors, {"pickled_class": obj.qualname}, parameters
    if not isinstance(obj, Mapping):
        raise OrthoRegError(f"{path} holds a {type(obj).__name__}; expected a state dict or a pickled module")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    extra = {str(k): v for k, v in obj.items() if isinstance(v, str | int | float | bool)}
    others = [str(k) for k, v in obj.items() if not isinstance(v, Tensor | str | int | float | bool)]
    if others or not tensors:
        what = f"entries that are no tensors ({describe_keys(others)})" if others else "no tensors"
        raise OrthoRegError(f"{path} holds {what}; expected a state dict")
    return tensors, extra, None


def source_dtypes(path: Path, tensors: Mapping[str, Tensor]) -> list[str]:
    """The dtypes of the tensors a vector is made of (``float16``, ...); an integer, boolean or
    complex one is refused: its values are not weights of a fine-tuned float model."""
    bad = {n: t.dtype for n, t in tensors.items() if not t.is_floating_point()}
    if bad:
        name, dtype = next(iter(sorted(bad.items())))
        raise OrthoRegError(
            f"{path}: tensor {name} is {str(dtype).removeprefix('torch.')} ({len(bad)} non-floating tensor(s)); "
            "expected floating-point weights (float32, float16 or bfloat16)"
        )
    return sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})


def _tower_prefix(keys: list[str], path: Path) -> str:
    """What precedes ``visual.`` in the file's keys (``model.``, ``image_encoder.model.``, or nothing)."""
    prefixes = set()
    for key in keys:
        at = 0 if key.startswith(_VISUAL) else key.find("." + _VISUAL) + 1
        if at > 0 or key.startswith(_VISUAL):
            prefixes.add(key[:at])
    if len(prefixes) != 1:
        raise OrthoRegError(
            f"{path}: cannot locate the image tower (keys like model.visual.conv1.weight); "
            f"prefixes before visual. found: {sorted(prefixes) or 'none'}"
        )
    return prefixes.pop()


def image_tower(tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """``visual.*`` tensors under open_clip names, whatever wraps the model (``model.``, ``image_encoder.model.``)."""
    prefix = _tower_prefix(list(tensors), path) + _VISUAL
    return {k[len(prefix) - len(_VISUAL) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_shapes(
    tensors: Mapping[str, Tensor], expected: Mapping[str, tuple], path: Path, arch: str
) -> None:
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise OrthoRegError(f"{path} lacks {describe_keys(missing)} of {arch}'s image tower")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise OrthoRegError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, {arch} expects {shape} (another backbone?)"
            )


def _delta(new: Tensor, old: Tensor) -> Tensor:
    return new.to(DTYPE) - old.to(DTYPE)


# ---- the four formats ----------------------------------------------------------------------------


def standard_vector(zeroshot: Path, finetuned: Path, layout: ArchLayout) -> tuple[dict[str, Tensor], dict]:
    """τ = θ_ft − θ_zs for every image-tower parameter (native ``standard`` runs train them all)."""
    states, dtypes = [], set()
    for path in (zeroshot, finetuned):
        tensors, _, parameters = read_state(path)
        visual = image_tower(tensors, path)
        if parameters is not None:  # a pickled module tells parameters from buffers
            cut = len(_tower_prefix(list(tensors), path))
            strangers = [p[cut:] for p in parameters if p[cut:] in visual and p[cut:] not in layout.visual]
            if strangers:
                raise OrthoRegError(
                    f"{path} has image-tower parameters {layout.arch} lacks: {describe_keys(strangers)}"
                )
        _check_shapes(visual, layout.visual, path, layout.arch)
        dtypes.update(source_dtypes(path, {n: visual[n] for n in layout.visual}))
        states.append(visual)
    zs, ft = states
    return {n: _delta(ft[n], zs[n]) for n in layout.visual}, {"source_dtypes": sorted(dtypes)}


def attention_vector(zeroshot: Path, finetuned: Path, layout: ArchLayout) -> tuple[dict[str, Tensor], dict]:
    """τ on the attention matrices; every other image-tower tensor must be unchanged (else the folder
    does not hold an attention-only run)."""
    zs, ft = (image_tower(read_state(p)[0], p) for p in (zeroshot, finetuned))
    attention = {n: layout.visual[n] for n in layout.attention}
    _check_shapes(zs, attention, zeroshot, layout.arch)
    _check_shapes(ft, attention, finetuned, layout.arch)
    dtypes = {
        *source_dtypes(zeroshot, {n: zs[n] for n in attention}),
        *source_dtypes(finetuned, {n: ft[n] for n in attention}),
    }
    changed = [
        n
        for n in layout.visual
        if n not in attention and n in zs and n in ft and not torch.equal(zs[n], ft[n])
    ]
    if changed:
        raise OrthoRegError(
            f"{finetuned} changes {describe_keys(changed)} beyond the attention matrices: not an attention-only run"
        )
    return {n: _delta(ft[n], zs[n]) for n in layout.attention}, {"source_dtypes": sorted(dtypes)}


def linear_vector(finetuned: Path, layout: ArchLayout) -> tuple[dict[str, Tensor], dict]:
    """τ = params − params0 of the image tower; position ``i`` names the i-th parameter of open_clip's
    CLIP (without the text transformer, as the reference's ImageEncoder had it)."""
    tensors, extra, _ = read_state(finetuned)
    found: dict[str, dict[int, Tensor]] = {"params": {}, "params0": {}}
    prefixes = set()
    for key, value in tensors.items():
        match = _POSITIONAL.match(key)
        if match:
            found[match["kind"]][int(match["index"])] = value
            prefixes.add(match["prefix"])
    params, params0 = found["params"], found["params0"]
    n = len(params)
    if not n or len(prefixes) != 1 or set(params) != set(range(n)) or set(params0) != set(range(n)):
        raise OrthoRegError(
            f"{finetuned} is not a linearized checkpoint: expected keys model.params.0…N-1 and model.params0.0…N-1 "
            f"(found {len(params)} params and {len(params0)} params0 entries, prefixes {sorted(prefixes)})"
        )
    orders = {len(layout.image_encoder): layout.image_encoder, len(layout.full): layout.full}
    if n not in orders:
        raise OrthoRegError(
            f"{finetuned} holds {n} positional parameters; {layout.arch} has {len(layout.image_encoder)} "
            f"(without the text transformer) or {len(layout.full)} (whole CLIP): another backbone?"
        )
    order = orders[n]
    for i, (name, shape) in enumerate(order):
        for kind, values in found.items():
            if tuple(values[i].shape) != shape:
                raise OrthoRegError(
                    f"{finetuned}: {kind}.{i} has shape {tuple(values[i].shape)}, but position {i} of {layout.arch} "
                    f"is {name} with shape {shape}"
                )
    used = [i for i, (name, _) in enumerate(order) if name.startswith(_VISUAL)]
    dtypes = source_dtypes(
        finetuned, {f"{kind}.{i}": values[i] for kind, values in found.items() for i in used}
    )
    vector = {order[i][0]: _delta(params[i], params0[i]) for i in used}
    return vector, {"positions": n, "model_name": extra.get("model_name"), "source_dtypes": dtypes}


def _number(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def lora_vector(
    finetuned: Path, layout: ArchLayout, alpha: float | None = None
) -> tuple[dict[str, Tensor], dict]:
    """Dense ΔW = (alpha/r)·B·A per adapted attention matrix; ``r`` from the factors' shapes, ``alpha``
    from the file when it holds one, else the given value, else 8 (the LoRA README)."""
    tensors, extra, _ = read_state(finetuned)
    entries = {**tensors, **extra}
    stored = next((_number(entries[k]) for k in ("lora_alpha", "alpha") if k in entries), None)
    if stored is not None and alpha is not None and stored != alpha:
        raise OrthoRegError(
            f"{finetuned} records LoRA alpha {stored:g}, but the import uses alpha {alpha:g} "
            f"(--lora-alpha, default {DEFAULT_LORA_ALPHA:g}); pass --lora-alpha {stored:g}"
        )
    alpha = stored if stored is not None else alpha if alpha is not None else DEFAULT_LORA_ALPHA
    visual = image_tower(tensors, finetuned)
    factors: dict[str, dict[str, Tensor]] = {}
    for key, value in visual.items():
        if not {"lora_A", "lora_B"} & set(key.split(".")):
            continue
        match = _LORA.match(key)
        if not match:
            raise OrthoRegError(
                f"{finetuned}: cannot read LoRA key {key!r}; expected <module>.lora_A / .lora_B"
            )
        factors.setdefault(match["owner"], {})[match["part"]] = value
    if not factors:
        raise OrthoRegError(f"{finetuned} holds no LoRA factors (keys ending in lora_A / lora_B)")
    vector: dict[str, Tensor] = {}
    ranks, dtypes = set(), set()
    for owner, parts in sorted(factors.items()):
        name = _lora_target(owner, finetuned)
        if {"lora_A", "lora_B"} - parts.keys():
            raise OrthoRegError(f"{finetuned}: {owner} has {sorted(parts)} but needs both lora_A and lora_B")
        dtypes.update(source_dtypes(finetuned, {f"{owner}.{part}": t for part, t in parts.items()}))
        A, B = parts["lora_A"].to(DTYPE), parts["lora_B"].to(DTYPE)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise OrthoRegError(
                f"{finetuned}: {owner} has factors A {tuple(A.shape)}, B {tuple(B.shape)}; expected A [r, in], B [out, r]"
            )
        expected = layout.visual.get(name)
        if expected is None or (B.shape[0], A.shape[1]) != expected:
            raise OrthoRegError(
                f"{finetuned}: {owner} adapts a [{B.shape[0]}, {A.shape[1]}] matrix {name}; "
                f"{layout.arch} has {name} with shape {expected}"
            )
        if name in vector:
            raise OrthoRegError(f"{finetuned}: two LoRA modules adapt {name}")
        rank = A.shape[0]
        ranks.add(rank)
        vector[name] = (alpha / rank) * (B @ A)
    missing = [n for n in layout.attention if n not in vector]
    if missing:
        raise OrthoRegError(f"{finetuned} has no LoRA factors for {describe_keys(missing)}")
    rank = ranks.pop() if len(ranks) == 1 else sorted(ranks)
    details = {"rank": rank, "alpha": alpha, "source_dtypes": sorted(dtypes)}
    return {n: vector[n] for n in layout.attention}, details


def _lora_target(owner: str, path: Path) -> str:
    """The base weight a LoRA module adapts: the fused ``attn.in_proj_weight`` (the reference wraps it
    as ``attn.lora_in_proj_layer``) or ``attn.out_proj.weight``."""
    head, _, last = owner.rpartition(".")
    if head.endswith("attn") and "in_proj" in last:
        return f"{head}.in_proj_weight"
    if head.endswith("attn") and "out_proj" in last:
        return f"{head}.out_proj.weight"
    raise OrthoRegError(
        f"{path}: LoRA module {owner} is neither an attention in_proj nor out_proj wrapper "
        "(expected …attn.lora_in_proj_layer or …attn.out_proj)"
    )


__all__ = [
    "DEFAULT_LORA_ALPHA",
    "HALF_PRECISION",
    "ArchLayout",
    "arch_layout",
    "attention_vector",
    "image_tower",
    "linear_vector",
    "lora_vector",
    "read_state",
    "source_dtypes",
    "standard_vector",
]

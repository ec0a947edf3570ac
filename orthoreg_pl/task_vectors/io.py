"""Task vectors on disk: safetensors (loading never executes code), written atomically; read back
with provenance from a run folder, or computed from a Lightning checkpoint (``weights_only=True``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.folder import FINISHED, META_FILE, read_meta, run_status
from orthoreg_pl.runs.identity import differing, same_value
from orthoreg_pl.task_vectors.compat import mode_family
from orthoreg_pl.task_vectors.vector import TaskVector, TaskVectorInfo, describe_keys
from orthoreg_pl.utils.io import atomic_path, sha256_file
from orthoreg_pl.utils.safe_load import torch_load
from orthoreg_pl.utils.tensors import check_finite

TASK_VECTOR_FILE = "task_vector.safetensors"


def save_task_vector(path: str | Path, tensors: dict[str, Tensor], metadata: dict | None = None) -> None:
    """Write name → tensor; ``metadata`` (JSON-able) travels in the safetensors header."""
    header = {"orthoreg": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(path, durable=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)


def load_task_vector(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise OrthoRegError(f"task vector file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise OrthoRegError(f"task vector file {path} is not a readable safetensors file ({err})") from err


# ---- task vectors with provenance: run folders, Lightning checkpoints ------------------------------

_INFO_FIELDS = ("arch", "pretrained", "mode", "task")
_MODEL_PREFIX = "model."  # FineTuneModule stores the classifier as self.model
_LORA_KEY = re.compile(
    r"^(?P<owner>.+)\.parametrizations\.(?P<attr>[^.]+)\.(?P<part>original|0\.lora_A|0\.lora_B)$"
)
_ATTENTION_WEIGHTS = ("attn.in_proj_weight", "attn.out_proj.weight")


def _read_run_meta(run_dir: Path) -> dict:
    if not (run_dir / META_FILE).is_file():
        raise OrthoRegError(f"run folder {run_dir} has no {META_FILE} (not a run folder)")
    return read_meta(run_dir)


def _space(meta: dict, meta_path: Path) -> str:
    """meta's ``task_vector_space``, or the one its mode implies (runs written before the field)."""
    if meta.get("task_vector_space"):
        return meta["task_vector_space"]
    try:
        return "tangent" if mode_family(meta["mode"]) == "linear" else "weight"
    except OrthoRegError as err:
        raise OrthoRegError(f"{meta_path}: {err}") from None


def load_run(run_dir: str | Path) -> TaskVector:
    """The task vector of a finished run folder, with provenance from its meta.json and the
    file's sha256; the safetensors header (written with the vector) must agree with meta.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OrthoRegError(f"run folder {run_dir} does not exist")
    meta = _read_run_meta(run_dir)
    if run_status(meta) != FINISHED:
        raise OrthoRegError(
            f"run folder {run_dir} holds an unfinished run (status {run_status(meta)}: "
            f"{meta.get('status_reason') or 'no reason recorded'}); only finished runs are merged"
        )
    missing = [f for f in _INFO_FIELDS if not isinstance(meta.get(f), str)]
    if missing:
        raise OrthoRegError(f"run metadata {run_dir / META_FILE} lacks field(s) {', '.join(missing)}")
    path = run_dir / TASK_VECTOR_FILE
    checksum = _verified_checksum(path, meta, run_dir / META_FILE)
    tensors, header = _read_with_header(path)
    check_finite(tensors, path)
    for name in _INFO_FIELDS:
        if name in header and header[name] != meta[name]:
            raise OrthoRegError(
                f"{path} was written for {name}={header[name]!r} but {run_dir / META_FILE} says "
                f"{meta[name]!r}: the folder mixes files of two runs"
            )
    info = TaskVectorInfo(
        arch=meta["arch"],
        pretrained=meta["pretrained"],
        mode=meta["mode"],
        space=_space(meta, run_dir / META_FILE),
        task=meta["task"],
        source=str(path),
        checksum=checksum,
        meta=meta,
    )
    return TaskVector(tensors, info)


def _verified_checksum(path: Path, meta: dict, meta_path: Path) -> str:
    """sha256 of the task vector file, equal to the one meta.json recorded when the run finished (runs
    written before the field have none to compare: their checksum is only reported)."""
    if not path.is_file():
        raise OrthoRegError(f"task vector file {path} does not exist")
    checksum = sha256_file(path)
    recorded = meta.get("task_vector_sha256")
    if recorded is not None and recorded != checksum:
        raise OrthoRegError(
            f"task vector file {path} has sha256 {checksum[:12]}…, but {meta_path} recorded "
            f"{str(recorded)[:12]}… when the run finished: the file changed since; re-run the training "
            "run (or restore the file)"
        )
    return checksum


def _read_with_header(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and the ``orthoreg`` metadata of a safetensors file, errors naming the file."""
    if not path.is_file():
        raise OrthoRegError(f"task vector file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise OrthoRegError(f"task vector file {path} is not a readable safetensors file ({err})") from err
    try:
        extra = json.loads(header.get("orthoreg", "{}"))
    except json.JSONDecodeError:
        extra = {}
    return tensors, extra if isinstance(extra, dict) else {}


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    """(state dict without the ``model.`` prefix, hyper-parameters) of a Lightning checkpoint or a
    plain state dict, read with ``weights_only=True`` (never executes code from the file)."""
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise OrthoRegError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
    state = ckpt.get("state_dict", ckpt)
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(state, dict):
        raise OrthoRegError(f"checkpoint {path}: its state_dict is a {type(state).__name__}")
    state = {k.removeprefix(_MODEL_PREFIX): v for k, v in state.items() if isinstance(v, Tensor)}
    return state, dict(hparams) if isinstance(hparams, dict) else {}


def _lora_deltas(
    path: Path, state: dict[str, Tensor], hparams: dict, theta0: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Dense ΔW = (alpha/rank)·B·A under the base weight's name, from LoRA parametrization keys."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match:
            parts.setdefault(f"{match['owner']}.{match['attr']}", {})[match["part"]] = value
    if not parts:
        return {}
    if "rank" not in hparams or "alpha" not in hparams:
        raise OrthoRegError(f"LoRA checkpoint {path} has no rank/alpha in its hyper_parameters")
    rank, alpha = int(hparams["rank"]), float(hparams["alpha"])
    deltas = {}
    for name, p in sorted(parts.items()):
        if {"0.lora_A", "0.lora_B"} - p.keys():
            raise OrthoRegError(f"LoRA checkpoint {path} lacks lora_A or lora_B for {name}")
        A, B = p["0.lora_A"], p["0.lora_B"]
        if A.shape[0] != rank or B.shape[1] != rank:
            raise OrthoRegError(
                f"LoRA checkpoint {path}: {name} has factors {tuple(A.shape)}, {tuple(B.shape)} "
                f"but hyper_parameters say rank={rank}"
            )
        base = p.get("original")
        if name in theta0 and base is not None and not torch.allclose(base, theta0[name].to(base)):
            raise OrthoRegError(
                f"LoRA checkpoint {path}: the frozen base weight {name} differs from the given θ0 "
                "(other pretrained weights?)"
            )
        deltas[name] = (alpha / rank) * (B @ A)
    return deltas


def load_checkpoint_vector(
    ckpt_path: str | Path, theta0: Mapping[str, Tensor], info: TaskVectorInfo
) -> TaskVector:
    """τ = θ − θ0 from a Lightning checkpoint of a FineTuneModule, under image-tower names
    (``visual.*``). A LoRA checkpoint gives the dense ΔW of each adapted matrix; an attention-only
    one its attention matrices; other modes every floating-point tensor present in both."""
    path = Path(ckpt_path)
    state, hparams = _read_checkpoint(path)
    family = mode_family(info.mode)
    tensors = _lora_deltas(path, state, hparams, theta0)
    if (family == "lora_attn") != bool(tensors):
        found = "LoRA factors" if tensors else "no LoRA factors"
        raise OrthoRegError(
            f"checkpoint {path} holds {found} but the task vector is declared mode={info.mode}"
        )
    if not tensors:
        common = [k for k, v in state.items() if k in theta0 and v.is_floating_point()]
        if family == "attn":
            common = [
                k for k in common if k.startswith("visual.transformer.") and k.endswith(_ATTENTION_WEIGHTS)
            ]
        for k in common:
            if state[k].shape != theta0[k].shape:
                raise OrthoRegError(
                    f"checkpoint {path}: {k} has shape {tuple(state[k].shape)}, θ0 has {tuple(theta0[k].shape)}"
                )
        tensors = {k: state[k].to(dtype=theta0[k].dtype) - theta0[k].detach().cpu() for k in common}
    missing = [k for k in tensors if k not in theta0]
    if not tensors or missing:
        what = f"names θ0 lacks ({describe_keys(missing)})" if missing else "none of θ0's keys"
        raise OrthoRegError(
            f"checkpoint {path} holds {what}; θ0 keys look like {describe_keys(list(theta0)[:3])}"
        )
    source = info.source or str(path)
    return TaskVector(tensors, dataclasses.replace(info, source=source, checksum=sha256_file(path)))


def finished_runs(
    runs_dir: str | Path,
    *,
    arch: str | None = None,
    mode: str | None = None,
    lam: float | None = None,
    tasks: Iterable[str] | None = None,
    seed: int | None = None,
    settings: Mapping[str, object] | None = None,
) -> dict[str, dict[Path, dict]]:
    """task -> {run folder: meta.json} of every finished run below ``runs_dir`` matching the filters.
    ``settings`` filters on the runs' identity settings (``{"optim.lr": 3e-5}``); runs written before
    identities existed never match such a filter."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise OrthoRegError(f"runs folder {runs_dir} does not exist")
    wanted = None if tasks is None else set(tasks)
    found: dict[str, dict[Path, dict]] = {}
    for meta_path in sorted(runs_dir.rglob(META_FILE)):
        if any(part.startswith(".") for part in meta_path.relative_to(runs_dir).parts):
            continue  # hidden: a folder being staged (import_reference) or moved, not a run yet
        meta = _read_run_meta(meta_path.parent)
        if run_status(meta) != FINISHED:
            continue
        missing = [f for f in _INFO_FIELDS if not isinstance(meta.get(f), str)]
        if missing:  # skipping it would report "no finished run for task X", hiding the broken file
            raise OrthoRegError(
                f"run metadata {meta_path} lacks field(s) {', '.join(missing)}: repair or remove that run folder"
            )
        if arch is not None and meta.get("arch") != arch:
            continue
        if mode is not None and meta.get("mode") != mode:
            continue
        if seed is not None and meta.get("seed") != seed:
            continue
        if lam is not None and not _same_float((meta.get("ortho") or {}).get("lam", 0.0), lam):
            continue
        run_settings = identity_settings_of(meta)
        if settings and any(
            k not in run_settings or not same_value(run_settings[k], v) for k, v in settings.items()
        ):
            continue
        if wanted is not None and meta.get("task") not in wanted:
            continue
        found.setdefault(str(meta.get("task")), {})[meta_path.parent] = meta
    return found


def identity_settings_of(meta: dict) -> dict:
    """The identity settings a run recorded (empty for runs written before identities existed)."""
    return (meta.get("identity") or {}).get("settings") or {}


def find_runs(
    runs_dir: str | Path,
    *,
    arch: str | None = None,
    mode: str | None = None,
    lam: float | None = None,
    tasks: Iterable[str] | None = None,
    seed: int | None = None,
    settings: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """task → run folder of the finished runs below ``runs_dir`` matching the filters (exactly one
    per task, else an error naming the candidates and the settings they differ in); ordered as
    ``tasks`` or by task name (:func:`finished_runs` for the filters)."""
    wanted = None if tasks is None else list(tasks)
    found = finished_runs(runs_dir, arch=arch, mode=mode, lam=lam, tasks=wanted, seed=seed, settings=settings)
    given = (("arch", arch), ("mode", mode), ("lam", lam), ("seed", seed), *(settings or {}).items())
    filters = ", ".join(f"{k}={v}" for k, v in given if v is not None)
    where = f"below {runs_dir}" + (f" with {filters}" if filters else "")
    if wanted is not None:
        absent = [t for t in wanted if t not in found]
        if absent:
            have = sorted(found) or ["none"]
            raise OrthoRegError(
                f"no finished run {where} for task(s) {', '.join(absent)} (found: {', '.join(have)})"
            )
    elif not found:
        raise OrthoRegError(f"no finished run {where}")
    several = {t: runs for t, runs in found.items() if len(runs) > 1}
    if several:
        t, runs = next(iter(sorted(several.items())))
        differ = differing([identity_settings_of(meta) for meta in runs.values()])
        how = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in differ.items()) or "no recorded setting"
        example = next(iter(differ), "optim.lr")
        raise OrthoRegError(
            f"several finished runs {where} for task {t}: {', '.join(map(str, runs))}; they differ in "
            f"{how}. Choose with that setting on the command line (e.g. {example}=...)"
        )
    order = wanted if wanted is not None else sorted(found)
    return {t: next(iter(found[t])) for t in order}


def _same_float(value: object, target: float) -> bool:
    try:
        return math.isclose(float(value), float(target), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False

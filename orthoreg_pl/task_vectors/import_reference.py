"""Import the paper authors' released checkpoints as this project's run folders.

``python -m orthoreg_pl.task_vectors.import_reference --src checkpoints_1993/standard_1e-05_ViT-B-32
--out reference_runs`` turns every ``{Dataset}Val/`` folder of a reference mode folder into a finished
run folder (task_vector.safetensors + meta.json, as ``training/fit.py`` publishes them), so ``merge.py
paths.runs_dir=reference_runs`` (or ``source=reference``) merges the authors' task vectors like
native ones. Nothing from the files is executed (safe_unpickle.py). An import is all or nothing: the
run folders are built in a staging folder inside ``--out`` and moved into place once every task
converted; a folder that already holds the same import (same files, same settings) is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from torch import Tensor

from orthoreg_pl.config.lam import format_lambda
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.folder import FINISHED, META_FILE, now, read_meta, run_status, start_meta
from orthoreg_pl.runs.identity import identity_hash
from orthoreg_pl.runs.lock import RunLock
from orthoreg_pl.task_vectors.compat import mode_family
from orthoreg_pl.task_vectors.publish import check_publishable, publish_run
from orthoreg_pl.task_vectors.reference_formats import (
    DEFAULT_LORA_ALPHA,
    HALF_PRECISION,
    ArchLayout,
    arch_layout,
    attention_vector,
    linear_vector,
    lora_vector,
    standard_vector,
)
from orthoreg_pl.task_vectors.reference_names import (
    ModeFolder,
    is_task_folder,
    parse_mode_folder,
    parse_seed_folder,
    parse_task_folder,
)
from orthoreg_pl.utils.io import STAGING_PREFIX, check_writable, clean_leftovers, sha256_file

SOURCE = "reference"  # meta["identity"]["settings"]["source"] of an imported run
NORM, GRAM = "fro", "min_side"  # the reference code's penalty form (docs/method.md §2)
_FORMATS = {
    "standard": "pickled ImageEncoder modules",
    "linear": "positional state dict (params / params0)",
    "attn": "state dicts (attention matrices)",
    "lora_attn": "LoRA state dict",
}


def default_out() -> Path:
    """Where ``configs/source/reference.yaml`` looks: ``${paths.root_dir}/reference_runs``."""
    return Path(os.environ.get("ORTHOREG_ROOT", ".")) / "reference_runs"


@dataclass(frozen=True)
class TaskImport:
    """One task folder to import, with everything that decides its run folder."""

    task: str
    task_dir: Path
    files: dict[str, Path]  # role (zeroshot, finetuned) → checkpoint
    settings: dict
    tag: str  # as native runs name themselves: <arch>/<mode tag>/<task>/seed<seed>
    run_dir: Path  # final place below --out

    @property
    def identity(self) -> dict:
        return {"tag": self.tag, "hash": identity_hash(self.settings), "settings": self.settings}


@dataclass(frozen=True)
class Outcome:
    task: str
    run_dir: Path
    skipped: bool
    note: str | None = None  # e.g. the half precision the checkpoints came in


# ---- what the source folder says ----------------------------------------------------------------


def _pretrained(arch: str, pretrained: str | None, init_seed: int) -> str:
    """meta's ``pretrained``: as ``pretrained_identity`` gives it for a model built from ``pretrained``."""
    import open_clip

    from orthoreg_pl.models.clip import pretrained_identity

    if pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        if not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(arch) or ["none"]
            raise OrthoRegError(
                f"--pretrained {pretrained!r} is neither an open_clip tag of {arch} ({', '.join(tags)}) nor a "
                "weights file; use null for a random init"
            )
    return pretrained_identity(pretrained, init_seed)


def _accuracies(path: Path) -> dict[str, float]:
    """A reference accuracy JSON: dataset name → top-1 fraction in [0, 1]."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OrthoRegError(f"cannot read accuracy file {path}: {err}") from err
    if not isinstance(data, dict):
        raise OrthoRegError(f"accuracy file {path} is not a JSON object of dataset → accuracy")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise OrthoRegError(
                f"accuracy file {path}: {key} is {value!r}; expected a top-1 fraction in [0, 1]"
            )
    return {str(k): float(v) for k, v in data.items()}


def _split_accuracy(table: dict[str, float] | None, task: str) -> dict | None:
    """``{"val": table[XVal], "test": table[X]}`` as native runs record it; None when the table lacks both."""
    if not table or (task not in table and f"{task}Val" not in table):
        return None
    return {"val": table.get(f"{task}Val"), "test": table.get(task)}


def _roles(folder: ModeFolder) -> dict[str, str]:
    """Checkpoints a mode needs: the linear and LoRA files hold θ0 (params0, frozen base) themselves."""
    needed = {"finetuned": folder.finetuned_file}
    if mode_family(folder.mode) in ("standard", "attn"):
        needed = {"zeroshot": folder.zeroshot_file, **needed}
    return needed


def _settings(
    folder: ModeFolder, task: str, seed: int, pretrained: str | None, init_seed: int, alpha
) -> dict:
    """Identity settings under the keys native runs use, so ``find_runs(settings={"optim.lr": ...})`` selects."""
    settings = {
        "dataset.name": task,
        "mode.name": folder.mode,
        "model.arch": folder.arch,
        "model.pretrained": pretrained,
        "model.init_seed": init_seed,
        "optim.lr": folder.lr,
        "seed": seed,
        "source": SOURCE,
    }
    if folder.penalized:
        settings.update({"ortho.lam": folder.lam, "ortho.norm": NORM, "ortho.gram": GRAM})
    if mode_family(folder.mode) == "lora_attn":
        settings["mode.module.alpha"] = alpha
    return dict(sorted(settings.items()))


def plan(
    src: Path,
    out: Path,
    *,
    pretrained: str | None = "openai",
    init_seed: int = 0,
    seed: int | None = None,
    lora_alpha: float | None = None,
) -> tuple[ModeFolder, list[TaskImport]]:
    """Parse and check everything before anything is written: names, files, architecture, θ0."""
    src = Path(src).resolve()
    if not src.is_dir():
        raise OrthoRegError(f"--src {src} is not a folder; expected checkpoints_{{seed}}/<mode folder>")
    folder = parse_mode_folder(src.name)
    seed = parse_seed_folder(src.parent.name) if seed is None else int(seed)
    arch_layout(folder.arch)  # the architecture exists in open_clip (or the project)
    _pretrained(folder.arch, pretrained, init_seed)
    alpha = lora_alpha if lora_alpha is not None else DEFAULT_LORA_ALPHA
    task_dirs = sorted(p for p in src.iterdir() if p.is_dir() and is_task_folder(p.name))
    if not task_dirs:
        raise OrthoRegError(f"--src {src} holds no task folders ({{Dataset}}Val/, e.g. CarsVal/)")
    tag = f"{folder.mode}_lam{format_lambda(folder.lam)}" if folder.penalized else folder.mode
    imports = []
    for task_dir in task_dirs:
        task = parse_task_folder(task_dir.name)
        files = {role: task_dir / name for role, name in _roles(folder).items()}
        missing = [p.name for p in files.values() if not p.is_file()]
        if missing:
            raise OrthoRegError(
                f"task folder {task_dir} lacks {', '.join(missing)} (mode {folder.reference_mode})"
            )
        settings = _settings(folder, task, seed, pretrained, init_seed, alpha)
        name = f"{folder.arch}/{tag}/{task}/seed{seed}"
        run_dir = out / f"{name}-{identity_hash(settings)}"
        imports.append(TaskImport(task, task_dir, files, settings, name, run_dir))
    return folder, imports


# ---- converting one task ------------------------------------------------------------------------


def task_vector(
    folder: ModeFolder, item: TaskImport, layout: ArchLayout
) -> tuple[dict[str, Tensor], dict, list[str]]:
    """The task vector of one task folder in the native key space, format details for provenance, and
    the dtypes its checkpoints held."""
    family = mode_family(folder.mode)
    files = item.files
    if family == "standard":
        tensors, details = standard_vector(files["zeroshot"], files["finetuned"], layout)
    elif family == "attn":
        tensors, details = attention_vector(files["zeroshot"], files["finetuned"], layout)
    elif family == "linear":
        tensors, details = linear_vector(files["finetuned"], layout)
    else:
        tensors, details = lora_vector(files["finetuned"], layout, item.settings["mode.module.alpha"])
    dtypes = details.pop("source_dtypes")
    return tensors, details, dtypes


def precision_fields(dtypes: list[str]) -> dict:
    """meta.json's record of the precision the checkpoints came in; half precision gets a note, since
    τ then carries its rounding (about 3 significant digits) although it is stored as float32."""
    fields: dict = {"precision": dtypes[0] if len(dtypes) == 1 else dtypes}
    half = [d for d in dtypes if d in HALF_PRECISION]
    if half:
        fields["precision_note"] = (
            f"the checkpoints hold {' and '.join(half)} weights: the task vector was computed in float32 "
            "from them and carries their rounding"
        )
    return fields


def _nest(settings: dict) -> dict:
    tree: dict = {}
    for key, value in settings.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _existing(item: TaskImport, checksums: dict[str, str]) -> bool:
    """True when ``item.run_dir`` already holds this import; an error when it holds something else."""
    if not item.run_dir.exists():
        return False
    meta = read_meta(item.run_dir) if (item.run_dir / META_FILE).is_file() else {}
    same = (
        run_status(meta) == FINISHED
        and (meta.get("identity") or {}).get("hash") == identity_hash(item.settings)
        and (meta.get("imported_from") or {}).get("files") == checksums
    )
    if not same:
        raise OrthoRegError(
            f"run folder {item.run_dir} exists but does not hold this import of {item.task_dir} (other files "
            "or an unfinished folder); delete it or choose another --out"
        )
    return True


def write_run(
    stage: Path,
    folder: ModeFolder,
    item: TaskImport,
    checksums: dict[str, str],
    accuracy: dict,
    accuracy_files: dict[str, str],
) -> tuple[Path, str | None]:
    """Convert one task folder into a finished run folder under ``stage``; returns it and the
    precision note meta.json records (None for float32 or float64 checkpoints)."""
    layout = arch_layout(folder.arch)
    tensors, details, dtypes = task_vector(folder, item, layout)
    check_publishable(tensors, f"{item.task_dir} ({', '.join(p.name for p in item.files.values())})")
    settings = item.settings
    run_dir = stage / item.run_dir.name
    run_dir.mkdir()
    fields = {
        "task": item.task,
        "mode": folder.mode,
        "task_vector_space": "tangent" if mode_family(folder.mode) == "linear" else "weight",
        "arch": folder.arch,
        "pretrained": _pretrained(folder.arch, settings["model.pretrained"], settings["model.init_seed"]),
        "ortho": {"lam": folder.lam, "norm": NORM, "gram": GRAM},
        "seed": settings["seed"],
        "accuracy": accuracy,
        "imported_from": {
            "source": SOURCE,
            "folder": str(item.task_dir.parent),
            "task_folder": item.task_dir.name,
            "reference_mode": folder.reference_mode,
            "format": _FORMATS[mode_family(folder.mode)],
            "files": checksums,
            "accuracy_files": accuracy_files,
            **precision_fields(dtypes),
            **({"details": details} if details else {}),
        },
    }
    if mode_family(folder.mode) == "lora_attn":
        fields["lora"] = details
    meta = start_meta(item.identity, fields)
    config = f"# imported from {item.task_dir} (reference implementation)\n" + OmegaConf.to_yaml(
        OmegaConf.create(_nest(settings))
    )
    summary = {"tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values())}
    publish_run(run_dir, tensors, meta, config, imported_at=now(), task_vector=summary)
    return run_dir, fields["imported_from"].get("precision_note")


# ---- the whole mode folder ----------------------------------------------------------------------


def import_mode_folder(
    src: str | Path,
    out: str | Path,
    *,
    pretrained: str | None = "openai",
    init_seed: int = 0,
    seed: int | None = None,
    lora_alpha: float | None = None,
) -> list[Outcome]:
    """Import every task folder of ``src`` below ``out``; all or nothing (see the module docstring)."""
    out = Path(out).resolve()
    folder, imports = plan(
        Path(src), out, pretrained=pretrained, init_seed=init_seed, seed=seed, lora_alpha=lora_alpha
    )
    src = imports[0].task_dir.parent
    tables, accuracy_files = {}, {}
    for kind, path in (
        ("finetuned", src / folder.accuracy_file),
        ("zeroshot", src.parent / folder.arch / "zeroshot_accuracies.json"),
    ):
        if path.is_file():
            tables[kind] = _accuracies(path)
            accuracy_files[os.path.relpath(path, src)] = sha256_file(path)
    check_writable(out, "--out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with RunLock(out):  # one import at a time: the leftovers of a killed one are removed safely
            clean_leftovers(out)
            outcomes = _convert_all(out, folder, imports, tables, accuracy_files)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    order = {item.task: i for i, item in enumerate(imports)}
    return sorted(outcomes, key=lambda o: order[o.task])


def _convert_all(
    out: Path, folder: ModeFolder, imports: list[TaskImport], tables: dict, accuracy_files: dict
) -> list[Outcome]:
    """Convert every task not yet imported into a staging folder, then move the run folders into place."""
    stage: Path | None = None
    staged: list[tuple[TaskImport, Path, str | None]] = []
    outcomes: list[Outcome] = []
    try:
        for item in imports:
            checksums = {p.name: sha256_file(p) for p in item.files.values()}
            if _existing(item, checksums):
                outcomes.append(Outcome(item.task, item.run_dir, skipped=True))
                continue
            if stage is None:
                stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}import-", dir=out))
            accuracy = {
                kind: _split_accuracy(tables.get(kind), item.task) for kind in ("zeroshot", "finetuned")
            }
            staged.append((item, *write_run(stage, folder, item, checksums, accuracy, accuracy_files)))
        for item, run_dir, note in staged:
            item.run_dir.parent.mkdir(parents=True, exist_ok=True)
            os.rename(run_dir, item.run_dir)  # atomic: a run folder appears whole or not at all
            outcomes.append(Outcome(item.task, item.run_dir, skipped=False, note=note))
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orthoreg_pl.task_vectors.import_reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--src", type=Path, required=True, help="a reference mode folder: checkpoints_SEED/<mode>_..."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="runs folder to write (default: $ORTHOREG_ROOT/reference_runs)"
    )
    parser.add_argument(
        "--pretrained",
        default="openai",
        help="θ0 the authors fine-tuned from, as model.pretrained takes it: an open_clip tag (default openai), "
        "a weights file, or null (random init from --init-seed)",
    )
    parser.add_argument(
        "--init-seed", type=int, default=0, help="model.init_seed (only with --pretrained null)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the runs (default: from checkpoints_SEED)"
    )
    parser.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        help=f"LoRA alpha when the file has none (default {DEFAULT_LORA_ALPHA:g})",
    )
    args = parser.parse_args(argv)
    pretrained = None if str(args.pretrained).lower() in ("null", "none") else args.pretrained
    try:
        outcomes = import_mode_folder(
            args.src,
            args.out or default_out(),
            pretrained=pretrained,
            init_seed=args.init_seed,
            seed=args.seed,
            lora_alpha=args.lora_alpha,
        )
    except (OrthoRegError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        verb = "skipped (already imported)" if outcome.skipped else "imported"
        note = f" (note: {outcome.note}; recorded in meta.json)" if outcome.note else ""
        print(f"{verb} {outcome.task}: {outcome.run_dir}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

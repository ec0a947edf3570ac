"""Which fine-tuned runs a merge uses, and the checks that they may be merged and scored together.

A merge experiment names the training experiment whose runs it scores (``train_experiment``): for
each task the merge composes that experiment's training config with its own mode, λ and seed, the
training settings named on its command line (``optim.lr=3e-5``) and ``train_overrides`` (settings
the runs were trained with besides the experiment, e.g. ``["trainer.max_steps=100"]``), and takes
the run of exactly that identity. Runs with any other setting in the same folder are never chosen,
so a stray experiment cannot make a documented command ambiguous. Without ``train_experiment`` the
runs are filtered by model, mode, λ, seed and the named settings, and must be one per task.

The vectors must then fit together, come from the θ0 the merge builds, and have been split as the
merge evaluates.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.config.groups import CONFIG_DIR, dataset_of_task
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.identity import (
    MERGE_SELECTABLE,
    differing,
    identity_hash,
    identity_settings,
    same_value,
)
from orthoreg_pl.task_vectors import (
    TaskVector,
    check_compatible,
    finished_runs,
    identity_settings_of,
    load_run,
)

SHARED_GROUPS = ("model", "ortho", "optim", "data")  # groups merge.py composes as train.py does
UNREPEATABLE = ("model.pretrained",)  # recorded as a file's name + hash: not a value to type again


@dataclass(frozen=True)
class Wanted:
    """The run a merge wants for one task: the training command and the identity it gives."""

    command: str
    settings: dict
    hash: str


def _job_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def named_training_overrides() -> list[str]:
    """Training settings named on merge.py's command line (``optim.lr=3e-5``, ``model=vit_b16``)."""
    return [
        o
        for o in _job_overrides()
        if _key(o) != "ortho.lam" and (_key(o).startswith(MERGE_SELECTABLE) or _key(o) in SHARED_GROUPS)
    ]


def _parsed(overrides: Sequence[str], what: str) -> dict[str, Any]:
    parser = OverridesParser.create()
    out = {}
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            raise OrthoRegError(f"{what} has {text!r}; expected key=value overrides of train.py") from None
        out[override.key_or_group] = override.value()
    return out


def selected_settings(cfg: DictConfig) -> dict:
    """Training settings the merge selects by, as values: those named on its command line and those of
    ``train_overrides`` (recorded in the report's identity as ``selected_by``)."""
    selected = {}
    for key in _parsed(named_training_overrides(), "merge.py's command line"):
        if key in SHARED_GROUPS:
            continue  # a group choice (model=vit_b16): it composes the merge's own config
        node = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(node):
            selected.update(
                {f"{key}.{k}": v for k, v in _flat(OmegaConf.to_container(node, resolve=True)).items()}
            )
        else:
            selected[key] = node
    selected.update(_parsed([str(o) for o in cfg.get("train_overrides") or []], "train_overrides"))
    return selected


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _compose_train(overrides: list[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside merge.py's Hydra app
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def wanted_run(cfg: DictConfig, task: str, mode: str, lam: float, extra: Sequence[str]) -> Wanted:
    """The identity ``train.py`` gives the run of ``task`` in ``cfg.train_experiment``."""
    dataset = dataset_of_task().get(task)
    if dataset is None:
        raise OrthoRegError(
            f"task {task} has no dataset config (configs/dataset/*.yaml), so it cannot be trained"
        )
    overrides = [f"experiment={cfg.train_experiment}", f"dataset={dataset}", f"mode={mode}"]
    overrides += [f"ortho.lam={lam!r}"] if lam else []
    overrides += [f"seed={cfg.seed}", *extra, *[str(o) for o in cfg.get("train_overrides") or []]]
    try:
        train_cfg = _compose_train(overrides)
    except HydraException as err:
        first = str(err).splitlines()[0]
        raise OrthoRegError(
            f"train_experiment={cfg.train_experiment} with {' '.join(overrides[1:])} does not compose ({first})"
        ) from None
    settings = identity_settings(train_cfg, lam)
    return Wanted(shlex.join(["python", "train.py", *overrides]), settings, identity_hash(settings))


def select_runs(
    cfg: DictConfig, mode: str, lam: float, tasks: Sequence[str], extra: Sequence[str] | None = None
) -> dict[str, Path]:
    """task -> run folder of ``mode`` at ``lam`` (same arch and seed as the merge), as the module
    docstring says. ``extra`` are training overrides of this mode's runs only (an analysis' other
    modes); ``None``: merge.py's own mode, selected also by the settings its command line names."""
    own = extra is None
    extra = named_training_overrides() if own else list(extra)
    found = finished_runs(
        cfg.paths.runs_dir, arch=cfg.model.arch, mode=mode, lam=lam, tasks=tasks, seed=cfg.seed
    )
    if cfg.get("train_experiment") is None:
        return _only_runs(
            cfg, tasks, found, {**(selected_settings(cfg) if own else {}), **_parsed(extra, mode)}
        )
    chosen = {}
    for task in tasks:
        wanted = wanted_run(cfg, task, mode, lam, extra)
        runs = found.get(task, {})
        match = [
            path for path, meta in runs.items() if (meta.get("identity") or {}).get("hash") == wanted.hash
        ]
        if not match:
            raise OrthoRegError(_no_run_message(cfg, task, wanted, runs))
        chosen[task] = match[0]
    return chosen


def _only_runs(cfg: DictConfig, tasks: Sequence[str], found: dict, settings: dict) -> dict[str, Path]:
    """One run per task among ``found`` whose identity settings include ``settings``."""
    chosen = {}
    for task in tasks:
        runs = {
            path: meta
            for path, meta in found.get(task, {}).items()
            if all(
                k in identity_settings_of(meta) and same_value(identity_settings_of(meta)[k], v)
                for k, v in settings.items()
            )
        }
        where = (
            f"below {cfg.paths.runs_dir} with arch={cfg.model.arch}, mode={cfg.mode.name}, seed={cfg.seed}"
        )
        if not runs:
            named = f" and {settings}" if settings else ""
            raise OrthoRegError(f"no finished run of task {task} {where}{named}")
        if len(runs) > 1:
            differ = differing([identity_settings_of(m) for m in runs.values()])
            how = (
                "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in differ.items())
                or "no recorded setting"
            )
            first = identity_settings_of(next(iter(runs.values())))
            raise OrthoRegError(
                f"several finished runs of task {task} {where}: {', '.join(map(str, runs))}; they differ in {how}. "
                f"Choose one, e.g.: {_command_with(cfg, {k: first.get(k) for k in differ})}"
            )
        chosen[task] = next(iter(runs))
    return chosen


def _no_run_message(cfg: DictConfig, task: str, wanted: Wanted, runs: Mapping[Path, dict]) -> str:
    head = f"no finished run for task {task} below {cfg.paths.runs_dir}: the run of `{wanted.command}` (identity {wanted.hash})"
    if not runs:
        return f"{head}; train it first, or name the training settings of the runs to merge (train_overrides)"
    closest = min(runs.values(), key=lambda m: len(differing([identity_settings_of(m), wanted.settings])))
    differ = differing([identity_settings_of(closest), wanted.settings])
    how = "; ".join(f"{k}: {there} there, {here} here" for k, (there, here) in differ.items())
    return (
        f"{head}; {len(runs)} other run(s) of {task} were trained with other settings (the closest: {how}). "
        f"To merge those: {_command_with(cfg, {k: v[0] for k, v in differ.items()})}"
    )


def hydra_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, booleans (true/false), null and lists as Hydra reads them


def _command_with(cfg: DictConfig, settings: Mapping[str, Any]) -> str:
    """merge.py's own command line plus ``train_overrides`` naming ``settings``: runs as written."""
    own = [o for o in _job_overrides() if _key(o) != "train_overrides"]
    given = [str(o) for o in cfg.get("train_overrides") or []]
    keep = [o for o in given if _key(o) not in settings]
    named = [f"{k}={hydra_value(v)}" for k, v in settings.items() if not k.startswith(UNREPEATABLE)]
    listed = ",".join(json.dumps(o) for o in [*keep, *named])
    return shlex.join(["python", "merge.py", *own, f"train_overrides=[{listed}]"])


def load_vectors(
    cfg: DictConfig,
    mode: str,
    lam: float,
    tasks: Sequence[str],
    pretrained: str,
    extra: Sequence[str] | None = None,
) -> dict[str, TaskVector]:
    """task -> TaskVector of the selected runs, checked to fit together and to come from ``pretrained``."""
    runs = select_runs(cfg, mode, lam, tasks, extra)
    vectors = {task: load_run(runs[task]) for task in tasks}
    check_compatible(list(vectors.values()))
    for vector in vectors.values():
        if vector.info.pretrained != pretrained:
            raise OrthoRegError(
                f"task vector {vector.info.source} was fine-tuned from {vector.info.pretrained!r}, "
                f"but model.pretrained gives {pretrained!r}"
            )
    return vectors


def check_splits(vectors: dict[str, TaskVector], checksums: dict[str, str]) -> None:
    """Each run was trained and scored on the train/val split merge.py evaluates (same files, same
    rule): a run of another data version or split seed would be compared against the wrong split."""
    for task, vector in vectors.items():
        recorded = vector.info.meta.get("split_checksum")
        if recorded is not None and recorded != checksums[task]:
            raise OrthoRegError(
                f"run {Path(vector.info.source).parent} recorded split checksum {recorded}, but the {task} "
                f"split merge.py evaluates has {checksums[task]} (other data files or data.split_seed?)"
            )

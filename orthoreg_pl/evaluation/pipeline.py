"""One merge run from a composed config: runs -> task vectors -> merge -> α grid on Val -> test -> report.

``merge.py`` is the Hydra shell around :func:`run_merge`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.alphas import check_alphas
from orthoreg_pl.evaluation.evaluator import MergeEvaluator
from orthoreg_pl.evaluation.protocols import PROTOCOLS
from orthoreg_pl.evaluation.protocols.common import inputs as report_inputs
from orthoreg_pl.evaluation.references import cross_check
from orthoreg_pl.evaluation.report_files import REPORT_FILE, write_report
from orthoreg_pl.evaluation.report_logging import log_report
from orthoreg_pl.models import pretrained_identity
from orthoreg_pl.run_identity import MERGE_SELECTABLE, identity_hash, report_settings
from orthoreg_pl.task_vectors import TaskVector, check_compatible, find_runs, load_run
from orthoreg_pl.training import effective_lambda
from orthoreg_pl.validation import validate_merge

log = logging.getLogger(__name__)


def _load_vectors(cfg: DictConfig, tasks: list[str], lam: float, selected: dict) -> dict[str, TaskVector]:
    runs = find_runs(
        cfg.paths.runs_dir,
        arch=cfg.model.arch,
        mode=cfg.mode.name,
        lam=lam,
        tasks=tasks,
        seed=cfg.seed,
        settings=selected,
    )
    vectors = {task: load_run(runs[task]) for task in tasks}
    check_compatible(list(vectors.values()))
    expected = pretrained_identity(cfg.model.pretrained, cfg.model.init_seed)
    for vector in vectors.values():
        if vector.info.pretrained != expected:
            raise OrthoRegError(
                f"task vector {vector.info.source} was fine-tuned from {vector.info.pretrained!r}, "
                f"but model.pretrained gives {expected!r}"
            )
    return vectors


def selected_settings(cfg: DictConfig) -> dict:
    """Training settings named on merge.py's command line (``optim.lr=3e-5``): they select the runs."""
    if not HydraConfig.initialized():
        return {}
    selected = {}
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "ortho.lam" or not key.startswith(MERGE_SELECTABLE):
            continue
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            for sub, item in _flat(OmegaConf.to_container(value, resolve=True)).items():
                selected[f"{key}.{sub}"] = item
        else:
            selected[key] = value
    return selected


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _finished_report(report_dir: Path, identity: dict, inputs: dict, cfg: DictConfig) -> dict | None:
    """The report already in ``report_dir`` if it has this identity and these exact inputs (for an
    analysis, also the runs of the other modes it compares)."""
    path = report_dir / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a broken report is recomputed
    same_inputs = {t: i["checksum"] for t, i in report.get("inputs", {}).items()} == {
        t: i["checksum"] for t, i in inputs.items()
    }
    if (report.get("identity") or {}).get("hash") != identity["hash"] or not same_inputs:
        return None
    if cfg.protocol.name == "analysis":
        from orthoreg_pl.evaluation.protocols.analysis import mode_checksums

        if (report.get("analysis") or {}).get("mode_checksums") != mode_checksums(cfg):
            return None
    return report


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


class SkippedReport(dict):
    """A report that was already complete for the same settings and inputs: returned without evaluating."""

    skipped = True


def run_merge(cfg: DictConfig) -> dict:
    """Score one protocol for one set of fine-tuned runs and write the report folder."""
    validate_merge(cfg)
    name = cfg.protocol.name
    alphas = check_alphas(cfg.protocol.alphas)
    tasks = list(cfg.tasks)
    lam = effective_lambda(cfg)
    selected = selected_settings(cfg)
    vectors = _load_vectors(cfg, tasks, lam, selected)
    settings = report_settings(cfg, lam)
    identity = {"hash": identity_hash(settings), "settings": settings, "selected_by": selected}
    inputs = report_inputs(vectors)
    previous = _finished_report(Path(cfg.paths.output_dir), identity, inputs, cfg)
    if previous is not None:
        log.info(
            "skipped: %s already holds this report (same settings and task vectors)", cfg.paths.output_dir
        )
        return SkippedReport(previous)
    control = cfg.protocol.get("control")
    needed = tasks + ([control] if name == "negation" and control not in tasks else [])
    evaluator = MergeEvaluator(cfg, needed)
    check_splits(vectors, evaluator.checksums)
    body = PROTOCOLS[name](cfg, evaluator, vectors, alphas)
    first = next(iter(vectors.values())).info
    metric = cfg.protocol.objective.metric
    if metric not in body["val_at_alpha"]:
        raise OrthoRegError(
            f"protocol.objective.metric={metric!r}; protocol {name} offers {sorted(body['val_at_alpha'])}"
        )
    report = {
        "protocol": name,
        "arch": cfg.model.arch,
        "pretrained": evaluator.identity,
        "mode": cfg.mode.name,
        "lam": lam,
        "task_vector_space": first.space,
        "merge_method": cfg.merge_method_name,
        "identity": identity,
        "objective": {
            "metric": metric,
            "direction": cfg.protocol.objective.direction,
            "value": body["val_at_alpha"][metric],
        },
        "inputs": inputs,
        "split_checksums": evaluator.checksums,
        "precision": evaluator.precision,
        "matmul_precision": evaluator.matmul_precision,
        **body,
        "reference_check": cross_check(body["references"], vectors, float(cfg.reference_tolerance)),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if evaluator.trainer.is_global_zero:
        write_report(cfg.paths.output_dir, report)
        log_report(cfg, report)
        log.info("report written: %s", cfg.paths.output_dir)
    return report

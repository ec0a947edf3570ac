"""One merge run from a composed config: runs -> task vectors -> merge -> α grid on Val -> test -> report.

``merge.py`` is the Hydra shell around :func:`run_merge`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.config.lam import effective_lambda
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.alphas import check_alphas
from orthoreg_pl.evaluation.evaluator import MergeEvaluator
from orthoreg_pl.evaluation.protocols import PROTOCOLS
from orthoreg_pl.evaluation.protocols.common import inputs as report_inputs
from orthoreg_pl.evaluation.references import cross_check
from orthoreg_pl.evaluation.report_files import REPORT_FILE, remove_partial_report, write_report
from orthoreg_pl.evaluation.report_logging import log_report
from orthoreg_pl.evaluation.selection import check_splits, load_vectors, selected_settings
from orthoreg_pl.evaluation.validation import validate_merge
from orthoreg_pl.models import pretrained_identity
from orthoreg_pl.runs.identity import identity_hash, report_settings
from orthoreg_pl.runs.lock import RunLock
from orthoreg_pl.utils.io import check_writable, clean_leftovers

log = logging.getLogger(__name__)


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
    still_fits = PROTOCOLS[str(cfg.protocol.name)].still_fits
    if still_fits is not None and not still_fits(cfg, report):
        return None
    return report


class SkippedReport(dict):
    """A report that was already complete for the same settings and inputs: returned without evaluating."""

    skipped = True


def run_merge(cfg: DictConfig) -> dict:
    """Score one protocol for one set of fine-tuned runs and write the report folder (held by this
    job: the leftovers of a killed merge there are removed first)."""
    validate_merge(cfg)
    out = Path(cfg.paths.output_dir)
    check_writable(out, "report folder")  # now, not after the whole evaluation
    if rank_zero_only.rank != 0:  # the other processes of a distributed merge never write the folder
        return _run_merge(cfg)
    with RunLock(out):
        left = clean_leftovers(out) + remove_partial_report(out)
        if left:
            log.info("removed what a killed merge left in %s: %s", out, ", ".join(left))
        return _run_merge(cfg)


def _run_merge(cfg: DictConfig) -> dict:
    name = cfg.protocol.name
    alphas = check_alphas(cfg.protocol.alphas)
    tasks = list(cfg.tasks)
    lam = effective_lambda(cfg)
    selected = selected_settings(cfg)
    pretrained = pretrained_identity(cfg.model.pretrained, cfg.model.init_seed)
    vectors = load_vectors(cfg, cfg.mode.name, lam, tasks, pretrained)
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
    body = PROTOCOLS[name].run(cfg, evaluator, vectors, alphas)
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
        "seed": int(cfg.seed),
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
    for warning in report.get("warnings", []):
        log.warning("%s", warning)
    if evaluator.trainer.is_global_zero:
        write_report(cfg.paths.output_dir, report)
        log_report(cfg, report)
        log.info("report written: %s", cfg.paths.output_dir)
    return report

"""One merge run from a composed config: runs -> task vectors -> merge -> α grid on Val -> test -> report.

``merge.py`` is the Hydra shell around :func:`run_merge`.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from orthoreg_pl.data import TaskDataModule, eval_dataloader
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.engine import MergeEvalModule, evaluate_alphas
from orthoreg_pl.evaluation.protocols import (
    check_alphas,
    normalized_mean_curve,
    select_addition_alpha,
    select_negation_alpha,
)
from orthoreg_pl.evaluation.report import rows, write_report
from orthoreg_pl.loggers import finish_wandb
from orthoreg_pl.models import (
    ImageClassifier,
    create_clip,
    load_or_build_head,
    preprocess_config,
    pretrained_identity,
)
from orthoreg_pl.run_identity import MERGE_SELECTABLE, identity_hash, report_settings
from orthoreg_pl.task_vectors import TaskVector, check_compatible, find_runs, load_run
from orthoreg_pl.training import effective_lambda
from orthoreg_pl.utils.io import write_json

log = logging.getLogger(__name__)
ZEROSHOT_FILE = "zeroshot.json"


class MergeEvaluator:
    """Builds the encoder, the heads and the loaders once; scores θ0 + α·τ on any (task, split)."""

    def __init__(self, cfg: DictConfig, tasks: list[str]) -> None:
        self.identity = pretrained_identity(cfg.model.pretrained, cfg.model.init_seed)
        clip = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.model.init_seed, cfg.model.quick_gelu)
        preprocess = preprocess_config(clip)
        self.heads, self.loaders, self.checksums = {}, {}, {}
        for task in tasks:
            dm: TaskDataModule = instantiate(cfg.data, task=task)
            dm.preprocess = preprocess
            dm.setup("validate")
            self.heads[task] = load_or_build_head(
                clip,
                cfg.model.arch,
                self.identity,
                task,
                dm.classnames,
                dm.task_data.templates,
                cfg.paths.cache_dir,
            )
            batch, workers = cfg.data.eval_batch_size, cfg.data.num_workers
            self.loaders[task] = {
                "val": eval_dataloader(dm.val_set, batch, workers, shard=True),
                "test": eval_dataloader(dm.test_set, batch, workers, shard=True),
            }
            self.checksums[task] = dm.checksum
        self.module = MergeEvalModule(ImageClassifier(clip.visual, self.heads[tasks[0]]))
        del clip  # the text tower is no longer needed
        self.trainer: L.Trainer = instantiate(
            cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, use_distributed_sampler=False
        )

    def accuracy(self, task: str, split: str, vector: TaskVector | None, alphas: list[float]) -> list[float]:
        closed_form = vector is not None and vector.info is not None and vector.info.space == "tangent"
        direction = None if vector is None else vector.tensors
        return evaluate_alphas(
            self.trainer,
            self.module,
            self.loaders[task][split],
            self.heads[task],
            direction,
            alphas,
            closed_form,
        )


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


def _references(vectors: dict[str, TaskVector]) -> dict[str, dict]:
    refs = {}
    for task, vector in vectors.items():
        accuracy = vector.info.meta.get("accuracy", {})
        if not accuracy.get("finetuned"):
            raise OrthoRegError(f"run {vector.info.source} has no fine-tuned accuracy in its meta.json")
        refs[task] = {"zeroshot": accuracy.get("zeroshot"), "finetuned": accuracy["finetuned"]}
    return refs


def _inputs(vectors: dict[str, TaskVector]) -> dict[str, dict]:
    return {
        t: {
            "path": v.info.source,
            "checksum": v.info.checksum,
            "mode": v.info.mode,
            "lam": v.info.meta.get("ortho", {}).get("lam"),
            "identity": (v.info.meta.get("identity") or {}).get("hash"),
        }
        for t, v in vectors.items()
    }


def _mean_row(per_task: dict[str, dict], columns: list[str]) -> dict:
    return {c: statistics.fmean(r[c] for r in per_task.values() if r.get(c) is not None) for c in columns}


def run_addition(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    merged = instantiate(cfg.merge_method)(list(vectors.values()))
    refs = _references(vectors)
    val = {task: evaluator.accuracy(task, "val", merged, alphas) for task in vectors}
    normalized = normalized_mean_curve(val, {t: refs[t]["finetuned"]["val"] for t in vectors})
    best = select_addition_alpha(alphas, normalized)
    alpha = alphas[best]
    per_task = {}
    for task in vectors:
        test = evaluator.accuracy(task, "test", merged, [alpha])[0]
        finetuned = refs[task]["finetuned"]["test"]
        zeroshot = (refs[task]["zeroshot"] or {}).get("test")
        per_task[task] = {"zeroshot": zeroshot, "finetuned": finetuned, "abs": test, "norm": test / finetuned}
    columns = ["zeroshot", "finetuned", "abs", "norm"]
    return {
        "alphas": alphas,
        "val_curves": {**val, "normalized mean": normalized},
        "val_at_alpha": {"val_norm": normalized[best]},
        "chosen_alpha": alpha,
        "columns": columns,
        "per_task": per_task,
        "mean": _mean_row(per_task, columns),
        "references": refs,
    }


def run_negation(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    control = cfg.protocol.control
    control_zeroshot = zeroshot_reference(cfg, evaluator, control)
    if control_zeroshot["val"] <= 0:
        raise OrthoRegError(
            f"control task {control!r} has zero zero-shot validation accuracy: no reference to keep"
        )
    refs = _references(vectors)
    negative = [-a for a in alphas]
    per_task, curves, target_val_at = {}, {}, {}
    for task, vector in vectors.items():
        target_val = evaluator.accuracy(task, "val", vector, negative)
        control_val = evaluator.accuracy(control, "val", vector, negative)
        best = select_negation_alpha(
            alphas, target_val, control_val, control_zeroshot["val"], cfg.protocol.threshold
        )
        alpha = alphas[best]
        curves[f"{task} target"], curves[f"{task} control"] = target_val, control_val
        target_val_at[task] = target_val[best]
        per_task[task] = {
            "alpha": alpha,
            "zeroshot": (refs[task]["zeroshot"] or {}).get("test"),
            "target": evaluator.accuracy(task, "test", vector, [-alpha])[0],
            "control": evaluator.accuracy(control, "test", vector, [-alpha])[0],
        }
    columns = ["alpha", "zeroshot", "target", "control"]
    return {
        "alphas": alphas,
        "val_curves": curves,
        "val_at_alpha": {"target_val": statistics.fmean(target_val_at.values())},
        "chosen_alpha": None,
        "control": control,
        "control_zeroshot": control_zeroshot,
        "threshold": float(cfg.protocol.threshold),
        "columns": columns,
        "per_task": per_task,
        "mean": _mean_row(per_task, columns),
        "references": refs,
    }


def zeroshot_reference(cfg: DictConfig, evaluator: MergeEvaluator, task: str) -> dict[str, float]:
    """Zero-shot val/test accuracy of θ0 on ``task``: computed once, stored next to the runs
    (``<runs_dir>/<arch>/zeroshot.json``, keyed by pretrained weights, task and split) and reused."""
    path = Path(cfg.paths.runs_dir) / cfg.model.arch / ZEROSHOT_FILE
    key = f"{evaluator.identity}|{task}|{evaluator.checksums[task]}"
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as err:
        raise OrthoRegError(
            f"zero-shot reference file {path} is corrupt ({err}); delete it to recompute"
        ) from err
    if key not in table:
        table[key] = {s: evaluator.accuracy(task, s, None, [0.0])[0] for s in ("val", "test")}
        if evaluator.trainer.is_global_zero:
            write_json(path, dict(sorted(table.items())))
    return table[key]


def run_single_task(
    cfg: DictConfig, evaluator: MergeEvaluator, vectors: dict[str, TaskVector], alphas: list[float]
) -> dict:
    """Zero-shot (θ0) and fine-tuned (θ0 + τ) top-1 on XVal and X-test of every task, evaluated from the
    task vectors; stored as JSON next to the runs. The runs' own numbers are kept beside for comparison."""
    per_task = {}
    for task, vector in vectors.items():
        zeroshot = zeroshot_reference(cfg, evaluator, task)
        finetuned = {s: evaluator.accuracy(task, s, vector, [1.0])[0] for s in ("val", "test")}
        recorded = vector.info.meta.get("accuracy", {}).get("finetuned") or {}
        per_task[task] = {
            "zeroshot_val": zeroshot["val"],
            "zeroshot_test": zeroshot["test"],
            "finetuned_val": finetuned["val"],
            "finetuned_test": finetuned["test"],
            "run_finetuned_test": recorded.get("test"),
        }
    columns = ["zeroshot_val", "zeroshot_test", "finetuned_val", "finetuned_test", "run_finetuned_test"]
    body = {"alphas": [1.0], "val_curves": {}, "chosen_alpha": None, "columns": columns, "per_task": per_task}
    body["mean"] = _mean_row(per_task, columns)
    body["val_at_alpha"] = {"finetuned_val": body["mean"]["finetuned_val"]}
    if evaluator.trainer.is_global_zero:
        folder = Path(cfg.paths.runs_dir) / cfg.model.arch / cfg.mode.tag
        write_json(folder / f"single_task_seed{cfg.seed}.json", {"inputs": _inputs(vectors), **body})
    return body


PROTOCOLS = {"addition": run_addition, "negation": run_negation, "single_task": run_single_task}


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


def _finished_report(report_dir: Path, identity: dict, inputs: dict) -> dict | None:
    """The report already in ``report_dir`` if it has this identity and these exact inputs."""
    path = report_dir / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a broken report is recomputed
    same_inputs = {t: i["checksum"] for t, i in report.get("inputs", {}).items()} == {
        t: i["checksum"] for t, i in inputs.items()
    }
    if (report.get("identity") or {}).get("hash") == identity["hash"] and same_inputs:
        return report
    return None


class SkippedReport(dict):
    """A report that was already complete for the same settings and inputs: returned without evaluating."""

    skipped = True


def run_merge(cfg: DictConfig) -> dict:
    """Score one protocol for one set of fine-tuned runs and write the report folder."""
    name = cfg.protocol.name
    if name not in PROTOCOLS:
        raise OrthoRegError(f"protocol.name={name!r} is not supported; expected one of {sorted(PROTOCOLS)}")
    alphas = check_alphas(cfg.protocol.alphas)
    tasks = list(cfg.tasks)
    if not tasks:
        raise OrthoRegError("tasks is empty; expected the list of tasks whose task vectors to merge")
    lam = effective_lambda(cfg)
    selected = selected_settings(cfg)
    vectors = _load_vectors(cfg, tasks, lam, selected)
    settings = report_settings(cfg, lam)
    identity = {"hash": identity_hash(settings), "settings": settings, "selected_by": selected}
    inputs = _inputs(vectors)
    previous = _finished_report(Path(cfg.paths.output_dir), identity, inputs)
    if previous is not None:
        log.info(
            "skipped: %s already holds this report (same settings and task vectors)", cfg.paths.output_dir
        )
        return SkippedReport(previous)
    control = cfg.protocol.get("control")
    needed = tasks + ([control] if name == "negation" and control not in tasks else [])
    evaluator = MergeEvaluator(cfg, needed)
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
        **body,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if evaluator.trainer.is_global_zero:
        write_report(cfg.paths.output_dir, report)
        log_report(cfg, report)
        log.info("report written: %s", cfg.paths.output_dir)
    return report


def log_report(cfg: DictConfig, report: dict) -> None:
    """The report to the configured experiment loggers: its config, mean scores and objective; for W&B
    also the table, the α curves (a table and a line plot), the plot image and report.json as an artifact."""
    protocol = report["protocol"]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    try:
        for logger in loggers:
            logger.log_hyperparams({"config": report["config"], "identity": report["identity"]})
            scores = {f"{protocol}/mean_{k}": v for k, v in report["mean"].items()}
            logger.log_metrics({**scores, f"{protocol}/objective": report["objective"]["value"]})
            if isinstance(logger, WandbLogger):
                _log_wandb_report(logger, cfg, report)
            logger.finalize("success")
    finally:
        finish_wandb(0)


def _log_wandb_report(logger: WandbLogger, cfg: DictConfig, report: dict) -> None:
    import wandb

    protocol = report["protocol"]
    columns = ["task", *report["columns"]]
    data = [[r.get(c) for c in columns] for r in rows(report)]
    logger.log_table(key=f"{protocol}/table", columns=columns, data=data)
    if report["val_curves"]:
        names = list(report["val_curves"])
        curve_rows = [
            [a, n, report["val_curves"][n][i]] for n in names for i, a in enumerate(report["alphas"])
        ]
        table = wandb.Table(columns=["alpha", "curve", "val_acc"], data=curve_rows)
        logger.experiment.log({f"{protocol}/alpha_curves": table})
        plot = wandb.plot.line_series(
            xs=report["alphas"],
            ys=[report["val_curves"][n] for n in names],
            keys=names,
            title=f"{protocol}: validation accuracy against α",
            xname="alpha",
        )
        logger.experiment.log({f"{protocol}/alpha_curve_plot": plot})
    image = Path(cfg.paths.output_dir) / "alpha_curve.png"
    if image.exists():
        logger.log_image(key=f"{protocol}/alpha_curve", images=[str(image)])
    artifact = wandb.Artifact(f"report-{report['identity']['hash']}", type="merge_report")
    artifact.add_file(str(Path(cfg.paths.output_dir) / "report.json"))
    logger.experiment.log_artifact(artifact)

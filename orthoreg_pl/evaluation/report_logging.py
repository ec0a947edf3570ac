"""A merge report to the configured experiment loggers (W&B: table, α curves, plot, report.json)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from orthoreg_pl.evaluation.figure_logging import log_figures
from orthoreg_pl.evaluation.report_files import REPORT_FILE, rows
from orthoreg_pl.runs.loggers import finish_wandb


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
    log_figures(logger, report, cfg.paths.output_dir)  # a protocol's own figures and tables (analysis)
    artifact = wandb.Artifact(f"report-{report['identity']['hash']}", type="merge_report")
    artifact.add_file(str(Path(cfg.paths.output_dir) / REPORT_FILE))
    logger.experiment.log_artifact(artifact)
